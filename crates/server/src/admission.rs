//! Who may use the gateway and how much: API keys, per-client request budgets, and
//! per-client subscription counts.
//!
//! Keys are compared in constant time (`subtle`), so a client cannot learn a key byte by byte
//! from response times. Budgets are token buckets (`governor`), keyed by API key, or by
//! client address when no keys are configured; buckets full again are evicted now and then,
//! so a stream of new addresses cannot grow the table without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode, header};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// Open subscriptions per client address.
type Counts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Every this many checks, full buckets are evicted.
const EVICT_EVERY: u64 = 4096;

/// The gateway's gatekeeper: keys, budgets and subscription counts.
#[derive(Debug)]
pub(crate) struct Admission {
    keys: Vec<String>,
    budget: Option<(u32, DefaultKeyedRateLimiter<String>)>,
    checks: AtomicU64,
    subscriptions_per_client: Option<usize>,
    subscriptions: Counts,
}

impl Admission {
    /// A gatekeeper for these keys (none: open), `requests_per_minute` per key or address,
    /// and at most `subscriptions_per_client` open subscriptions per address.
    pub(crate) fn new(
        keys: Vec<String>,
        requests_per_minute: Option<u32>,
        subscriptions_per_client: Option<usize>,
    ) -> Self {
        let budget = requests_per_minute.map(|per_minute| {
            let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN));
            (per_minute, DefaultKeyedRateLimiter::keyed(quota))
        });
        Admission {
            keys,
            budget,
            checks: AtomicU64::new(0),
            subscriptions_per_client,
            subscriptions: Arc::default(),
        }
    }

    /// Checks the request's API key (when keys are configured) and takes one request from
    /// its budget.
    pub(crate) fn admit(&self, headers: &HeaderMap, client: IpAddr) -> Result<(), ApiError> {
        let key = self.identify(headers, client)?;
        let Some((per_minute, limiter)) = &self.budget else { return Ok(()) };
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

    /// The budget's key: the presented API key, or the client's address when there are none.
    fn identify(&self, headers: &HeaderMap, client: IpAddr) -> Result<String, ApiError> {
        if self.keys.is_empty() {
            return Ok(client.to_string());
        }
        // `Authorization: Bearer`, or Anthropic's `x-api-key`.
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
            .map(str::trim);
        let Some(presented) = presented else {
            metrics::counter!("sluice_auth_failures_total").increment(1);
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "You didn't provide an API key.",
            ));
        };
        // Every key is compared, so the time taken does not say which one nearly matched.
        let known = self.keys.iter().fold(subtle::Choice::from(0), |found, key| {
            found | key.as_bytes().ct_eq(presented.as_bytes())
        });
        if bool::from(known) {
            return Ok(presented.to_owned());
        }
        metrics::counter!("sluice_auth_failures_total").increment(1);
        tracing::info!(%client, "gateway request with an unknown API key");
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "Incorrect API key provided.",
        ))
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
    use super::*;

    fn bearer(key: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
        headers
    }

    #[test]
    fn a_budget_refuses_past_its_quota_and_says_how_long_to_wait() {
        let admission = Admission::new(Vec::new(), Some(2), None);
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(admission.admit(&HeaderMap::new(), client).is_ok());
        assert!(admission.admit(&HeaderMap::new(), client).is_ok());
        let refused = admission.admit(&HeaderMap::new(), client).unwrap_err();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(admission.admit(&HeaderMap::new(), other).is_ok(), "budgets are per client");
    }

    #[test]
    fn only_a_configured_key_is_admitted() {
        let admission = Admission::new(vec!["sk-abc".into()], None, None);
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(admission.admit(&bearer("sk-abc"), client).is_ok());
        assert_eq!(admission.admit(&bearer("sk-abd"), client).unwrap_err().status(), 401);
        assert_eq!(admission.admit(&bearer("sk-ab"), client).unwrap_err().status(), 401);
        assert_eq!(admission.admit(&HeaderMap::new(), client).unwrap_err().status(), 401);
    }
}
