//! What a store keeps about API keys ([`Ledger`]): the keys made at run time, so that every
//! node sharing the store knows them, and what each key used, so that its limits and budget
//! hold across nodes and restarts.
//!
//! ```
//! use std::sync::Arc;
//! use sluice_hub::{Charge, Charged, Fanout, Limit, MemoryStore, Spend, Store};
//!
//! # tokio_test_block_on(async {
//! let store = MemoryStore::new(100, Fanout::new().listener());
//! let ledger = store.ledger();
//! let charge = Charge {
//!     key: "key_1".to_owned(),
//!     minute: 1_000,
//!     period: 7,
//!     requests_per_minute: Some(1),
//!     tokens_per_minute: None,
//!     token_budget: Some(100),
//!     revocable: false,
//! };
//! assert_eq!(ledger.charge(&charge).await?, Charged::Admitted);
//! assert_eq!(ledger.charge(&charge).await?, Charged::Over(Limit::RequestsPerMinute));
//! let spend = Spend { key: "key_1".to_owned(), minute: 1_000, period: 7,
//!     prompt_tokens: 40, completion_tokens: 60, cancelled: false };
//! ledger.spend(&spend).await?;
//! let next_minute = Charge { minute: 1_001, ..charge };
//! assert_eq!(ledger.charge(&next_minute).await?, Charged::Over(Limit::Budget));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```
//!
//! # Windows
//!
//! A key's counters hold one window of requests and tokens (a minute, named by the caller:
//! minutes since the epoch) and one budget period (named by the caller too, by when it
//! starts). A charge or spend in a later window or period starts it from zero; one in an
//! earlier window (a node whose clock is behind) counts in the current one. Minutes are fixed
//! windows, so a client may make up to twice its requests per minute across a minute's edge,
//! as with any fixed window.
//!
//! # What a charge decides
//!
//! [`Ledger::charge`] is one atomic step (a Redis script, a SQLite transaction, a lock): it
//! refuses when the key's window is at its requests or tokens per minute, or its period at its
//! budget; else it counts the request. Tokens are known only once an answer ends
//! ([`Ledger::spend`]), so answers running side by side can together pass a token limit by what
//! they take; the next request is refused.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// How long a key's token budget lasts before it starts again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    /// A calendar day (UTC).
    Day,
    /// A calendar month (UTC).
    #[default]
    Month,
}

/// What a key may do; `None` is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyLimits {
    /// The models it may use (empty: every model).
    pub models: Vec<String>,
    /// Requests per minute.
    pub requests_per_minute: Option<u64>,
    /// Tokens (prompt and completion) per minute.
    pub tokens_per_minute: Option<u64>,
    /// Tokens per [`KeyLimits::budget_period`].
    pub token_budget: Option<u64>,
    /// How long the budget lasts.
    pub budget_period: BudgetPeriod,
}

/// An API key made at run time, as a store keeps it: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Its id, what it is revoked by.
    pub id: String,
    /// Its name, unique among the keys not revoked.
    pub name: String,
    /// SHA-256 of the key: a copy of the store gives nobody a key.
    #[serde(with = "hex_hash")]
    pub hash: [u8; 32],
    /// The key's first characters, for people to tell keys apart.
    pub prefix: String,
    /// What it may do.
    pub limits: KeyLimits,
    /// When it was made, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When it stops working, if it does.
    pub expires_ms: Option<u64>,
    /// When it was revoked, if it was.
    #[serde(default)]
    pub revoked_ms: Option<u64>,
}

/// A request counted against a key, and the limits it must stay under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The key's id.
    pub key: String,
    /// The current minute, in minutes since the Unix epoch.
    pub minute: u64,
    /// The current budget period, named by when it starts (any number that grows with time).
    pub period: u64,
    /// At most this many requests per minute.
    pub requests_per_minute: Option<u64>,
    /// No request once this many tokens were used in the minute.
    pub tokens_per_minute: Option<u64>,
    /// No request once this many tokens were used in the period.
    pub token_budget: Option<u64>,
    /// Whether the key is one of the store's ([`Ledger::put_key`]), so refused once revoked.
    pub revocable: bool,
}

/// What a charge decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Charged {
    /// The request was counted.
    Admitted,
    /// The key is at this limit; nothing was counted.
    Over(Limit),
    /// The key was revoked.
    Revoked,
}

/// A limit a key reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Its requests per minute.
    RequestsPerMinute,
    /// Its tokens per minute.
    TokensPerMinute,
    /// Its token budget for the period.
    Budget,
}

/// The tokens one answer used, added to its key's usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spend {
    /// The key's id.
    pub key: String,
    /// The minute it ended in (see [`Charge::minute`]).
    pub minute: u64,
    /// The budget period it ended in (see [`Charge::period`]).
    pub period: u64,
    /// Tokens of its prompt.
    pub prompt_tokens: u64,
    /// Tokens it generated.
    pub completion_tokens: u64,
    /// Whether it was stopped before its end.
    pub cancelled: bool,
}

/// What a key used: totals since it was first charged, and its current window and period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUsage {
    /// Requests admitted.
    pub requests: u64,
    /// Prompt tokens of its answers.
    pub prompt_tokens: u64,
    /// Tokens its answers generated.
    pub completion_tokens: u64,
    /// Answers stopped before their end.
    pub cancelled: u64,
    /// Tokens (prompt and completion) those stopped answers used.
    pub cancelled_tokens: u64,
    /// The minute the window counts.
    pub minute: u64,
    /// Requests in that minute.
    pub minute_requests: u64,
    /// Tokens in that minute.
    pub minute_tokens: u64,
    /// The budget period counted.
    pub period: u64,
    /// Tokens in that period.
    pub period_tokens: u64,
}

impl KeyUsage {
    /// Moves the window and the period forward to `minute` and `period` (never back).
    fn advance(&mut self, minute: u64, period: u64) {
        if minute > self.minute {
            (self.minute, self.minute_requests, self.minute_tokens) = (minute, 0, 0);
        }
        if period > self.period {
            (self.period, self.period_tokens) = (period, 0);
        }
    }

    /// Decides `charge` and counts it if admitted (a revoked key is the caller's to refuse):
    /// the rule every store follows, for the stores that keep counters in Rust.
    pub(crate) fn charge(&mut self, charge: &Charge) -> Charged {
        self.advance(charge.minute, charge.period);
        let at = |limit: Option<u64>, used: u64| limit.is_some_and(|limit| used >= limit);
        if at(charge.requests_per_minute, self.minute_requests) {
            return Charged::Over(Limit::RequestsPerMinute);
        }
        if at(charge.tokens_per_minute, self.minute_tokens) {
            return Charged::Over(Limit::TokensPerMinute);
        }
        if at(charge.token_budget, self.period_tokens) {
            return Charged::Over(Limit::Budget);
        }
        self.requests += 1;
        self.minute_requests += 1;
        Charged::Admitted
    }

    /// Adds `spend`.
    pub(crate) fn spend(&mut self, spend: &Spend) {
        self.advance(spend.minute, spend.period);
        let tokens = spend.prompt_tokens + spend.completion_tokens;
        self.prompt_tokens += spend.prompt_tokens;
        self.completion_tokens += spend.completion_tokens;
        if spend.cancelled {
            self.cancelled += 1;
            self.cancelled_tokens += tokens;
        }
        self.minute_tokens += tokens;
        self.period_tokens += tokens;
    }
}

/// API keys and their usage, in a store every node shares. See the [module docs](self).
pub trait Ledger: Send + Sync {
    /// Records a new key. Fails with [`StoreError::Conflict`] when its id is taken or a key
    /// not revoked has its name.
    fn put_key(&self, key: KeyRecord) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Every key put, revoked ones included, oldest first.
    fn keys(&self) -> BoxFuture<'_, Result<Vec<KeyRecord>, StoreError>>;

    /// Revokes key `id` at `now_ms` (its name is free again); `false` when no key not revoked
    /// has that id.
    fn revoke_key<'a>(
        &'a self,
        id: &'a str,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Counts a request against its key's limits, or says which limit refuses it.
    fn charge<'a>(&'a self, charge: &'a Charge) -> BoxFuture<'a, Result<Charged, StoreError>>;

    /// Adds what an answer used to its key's usage.
    fn spend<'a>(&'a self, spend: &'a Spend) -> BoxFuture<'a, Result<(), StoreError>>;

    /// What every key charged so far used, by key id.
    fn usage(&self) -> BoxFuture<'_, Result<Vec<(String, KeyUsage)>, StoreError>>;
}

/// A hash as 64 hex digits in JSON.
mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(hash: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hash.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        super::parse_hash(&text).ok_or_else(|| D::Error::custom("a hash is 64 hex digits"))
    }
}

/// A SHA-256 written as 64 hex digits, as [`KeyRecord`]'s JSON and the settings write one.
pub fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let mut hash = [0u8; 32];
    // Hex digits only: `from_str_radix` alone would take a sign (`+f`).
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_from_its_json() {
        let record = KeyRecord {
            id: "key_1".into(),
            name: "team-a".into(),
            hash: [0xab; 32],
            prefix: "sk-sluice-ab".into(),
            limits: KeyLimits { models: vec!["m".into()], ..KeyLimits::default() },
            created_ms: 1,
            expires_ms: Some(2),
            revoked_ms: None,
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains(&"ab".repeat(32)), "{json}");
        assert_eq!(serde_json::from_str::<KeyRecord>(&json).unwrap(), record);
    }
}
