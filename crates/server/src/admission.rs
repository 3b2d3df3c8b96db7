//! Who may use the gateway and how much: API keys and their limits ([`crate::keys`]),
//! per-client request budgets, and per-client subscription counts.
//!
//! Keys are compared by hash in constant time, so a client cannot learn a key byte by byte
//! from response times. The server-wide budget (`requests_per_minute`) is a token bucket
//! (`governor`), keyed by key name, or by client address when no keys are asked for; buckets
//! full again are evicted now and then, so a stream of new addresses cannot grow the table
//! without bound. A key's own limits are counted in the store instead, so that they hold
//! across nodes and restarts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode, header};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use sluice_hub::{Charged, KeyRecord, Store};

use crate::auth::{self, Verifier};
use crate::end_users;
use crate::error::ApiError;
use crate::keys::{Caller, Keys};

/// Open subscriptions per client address.
type Counts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Every this many checks, full buckets are evicted.
const EVICT_EVERY: u64 = 4096;

/// The gateway's gatekeeper: keys, budgets and subscription counts.
#[derive(Debug)]
pub(crate) struct Admission {
    keys: Keys,
    /// Verifies end-user tokens ([`crate::end_users`]), when they are accepted.
    end_users: Option<Verifier>,
    budget: Option<(u32, DefaultKeyedRateLimiter<String>)>,
    checks: AtomicU64,
    subscriptions_per_client: Option<usize>,
    subscriptions: Counts,
}

impl Admission {
    /// A gatekeeper for these keys and end-user tokens (neither, and no keys to be made at
    /// run time: open), `requests_per_minute` per key or address, and at most
    /// `subscriptions_per_client` open subscriptions per address.
    pub(crate) fn new(
        keys: Keys,
        end_users: Option<Verifier>,
        requests_per_minute: Option<u32>,
        subscriptions_per_client: Option<usize>,
    ) -> Self {
        let budget = requests_per_minute.map(|per_minute| {
            let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN));
            (per_minute, DefaultKeyedRateLimiter::keyed(quota))
        });
        Admission {
            keys,
            end_users,
            budget,
            checks: AtomicU64::new(0),
            subscriptions_per_client,
            subscriptions: Arc::default(),
        }
    }

    /// The keys known.
    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Checks the request's API key (when keys are asked for), takes one request from the
    /// server-wide budget, and, when `charged` (a request that starts an answer), charges the
    /// key in the store (its limits and budget). Reading or stopping an answer is not
    /// charged: a key at its limit can still stop what it started.
    pub(crate) async fn admit(
        &self,
        headers: &HeaderMap,
        client: IpAddr,
        store: &Arc<dyn Store>,
        charged: bool,
    ) -> Result<Caller, ApiError> {
        let now = sluice_hub::now_ms();
        let key = self.identify(headers, client, &**store, now).await?;
        self.take_from_budget(key.as_ref().map(|(key, _)| key), client)?;
        let Some((key, max_tokens)) = key else { return Ok(Caller::default()) };
        let caller = |key| Caller::new(key, Arc::clone(store), max_tokens);
        if !charged {
            return Ok(caller(key));
        }
        let charge = crate::keys::charge(&key, now);
        if charge.requests_per_minute.is_none()
            && charge.tokens_per_minute.is_none()
            && charge.token_budget.is_none()
            && !charge.revocable
        {
            // Nothing to decide (a key of the settings, or an end-user token, without limits):
            // the request is only counted, off the request's path, so that it costs no store
            // round trip.
            let label = crate::keys::label(&key);
            metrics::counter!("sluice_key_requests_total", "key" => label).increment(1);
            let ledger_store = Arc::clone(store);
            tokio::spawn(async move {
                if let Err(error) = ledger_store.ledger().charge(&charge).await {
                    tracing::warn!(%error, key = charge.key, "a request was not counted");
                }
            });
            return Ok(caller(key));
        }
        let charged = store.ledger().charge(&charge).await;
        match charged.map_err(crate::error::store_error)? {
            Charged::Admitted => {
                metrics::counter!("sluice_key_requests_total", "key" => crate::keys::label(&key))
                    .increment(1);
                Ok(caller(key))
            }
            Charged::Over(limit) => Err(crate::keys::over(&key, limit, now)),
            _ => Err(unknown_key(client)),
        }
    }

    /// Takes one request from the server-wide budget of `key`, or of `client` without one.
    fn take_from_budget(&self, key: Option<&KeyRecord>, client: IpAddr) -> Result<(), ApiError> {
        let Some((per_minute, limiter)) = &self.budget else { return Ok(()) };
        let key = key.map_or_else(|| client.to_string(), |k| k.id.clone());
        if self.checks.fetch_add(1, Ordering::Relaxed) % EVICT_EVERY == EVICT_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                format!("rate limit of {per_minute} requests per minute reached"),
            )
            .with_retry_after(wait.as_secs().max(1))
        })
    }

    /// The presented key's record, or the record of the subject of the presented end-user
    /// token with its most tokens per answer; `None` when neither is asked for.
    async fn identify(
        &self,
        headers: &HeaderMap,
        client: IpAddr,
        store: &dyn Store,
        now_ms: u64,
    ) -> Result<Option<(KeyRecord, Option<u32>)>, ApiError> {
        if !self.keys.required() && self.end_users.is_none() {
            return Ok(None);
        }
        // The cookie only when tokens are accepted: it holds nothing else.
        let cookie =
            || self.end_users.as_ref().and_then(|_| auth::cookie(headers, end_users::COOKIE));
        let Some(presented) = presented_key(headers).map(str::to_owned).or_else(cookie) else {
            metrics::counter!("sluice_auth_failures_total").increment(1);
            let what =
                if self.end_users.is_some() { "an API key or a token" } else { "an API key" };
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                format!("You didn't provide {what}."),
            ));
        };
        if let Some(verifier) = &self.end_users
            && end_users::is_jwt(&presented)
        {
            return end_users::verify(verifier, &presented).map(|grant| Some(grant.record()));
        }
        let found = self.keys.find(store, &crate::keys::hash(&presented), now_ms).await?;
        found.map(|key| Some((key, None))).ok_or_else(|| unknown_key(client))
    }

    /// Counts a subscription against its client's limit, or refuses it with 429.
    pub(crate) fn claim_subscription(&self, ip: IpAddr) -> Result<ClientSlot, ApiError> {
        let Some(limit) = self.subscriptions_per_client else {
            return Ok(ClientSlot { counts: None });
        };
        let mut counts = self.subscriptions.lock().unwrap();
        let count = counts.entry(ip).or_default();
        if *count >= limit {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_subscriptions",
                format!("at most {limit} subscriptions per client"),
            ));
        }
        *count += 1;
        Ok(ClientSlot { counts: Some((Arc::clone(&self.subscriptions), ip)) })
    }
}

/// The key a request presents: `Authorization: Bearer`, or Anthropic's `x-api-key`.
pub(crate) fn presented_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

fn unknown_key(client: IpAddr) -> ApiError {
    metrics::counter!("sluice_auth_failures_total").increment(1);
    tracing::info!(%client, "gateway request with an unknown API key");
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", "Incorrect API key provided.")
}

/// One of a client address's subscriptions; frees itself when dropped.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    counts: Option<(Counts, IpAddr)>,
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

#[cfg(test)]
mod tests {
    use sluice_hub::{Fanout, KeyLimits, MemoryStore};

    use super::*;
    use crate::keys::KeySpec;

    fn bearer(key: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
        headers
    }

    fn store() -> Arc<dyn Store> {
        Arc::new(MemoryStore::new(10, Fanout::new().listener()))
    }

    #[tokio::test]
    async fn a_budget_refuses_past_its_quota_and_says_how_long_to_wait() {
        let (admission, store) =
            (Admission::new(Keys::new(Vec::new(), false), None, Some(2), None), store());
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(admission.admit(&HeaderMap::new(), client, &store, true).await.is_ok());
        assert!(admission.admit(&HeaderMap::new(), client, &store, true).await.is_ok());
        let refused = admission.admit(&HeaderMap::new(), client, &store, true).await.unwrap_err();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let elsewhere = admission.admit(&HeaderMap::new(), other, &store, true).await;
        assert!(elsewhere.is_ok(), "budgets are per client");
    }

    #[tokio::test]
    async fn only_a_known_key_is_admitted_and_only_under_its_limits() {
        let mut keys = KeySpec::unlimited(&["sk-abc".into()]);
        let limits = KeyLimits { requests_per_minute: Some(1), ..KeyLimits::default() };
        let spec =
            KeySpec { name: "one".into(), key: Some("sk-one".into()), key_sha256: None, limits };
        keys.push(spec.record().unwrap());
        let (admission, store) =
            (Admission::new(Keys::new(keys, false), None, None, None), store());
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let status = |headers: HeaderMap| {
            let (admission, store) = (&admission, &store);
            async move { admission.admit(&headers, client, store, true).await.err().map(|e| e.status()) }
        };
        assert_eq!(status(bearer("sk-abc")).await, None);
        assert_eq!(status(bearer("sk-abc")).await, None, "a key of the flat list has no limit");
        assert_eq!(status(bearer("sk-abd")).await, Some(StatusCode::UNAUTHORIZED));
        assert_eq!(status(bearer("sk-ab")).await, Some(StatusCode::UNAUTHORIZED));
        assert_eq!(status(HeaderMap::new()).await, Some(StatusCode::UNAUTHORIZED));
        assert_eq!(status(bearer("sk-one")).await, None);
        assert_eq!(status(bearer("sk-one")).await, Some(StatusCode::TOO_MANY_REQUESTS));
    }
}
