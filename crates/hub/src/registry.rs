//! Who is subscribed to what, and the fan-out of committed updates to them.
//!
//! The store tells the fan-out of each commit in `seq` order through an [`Intake`], which only
//! queues the batch: matching updates against subscriptions runs on a thread of its own (the
//! dispatcher), never on the thread or task that commits and acknowledges writes, so no
//! subscription, however costly its selectors, can hold up a publisher's acknowledgement.
//! The one exception costs a lookup: a batch of an AI answer's events that no subscriber
//! reads is passed over where it is committed ([`Registry::pass_over_unread`]).
//!
//! The dispatcher hands each update to every subscriber allowed to see it by a non-blocking
//! send into that subscriber's bounded queue. A subscriber whose queue is full is cut off at
//! once: it leaves the registry and the connected count, its hang-up hook closes its
//! connection, and nothing more is sent to it (it resumes from its last event id). A slow
//! reader never slows the publisher or the other readers.
//!
//! Exact-topic selectors are indexed by topic, so a publish costs in proportion to the
//! subscribers it may reach, not to all subscribers; `*` and template selectors are checked
//! one by one.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::direct::{DirectWrite, Round};
use crate::filter::{Filter, RESERVED_TOPIC_PREFIX};
use crate::queue;
use crate::recent::Recent;
use crate::store::CommitListener;
use crate::update::Update;

/// Committed batches waiting for the dispatcher. When it falls this far behind, the store's
/// commit waits for it, which slows publishers instead of growing memory without bound.
const DISPATCH_BACKLOG: usize = 1024;

/// What the fan-out queues for a subscriber.
#[derive(Debug, Clone)]
pub(crate) enum Live {
    /// A committed update.
    Update(Arc<Update>),
    /// The store's history was reset at this `seq` ([`CommitListener::reset`]): what the
    /// subscriber was sent does not continue in the store.
    Reset(u64),
}

/// What the store hands the dispatcher, in commit order.
#[derive(Debug)]
enum Batch {
    Committed(Vec<Arc<Update>>),
    Reset(u64),
}

/// Why a subscriber's live feed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cutoff {
    /// Its queue was full: it read too slowly.
    Slow,
    /// The hub is shutting down.
    Shutdown,
}

/// Called once when the hub cuts a subscriber off as too slow, from the dispatcher: it must
/// not block.
/// The server uses it to close the subscriber's connection at once, even while a write to it
/// is stuck behind a full socket buffer.
#[derive(Clone)]
pub struct Hangup(Arc<dyn Fn() + Send + Sync>);

impl Hangup {
    /// A hook running `f`.
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> Self {
        Hangup(Arc::new(f))
    }
}

impl fmt::Debug for Hangup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hangup")
    }
}

/// One subscriber as the fan-out sees it. The registry holds the only strong references, so
/// removing a subscriber drops its sender and its subscription sees the end of its queue.
#[derive(Debug)]
pub(crate) struct Subscriber {
    pub(crate) key: u64,
    pub(crate) filter: Arc<Filter>,
    sender: queue::Sender<Live>,
    /// The last `seq` queued: an update matching through several topics is queued once.
    last_queued: AtomicU64,
    pub(crate) cutoff: Arc<OnceLock<Cutoff>>,
    hangup: Option<Hangup>,
    /// Its socket, when the fan-out may write to it itself.
    direct: Option<Arc<DirectWrite>>,
    /// Whether it still counts in `sluice_subscribers_connected`.
    counted: AtomicBool,
}

impl Subscriber {
    pub(crate) fn new(
        key: u64,
        filter: Arc<Filter>,
        sender: queue::Sender<Live>,
        cutoff: Arc<OnceLock<Cutoff>>,
        hangup: Option<Hangup>,
        direct: Option<Arc<DirectWrite>>,
    ) -> Self {
        Subscriber {
            key,
            filter,
            sender,
            last_queued: AtomicU64::new(0),
            cutoff,
            hangup,
            direct,
            counted: AtomicBool::new(false),
        }
    }

    /// Hands `update` over: written to its socket now in `write_now`'s round if it allows
    /// that, or queued. False if it could not be queued (full: too slow; closed: going away).
    fn deliver(&self, update: &Arc<Update>, write_now: Option<&mut Round>) -> bool {
        let queue = || self.sender.try_send(Live::Update(Arc::clone(update))).is_ok();
        match (&self.direct, write_now) {
            (Some(direct), Some(round)) => direct.deliver(update, round, queue),
            (Some(direct), None) => direct.queue(queue),
            (None, _) => queue(),
        }
    }

    /// Queues the news of a reset at `seq` (never written directly: it is not an update's
    /// frame). False if it could not be queued, as for [`Subscriber::deliver`].
    fn reset(&self, seq: u64) -> bool {
        let queue = || self.sender.try_send(Live::Reset(seq)).is_ok();
        match &self.direct {
            Some(direct) => direct.queue(queue),
            None => queue(),
        }
    }

    /// Stops counting it as connected; only the first call counts.
    pub(crate) fn leave(&self) {
        if self.counted.swap(false, Ordering::AcqRel) {
            metrics::gauge!("sluice_subscribers_connected").decrement(1.0);
        }
    }

    /// Cuts it off: its feed ends at its next read. A slow one is also hung up now (its
    /// writes are stuck); at shutdown the stream ends cleanly, so clients reconnect elsewhere.
    fn cut(&self, why: Cutoff) {
        let _ = self.cutoff.set(why);
        if let Some(direct) = &self.direct {
            direct.close();
        }
        self.leave();
        if why == Cutoff::Slow
            && let Some(hangup) = &self.hangup
        {
            (hangup.0)();
        }
    }
}

/// The subscribers, indexed for fan-out, and the recent updates, for replay.
#[derive(Debug)]
pub(crate) struct Registry {
    state: Mutex<State>,
    /// Fed before `committed` moves, so it holds everything up to it unless evicted.
    pub(crate) recent: Recent,
    /// The `seq` of the last update the store committed (and handed to the dispatcher, which
    /// may not have fanned it out yet); before any, the last the store held when it opened.
    committed: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// The `seq` and id of the last update fanned out (or passed over as unread), for the
    /// subscription API's `lastEventID`.
    last: Option<(u64, String)>,
    exact: HashMap<String, HashMap<u64, Arc<Subscriber>>>,
    others: HashMap<u64, Arc<Subscriber>>,
    count: usize,
    /// Set by [`Registry::shut_down`]: no subscriber is admitted after it.
    closed: bool,
}

impl State {
    fn remove(&mut self, subscriber: &Subscriber) {
        let mut removed = false;
        for selector in &subscriber.filter.selectors {
            match selector.exact() {
                Some(topic) => {
                    if let Some(subscribers) = self.exact.get_mut(topic) {
                        removed |= subscribers.remove(&subscriber.key).is_some();
                        if subscribers.is_empty() {
                            self.exact.remove(topic);
                        }
                    }
                }
                None => removed |= self.others.remove(&subscriber.key).is_some(),
            }
        }
        if removed {
            self.count -= 1;
        }
    }

    /// Queues `update` for every subscriber allowed to see it (or, with `write_now`, writes it
    /// to the idle ones' sockets); returns those found too slow.
    fn fan_out(
        &mut self,
        update: &Arc<Update>,
        mut write_now: Option<&mut Round>,
        cut: &mut Vec<Arc<Subscriber>>,
    ) {
        let seq = update.seq();
        self.saw(update);
        // Found through the exact index, a public update is wanted by construction: its
        // topic is one of the subscriber's selectors. Only the rest needs the full check.
        let exact = update.topics().iter().filter_map(|topic| self.exact.get(topic));
        let indexed = exact.flat_map(|s| s.values()).map(|s| (s, !update.private()));
        let scanned = self.others.values().map(|s| (s, false));
        for (subscriber, wanted) in indexed.chain(scanned) {
            if subscriber.last_queued.load(Ordering::Relaxed) == seq
                || !(wanted || subscriber.filter.can_receive(update))
            {
                continue;
            }
            subscriber.last_queued.store(seq, Ordering::Relaxed);
            if !subscriber.deliver(update, write_now.as_deref_mut()) {
                // Full: too slow. Closed: its connection is going away. Either way, out.
                cut.push(Arc::clone(subscriber));
            }
        }
    }
}

impl State {
    /// Notes `update` as the last one out, unless a later one is (one passed over by its
    /// committer can go out before the batches the dispatcher has yet to take).
    fn saw(&mut self, update: &Update) {
        if self.last.as_ref().is_none_or(|(seq, _)| *seq < update.seq()) {
            self.last = Some((update.seq(), update.id().to_owned()));
        }
    }

    /// Every subscriber, once each.
    fn all(&self) -> Vec<Arc<Subscriber>> {
        let mut all: HashMap<u64, Arc<Subscriber>> = self.others.clone();
        for subscribers in self.exact.values() {
            all.extend(subscribers.iter().map(|(key, s)| (*key, Arc::clone(s))));
        }
        all.into_values().collect()
    }
}

impl Registry {
    fn new(recent: Recent) -> Self {
        Registry { state: Mutex::default(), recent, committed: AtomicU64::new(0) }
    }

    /// Adds a subscriber and returns the `seq` after which its live feed starts: everything up
    /// to and including it is committed, so it comes from the store's history, and the live
    /// feed skips it (the dispatcher may still hand it over). `None` once shut down: a
    /// subscriber admitted then would never be ended, and would hold the server open.
    ///
    /// Why this leaves no gap: [`Intake::committed`] raises `committed` before it queues the
    /// batch, and this reads it under the lock the dispatcher fans out under. An update whose
    /// seq is above the value read was not queued yet, so the dispatcher, which now sees this
    /// subscriber, will hand it over live.
    pub(crate) fn register(&self, subscriber: &Arc<Subscriber>) -> Option<u64> {
        let mut state = self.state.lock().unwrap();
        if state.closed {
            return None;
        }
        for selector in &subscriber.filter.selectors {
            match selector.exact() {
                Some(topic) => {
                    state
                        .exact
                        .entry(topic.to_owned())
                        .or_default()
                        .insert(subscriber.key, Arc::clone(subscriber));
                }
                None => {
                    state.others.insert(subscriber.key, Arc::clone(subscriber));
                }
            }
        }
        state.count += 1;
        subscriber.counted.store(true, Ordering::Release);
        metrics::gauge!("sluice_subscribers_connected").increment(1.0);
        Some(self.committed.load(Ordering::SeqCst))
    }

    /// Whether `updates` were passed over here rather than handed to the dispatcher, because
    /// nobody reads them now: each is on reserved topics only (an AI answer's events, which
    /// only an exact selector receives), and none of those topics has a subscriber. That is
    /// every event of an answer read by the request that started it, which its pump hands
    /// over itself; waking the dispatcher for each cost the gateway about a sixth of its CPU
    /// (`perf record -g`: the channel's futex waits and wake-ups). No gap follows: `committed`
    /// was raised first, so a subscriber registering from now on replays them.
    ///
    /// Only when the registry's lock is free: a committer never waits on a fan-out round.
    fn pass_over_unread(&self, updates: &[Arc<Update>]) -> bool {
        let reserved = |update: &Arc<Update>| {
            update.topics().iter().all(|topic| topic.starts_with(RESERVED_TOPIC_PREFIX))
        };
        if !updates.iter().all(reserved) {
            return false;
        }
        let Ok(mut state) = self.state.try_lock() else { return false };
        if updates.iter().flat_map(|u| u.topics()).any(|topic| state.exact.contains_key(topic)) {
            return false;
        }
        if let Some(last) = updates.last() {
            state.saw(last);
        }
        drop(state);
        metrics::counter!("sluice_updates_published_total").increment(updates.len() as u64);
        true
    }

    /// Removes a subscriber (its connection ended).
    pub(crate) fn unregister(&self, subscriber: &Subscriber) {
        self.state.lock().unwrap().remove(subscriber);
        subscriber.leave();
    }

    /// The id of the last update fanned out since this process started, if any.
    pub(crate) fn last_id(&self) -> Option<String> {
        self.state.lock().unwrap().last.as_ref().map(|(_, id)| id.clone())
    }

    /// How many subscribers are registered.
    pub(crate) fn len(&self) -> usize {
        self.state.lock().unwrap().count
    }

    /// Ends every live feed (hub shutdown).
    pub(crate) fn shut_down(&self) {
        let mut state = self.state.lock().unwrap();
        state.closed = true;
        for subscriber in state.all() {
            state.remove(&subscriber);
            subscriber.cut(Cutoff::Shutdown);
        }
    }

    /// Fans out the batches the dispatcher takes from `batches`, until every [`Intake`] is gone.
    fn dispatch(&self, batches: &Receiver<Batch>) {
        let mut cut = Vec::new();
        // How long the last round took, and the last that wrote to sockets itself.
        let (mut last_round, mut last_direct_round) = (Duration::ZERO, Duration::ZERO);
        loop {
            let waiting_since = Instant::now();
            // `None`: the next batch was there already, so this thread is behind.
            let (first, waited) = match batches.try_recv() {
                Ok(batch) => (batch, None),
                Err(TryRecvError::Empty) => match batches.recv() {
                    Ok(batch) => (batch, Some(waiting_since.elapsed())),
                    Err(_) => return,
                },
                Err(TryRecvError::Disconnected) => return,
            };
            // Looked up per batch, not once at start: the thread may start before the
            // process installs its metrics recorder.
            let published = metrics::counter!("sluice_updates_published_total");
            let slow = metrics::counter!("sluice_slow_consumer_disconnects_total");
            // Whatever else is waiting goes out under the same lock.
            let mut waiting = vec![first];
            waiting.extend(batches.try_iter().take(DISPATCH_BACKLOG));
            let alone =
                matches!(waiting.as_slice(), [Batch::Committed(updates)] if updates.len() == 1);
            // Writing to sockets from this one thread costs a system call per delivery: worth
            // it while updates come further apart than such a round takes (this thread had to
            // wait for this one, and it came alone). Otherwise the updates are queued, and
            // each subscriber's task writes its backlog in one `writev`.
            let spare = waited.is_some_and(|waited| waited + last_round >= last_direct_round);
            let round = Instant::now();
            let mut write_now = (spare && alone).then(|| Round::new(round));
            let mut state = self.state.lock().unwrap();
            for batch in &waiting {
                match batch {
                    Batch::Committed(updates) => {
                        for update in updates {
                            state.fan_out(update, write_now.as_mut(), &mut cut);
                            published.increment(1);
                        }
                    }
                    Batch::Reset(seq) => {
                        cut.extend(state.all().into_iter().filter(|s| !s.reset(*seq)));
                    }
                }
            }
            for subscriber in cut.drain(..) {
                state.remove(&subscriber);
                subscriber.cut(Cutoff::Slow);
                slow.increment(1);
            }
            drop(state);
            last_round = round.elapsed();
            if let Some(written) = write_now {
                written.count();
                last_direct_round = last_round;
            } else if waited.is_some() {
                // One slow round must not rule writing out for good at a rate that allows
                // it: the estimate shrinks each time this thread waited but did not write.
                last_direct_round = last_direct_round * 9 / 10;
            }
        }
    }
}

/// The store's side of the fan-out: a [`CommitListener`] that queues each committed batch for
/// the dispatcher thread.
#[derive(Debug)]
pub(crate) struct Intake {
    registry: Arc<Registry>,
    batches: SyncSender<Batch>,
}

impl Intake {
    /// A registry and its intake, with the dispatcher thread started. The thread ends once
    /// the intake (held by the store and the hub) is dropped.
    pub(crate) fn start(recent: Recent) -> Arc<Intake> {
        let registry = Arc::new(Registry::new(recent));
        let (batches, receiver) = sync_channel(DISPATCH_BACKLOG);
        let dispatcher = Arc::clone(&registry);
        std::thread::Builder::new()
            .name("sluice-fanout".to_owned())
            .spawn(move || dispatcher.dispatch(&receiver))
            .expect("the fan-out thread starts");
        Arc::new(Intake { registry, batches })
    }

    /// The registry this intake feeds.
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

impl CommitListener for Intake {
    fn starts_after(&self, seq: u64) {
        self.registry.recent.starts_after(seq);
        self.registry.committed.fetch_max(seq, Ordering::SeqCst);
    }

    fn committed(&self, updates: &[Arc<Update>]) {
        self.registry.recent.push(updates);
        if let Some(last) = updates.last() {
            self.registry.committed.fetch_max(last.seq(), Ordering::SeqCst);
        }
        if self.registry.pass_over_unread(updates) {
            return;
        }
        // Fails only when the dispatcher is gone, which happens with the intake itself.
        let _ = self.batches.send(Batch::Committed(updates.to_vec()));
    }

    /// Nothing from before `seq` can be replayed from the window any more, and every
    /// subscriber registered before the reset is told, in order with the updates around it.
    fn reset(&self, seq: u64) {
        self.registry.recent.reset(seq);
        self.registry.committed.fetch_max(seq, Ordering::SeqCst);
        let _ = self.batches.send(Batch::Reset(seq));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::Selector;
    use crate::update::Draft;

    fn update(seq: u64, topic: &str) -> Arc<Update> {
        let draft = Draft { id: Some(format!("u{seq}")), private: true, ..Draft::new(topic, "d") };
        Arc::new(Update::new(seq, 0, draft).unwrap())
    }

    #[test]
    fn an_answers_events_nobody_reads_are_passed_over_where_committed() {
        let (batches, dispatcher) = sync_channel(8);
        let intake = Intake { registry: Arc::new(Registry::new(Recent::new(0, 0))), batches };
        let answer = "/.well-known/sluice/generations/a";
        let handed_over = |dispatcher: &Receiver<Batch>| match dispatcher.try_recv() {
            Ok(Batch::Committed(updates)) => updates.iter().map(|u| u.seq()).collect(),
            _ => Vec::new(),
        };
        intake.committed(&[update(1, answer)]);
        assert_eq!(handed_over(&dispatcher), Vec::<u64>::new(), "nobody reads it");
        assert_eq!(intake.registry.last_id().as_deref(), Some("u1"));
        assert_eq!(
            intake.registry.committed.load(Ordering::SeqCst),
            1,
            "a later reader replays it"
        );
        intake.committed(&[update(2, "/not/reserved")]);
        assert_eq!(handed_over(&dispatcher), [2], "any other topic goes to the dispatcher");
        // A reader of the answer's topic: its events go to the dispatcher, for it.
        let selector = Selector::parse(answer).unwrap();
        let filter = Filter { selectors: vec![selector.clone()], allowed_private: vec![selector] };
        let (sender, _receiver) = queue::queue(8);
        let reader =
            Arc::new(Subscriber::new(1, Arc::new(filter), sender, Arc::default(), None, None));
        assert_eq!(intake.registry.register(&reader), Some(2));
        intake.committed(&[update(3, answer)]);
        assert_eq!(handed_over(&dispatcher), [3]);
    }
}
