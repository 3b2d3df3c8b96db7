//! What a subscriber receives: its selectors, the private topics it may see, and the rule that
//! keeps the hub's reserved topics from `*` and templates. Shared by the registry (live fan-out)
//! and the window of recent updates (replay), which both match updates against it.

use crate::selector::Selector;
use crate::update::Update;

/// Topics under this prefix are reserved for the hub's own streams (AI answers): `*` and
/// template selectors never match them; only an exact selector does.
pub const RESERVED_TOPIC_PREFIX: &str = "/.well-known/sluice/";

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

/// Selector matching with the reserved-topic rule.
fn selects(selector: &Selector, topic: &str) -> bool {
    if selector.exact() == Some(topic) {
        return true;
    }
    !topic.starts_with(RESERVED_TOPIC_PREFIX) && selector.matches(topic)
}
