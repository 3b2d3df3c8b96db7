//! A model check of the hand-over: the fan-out, the feed and the writer under the lock of
//! [`DirectWrite`], run by shuttle in many schedules over a socket that takes frames in part.
//!
//! What runs is the real protocol: [`DirectWrite`]'s own methods, under a shuttle mutex (so the
//! checker may switch threads at every acquisition, as the OS may), called in the order the
//! real callers call them. The callers themselves are modelled, each by what it does with the
//! hand-over and nothing else:
//!
//! - the fan-out (`registry.rs`) delivers the updates in `seq` order, each either offered for a
//!   direct write or queued, as the dispatcher decides round by round;
//! - the feed (`Feed::next_delivery` in `hub.rs`) replays the updates committed before the
//!   subscriber registered, then, each time it looks at its queue, tells the hand-over it is
//!   about to wait and takes what is queued, skipping what the replay sent;
//! - the writer (`Answer::write_stream` in the server's `conn/direct/answer.rs`) at each
//!   wake-up goes busy (taking the leftover first), gathers what the feed has, writes, and goes
//!   idle with an empty queue. The feed runs inside the writer's poll, as it does for real: a feed on a
//!   thread of its own would hand frames to the writer through a channel that does not exist,
//!   and the protocol (rightly) does not cover frames in such a channel;
//! - the client reads the socket, which frees room and wakes a writer waiting for it, and
//!   closes once it has every byte, which ends the writer.
//!
//! The socket has a small, random room: any write, the fan-out's or the writer's, may be
//! taken whole, in part or not at all (`WouldBlock`).
//!
//! What is checked, in every schedule: the bytes the client reads are a prefix of the head
//! and every frame, each once, in order (checked at each read: a lost, doubled or reordered
//! frame fails at once); and every thread ends, the client having read everything (a writer
//! left asleep with something to write is a deadlock, which shuttle reports).
//!
//! Each of these mistakes, made by hand in `direct.rs`, fails the test (PCT: every one, within
//! seconds; random: those marked so), then was reverted:
//!
//! 1. The fan-out, having written part of a frame, leaves the writer idle (no
//!    `state.writer_idle = false` in `deliver`): the next update is written into the middle
//!    of the unsent rest. *"the client read `…id: u2\ndata: id: u3\ndata: ` where the head and
//!    every frame, each once and in order, begin `…id: u2\ndata: 2\n\nid: u3…`"* (PCT).
//! 2. Queuing without marking the feed busy (no `state.feed_idle = false` in `queue`): a later
//!    update overtakes one still queued. *"… read `…id: u2\ndata: 2\n\nid: u4…` where …
//!    begin `…id: u2\ndata: 2\n\nid: u3…`"* (random and PCT).
//! 3. The leftover stored after the lock is released (`deliver` marks the writer busy,
//!    unlocks, wakes it, then locks again to store the rest): the writer, woken first, finds
//!    nothing and goes idle, and the next direct write overtakes the rest. *"… read `…id:
//!    uid: u` …"* (PCT).
//! 4. A replayed update written directly (no `update.seq() <= state.live_after` in
//!    `deliver`): it arrives twice. *"… read `…id: u1\ndata: 1\n\nid: u1\ndata: 1…`"*
//!    (random and PCT).
//! 5. The writer taking the leftover without sending it (not put into its queue in
//!    `writer_busy`): the rest is lost, the client waits for it. *"deadlock! blocked tasks:
//!    [main-thread, writer, client]"* (random and PCT).
//! 6. No wake after a partial write (`self.socket.wake()` dropped in `deliver`): the writer
//!    sleeps on with the rest of the last frame. The same deadlock: a stuck writer (random and
//!    PCT).
//! 7. The writer not marking itself busy (no `state.writer_idle = false` in `writer_busy`):
//!    the fan-out writes while the writer has frames of its own. *"… read `…id: u1\ndata:
//!    1\n\nid: u3…`"* (random and PCT).
//!
//! Two guards are not needed as the code stands, and the test rightly passes without them:
//! the feed's look at its queue under the lock in `feed_waiting` (even marking it idle
//! unconditionally), and marking the feed busy when `deliver` queues because the subscriber
//! is not idle. The feed runs only inside the writer's poll, with the writer busy, and it
//! looks at its queue again right after `feed_waiting`; so anything queued before the writer
//! goes idle is taken by the feed first. They would matter if the feed were ever polled
//! apart from the writer.

use std::collections::VecDeque;
use std::io;
use std::ops::DerefMut;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes};
use shuttle::rand::{Rng, thread_rng};
use shuttle::sync::{Condvar, Mutex};
use shuttle::thread;

use super::{DirectWrite, Lock, Round, SocketWriter, State};
use crate::update::{Draft, Update};

/// Updates published while the subscriber is connected.
const UPDATES: u64 = 4;
/// Of them, those committed before it registered: its replay's, never written directly.
const REPLAYED: u64 = 1;
/// The most turns the fan-out gives up between two updates.
const PAUSE: usize = 24;
/// The response head, written by the writer before anything else.
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n";

impl<T: Send> Lock<T> for Mutex<T> {
    fn new(value: T) -> Self {
        Mutex::new(value)
    }

    fn lock(&self) -> impl DerefMut<Target = T> + '_ {
        Mutex::lock(self).unwrap()
    }
}

type Handover = DirectWrite<Mutex<State>>;

/// The connection's task, as its waker sees it: woken by the feed's queue, the fan-out and the
/// socket; polled again once woken (a wake while it runs counts, as with tokio's tasks).
#[derive(Debug, Default)]
struct Task {
    woken: Mutex<bool>,
    wakes: Condvar,
}

impl Task {
    fn wake(&self) {
        *self.woken.lock().unwrap() = true;
        self.wakes.notify_one();
    }

    fn sleep(&self) {
        let mut woken = self.woken.lock().unwrap();
        while !*woken {
            woken = self.wakes.wait(woken).unwrap();
        }
        *woken = false;
    }
}

/// The socket's kernel side: what was sent, what the client has read, and the room left.
#[derive(Debug, Default)]
struct Wire {
    sent: Vec<u8>,
    read: usize,
    room: usize,
    /// The writer found no room and waits for some.
    writer_waits: bool,
    client_closed: bool,
}

#[derive(Debug)]
struct Socket {
    wire: Mutex<Wire>,
    readable: Condvar,
    task: Arc<Task>,
}

impl Socket {
    /// Takes what fits of `bytes`: all, part or none of it. A writer that `waits_for_room` when
    /// none fits is woken by the client's next read (it asked under the same lock, as a task
    /// registers its interest before it tries the socket).
    fn take(&self, bytes: &[u8], waits_for_room: bool) -> usize {
        let mut wire = self.wire.lock().unwrap();
        let taken = bytes.len().min(wire.room);
        wire.room -= taken;
        wire.sent.extend_from_slice(&bytes[..taken]);
        wire.writer_waits |= waits_for_room && taken == 0;
        self.readable.notify_one();
        taken
    }
}

impl SocketWriter for Socket {
    fn try_write(&self, frame: &[u8]) -> io::Result<usize> {
        Ok(self.take(frame, false))
    }

    fn wake(&self) {
        self.task.wake();
    }
}

/// The subscriber's live queue (the fan-out's side of the feed's channel).
type Queue = Mutex<VecDeque<Arc<Update>>>;

/// The fan-out: each update offered for a direct write (when the dispatcher has the time) or
/// queued, in order. Updates come a random while apart (the dispatcher's turns, given up
/// here), which lets the other threads catch up in random schedules too: else the fan-out is
/// nearly always done before the writer first goes idle, and nothing is written directly.
fn fan_out(updates: &[Arc<Update>], direct: &Handover, queue: &Queue, task: &Task) {
    let mut round = Round::new(Instant::now());
    for update in updates {
        for _ in 0..thread_rng().gen_range(0..PAUSE) {
            thread::yield_now();
        }
        let enqueue = || {
            queue.lock().unwrap().push_back(Arc::clone(update));
            task.wake();
            true
        };
        if thread_rng().r#gen::<bool>() {
            direct.deliver(update, &mut round, enqueue);
        } else {
            direct.queue(enqueue);
        }
    }
}

/// The feed: the replay's updates, then the live queue's, each offered once.
struct Feed<'a> {
    replay: VecDeque<Arc<Update>>,
    queue: &'a Queue,
    direct: &'a Handover,
}

impl Feed<'_> {
    /// The next frame ready, or `None` when it would wait.
    fn next(&mut self) -> Option<Bytes> {
        if let Some(update) = self.replay.pop_front() {
            return Some(update.frame().clone());
        }
        loop {
            self.direct.feed_waiting(|| self.queue.lock().unwrap().is_empty());
            let update = self.queue.lock().unwrap().pop_front()?;
            if update.seq() > REPLAYED {
                return Some(update.frame().clone());
            }
        }
    }
}

/// The writer, polling the feed: until the client closes.
fn writer(mut feed: Feed<'_>, socket: &Socket) {
    let mut queue = VecDeque::from([Bytes::from_static(HEAD)]);
    loop {
        // One poll: as long as it makes progress.
        loop {
            if socket.wire.lock().unwrap().client_closed {
                feed.direct.close();
                return;
            }
            feed.direct.writer_busy(&mut queue);
            while let Some(frame) = feed.next() {
                queue.push_back(frame);
            }
            let Some(front) = queue.front_mut() else {
                feed.direct.writer_idle();
                break;
            };
            let written = socket.take(front, true);
            if written == 0 {
                break;
            }
            front.advance(written);
            if front.is_empty() {
                queue.pop_front();
            }
        }
        socket.task.sleep();
    }
}

/// The client: reads what arrives, a random amount at a time, checking it against `expected`;
/// closes once it has all of it.
fn client(expected: &[u8], socket: &Socket) {
    let mut wire = socket.wire.lock().unwrap();
    loop {
        while wire.read == wire.sent.len() {
            wire = socket.readable.wait(wire).unwrap();
        }
        assert!(
            expected.starts_with(&wire.sent),
            "the client read\n{:?}\nwhere the head and every frame, each once and in order, begin\n{:?}",
            String::from_utf8_lossy(&wire.sent),
            String::from_utf8_lossy(&expected[..wire.sent.len().min(expected.len())]),
        );
        let unread = wire.sent.len() - wire.read;
        let read = thread_rng().gen_range(1..=unread);
        wire.read += read;
        wire.room += read;
        let done = wire.read == expected.len();
        wire.client_closed = done;
        if std::mem::take(&mut wire.writer_waits) || done {
            drop(wire);
            socket.task.wake();
            if done {
                return;
            }
            wire = socket.wire.lock().unwrap();
        }
    }
}

/// One schedule: a subscriber registered after `REPLAYED` updates, then everything published.
fn handover() {
    let updates: Vec<Arc<Update>> = (1..=UPDATES)
        .map(|seq| {
            let draft = Draft { id: Some(format!("u{seq}")), ..Draft::new("/t", seq.to_string()) };
            Arc::new(Update::new(seq, 0, draft).unwrap())
        })
        .collect();
    let mut expected = HEAD.to_vec();
    updates.iter().for_each(|update| expected.extend_from_slice(update.frame()));

    let task = Arc::new(Task::default());
    let room = thread_rng().gen_range(1..=2 * updates[0].frame().len());
    let wire = Wire { room, ..Wire::default() };
    let socket = Arc::new(Socket {
        wire: Mutex::new(wire),
        readable: Condvar::new(),
        task: Arc::clone(&task),
    });
    let direct = Arc::new(Handover::new(Arc::clone(&socket) as Arc<dyn SocketWriter>));
    direct.set_live_after(REPLAYED);
    let queue = Arc::new(Queue::default());

    let fan_out = {
        let (updates, direct, queue) = (updates.clone(), Arc::clone(&direct), Arc::clone(&queue));
        thread::Builder::new()
            .name("fan-out".into())
            .spawn(move || fan_out(&updates, &direct, &queue, &task))
            .unwrap()
    };
    let writer = {
        let replay = updates[..REPLAYED as usize].iter().cloned().collect();
        let socket = Arc::clone(&socket);
        thread::Builder::new()
            .name("writer".into())
            .spawn(move || writer(Feed { replay, queue: &queue, direct: &direct }, &socket))
            .unwrap()
    };
    let client = thread::Builder::new()
        .name("client".into())
        .spawn(move || client(&expected, &socket))
        .unwrap();
    for thread in [fan_out, writer, client] {
        thread.join().unwrap();
    }
}

#[test]
fn under_random_schedules_every_frame_arrives_once_in_order_and_no_writer_sleeps_on() {
    shuttle::check_random(handover, 20_000);
}

/// PCT (probabilistic concurrency testing) favours the few well-placed thread switches that
/// most concurrency bugs need, where random schedules switch everywhere.
#[test]
fn under_pct_schedules_every_frame_arrives_once_in_order_and_no_writer_sleeps_on() {
    shuttle::check_pct(handover, 20_000, 3);
}
