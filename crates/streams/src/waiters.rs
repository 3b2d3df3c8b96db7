//! Who is waiting for a stream to change: live readers (long-poll and SSE) on this node, and
//! the tail of the stream they share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use crate::tail::Tail;

/// One [`Watch`] per stream that someone waits on, dropped with its last waiter.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    by_path: Mutex<HashMap<String, Weak<Watch>>>,
}

/// What the live readers of one stream share.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    /// Woken at every change.
    pub(crate) notify: Notify,
    /// Counts changes: a [`Tail`] read at an older count may be behind.
    pub(crate) changes: AtomicU64,
    /// The stream's latest records as one reader last fetched them, for the others: a
    /// thousand readers woken by one append make one read of the log, not a thousand.
    pub(crate) tail: tokio::sync::Mutex<Option<Tail>>,
}

impl Waiters {
    /// The stream's watch, to take a `notified()` from before reading, so that a change
    /// between the read and the wait is not missed.
    pub(crate) fn watch(&self, path: &str) -> Arc<Watch> {
        let mut by_path = self.by_path.lock().unwrap();
        if let Some(watch) = by_path.get(path).and_then(Weak::upgrade) {
            return watch;
        }
        // A new waiter is the moment to forget streams nobody waits on any more.
        if by_path.len() >= 64 && by_path.len().is_power_of_two() {
            by_path.retain(|_, weak| weak.strong_count() > 0);
        }
        let watch = Arc::new(Watch::default());
        by_path.insert(path.to_owned(), Arc::downgrade(&watch));
        watch
    }

    /// Wakes everyone waiting on any stream.
    pub(crate) fn wake_all(&self) {
        for watch in self.by_path.lock().unwrap().values().filter_map(Weak::upgrade) {
            watch.changed();
        }
    }

    /// Wakes everyone waiting on the stream.
    pub(crate) fn changed(&self, path: &str) {
        let mut by_path = self.by_path.lock().unwrap();
        match by_path.get(path).map(Weak::upgrade) {
            Some(Some(watch)) => watch.changed(),
            Some(None) => {
                by_path.remove(path);
            }
            None => {}
        }
    }
}

impl Watch {
    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}
