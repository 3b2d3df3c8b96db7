//! What every request handler shares: the hub, the settings, the gatekeeper, the answers
//! running here, the active subscriptions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sluice_hub::Hub;

use crate::admission::Admission;
use crate::announcer::Announcer;
use crate::answers::Answers;
use crate::config::Config;

/// The state behind every route; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    hub: Hub,
    config: Config,
    active: Mutex<HashMap<String, ActiveSubscription>>,
    shutting_down: AtomicBool,
    admission: Admission,
    answers: Arc<Answers>,
    announcer: Arc<Announcer>,
}

/// A connected subscriber, as the subscription API shows it.
#[derive(Debug, Clone)]
pub(crate) struct ActiveSubscription {
    /// Its id, assigned by the hub (`urn:uuid:…`), one per connection.
    pub(crate) subscriber: String,
    /// The protocol version it subscribed in: the shape of its subscription events.
    pub(crate) protocol: crate::auth::Protocol,
    /// What it subscribed to, in order.
    pub(crate) matchers: Vec<ActiveMatcher>,
}

/// One matcher of a connected subscriber.
#[derive(Debug, Clone)]
pub(crate) struct ActiveMatcher {
    /// Its draft-08 type; `None` for a draft-07 topic selector.
    pub(crate) match_type: Option<crate::grants::MatchType>,
    /// Its text, as sent.
    pub(crate) text: String,
    /// The payload its token grants it (`null`: none), shown in its subscription events.
    pub(crate) payload: serde_json::Value,
}

impl AppState {
    /// The state for a hub and its settings.
    pub fn new(hub: Hub, config: Config) -> Self {
        let mut keys = crate::keys::KeySpec::unlimited(&config.api_keys);
        keys.extend(config.keys.iter().cloned());
        let keys = crate::keys::Keys::new(keys, config.admin_key.is_some());
        let admission = Admission::new(
            keys,
            config.end_users.clone(),
            config.requests_per_minute,
            config.max_subscriptions_per_client,
        );
        let answers = Arc::default();
        crate::answers::coordinate(&answers, &hub);
        AppState(Arc::new(Shared {
            hub,
            config,
            active: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            admission,
            answers,
            announcer: Arc::default(),
        }))
    }

    /// The hub.
    pub fn hub(&self) -> &Hub {
        &self.0.hub
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// The model used when a request names none: the first one configured.
    pub fn default_model(&self) -> Option<String> {
        self.0.config.models.models().into_iter().next().map(|(model, _)| model)
    }

    pub(crate) fn admission(&self) -> &Admission {
        &self.0.admission
    }

    /// The Durable Streams.
    pub fn streams(&self) -> &Arc<sluice_streams::Streams> {
        &self.0.config.streams
    }

    pub(crate) fn answers(&self) -> &Arc<Answers> {
        &self.0.answers
    }

    /// Where subscription events wait to be published.
    pub(crate) fn announcer(&self) -> &Arc<Announcer> {
        &self.0.announcer
    }

    /// Marks the server as stopping: `/readyz` fails, no more subscription events.
    pub fn begin_shutdown(&self) {
        self.0.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Whether the server is stopping.
    pub fn is_shutting_down(&self) -> bool {
        self.0.shutting_down.load(Ordering::Relaxed)
    }

    pub(crate) fn add_active(&self, active: ActiveSubscription) {
        self.0.active.lock().unwrap().insert(active.subscriber.clone(), active);
    }

    pub(crate) fn remove_active(&self, subscriber: &str) -> Option<ActiveSubscription> {
        self.0.active.lock().unwrap().remove(subscriber)
    }

    pub(crate) fn active_subscriptions(&self) -> Vec<ActiveSubscription> {
        self.0.active.lock().unwrap().values().cloned().collect()
    }
}
