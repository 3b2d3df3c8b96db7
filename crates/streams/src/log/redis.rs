//! [`RedisLog`]: streams in Redis, shared by every node that opens the same URL and prefix.
//!
//! # One step each
//!
//! Every write is one Lua script, so Redis runs it whole or not at all and no other client's
//! command runs in between: the version check of [`Log::update`] and [`Log::remove`], the
//! records it appends, the new meta and the bumped version are one step. That is all
//! [`crate::Streams`] needs to serialise writers of one stream across nodes. Reads are one
//! command or script too, so none mixes two states of a stream (nor, after a removal, two
//! streams at one path).
//!
//! # Wake-ups across nodes
//!
//! The write scripts also `PUBLISH` the stream's path on `{P}:ds:changed`, inside the same
//! step, so no write is committed without being announced. Each handle subscribes on a
//! connection of its own ([`Log::changes`]) and passes on the paths that other handles wrote:
//! a live reader on node B wakes when node A appends. When Redis goes away the subscription is
//! made again (backoff from 100 ms to 1 s); what was announced while it was down is not heard,
//! so a reader waiting then sees the change on its next read.
//!
//! # Failure
//!
//! Every command gives up after 2 s with [`LogError::Backend`], so a request
//! fails fast while Redis is down (the server answers 503) instead of hanging; the connection
//! is made again in the background. A write that timed out may still have been committed:
//! like any other lost answer, idempotent producers make its retry safe.
//!
//! # Durability
//!
//! What Redis acknowledged survives a Redis restart only with `appendonly yes` and
//! `appendfsync always`. Redis must not evict these keys either (`maxmemory-policy
//! noeviction`): an evicted meta loses the stream, evicted records are noticed by the next
//! append ([`LogError::Corrupt`]).
//!
//! # Layout
//!
//! All keys start with `{P}` (the prefix in braces, a Redis Cluster hash tag), so one
//! deployment's keys share one slot and any script may touch them. The path comes last and
//! whole, after a fixed part that names the kind of key, so any path (with `:`, `/` or
//! anything else) has exactly one key of each kind, and no two paths share one.
//!
//! - `{P}:ds:meta:<path>`: hash with `version` (from 1), `meta` ([`Meta`] as JSON) and
//!   `accessed` (ms since the Unix epoch).
//! - `{P}:ds:records:<path>`: list of the records, record `n` at index `n - 1` (absent while
//!   the stream has none).
//! - channel `{P}:ds:changed`: one message per write, the writing handle's id (16 hex digits)
//!   then the path.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubStream};
use redis::{Client, RedisResult, Script, ToRedisArgs};
use tokio::sync::watch;

use super::{Change, Log, LogError, Stored};
use crate::meta::Meta;

/// How long any one command (or connecting) may take before the operation fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// The first wait before subscribing again after the subscription failed or ended.
const MIN_RETRY: Duration = Duration::from_millis(100);
/// The longest wait between attempts to subscribe.
const MAX_RETRY: Duration = Duration::from_secs(1);
/// How many hex digits name the handle that wrote, ahead of the path in a change message.
const ORIGIN_LEN: usize = 16;

/// A new stream. KEYS: meta, records. ARGV: channel, message, meta JSON, now ms, records.
/// Returns 0 when a stream is already stored there. Records left without a meta (only an
/// eviction leaves any) are cleared, so a new stream never starts with someone else's.
const INSERT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2])
for i = 5, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('HSET', KEYS[1], 'version', 1, 'meta', ARGV[3], 'accessed', ARGV[4])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
";

/// An update at a version. KEYS: meta, records. ARGV: channel, message, version, meta JSON,
/// now ms, how many records the stream holds before these, records. Returns 0 when the stream
/// is gone or at another version, -1 when its list does not hold the records its meta counts.
/// `accessed` only moves forward: nodes' clocks differ, and a writer that loaded the stream
/// before someone read it must not take that read back.
const UPDATE: &str = r"
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[3] then return 0 end
if redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[6]) then return -1 end
for i = 7, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'meta', ARGV[4])
if tonumber(redis.call('HGET', KEYS[1], 'accessed')) < tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[1], 'accessed', ARGV[5])
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
";

/// A removal at a version. KEYS: meta, records. ARGV: channel, message, version. Returns 0
/// when the stream is gone or at another version.
const REMOVE: &str = r"
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[3] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
";

/// A read or write noted. KEYS: meta. ARGV: now ms. Moves `accessed` forward only, and
/// creates nothing for a stream that is gone.
const TOUCH: &str = r"
local accessed = redis.call('HGET', KEYS[1], 'accessed')
if accessed and tonumber(accessed) < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'accessed', ARGV[1])
end
return 0
";

/// One read. KEYS: records. ARGV: how many records to skip, the byte budget. Returns the
/// records after those that fit the budget, and always the first (like `take_fitting`).
/// It takes the list in pages sized by the records' average so far (at most 256), so a long
/// stream is neither copied whole nor walked one command per record.
const RECORDS: &str = r"
local from, budget = tonumber(ARGV[1]), tonumber(ARGV[2])
local size = redis.call('LLEN', KEYS[1])
local out, total, count = {}, 0, 1
while from < size do
  for _, record in ipairs(redis.call('LRANGE', KEYS[1], from, from + count - 1)) do
    total = total + #record
    if total > budget and #out > 0 then return out end
    out[#out + 1] = record
    from = from + 1
  end
  local average = math.max(1, total / #out)
  count = math.min(256, math.max(1, math.floor((budget - total) / average) + 1))
end
return out
";

/// The scripts, each hashed once (Redis caches them by hash; `invoke` loads one again after
/// a Redis restart forgot it).
struct Scripts {
    insert: Script,
    update: Script,
    remove: Script,
    touch: Script,
    records: Script,
}

/// The names of one deployment's keys and channel.
struct Keys {
    /// `{P}:ds:meta:`, the path follows.
    meta: String,
    /// `{P}:ds:records:`, the path follows.
    records: String,
    /// `{P}:ds:changed`.
    changed: String,
}

impl Keys {
    fn meta(&self, path: &str) -> String {
        format!("{}{path}", self.meta)
    }

    fn records(&self, path: &str) -> String {
        format!("{}{path}", self.records)
    }
}

/// Streams in Redis, shared by every node that opens the same URL and prefix: each write is
/// one atomic script, announced to the other nodes' [`Log::changes`]. They survive restarts as
/// far as Redis persists them (`appendonly yes`, `appendfsync always`), and Redis must not
/// evict them (`maxmemory-policy noeviction`).
pub struct RedisLog {
    client: Client,
    connection: ConnectionManager,
    keys: Keys,
    scripts: Scripts,
    /// Names this handle in the messages it publishes, so it can skip its own.
    origin: String,
    /// Dropped with the log, which ends the streams [`Log::changes`] gave.
    alive: watch::Sender<()>,
}

impl fmt::Debug for RedisLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLog")
            .field("channel", &self.keys.changed)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

fn backend(error: impl fmt::Display) -> LogError {
    LogError::Backend(format!("redis: {error}"))
}

/// `work`'s outcome, or a backend failure if Redis has not answered within [`COMMAND_TIMEOUT`].
async fn bounded<T>(work: impl Future<Output = RedisResult<T>>) -> Result<T, LogError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, work).await {
        Ok(result) => result.map_err(backend),
        Err(_) => Err(backend(format_args!("no answer within {COMMAND_TIMEOUT:?}"))),
    }
}

fn corrupt(path: &str, what: impl fmt::Display) -> LogError {
    LogError::Corrupt(format!("redis: stream {path:?}: {what}"))
}

impl RedisLog {
    /// Connects to Redis at `url` (`redis://…` or `rediss://…`) for the streams under `prefix`
    /// (without braces: they are added); fails at once if Redis does not answer, so that a
    /// wrong URL or password shows when the server starts.
    pub async fn open(url: &str, prefix: &str) -> Result<RedisLog, LogError> {
        if prefix.contains(['{', '}']) {
            return Err(backend("a key prefix may not contain braces"));
        }
        let client = Client::open(url).map_err(backend)?;
        // One attempt per connection: while Redis is down, each command tries to connect once
        // and fails, rather than waiting out a series of attempts (the next command tries again).
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(0);
        let connection =
            client.get_connection_manager_with_config(config).await.map_err(backend)?;
        let key = |name: &str| format!("{{{prefix}}}:ds:{name}");
        Ok(RedisLog {
            client,
            connection,
            keys: Keys { meta: key("meta:"), records: key("records:"), changed: key("changed") },
            scripts: Scripts {
                insert: Script::new(INSERT),
                update: Script::new(UPDATE),
                remove: Script::new(REMOVE),
                touch: Script::new(TOUCH),
                records: Script::new(RECORDS),
            },
            origin: format!("{:0ORIGIN_LEN$x}", rand::random::<u64>()),
            alive: watch::channel(()).0,
        })
    }

    /// Runs `f` on a clone of the shared connection, bounded by [`COMMAND_TIMEOUT`].
    async fn run<T>(
        &self,
        f: impl AsyncFnOnce(&mut ConnectionManager) -> RedisResult<T>,
    ) -> Result<T, LogError> {
        let mut connection = self.connection.clone();
        bounded(f(&mut connection)).await
    }

    /// Runs a write script on the stream's two keys, with the channel and the message that
    /// announce the write, then `args`, then the records to append; returns its reply.
    async fn write(
        &self,
        script: &Script,
        path: &str,
        args: impl ToRedisArgs,
        records: &[Bytes],
    ) -> Result<i64, LogError> {
        self.run(async |c| {
            let mut invocation = script.key(self.keys.meta(path));
            invocation
                .key(self.keys.records(path))
                .arg(&self.keys.changed)
                .arg(format!("{}{path}", self.origin))
                .arg(args);
            for record in records {
                invocation.arg(&record[..]);
            }
            invocation.invoke_async(c).await
        })
        .await
    }
}

fn encode(meta: &Meta) -> String {
    serde_json::to_string(meta).expect("a meta serialises")
}

impl Log for RedisLog {
    fn load<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Stored>, LogError>> {
        async move {
            let (version, meta, accessed): (Option<String>, Option<String>, Option<String>) = self
                .run(async |c| {
                    redis::cmd("HMGET")
                        .arg(self.keys.meta(path))
                        .arg(&["version", "meta", "accessed"])
                        .query_async(c)
                        .await
                })
                .await?;
            let Some(version) = version else { return Ok(None) };
            let (Some(meta), Some(accessed)) = (meta, accessed) else {
                return Err(corrupt(path, "its meta or access time is missing"));
            };
            let number = |field: &str, text: &str| {
                text.parse()
                    .map_err(|_| corrupt(path, format_args!("its {field} is {text:?}, no number")))
            };
            Ok(Some(Stored {
                version: number("version", &version)?,
                meta: serde_json::from_str(&meta).map_err(|e| corrupt(path, e))?,
                accessed_ms: number("access time", &accessed)?,
            }))
        }
        .boxed()
    }

    fn insert<'a>(
        &'a self,
        path: &'a str,
        meta: &'a Meta,
        records: &'a [Bytes],
        now_ms: u64,
    ) -> BoxFuture<'a, Result<bool, LogError>> {
        async move {
            let args = (encode(meta), now_ms);
            let inserted = self.write(&self.scripts.insert, path, args, records).await?;
            Ok(inserted == 1)
        }
        .boxed()
    }

    fn update<'a>(
        &'a self,
        path: &'a str,
        version: u64,
        meta: &'a Meta,
        records: &'a [Bytes],
        now_ms: u64,
    ) -> BoxFuture<'a, Result<bool, LogError>> {
        let before = meta.tail.records - records.len() as u64;
        async move {
            let args = (version, encode(meta), now_ms, before);
            let updated = self.write(&self.scripts.update, path, args, records).await?;
            match updated {
                -1 => Err(corrupt(path, format_args!("its records are not the {before} counted"))),
                updated => Ok(updated == 1),
            }
        }
        .boxed()
    }

    fn records<'a>(
        &'a self,
        path: &'a str,
        after: u64,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Vec<Bytes>, LogError>> {
        async move {
            let records: Vec<Vec<u8>> = self
                .run(async |c| {
                    let mut invocation = self.scripts.records.key(self.keys.records(path));
                    invocation.arg(after).arg(max_bytes).invoke_async(c).await
                })
                .await?;
            Ok(records.into_iter().map(Bytes::from).collect())
        }
        .boxed()
    }

    fn remove<'a>(&'a self, path: &'a str, version: u64) -> BoxFuture<'a, Result<bool, LogError>> {
        async move {
            let removed = self.write(&self.scripts.remove, path, version, &[]).await?;
            Ok(removed == 1)
        }
        .boxed()
    }

    fn touch<'a>(&'a self, path: &'a str, now_ms: u64) -> BoxFuture<'a, Result<(), LogError>> {
        async move {
            self.run(async |c| {
                let mut invocation = self.scripts.touch.key(self.keys.meta(path));
                invocation.arg(now_ms).invoke_async::<()>(c).await
            })
            .await
        }
        .boxed()
    }

    fn changes(&self) -> Option<BoxStream<'static, Change>> {
        let subscriber = Subscriber {
            client: self.client.clone(),
            channel: self.keys.changed.clone(),
            origin: self.origin.clone(),
            messages: None,
            retry: Duration::ZERO,
            subscribed: false,
        };
        let mut alive = self.alive.subscribe();
        let dropped = async move {
            // Nothing is ever sent: this returns when the log is dropped.
            let _ = alive.changed().await;
        };
        let paths = futures_util::stream::unfold(subscriber, |mut subscriber| async move {
            let path = subscriber.next().await;
            Some((path, subscriber))
        });
        Some(paths.take_until(dropped).boxed())
    }
}

/// One handle's subscription to the change channel, made again whenever it ends.
struct Subscriber {
    client: Client,
    channel: String,
    origin: String,
    messages: Option<PubSubStream>,
    /// How long to wait before the next attempt to subscribe.
    retry: Duration,
    /// Whether it subscribed before: news may have been lost between two subscriptions.
    subscribed: bool,
}

impl Subscriber {
    /// The next path another handle wrote, subscribing (again) as often as it takes; after
    /// subscribing again, [`Change::Any`] first, for what was written meanwhile.
    async fn next(&mut self) -> Change {
        loop {
            let Some(messages) = &mut self.messages else {
                tokio::time::sleep(self.retry).await;
                match self.subscribe().await {
                    Ok(messages) => {
                        self.messages = Some(messages);
                        self.retry = MIN_RETRY;
                        if std::mem::replace(&mut self.subscribed, true) {
                            return Change::Any;
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, channel = %self.channel, "subscribing again");
                        self.retry = (self.retry * 2).clamp(MIN_RETRY, MAX_RETRY);
                    }
                }
                continue;
            };
            match messages.next().await {
                Some(message) => {
                    let payload = message.get_payload_bytes();
                    if let Some((origin, path)) = payload.split_at_checked(ORIGIN_LEN)
                        && origin != self.origin.as_bytes()
                        && let Ok(path) = std::str::from_utf8(path)
                    {
                        return Change::Stream(path.to_owned());
                    }
                }
                // The connection ended (Redis went away): subscribe again.
                None => self.messages = None,
            }
        }
    }

    /// A new connection subscribed to the channel, its messages as they come.
    async fn subscribe(&self) -> Result<PubSubStream, LogError> {
        bounded(async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok(pubsub.into_on_message())
        })
        .await
    }
}
