//! Who is subscribed to what, and the fan-out of committed updates to them.
//!
//! The registry is the store's [`CommitListener`]: the store tells it of each commit in `seq`
//! order, under the registry's lock, and it hands the update to every subscriber allowed to
//! see it by a non-blocking send into that subscriber's bounded queue. A subscriber whose
//! queue is full is cut off (it resumes from its last event id), so a slow reader never slows
//! the publisher or the other readers.
//!
//! Exact-topic selectors are indexed by topic, so a publish costs in proportion to the
//! subscribers it may reach, not to all subscribers; `*` and template selectors are checked
//! one by one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;

use crate::selector::Selector;
use crate::store::CommitListener;
use crate::update::Update;

/// Topics under this prefix are reserved for the hub's own streams (AI answers): `*` and
/// template selectors never match them; only an exact selector does.
pub const RESERVED_TOPIC_PREFIX: &str = "/.well-known/sluice/";

/// Why a subscriber's live feed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cutoff {
    /// Its queue was full: it read too slowly.
    Slow,
    /// The hub is shutting down.
    Shutdown,
}

/// What a subscriber receives: shared by its registry entry (for live fan-out) and its
/// subscription (for filtering the replay from history).
#[derive(Debug)]
pub(crate) struct Filter {
    pub(crate) selectors: Vec<Selector>,
    /// Selectors of the topics whose private updates it may receive (`mercure.subscribe`).
    pub(crate) allowed_private: Vec<Selector>,
}

impl Filter {
    /// Whether `update` goes to this subscriber: one of its topics matches a selector, and, if
    /// it is private, one of its topics matches an allowed selector.
    pub(crate) fn can_receive(&self, update: &Update) -> bool {
        let topics = update.topics();
        let wanted = self.selectors.iter().any(|s| topics.iter().any(|t| selects(s, t)));
        wanted
            && (!update.private()
                || self.allowed_private.iter().any(|s| topics.iter().any(|t| selects(s, t))))
    }
}

/// One subscriber as the fan-out sees it. The registry holds the only strong references, so
/// removing a subscriber drops its sender and its subscription sees the end of its queue.
#[derive(Debug)]
pub(crate) struct Subscriber {
    pub(crate) key: u64,
    pub(crate) filter: Arc<Filter>,
    sender: mpsc::Sender<Arc<Update>>,
    /// The last `seq` queued: an update matching through several topics is queued once.
    last_queued: AtomicU64,
    pub(crate) cutoff: Arc<OnceLock<Cutoff>>,
}

impl Subscriber {
    pub(crate) fn new(
        key: u64,
        filter: Arc<Filter>,
        sender: mpsc::Sender<Arc<Update>>,
        cutoff: Arc<OnceLock<Cutoff>>,
    ) -> Self {
        Subscriber { key, filter, sender, last_queued: AtomicU64::new(0), cutoff }
    }
}

/// Selector matching with the reserved-topic rule.
fn selects(selector: &Selector, topic: &str) -> bool {
    if selector.exact() == Some(topic) {
        return true;
    }
    !topic.starts_with(RESERVED_TOPIC_PREFIX) && selector.matches(topic)
}

/// The subscribers, indexed for fan-out.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The `seq` of the last update fanned out: live delivery to a new subscriber starts after.
    last_seq: u64,
    /// The last update fanned out, for the subscription API's `lastEventID`.
    last: Option<Arc<Update>>,
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
}

impl Registry {
    /// Adds a subscriber and returns the `seq` after which its live feed starts: everything up
    /// to and including it must come from the store's history. `None` once shut down: a
    /// subscriber admitted then would never be ended, and would hold the server open.
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
        Some(state.last_seq)
    }

    /// Removes a subscriber (its connection ended).
    pub(crate) fn unregister(&self, subscriber: &Subscriber) {
        self.state.lock().unwrap().remove(subscriber);
    }

    /// The id of the last update fanned out since this process started, if any.
    pub(crate) fn last_id(&self) -> Option<String> {
        self.state.lock().unwrap().last.as_ref().map(|u| u.id().to_owned())
    }

    /// How many subscribers are registered.
    pub(crate) fn len(&self) -> usize {
        self.state.lock().unwrap().count
    }

    /// Ends every live feed (hub shutdown).
    pub(crate) fn shut_down(&self) {
        let mut state = self.state.lock().unwrap();
        state.closed = true;
        let all: Vec<Arc<Subscriber>> = state
            .exact
            .values()
            .flat_map(|subscribers| subscribers.values())
            .chain(state.others.values())
            .cloned()
            .collect();
        for subscriber in all {
            let _ = subscriber.cutoff.set(Cutoff::Shutdown);
            state.remove(&subscriber);
        }
    }
}

impl CommitListener for Registry {
    fn committed(&self, updates: &[Arc<Update>]) {
        let mut state = self.state.lock().unwrap();
        let mut cut = Vec::new();
        for update in updates {
            state.last_seq = update.seq();
            state.last = Some(Arc::clone(update));
            let seq = update.seq();
            // Found through the exact index, a public update is wanted by construction: its
            // topic is one of the subscriber's selectors. Only the rest needs the full check.
            let exact = update.topics().iter().filter_map(|topic| state.exact.get(topic));
            let indexed = exact.flat_map(|s| s.values()).map(|s| (s, !update.private()));
            let scanned = state.others.values().map(|s| (s, false));
            for (subscriber, wanted) in indexed.chain(scanned) {
                if subscriber.last_queued.load(Ordering::Relaxed) == seq
                    || !(wanted || subscriber.filter.can_receive(update))
                {
                    continue;
                }
                subscriber.last_queued.store(seq, Ordering::Relaxed);
                if subscriber.sender.try_send(Arc::clone(update)).is_err() {
                    // Full: too slow. Closed: its connection is going away. Either way, out.
                    let _ = subscriber.cutoff.set(Cutoff::Slow);
                    cut.push(Arc::clone(subscriber));
                }
            }
            metrics::counter!("sluice_updates_published_total").increment(1);
        }
        for subscriber in cut {
            state.remove(&subscriber);
            metrics::counter!("sluice_slow_consumer_disconnects_total").increment(1);
        }
    }
}
