//! Who is waiting for a stream to change: live readers (long-poll and SSE) on this node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

/// One [`Notify`] per stream that someone waits on, dropped with its last waiter.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    by_path: Mutex<HashMap<String, Weak<Notify>>>,
}

impl Waiters {
    /// The stream's notifier, to take a `notified()` from before reading, so that a change
    /// between the read and the wait is not missed.
    pub(crate) fn watch(&self, path: &str) -> Arc<Notify> {
        let mut by_path = self.by_path.lock().unwrap();
        if let Some(notify) = by_path.get(path).and_then(Weak::upgrade) {
            return notify;
        }
        // A new waiter is the moment to forget streams nobody waits on any more.
        if by_path.len() >= 64 && by_path.len().is_power_of_two() {
            by_path.retain(|_, weak| weak.strong_count() > 0);
        }
        let notify = Arc::new(Notify::new());
        by_path.insert(path.to_owned(), Arc::downgrade(&notify));
        notify
    }

    /// Wakes everyone waiting on any stream.
    pub(crate) fn wake_all(&self) {
        for notify in self.by_path.lock().unwrap().values().filter_map(Weak::upgrade) {
            notify.notify_waiters();
        }
    }

    /// Wakes everyone waiting on the stream.
    pub(crate) fn changed(&self, path: &str) {
        let mut by_path = self.by_path.lock().unwrap();
        match by_path.get(path).map(Weak::upgrade) {
            Some(Some(notify)) => notify.notify_waiters(),
            Some(None) => {
                by_path.remove(path);
            }
            None => {}
        }
    }
}
