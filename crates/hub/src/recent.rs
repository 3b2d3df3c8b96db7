//! The recent history in memory: the last committed updates, indexed by topic, so that a
//! subscriber resuming from a recent `Last-Event-ID` (the common case: a dropped connection, a
//! redeploy) is replayed without reading the store, and without looking at the updates it would
//! not receive.
//!
//! Why: replaying from the store costs every resuming subscriber a pass over *all* history after
//! its cursor. When 10,000 subscribers reconnect at once, that history holds the subscription
//! events of all the others (one when each left, one when each came back), so the storm cost
//! 10,000 × 20,000 updates read, cloned and matched: 14 s to reconnect everyone, against 1.3 s
//! without subscription events (BENCHMARKS.md, "Side by side with the peers"). Here a subscriber
//! whose selectors are all exact topics reads only the updates on those topics; any other is
//! matched against the recent updates in place, a bounded slice at a time.
//!
//! The window holds every committed update with `seq` in `(floor, last]`, in order, but the
//! subscription events ([`kept_out`]): it is fed by the store's
//! [`CommitListener`](crate::CommitListener) calls, in commit order, before the registry's
//! `committed` mark moves, so a subscriber's replay bound never passes what is here unless it
//! was evicted (then the store serves it, as before).
//!
//! Subscription events are kept out because they were most of it and almost nobody replays
//! them: each subscriber that comes or goes publishes one per selector, and a node sharing a
//! store (Redis) receives every node's. On a node of three with 5,000 subscribers each, the
//! window held 15,000 of them, about 4 KiB per subscriber of the node (`bench/scaleout.sh`).
//! A subscriber that could receive one (its selectors and its private grants both reach the
//! subscriptions' topics: a console watching every topic, say) replays from the store.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::filter::{Filter, SUBSCRIPTIONS_TOPIC_PREFIX};
use crate::update::{Update, allocation};

/// Updates kept at most, by default.
pub const DEFAULT_RECENT_UPDATES: usize = 65_536;
/// Bytes of heap the window holds at most, by default.
pub(crate) const DEFAULT_RECENT_BYTES: usize = 64 * 1024 * 1024;
/// Updates examined per call when a filter has to be matched against each one: bounds the
/// time the window's lock is held.
const SCAN_SLICE: usize = 4096;

/// The window of recent updates (see the module's documentation).
#[derive(Debug)]
pub(crate) struct Recent {
    max_updates: usize,
    max_bytes: usize,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// Every committed update with `seq` above this is in `updates`, but those kept out.
    floor: u64,
    /// The `seq` of the last update pushed, kept or kept out.
    pushed: u64,
    updates: VecDeque<Arc<Update>>,
    /// The same updates by topic, each list in `seq` order.
    by_topic: HashMap<String, VecDeque<Arc<Update>>>,
    /// The heap all this holds, as [`held_by`] and [`topic_entry`] count it.
    bytes: usize,
}

/// Whether `update` is kept out of the window: a private update on the subscriptions' topics
/// only (a subscription event), which no subscriber but one watching those topics receives.
fn kept_out(update: &Update) -> bool {
    update.private() && update.topics().iter().all(|t| t.starts_with(SUBSCRIPTIONS_TOPIC_PREFIX))
}

/// The heap one kept update costs the window: the update itself, and its place in the list of
/// all updates and in its topics' lists. What the bound counts, so that the window's setting
/// is what it really holds (counting the frames alone, it held 4.4 times its setting).
fn held_by(update: &Update) -> usize {
    update.heap_bytes() + size_of::<Arc<Update>>() * (1 + update.topics().len())
}

/// The heap a topic's entry in the index costs: its key, its list's header and its slot.
fn topic_entry(topic: &str) -> usize {
    allocation(topic.len()) + size_of::<(String, VecDeque<Arc<Update>>)>() + 1
}

/// A page read from the window: the updates the filter receives, and the `seq` up to which
/// the window was read (the next read starts after it).
pub(crate) struct Page {
    pub(crate) updates: Vec<Arc<Update>>,
    pub(crate) read_to: u64,
}

impl Recent {
    /// A window of at most `max_updates` updates holding at most `max_bytes` bytes of heap (0:
    /// none kept).
    pub(crate) fn new(max_updates: usize, max_bytes: usize) -> Self {
        Recent { max_updates, max_bytes, window: Mutex::default() }
    }

    /// Everything up to `seq` was committed before this process started: not here.
    pub(crate) fn starts_after(&self, seq: u64) {
        let mut window = self.window.lock().unwrap();
        if seq > window.last() {
            *window = Window { floor: seq, ..Window::default() };
        }
    }

    /// The store's history was reset at `seq`: nothing before it can be replayed any more.
    pub(crate) fn reset(&self, seq: u64) {
        *self.window.lock().unwrap() = Window { floor: seq, ..Window::default() };
    }

    /// Adds committed updates, in commit order; evicts the oldest past the bounds.
    pub(crate) fn push(&self, updates: &[Arc<Update>]) {
        let mut window = self.window.lock().unwrap();
        for update in updates {
            if update.seq() <= window.last() {
                continue;
            }
            window.pushed = update.seq();
            if kept_out(update) {
                continue;
            }
            window.bytes += held_by(update);
            for topic in update.topics() {
                // A topic already indexed is not copied again (`entry` would need it owned).
                match window.by_topic.get_mut(topic) {
                    Some(list) => list.push_back(Arc::clone(update)),
                    None => {
                        window.bytes += topic_entry(topic);
                        window.by_topic.insert(topic.clone(), VecDeque::from([Arc::clone(update)]));
                    }
                }
            }
            window.updates.push_back(Arc::clone(update));
            while window.updates.len() > self.max_updates || window.bytes > self.max_bytes {
                window.evict_oldest();
            }
        }
    }

    /// Up to `limit` updates with `seq` in `(after, until]` that `filter` receives, in order;
    /// `None` when the window does not hold all of `(after, until]` up to its last update
    /// (evicted, never seen, or kept out and maybe for this filter): then the store must be
    /// read.
    pub(crate) fn read(
        &self,
        after: u64,
        until: u64,
        filter: &Filter,
        limit: usize,
    ) -> Option<Page> {
        let window = self.window.lock().unwrap();
        let to = until.min(window.last());
        if after < window.floor
            || to <= after
            || filter.may_receive_under(SUBSCRIPTIONS_TOPIC_PREFIX)
        {
            return None;
        }
        let page = match filter.exact_topics() {
            Some(topics) => window.read_indexed(&topics, after, to, filter, limit),
            None => window.scan(after, to, filter, limit),
        };
        Some(page)
    }
}

impl Window {
    /// The `seq` of the last update pushed, or the floor when none was since.
    fn last(&self) -> u64 {
        self.pushed.max(self.floor)
    }

    fn evict_oldest(&mut self) {
        let Some(oldest) = self.updates.pop_front() else { return };
        self.floor = oldest.seq();
        self.bytes -= held_by(&oldest);
        for topic in oldest.topics() {
            if let Some(list) = self.by_topic.get_mut(topic) {
                list.pop_front();
                if list.is_empty() {
                    self.by_topic.remove(topic);
                    self.bytes -= topic_entry(topic);
                }
            }
        }
    }

    /// Through the topic index: only updates on the filter's topics are looked at, at most
    /// `limit` of each topic's.
    fn read_indexed(
        &self,
        topics: &[&str],
        after: u64,
        to: u64,
        filter: &Filter,
        limit: usize,
    ) -> Page {
        let mut found: Vec<Arc<Update>> = Vec::new();
        // Everything on the filter's topics up to `read_to` has been looked at.
        let mut read_to = to;
        for topic in topics {
            let Some(list) = self.by_topic.get(*topic) else { continue };
            let start = list.partition_point(|u| u.seq() <= after);
            let mut last_looked_at = after;
            for (looked_at, update) in list.range(start..).enumerate() {
                if update.seq() > to {
                    break;
                }
                if looked_at == limit {
                    read_to = read_to.min(last_looked_at);
                    break;
                }
                last_looked_at = update.seq();
                if filter.can_receive(update) {
                    found.push(Arc::clone(update));
                }
            }
        }
        found.retain(|u| u.seq() <= read_to);
        if topics.len() > 1 {
            // An update on several of the topics was found once per topic.
            found.sort_unstable_by_key(|u| u.seq());
            found.dedup_by_key(|u| u.seq());
        }
        if found.len() > limit {
            found.truncate(limit);
            read_to = found.last().map_or(read_to, |u| u.seq());
        }
        Page { updates: found, read_to }
    }

    /// Every update in `(after, to]`, matched in place, [`SCAN_SLICE`] at a time.
    fn scan(&self, after: u64, to: u64, filter: &Filter, limit: usize) -> Page {
        let start = self.updates.partition_point(|u| u.seq() <= after);
        let mut updates = Vec::new();
        let mut read_to = to;
        let mut last_looked_at = after;
        for (looked_at, update) in self.updates.range(start..).enumerate() {
            if update.seq() > to {
                break;
            }
            if looked_at == SCAN_SLICE || updates.len() == limit {
                read_to = last_looked_at;
                break;
            }
            last_looked_at = update.seq();
            if filter.can_receive(update) {
                updates.push(Arc::clone(update));
            }
        }
        Page { updates, read_to }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::Selector;
    use crate::update::Draft;

    fn update(seq: u64, topic: &str, private: bool) -> Arc<Update> {
        let draft = Draft { id: Some(format!("u{seq}")), private, ..Draft::new(topic, "d") };
        Arc::new(Update::new(seq, 0, draft).unwrap())
    }

    fn filter(selectors: &[&str], allowed_private: &[&str]) -> Filter {
        let parse = |texts: &[&str]| texts.iter().map(|t| Selector::parse(t).unwrap()).collect();
        Filter { selectors: parse(selectors), allowed_private: parse(allowed_private) }
    }

    #[test]
    fn subscription_events_are_passed_over_not_kept() {
        let recent = Recent::new(100, 1 << 20);
        let event = "/.well-known/mercure/subscriptions/%2Fa/urn%3Auuid%3A1";
        recent.push(&[update(1, "/a", false), update(2, event, true), update(3, "/a", true)]);
        recent.push(&[update(4, event, true)]);
        let window = recent.window.lock().unwrap();
        assert_eq!(window.updates.iter().map(|u| u.seq()).collect::<Vec<_>>(), [1, 3]);
        assert_eq!((window.last(), window.by_topic.len()), (4, 1), "seen, not kept");
        drop(window);
        // Whoever cannot receive them reads past them here (a selector or a grant that
        // does not reach them)...
        for (selectors, allowed) in [(&["*"], &["/a"]), (&["/a"], &["*"])] {
            let page = recent.read(0, 4, &filter(selectors, allowed), 10).unwrap();
            assert_eq!(page.updates.iter().map(|u| u.seq()).collect::<Vec<_>>(), [1, 3]);
            assert_eq!(page.read_to, 4);
        }
        // ...whoever might receive them is sent to the store.
        for (selectors, allowed) in [(&["*"][..], &["*"][..]), (&["/a", event], &[event])] {
            assert!(recent.read(0, 4, &filter(selectors, allowed), 10).is_none(), "{selectors:?}");
        }
    }
}
