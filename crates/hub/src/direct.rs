//! Live updates written by the fan-out straight to an idle subscriber's socket.
//!
//! Queuing an update for a subscriber and waking its task, which then polls its feed and
//! writes, costs more than the write itself (BENCHMARKS.md: a third of the server's time at
//! 100,000 deliveries/s was Sluice's, most of it that hand-over). So when a subscriber has
//! nothing in flight, neither in its queue nor in its connection's writer, the fan-out writes
//! the update's frame to its socket itself, without blocking; only what does not go out at
//! once is left for the subscriber's task. It does so only while it keeps up (one update
//! waiting, no more): behind, it queues, and each task writes its backlog in one `writev`,
//! which the fan-out's one system call per delivery could not match.
//!
//! Order and exactly-once delivery hold because one lock per subscriber decides who writes:
//!
//! - the fan-out writes only while the feed is *idle* (its queue empty, its replay over: set by
//!   the feed, under the lock, when it finds its queue empty) and the writer is *idle* (it has
//!   nothing of its own to write: set by the writer, under the lock, when it parks);
//! - whenever the fan-out queues an update instead, it marks the feed busy under the same
//!   lock, so nothing is written directly while anything older waits in the queue;
//! - a frame the socket takes only in part is left, whole or in part, as the *leftover*,
//!   which the writer sends before anything else once it is woken;
//! - the writer marks itself busy, under the lock, before each write of its own, so the two
//!   never write at once.
//!
//! Updates committed before the subscriber registered belong to its replay and are never
//! written here (`live_after`), like the feed skips them in its queue.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::ops::DerefMut;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use crate::update::Update;

/// A subscriber's socket, as the fan-out may write to it: without blocking, from any thread.
pub trait SocketWriter: Send + Sync + fmt::Debug {
    /// Writes what the socket takes of `frame` now: the bytes written, 0 when it takes none,
    /// an error when the connection is broken.
    fn try_write(&self, frame: &[u8]) -> io::Result<usize>;

    /// Wakes the task that writes the rest of the stream.
    fn wake(&self);
}

/// Who may write to one subscriber's socket, shared by the fan-out, the subscriber's feed and
/// its connection's writer. See the [module docs](self).
///
/// `L` is the lock its state is under: the standard mutex, except in the model check of the
/// protocol (`direct/model.rs`), whose lock lets the checker switch threads at every
/// acquisition, as the real one may.
pub struct DirectWrite<L = Mutex<State>> {
    socket: Arc<dyn SocketWriter>,
    state: L,
}

/// The lock of a [`DirectWrite`]'s state.
pub(crate) trait Lock<T>: Send + Sync {
    fn new(value: T) -> Self;
    fn lock(&self) -> impl DerefMut<Target = T> + '_;
}

impl<T: Send> Lock<T> for Mutex<T> {
    fn new(value: T) -> Self {
        Mutex::new(value)
    }

    fn lock(&self) -> impl DerefMut<Target = T> + '_ {
        Mutex::lock(self).unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One round of the fan-out's direct writes: when it began, and what it wrote, counted into
/// the metrics once at its end rather than at every delivery.
#[derive(Debug)]
pub(crate) struct Round {
    at: Instant,
    updates: u64,
    bytes: u64,
}

impl Round {
    pub(crate) fn new(at: Instant) -> Self {
        Round { at, updates: 0, bytes: 0 }
    }

    /// Adds what the round wrote to the metrics.
    pub(crate) fn count(self) {
        metrics::counter!("sluice_updates_delivered_total").increment(self.updates);
        metrics::counter!("sluice_updates_written_directly_total").increment(self.updates);
        metrics::counter!("sluice_bytes_out_total").increment(self.bytes);
    }
}

/// What the lock of a [`DirectWrite`] guards.
#[derive(Debug, Default)]
pub struct State {
    feed_idle: bool,
    writer_idle: bool,
    /// The stream has ended or the socket failed: no more writes here.
    closed: bool,
    /// The part of a frame the socket did not take: the writer sends it first.
    leftover: Option<Bytes>,
    /// Live updates up to this `seq` belong to the replay (set once the subscriber has
    /// registered, before the feed can be idle).
    live_after: u64,
    /// When the fan-out last wrote here: the stream's keep-alive counts it as traffic.
    last_write: Option<Instant>,
}

impl<L: fmt::Debug> fmt::Debug for DirectWrite<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectWrite").field("state", &self.state).finish_non_exhaustive()
    }
}

// Other crates name only the default lock; the trait is this crate's seam for its model check.
#[expect(private_bounds, reason = "the lock is chosen only inside this crate")]
impl<L: Lock<State>> DirectWrite<L> {
    pub(crate) fn new(socket: Arc<dyn SocketWriter>) -> Self {
        DirectWrite { socket, state: L::new(State::default()) }
    }

    fn lock(&self) -> impl DerefMut<Target = State> + '_ {
        self.state.lock()
    }

    /// The fan-out's side: writes `update` now (in `round`) if the subscriber is idle, else
    /// runs `queue` (which queues it for the feed) with the feed marked busy. True if the
    /// update was taken, written or queued.
    pub(crate) fn deliver(
        &self,
        update: &Update,
        round: &mut Round,
        queue: impl FnOnce() -> bool,
    ) -> bool {
        let mut state = self.lock();
        let idle = state.feed_idle && state.writer_idle && !state.closed;
        if !idle || update.seq() <= state.live_after {
            state.feed_idle = false;
            return queue();
        }
        let frame = update.frame();
        match self.socket.try_write(frame) {
            Ok(written) => {
                state.last_write = Some(round.at);
                round.updates += 1;
                round.bytes += written as u64;
                if written < frame.len() {
                    state.writer_idle = false;
                    state.leftover = Some(frame.slice(written..));
                    self.socket.wake();
                }
                true
            }
            Err(_) => {
                // Broken: the writer finds out on its next write and ends the stream; the
                // queue keeps the update meanwhile, as it would have.
                state.closed = true;
                state.feed_idle = false;
                self.socket.wake();
                queue()
            }
        }
    }

    pub(crate) fn set_live_after(&self, seq: u64) {
        self.lock().live_after = seq;
    }

    /// The fan-out's side when it does not write: runs `queue` with the feed marked busy.
    pub(crate) fn queue(&self, queue: impl FnOnce() -> bool) -> bool {
        let mut state = self.lock();
        state.feed_idle = false;
        queue()
    }

    /// The feed's side, when it is about to wait for its queue: idle if `queue_is_empty`.
    pub(crate) fn feed_waiting(&self, queue_is_empty: impl FnOnce() -> bool) {
        let mut state = self.lock();
        if queue_is_empty() {
            state.feed_idle = true;
        }
    }

    /// The writer's side, before it writes anything of `queue` (what it has to write, in
    /// order): busy, with the leftover of a frame the fan-out began put first in `queue`.
    pub fn writer_busy(&self, queue: &mut VecDeque<Bytes>) {
        let mut state = self.lock();
        state.writer_idle = false;
        if let Some(leftover) = state.leftover.take() {
            queue.push_front(leftover);
        }
    }

    /// The writer's side, when it has nothing left to write and waits.
    pub fn writer_idle(&self) {
        self.lock().writer_idle = true;
    }

    /// When the fan-out last wrote to the socket: traffic the stream itself does not see,
    /// which its keep-alive comments need not repeat.
    pub fn last_written(&self) -> Option<Instant> {
        self.lock().last_write
    }

    /// No more writes here: the stream is ending, or the subscriber was cut off.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.writer_idle = false;
    }
}

#[cfg(test)]
mod model;

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::update::Draft;

    /// A socket that takes at most `room` more bytes, recording what it took.
    #[derive(Debug, Default)]
    struct Socket {
        room: AtomicUsize,
        taken: Mutex<Vec<u8>>,
        wakes: AtomicUsize,
    }

    impl SocketWriter for Socket {
        fn try_write(&self, frame: &[u8]) -> io::Result<usize> {
            let n = frame.len().min(self.room.load(Ordering::Relaxed));
            self.room.fetch_sub(n, Ordering::Relaxed);
            self.taken.lock().unwrap().extend_from_slice(&frame[..n]);
            Ok(n)
        }

        fn wake(&self) {
            self.wakes.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn update(seq: u64) -> Update {
        Update::new(seq, 0, Draft::new("/t", format!("update {seq}"))).unwrap()
    }

    impl DirectWrite {
        fn deliver_now(&self, update: &Update, queue: impl FnOnce() -> bool) -> bool {
            self.deliver(update, &mut Round::new(Instant::now()), queue)
        }
    }

    fn idle(room: usize) -> (Arc<Socket>, DirectWrite) {
        let socket = Arc::new(Socket { room: AtomicUsize::new(room), ..Socket::default() });
        let direct = DirectWrite::new(Arc::clone(&socket) as Arc<dyn SocketWriter>);
        direct.set_live_after(1);
        direct.feed_waiting(|| true);
        direct.writer_idle();
        (socket, direct)
    }

    #[test]
    fn an_idle_subscriber_is_written_to_and_a_busy_one_queued() {
        let (socket, direct) = idle(usize::MAX);
        let mut queued = Vec::new();
        assert!(direct.deliver_now(&update(2), || unreachable!("written, not queued")));
        assert_eq!(&socket.taken.lock().unwrap()[..], &update(2).frame()[..]);
        // Committed before the subscriber registered: the replay's, never written here.
        assert!(direct.deliver_now(&update(1), || {
            queued.push(1);
            true
        }));
        // The feed marked busy by that, nothing is written until it waits again.
        assert!(direct.deliver_now(&update(3), || {
            queued.push(3);
            true
        }));
        assert_eq!(queued, [1, 3]);
        direct.feed_waiting(|| false);
        assert!(direct.deliver_now(&update(4), || {
            queued.push(4);
            true
        }));
        direct.feed_waiting(|| true);
        let mut writers = VecDeque::new();
        direct.writer_busy(&mut writers);
        assert!(writers.is_empty());
        assert!(direct.deliver_now(&update(5), || {
            queued.push(5);
            true
        }));
        assert_eq!(queued, [1, 3, 4, 5], "the writer busy: queued");
        assert_eq!(socket.taken.lock().unwrap().len(), update(2).frame().len());
    }

    #[test]
    fn a_direct_write_is_remembered_as_the_sockets_last_traffic() {
        let (_socket, direct) = idle(usize::MAX);
        assert_eq!(direct.last_written(), None);
        let at = Instant::now();
        let mut round = Round::new(at);
        assert!(direct.deliver(&update(2), &mut round, || unreachable!("written, not queued")));
        assert_eq!(direct.last_written(), Some(at));
        assert_eq!((round.updates, round.bytes), (1, update(2).frame().len() as u64));
        // Queued, not written (the feed busy): the stream's own writer will count it.
        assert!(direct.queue(|| true));
        let mut later = Round::new(at + std::time::Duration::from_secs(1));
        assert!(direct.deliver(&update(3), &mut later, || true));
        assert_eq!(direct.last_written(), Some(at));
        assert_eq!((later.updates, later.bytes), (0, 0));
    }

    #[test]
    fn what_the_socket_does_not_take_is_the_writers_to_send_first() {
        let (socket, direct) = idle(10);
        let frame = update(2).frame().clone();
        assert!(direct.deliver_now(&update(2), || unreachable!("taken in part")));
        assert_eq!(socket.wakes.load(Ordering::Relaxed), 1, "the writer is woken");
        // The writer is now busy: the next update waits in the queue, behind the leftover.
        let mut queued = false;
        assert!(direct.deliver_now(&update(3), || {
            queued = true;
            true
        }));
        assert!(queued);
        let mut writers = VecDeque::from([Bytes::from_static(b"later")]);
        direct.writer_busy(&mut writers);
        assert_eq!(writers, [frame.slice(10..), Bytes::from_static(b"later")], "first");
        direct.writer_busy(&mut writers);
        assert_eq!(writers.len(), 2, "handed over once");
    }

    #[test]
    fn a_closed_or_broken_socket_is_not_written_to() {
        let (socket, direct) = idle(usize::MAX);
        direct.close();
        let mut queued = 0;
        assert!(direct.deliver_now(&update(2), || {
            queued += 1;
            true
        }));
        assert_eq!((queued, socket.taken.lock().unwrap().len()), (1, 0));
    }
}
