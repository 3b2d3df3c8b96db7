//! What a subscriber receives: its selectors, the private topics it may see, and the rule that
//! keeps the hub's reserved topics from `*` and templates. Shared by the registry (live fan-out)
//! and the window of recent updates (replay), which both match updates against it.

use crate::selector::Selector;
use crate::update::Update;

/// Topics under this prefix are reserved for the hub's own streams (AI answers): `*` and
/// template selectors never match them; only an exact selector does.
pub const RESERVED_TOPIC_PREFIX: &str = "/.well-known/sluice/";

/// Topics under this prefix are Mercure's subscription events (`/.well-known/mercure/
/// subscriptions/{topic}/{subscriber}`, and draft-08's with a match type): the window of
/// recent updates does not keep them.
pub const SUBSCRIPTIONS_TOPIC_PREFIX: &str = "/.well-known/mercure/subscriptions/";

/// What a subscriber receives: shared by its registry entry (for live fan-out) and its
/// subscription (for filtering the replay from history).
#[derive(Debug)]
pub(crate) struct Filter {
    pub(crate) selectors: Vec<Selector>,
    /// Selectors of the topics whose private updates it may receive (`mercure.subscribe`).
    pub(crate) allowed_private: Vec<Selector>,
}

impl Filter {
    /// Its topics, when every selector is an exact topic (then an update it receives has one
    /// of them, so an index by topic finds all it receives).
    pub(crate) fn exact_topics(&self) -> Option<Vec<&str>> {
        self.selectors.iter().map(Selector::exact).collect()
    }

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

impl Filter {
    /// Whether this subscriber might receive a private update on a topic under `prefix`: both
    /// a selector and a private grant might match such a topic (an exact one starts with the
    /// prefix; any other might match anything).
    pub(crate) fn may_receive_under(&self, prefix: &str) -> bool {
        let reaches = |selectors: &[Selector]| {
            selectors.iter().any(|s| s.exact().is_none_or(|topic| topic.starts_with(prefix)))
        };
        reaches(&self.selectors) && reaches(&self.allowed_private)
    }
}

/// Selector matching with the reserved-topic rule.
fn selects(selector: &Selector, topic: &str) -> bool {
    if selector.exact() == Some(topic) {
        return true;
    }
    !topic.starts_with(RESERVED_TOPIC_PREFIX) && selector.matches(topic)
}
