//! What every request handler shares: the hub, the settings, the active subscriptions.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sluice_hub::Hub;

use crate::config::Config;
use crate::error::ApiError;
use crate::generations::Generations;
use crate::openai::RateLimiter;

/// The state behind every route; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

/// Open subscriptions per client address.
type ClientCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

#[derive(Debug)]
struct Shared {
    hub: Hub,
    config: Config,
    active: Mutex<HashMap<String, ActiveSubscription>>,
    per_client: ClientCounts,
    shutting_down: AtomicBool,
    rate_limiter: RateLimiter,
    generations: Generations,
}

/// A connected subscriber, as the subscription API shows it.
#[derive(Debug, Clone)]
pub(crate) struct ActiveSubscription {
    pub(crate) subscriber: String,
    pub(crate) topics: Vec<String>,
    pub(crate) payload: Option<serde_json::Value>,
}

/// One of a client address's subscriptions; frees itself when dropped.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    counts: Option<(ClientCounts, IpAddr)>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Some((counts, ip)) = &self.counts {
            let mut counts = counts.lock().unwrap();
            if let Some(n) = counts.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(ip);
                }
            }
        }
    }
}

impl AppState {
    /// The state for a hub and its settings.
    pub fn new(hub: Hub, config: Config) -> Self {
        AppState(Arc::new(Shared {
            hub,
            config,
            active: Mutex::new(HashMap::new()),
            per_client: Arc::new(Mutex::new(HashMap::new())),
            shutting_down: AtomicBool::new(false),
            rate_limiter: RateLimiter::default(),
            generations: Generations::default(),
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

    pub(crate) fn rate_limiter(&self) -> &RateLimiter {
        &self.0.rate_limiter
    }

    pub(crate) fn generations(&self) -> &Generations {
        &self.0.generations
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

    /// Counts a subscription against its client's limit, or refuses it with 429.
    pub(crate) fn claim_client_slot(&self, ip: IpAddr) -> Result<ClientSlot, ApiError> {
        let Some(limit) = self.0.config.max_subscriptions_per_client else {
            return Ok(ClientSlot { counts: None });
        };
        let mut counts = self.0.per_client.lock().unwrap();
        let count = counts.entry(ip).or_default();
        if *count >= limit {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too_many_subscriptions",
                format!("at most {limit} subscriptions per client"),
            ));
        }
        *count += 1;
        Ok(ClientSlot { counts: Some((Arc::clone(&self.0.per_client), ip)) })
    }
}
