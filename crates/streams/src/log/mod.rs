//! Where streams live: the [`Log`] trait and its implementations.
//!
//! A log stores, per stream path, one [`Meta`] value with a version, the stream's records
//! (numbered from 1), and when it was last read or written. Every decision of the protocol
//! (producers, closure, content types, forks) is made once, in [`crate::Streams`], on a
//! loaded meta; a log only has to commit the outcome if nobody committed in between
//! ([`Log::update`]'s version check). That makes writers on every node serialise per stream
//! without a lock service, and keeps each backend small.

mod memory;

mod redis;

mod sqlite;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

pub use memory::MemoryLog;

pub use self::redis::RedisLog;

pub use sqlite::SqliteLog;

use crate::meta::Meta;

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The database or server failed.
    #[error("stream storage failed: {0}")]
    Backend(String),
    /// What was stored could not be read back.
    #[error("stream storage holds a malformed value: {0}")]
    Corrupt(String),
}

/// What [`Log::changes`] tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The stream at this path changed.
    Stream(String),
    /// Anything may have changed: news was lost (a connection to the other processes was
    /// made again), so every live reader should look again.
    Any,
}

/// A stream as loaded: its meta, the version to update it at, and when it was last used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Bumped by every [`Log::update`].
    pub version: u64,
    /// Its settings and state.
    pub meta: Meta,
    /// When it was last read or written, in milliseconds since the Unix epoch (a sliding TTL
    /// counts from here).
    pub accessed_ms: u64,
}

/// Durable storage for streams; every method is one atomic step.
pub trait Log: Send + Sync + std::fmt::Debug + 'static {
    /// The stream at `path`, if one is stored (expired or not: expiry is the caller's call).
    fn load<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Stored>, LogError>>;

    /// Stores a new stream with its first records; `false` (and nothing written) when a
    /// stream is already stored at `path`.
    fn insert<'a>(
        &'a self,
        path: &'a str,
        meta: &'a Meta,
        records: &'a [Bytes],
        now_ms: u64,
    ) -> BoxFuture<'a, Result<bool, LogError>>;

    /// Replaces the meta of the stream at `path` and appends `records` after its last, if
    /// it is still at `version`; `false` (and nothing written) when it is not, or is gone.
    /// The records are numbered on from `meta.tail.records - records.len()`. The last use
    /// moves to `now_ms` only if that is later (a touch since the load is not undone).
    fn update<'a>(
        &'a self,
        path: &'a str,
        version: u64,
        meta: &'a Meta,
        records: &'a [Bytes],
        now_ms: u64,
    ) -> BoxFuture<'a, Result<bool, LogError>>;

    /// Records numbered above `after`, in order, as many as fit in `max_bytes` (at least
    /// one, if there is one).
    fn records<'a>(
        &'a self,
        path: &'a str,
        after: u64,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Vec<Bytes>, LogError>>;

    /// Removes the stream at `path` and its records, if it is still at `version`; `false`
    /// when it is not.
    fn remove<'a>(&'a self, path: &'a str, version: u64) -> BoxFuture<'a, Result<bool, LogError>>;

    /// Notes a read or write at `now_ms`, for a sliding TTL.
    fn touch<'a>(&'a self, path: &'a str, now_ms: u64) -> BoxFuture<'a, Result<(), LogError>>;

    /// What changed on other processes sharing this log, as it changes; `None` when no other
    /// process can share it.
    fn changes(&self) -> Option<BoxStream<'static, Change>> {
        None
    }
}

/// The leading records that fit in `max_bytes`, and always the first: one read's worth.
pub(crate) fn take_fitting<E>(
    records: impl Iterator<Item = Result<Bytes, E>>,
    max_bytes: usize,
) -> Result<Vec<Bytes>, E> {
    let mut total = 0;
    let mut out = Vec::new();
    for record in records {
        let record = record?;
        total += record.len();
        if total > max_bytes && !out.is_empty() {
            break;
        }
        out.push(record);
    }
    Ok(out)
}
