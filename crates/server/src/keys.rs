//! API keys as records: who is calling the gateway ([`Caller`]), which models it may use, and
//! what its answers spend.
//!
//! A key comes from `sluice.toml` (`[[keys]]`, and the older flat `api_keys`, which are keys
//! without limits) or from the admin API, which keeps it in the store's
//! [`Ledger`](sluice_hub::Ledger) so that every node sharing the store knows it. Either way
//! only its SHA-256 is kept: the presented key is hashed and compared with every known hash
//! in constant time. Each admitted request is charged to its key in the ledger (one atomic
//! step, so that limits hold across nodes); each answer's tokens are spent there when it
//! ends or is stopped ([`Caller::meter`]).

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_hub::{BudgetPeriod, Charge, KeyLimits, KeyRecord, Limit, Spend, Store};
use sluice_llm::{AnswerRecord, ChatRequest, DeltaStream, Observer, Watch};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// A key as `sluice.toml` writes it (`[[keys]]`): its name, the key itself or its SHA-256,
/// and its limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySpec {
    /// Its name, in usage and metrics.
    pub name: String,
    /// The key, as clients send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Or its SHA-256 in hex, so that the settings file holds no key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    /// What it may do.
    #[serde(flatten)]
    pub limits: KeyLimits,
}

impl KeySpec {
    /// The record it stands for, or why it is not a valid key.
    pub fn record(&self) -> Result<KeyRecord, String> {
        if self.name.trim().is_empty() {
            return Err("a key needs a name".to_owned());
        }
        let hash = match (&self.key, &self.key_sha256) {
            (Some(key), None) if !key.is_empty() => hash(key),
            (None, Some(hex)) => sluice_hub::store::ledger::parse_hash(hex)
                .ok_or_else(|| format!("key {}: key_sha256 is not 64 hex digits", self.name))?,
            _ => return Err(format!("key {}: give exactly one of key and key_sha256", self.name)),
        };
        Ok(configured(&self.name, hash, self.limits.clone()))
    }

    /// The records of `specs`, or why one is not a valid key (two with one name included:
    /// usage is counted by name).
    pub fn records(specs: &[KeySpec]) -> Result<Vec<KeyRecord>, String> {
        let mut names = std::collections::HashSet::new();
        let mut unique = |spec: &KeySpec| {
            names
                .insert(spec.name.clone())
                .then_some(())
                .ok_or_else(|| format!("two keys are named {}", spec.name))
        };
        specs.iter().map(|spec| unique(spec).and_then(|()| spec.record())).collect()
    }

    /// The older flat list's keys (`api_keys`), as records without limits named `api_keys[i]`.
    pub fn unlimited(keys: &[String]) -> Vec<KeyRecord> {
        let named = keys.iter().enumerate();
        named
            .map(|(i, key)| configured(&format!("api_keys[{i}]"), hash(key), KeyLimits::default()))
            .collect()
    }
}

fn configured(name: &str, hash: [u8; 32], limits: KeyLimits) -> KeyRecord {
    KeyRecord {
        id: format!("config:{name}"),
        name: name.to_owned(),
        hash,
        prefix: String::new(),
        limits,
        created_ms: 0,
        expires_ms: None,
        revoked_ms: None,
    }
}

/// SHA-256 of a key.
pub(crate) fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Every key the gateway knows: those of the settings, and those of the store, cached.
#[derive(Debug)]
pub(crate) struct Keys {
    configured: Vec<KeyRecord>,
    /// Whether keys may be made at run time (an admin key is set): then a key is asked for
    /// even while none exists yet.
    at_run_time: bool,
    /// The store's keys as last read; read again when a presented key is not among them, so
    /// that a key made on another node works here at once.
    stored: Mutex<Arc<Vec<KeyRecord>>>,
}

impl Keys {
    pub(crate) fn new(configured: Vec<KeyRecord>, at_run_time: bool) -> Self {
        Keys { configured, at_run_time, stored: Mutex::default() }
    }

    /// Whether callers must present a key.
    pub(crate) fn required(&self) -> bool {
        self.at_run_time || !self.configured.is_empty()
    }

    /// The keys of the settings.
    pub(crate) fn configured(&self) -> &[KeyRecord] {
        &self.configured
    }

    /// The key whose hash is `hash`, if one is live at `now_ms`.
    pub(crate) async fn find(
        &self,
        store: &dyn Store,
        hash: &[u8; 32],
        now_ms: u64,
    ) -> Result<Option<KeyRecord>, ApiError> {
        let cached = Arc::clone(&self.stored.lock().unwrap());
        if let Some(found) = self.matching(&cached, hash, now_ms) {
            return Ok(Some(found));
        }
        if !self.at_run_time {
            return Ok(None);
        }
        let fresh = Arc::new(store.ledger().keys().await.map_err(crate::error::store_error)?);
        *self.stored.lock().unwrap() = Arc::clone(&fresh);
        Ok(self.matching(&fresh, hash, now_ms))
    }

    /// Compares `hash` with every live key's, each in constant time and all of them, so that
    /// the time taken does not say which one nearly matched.
    fn matching(&self, stored: &[KeyRecord], hash: &[u8; 32], now_ms: u64) -> Option<KeyRecord> {
        let live = |k: &&KeyRecord| {
            k.revoked_ms.is_none() && k.expires_ms.is_none_or(|expires| now_ms < expires)
        };
        let mut found = None;
        for key in self.configured.iter().chain(stored).filter(live) {
            if bool::from(key.hash.ct_eq(hash)) {
                found = Some(key.clone());
            }
        }
        found
    }
}

/// Who made a request: a key, an end user's token (a subject, charged as a key is), or
/// nobody (an open gateway).
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller {
    key: Option<Arc<KeyRecord>>,
    store: Option<Arc<dyn Store>>,
    /// The most tokens one answer may generate (an end-user token's `max_tokens`).
    max_tokens: Option<u32>,
}

impl Caller {
    pub(crate) fn new(key: KeyRecord, store: Arc<dyn Store>, max_tokens: Option<u32>) -> Self {
        Caller { key: Some(Arc::new(key)), store: Some(store), max_tokens }
    }

    /// `chat` held to the caller's grant: a model it may not use is refused with 403, since
    /// the model exists (an unknown model is 404, as OpenAI answers); a `max_tokens` above
    /// the grant's, or none, becomes the grant's (clamped rather than refused, as `useChat`
    /// sends none).
    pub(crate) fn limit(&self, mut chat: ChatRequest) -> Result<ChatRequest, ApiError> {
        let Some(key) = &self.key else { return Ok(chat) };
        let models = &key.limits.models;
        if !models.is_empty() && !models.contains(&chat.model) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "model_not_allowed",
                format!("{} may not use the model `{}`.", who(key), chat.model),
            )
            .with_param("model"));
        }
        if let Some(most) = self.max_tokens {
            chat.max_tokens = Some(chat.max_tokens.map_or(most, |asked| asked.min(most)));
        }
        Ok(chat)
    }

    /// What counts the tokens of the answer to `chat` (see [`Meter::wrap`]).
    pub(crate) fn meter(&self, chat: &ChatRequest) -> Meter {
        let (Some(key), Some(store)) = (&self.key, &self.store) else { return Meter(None) };
        let prompt_bytes: usize = chat.messages.iter().map(|m| m.content.len()).sum();
        let tally = Tally {
            key: Arc::clone(key),
            store: Arc::clone(store),
            estimated_prompt: (prompt_bytes as u64).div_ceil(4),
        };
        Meter(Some(Watch::new(Observer::new(move |answer| tally.spend(answer)), chat)))
    }
}

/// Counts an answer's tokens for its key; nothing for a caller without one.
pub(crate) struct Meter(Option<Watch>);

impl Meter {
    /// `deltas`, spending what they use on the key once the answer is over or dropped (a
    /// stopped answer's tokens until then count, and it counts as cancelled), as
    /// a [`Watch`] reports it.
    pub(crate) fn wrap(self, deltas: DeltaStream) -> DeltaStream {
        match self.0 {
            Some(watch) => watch.wrap(deltas),
            None => deltas,
        }
    }
}

/// The key an answer is counted for.
struct Tally {
    key: Arc<KeyRecord>,
    store: Arc<dyn Store>,
    estimated_prompt: u64,
}

impl Tally {
    /// Spends `answer`'s tokens on the key. Tokens are the provider's count when it gave one;
    /// otherwise each piece of text is a token and the prompt is a token per four bytes, as
    /// the answer was stopped before the count came.
    fn spend(&self, answer: &AnswerRecord) {
        let (prompt_tokens, completion_tokens) =
            answer.usage.map_or((self.estimated_prompt, u64::from(answer.deltas)), |usage| {
                (usage.prompt_tokens.into(), usage.completion_tokens.into())
            });
        let (name, cancelled) = (label(&self.key), answer.cancelled);
        metrics::counter!("sluice_key_prompt_tokens_total", "key" => name.clone())
            .increment(prompt_tokens);
        metrics::counter!("sluice_key_completion_tokens_total", "key" => name.clone())
            .increment(completion_tokens);
        if cancelled {
            metrics::counter!("sluice_key_cancelled_total", "key" => name).increment(1);
        }
        let now = sluice_hub::now_ms();
        let spend = Spend {
            key: self.key.id.clone(),
            minute: minute(now),
            period: period(now, self.key.limits.budget_period).0,
            prompt_tokens,
            completion_tokens,
            cancelled,
        };
        let store = Arc::clone(&self.store);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            if let Err(error) = store.ledger().spend(&spend).await {
                tracing::warn!(%error, key = spend.key, "an answer's tokens were not counted");
            }
        });
    }
}

/// The charge for one request by `key` at `now_ms`.
pub(crate) fn charge(key: &KeyRecord, now_ms: u64) -> Charge {
    Charge {
        key: key.id.clone(),
        minute: minute(now_ms),
        period: period(now_ms, key.limits.budget_period).0,
        requests_per_minute: key.limits.requests_per_minute,
        tokens_per_minute: key.limits.tokens_per_minute,
        token_budget: key.limits.token_budget,
        revocable: !key.id.starts_with("config:") && !is_subject(key),
    }
}

/// The refusal of a request over `limit`, with how long to wait.
pub(crate) fn over(key: &KeyRecord, limit: Limit, now_ms: u64) -> ApiError {
    metrics::counter!("sluice_key_rejected_total", "key" => label(key)).increment(1);
    let (what, until_ms) = match limit {
        Limit::RequestsPerMinute => ("requests per minute", (minute(now_ms) + 1) * 60_000),
        Limit::TokensPerMinute => ("tokens per minute", (minute(now_ms) + 1) * 60_000),
        Limit::Budget => ("token budget", period(now_ms, key.limits.budget_period).1),
    };
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
        format!("{} reached its {what}.", who(key)),
    )
    .with_retry_after(until_ms.saturating_sub(now_ms).div_ceil(1000).max(1))
}

/// Whether `key` stands for an end user's subject (see [`crate::end_users`]).
fn is_subject(key: &KeyRecord) -> bool {
    key.id.starts_with(crate::end_users::SUBJECT_PREFIX)
}

/// The caller as its refusals name it.
fn who(key: &KeyRecord) -> String {
    let kind = if is_subject(key) { "end user" } else { "key" };
    format!("The {kind} {}", key.name)
}

/// The `key` label of the per-key metrics: subjects share one, since an app has as many as
/// it has users and a label per user would grow `/metrics` without bound (their usage is in
/// the ledger, per subject).
pub(crate) fn label(key: &KeyRecord) -> String {
    if is_subject(key) { "end-user-tokens".to_owned() } else { key.name.clone() }
}

fn minute(now_ms: u64) -> u64 {
    now_ms / 60_000
}

const DAY_MS: u64 = 86_400_000;

/// The budget period `now_ms` is in, as a number that grows with time, and when it ends.
fn period(now_ms: u64, length: BudgetPeriod) -> (u64, u64) {
    let day = now_ms / DAY_MS;
    match length {
        BudgetPeriod::Day => (day, (day + 1) * DAY_MS),
        BudgetPeriod::Month => {
            let (year, month) = year_month(day);
            let next = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
            (year * 12 + month - 1, first_day(next.0, next.1) * DAY_MS)
        }
    }
}

/// The (year, month 1-12) of a day since the Unix epoch (H. Hinnant's `civil_from_days`).
fn year_month(day: u64) -> (u64, u64) {
    let z = day + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(month <= 2), month)
}

/// The day since the Unix epoch that a month starts on (`days_from_civil`).
fn first_day(year: u64, month: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let (era, yoe) = (year / 400, year % 400);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_start_on_their_first_day() {
        assert_eq!(first_day(1970, 1), 0);
        assert_eq!(year_month(0), (1970, 1));
        // 2026-12-07 is day 20_794; its month ends on 2027-01-01, day 20_819.
        let now = 20_794 * DAY_MS + 5;
        assert_eq!(year_month(20_794), (2026, 12));
        assert_eq!(period(now, BudgetPeriod::Month), (2026 * 12 + 11, 20_819 * DAY_MS));
        assert_eq!(period(now, BudgetPeriod::Day), (20_794, 20_795 * DAY_MS));
        // 2024-02-29, a leap day, is in February; March starts the next day.
        assert_eq!(year_month(19_782), (2024, 2));
        assert_eq!(first_day(2024, 3), 19_783);
    }

    #[test]
    fn a_spec_gives_exactly_one_key() {
        let spec = KeySpec { name: "a".into(), key: Some("sk-1".into()), ..KeySpec::default() };
        assert_eq!(spec.record().unwrap().hash, hash("sk-1"));
        let hex: String = hash("sk-1").iter().map(|b| format!("{b:02x}")).collect();
        let hashed = KeySpec { key: None, key_sha256: Some(hex), ..spec.clone() };
        assert_eq!(hashed.record().unwrap().hash, hash("sk-1"));
        assert!(KeySpec { key: None, ..spec.clone() }.record().is_err());
        let both = KeySpec { key_sha256: Some("00".repeat(32)), ..spec.clone() };
        assert!(both.record().is_err());
        let twice = KeySpec::records(&[spec.clone(), spec]).unwrap_err();
        assert!(twice.contains("two keys are named a"), "{twice}");
    }
}
