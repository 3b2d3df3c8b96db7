//! Durable Streams: the open protocol for resumable HTTP streams
//! (<https://github.com/durable-streams/durable-streams>), without the HTTP.
//!
//! A stream is an append-only log at a path: created (`PUT`), appended to by plain or
//! idempotent producers (`POST`), closed, forked, read from any offset and tailed live. This
//! crate holds the protocol's rules ([`Streams`]) and where streams are kept ([`Log`]: in
//! memory, in SQLite, or in Redis shared by many nodes); the server maps HTTP onto it.

mod body;
pub mod cursor;
mod log;
mod meta;
mod offset;
mod streams;
mod tail;
mod waiters;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use body::BodyError;
pub use log::{Change, Log, LogError, MemoryLog, RedisLog, SqliteLog, Stored};
pub use meta::{Closer, Expiry, ForkOf, Meta, ProducerState, essence, is_json, parse_rfc3339};
pub use offset::{Offset, ReadFrom};
pub use streams::{
    Append, Appended, Chunk, Create, Created, DEFAULT_CONTENT_TYPE, Error, ForkFrom, Head, Limits,
    Producer, Streams, parse_integer,
};
