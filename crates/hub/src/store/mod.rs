//! Where updates live: the [`Store`] trait and its implementations.
//!
//! A store gives each update its place in one total order (its `seq`), keeps a bounded history
//! for replay, and tells a [`CommitListener`] about every committed update, in that order,
//! exactly once. The hub fans out from that listener, so what subscribers see live is by
//! construction what the store committed, in the store's order, whichever node published it.
//!
//! Every implementation runs the same conformance suite (`sluice_hub::testing`, behind the
//! `testing` feature).

pub mod ledger;
mod memory;
mod redis_streams;
pub mod sqlite;

use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

pub use ledger::{
    BudgetPeriod, Charge, Charged, KeyLimits, KeyRecord, KeyUsage, Ledger, Limit, Spend,
};
pub use memory::MemoryStore;
pub use redis_streams::{RedisConfig, RedisStore};
pub use sqlite::{SqliteConfig, SqliteStats, SqliteStore, Synchronous};

use crate::update::{Draft, Update};

/// Told about committed updates, in `seq` order, once each.
///
/// Called on the store's own thread or task, possibly under its lock: it must not block for
/// long (the hub's listener only queues the updates for its fan-out thread).
pub trait CommitListener: Send + Sync + 'static {
    /// Called once, before any [`CommitListener::committed`] and before the store's
    /// constructor returns: the store already holds every update up to `seq` (the highest
    /// seq it ever gave; 0 for an empty store), so what it commits from now on comes after.
    /// A hub over a reopened store needs it to replay the history a resuming subscriber
    /// missed across the restart.
    fn starts_after(&self, seq: u64);

    /// `updates` were committed; their `seq`s are increasing.
    fn committed(&self, updates: &[Arc<Update>]);

    /// The store's history was reset under it (a Redis that came back without its data): what
    /// was committed before is gone, and what it commits from now on, with `seq`s above `seq`,
    /// is a new history from its start. `seq` is above every `seq` told before, so the one
    /// order goes on rising; the reset takes it as its own place in that order. Live readers
    /// must be told, since what they were sent no longer continues in the store.
    fn reset(&self, seq: u64);
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An update with this id is already in the store.
    #[error("an update with id {0:?} already exists")]
    Conflict(String),
    /// The update holds what the wire cannot carry.
    #[error(transparent)]
    Invalid(#[from] sluice_sse::EncodeError),
    /// The store is closed (shutting down).
    #[error("the store is closed")]
    Closed,
    /// The backing database or server failed.
    #[error("storage failed: {0}")]
    Backend(String),
}

/// What a store keeps about a stream (an AI answer, whose events are updates on a reserved
/// topic): who may read it and how it was made. It lives as long as the stream's history, so
/// an answer's reader is checked the same way after a restart and on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRecord {
    /// The stream's id.
    pub id: String,
    /// SHA-256 of the stream's capability token: the store never holds the token itself, so
    /// a copy of the store gives no reader access.
    pub token_hash: [u8; 32],
    /// What made the stream (for the server: which endpoint may resume it).
    pub kind: String,
    /// When it was made, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// What a later reader may find it by ([`Store::latest_stream`]), such as the chat an
    /// answer belongs to: the newest stream with a key is the one found.
    pub key: Option<String>,
}

/// A durable or in-memory history of updates, in one total order.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Commits `draft` (whose `id` is set), giving it the next `seq`, and resolves once it is
    /// durable and the [`CommitListener`] has been told. Fails with [`StoreError::Conflict`]
    /// when the id is taken.
    fn append(&self, draft: Draft) -> BoxFuture<'_, Result<Arc<Update>, StoreError>>;

    /// Up to `limit` kept updates with `seq > after`, in `seq` order. `after = 0` reads from
    /// the earliest kept.
    fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Arc<Update>>, StoreError>>;

    /// The `seq` of the kept update with this id, or `None` if it is unknown or no longer kept.
    fn find(&self, id: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>>;

    /// Finishes pending writes and stops accepting new ones.
    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Records a new stream. Fails with [`StoreError::Conflict`] when its id is taken.
    fn put_stream(&self, record: StreamRecord) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The record of stream `id`, if it exists and is still kept.
    fn stream(&self, id: &str) -> BoxFuture<'_, Result<Option<StreamRecord>, StoreError>>;

    /// The record of the newest stream put with `key`, if it is still kept.
    fn latest_stream(&self, key: &str) -> BoxFuture<'_, Result<Option<StreamRecord>, StoreError>>;

    /// The API keys made at run time and what every key used, as the processes sharing this
    /// store see them.
    fn ledger(&self) -> &dyn Ledger;

    /// Why the store cannot take writes now, as far as its latest calls tell, or `None`: for
    /// a readiness check, which sends traffic elsewhere meanwhile. Which calls count is the
    /// store's to say: where one server answers every call (Redis), any call that succeeds
    /// clears it, a readiness check's own included; where reads go on while writes fail (a
    /// full disk under SQLite), only a write does. A store that cannot fail says `None`.
    fn failure(&self) -> Option<String> {
        None
    }

    /// How the processes sharing this store coordinate the streams they produce, when several
    /// may (a shared store). `None` for a store only one process uses: then what runs in
    /// this process is all that runs.
    fn control(&self) -> Option<&dyn StreamControl> {
        None
    }
}

/// What a node learns from its heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// Streams this node produces that someone asked to cancel.
    pub cancelled: Vec<String>,
    /// Streams this node produces that another node has readers for.
    pub read_elsewhere: Vec<String>,
}

/// How nodes sharing a store coordinate the streams they produce (AI answers): the producer
/// holds a lease it renews, cancel requests reach it from any node, readers anywhere keep a
/// stream alive, and a stream whose producer died is found by its lapsed lease and ended.
pub trait StreamControl: Send + Sync {
    /// Renews the leases of the streams this node produces (`owned`; a first heartbeat claims
    /// one), and reports that this node has readers for `read`. Call it about every second.
    fn heartbeat<'a>(
        &'a self,
        owned: &'a [String],
        read: &'a [String],
    ) -> BoxFuture<'a, Result<Heartbeat, StoreError>>;

    /// Ends this node's lease on a stream (it has ended).
    fn release<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Whether some node holds a live lease on the stream.
    fn is_live<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Asks whichever node produces the stream to stop it; `false` when none holds a live
    /// lease on it.
    fn request_cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Cancel requests as they are made, on any node (stream ids): a producer stops at once
    /// rather than at its next heartbeat.
    fn cancel_requests(&self) -> BoxStream<'static, String>;

    /// Streams whose lease lapsed: their producer is gone and nothing will end them.
    fn lapsed(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;
}
