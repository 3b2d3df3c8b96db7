//! [`RedisStore`]: the multi-node store, Redis Streams shared by every node of a hub.
//!
//! # Order and acknowledgement
//!
//! Every append is one Lua script, atomic in Redis: it checks the update's id is new
//! (`HEXISTS` on the id index), takes the next seq (`INCR`), adds the entry to the stream
//! under the explicit entry id `<seq>-0`, and records the id. The script's reply is the
//! acknowledgement: an update is acknowledged only once Redis has taken all of it, and its seq
//! is its place in the one order every node sees. A publisher-given id is unique hub-wide:
//! whichever node gets it first wins, the other gets a conflict (409).
//!
//! # Following
//!
//! Each node follows the stream on a connection of its own (`XREAD BLOCK` from the last seq it
//! saw) and tells its [`CommitListener`] of every entry, in order, whichever node appended it;
//! the hub fans out from there. When Redis goes away the follower reconnects (backoff from
//! 100 ms to 1 s) and reads on from where it was: nothing acknowledged is skipped, nothing is
//! told twice. An append resolves once this node's follower has passed its seq (or after a
//! bound, if the follower is cut off: the update is acknowledged all the same), so a publisher
//! that subscribes through the same node right after sees its own update.
//!
//! # Failure
//!
//! Every command times out after [`RedisConfig::command_timeout`] (2 s); a refused or timed-out
//! append fails at once with [`StoreError::Backend`] (the server answers 503), with no retry
//! inside the request. Subscribers keep their streams; the follower backfills when Redis is
//! back.
//!
//! # Durability
//!
//! What Redis acknowledged survives a Redis restart only if Redis persists every write before
//! answering: `appendonly yes` with `appendfsync always`. With other settings a Redis crash
//! can lose acknowledged updates; Sluice cannot tell which, but it does notice that the
//! history was reset (see below), so that what is acknowledged afterwards reaches everyone.
//!
//! # Reset
//!
//! Redis's history carries a random *epoch* (`{P}:epoch`), made by the first node to find none.
//! An append names the epoch its node follows and is refused (503) under any other, so nothing
//! enters a history that a node has not noticed is new, nor while the last seq given is below
//! one the node saw given (it must not be given again). The follower reads the last seq given
//! and the epoch with every `XREAD`, in one pipeline: when the epoch is gone (Redis came back
//! empty) or the seq went back (it came back without its last writes), the node sets a new
//! epoch (or takes the one another node set), throws the batch away, and tells its listener of
//! the reset ([`CommitListener::reset`]: the hub sends its subscribers `sluice-reset`); then it
//! follows the new history from its start. Redis's seqs start over with it, so a node adds an
//! offset to them: its own seqs keep rising across the reset. Reads check the epoch in the same
//! pipeline, so none mixes two histories.
//!
//! # Layout
//!
//! All keys start with `{PREFIX}` (default `{sluice}`); the braces are a Redis Cluster hash tag,
//! so one hub's keys share one slot and the scripts may touch them together. A hub's history is
//! one stream, whose total order lives on one shard: a hub scales out in subscribers and
//! publishers (nodes), not in Redis shards.
//!
//! - `{P}:updates`: the stream; entry `<seq>-0` with fields `u` (the update as JSON) and `ms`.
//! - `{P}:ids`: hash, update id → seq, for the ids still kept.
//! - `{P}:seq`: the last seq given (never reused, even when retention empties the stream).
//! - `{P}:epoch`: which history this is (see "Reset").
//! - `{P}:streams`, `{P}:streams:age`: stream records, and their creation times.
//! - `{P}:leases`, `{P}:cancels`, `{P}:readers`, channel `{P}:cancel`: who produces which
//!   stream, see [`StreamControl`].
//! - `{P}:apikeys`, `{P}:apikeys:names`, `{P}:apikeys:revoked`, `{P}:usage`: API keys and
//!   what each used, see [`Ledger`].

mod codec;
mod control;
mod error;
mod follower;
mod keys;
mod ledger;
mod position;
mod retention;
mod scripts;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, FromRedisValue, Value};
use serde_json::json;
use tokio::sync::watch;

use self::codec::{encode, entries};
use self::error::{backend, reset_unseen};
use self::follower::{Follower, follow};
use self::keys::Keys;
use self::position::Position;
use self::retention::{Retention, retain_by_age};
use self::scripts::{Scripts, new_epoch};
use super::{CommitListener, Ledger, Store, StoreError, StreamControl, StreamRecord};
use crate::update::{Draft, Update, now_ms};

/// Where the Redis store is and how it behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://HOST:PORT[/DB]` or `rediss://…` (TLS).
    pub url: String,
    /// The key prefix (inside the hash tag braces).
    pub prefix: String,
    /// Keep at most this many of the latest updates (`None`: no bound by count).
    pub max_updates: Option<u64>,
    /// Delete updates older than this (`None`: no bound by age).
    pub max_age: Option<Duration>,
    /// How long any one Redis command may take.
    pub command_timeout: Duration,
}

impl RedisConfig {
    /// The store at `url`, prefix `sluice`, unbounded history, 2 s per command.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "sluice".to_owned(),
            max_updates: None,
            max_age: None,
            command_timeout: Duration::from_secs(2),
        }
    }
}

impl RedisConfig {
    /// The URL without its password, for logs.
    pub fn redacted_url(&self) -> String {
        redacted(&self.url)
    }
}

/// The multi-node store. See the [module docs](self).
pub struct RedisStore {
    client: Client,
    connection: ConnectionManager,
    keys: Keys,
    config: RedisConfig,
    /// The last seq this node's follower has told the listener of.
    followed: watch::Receiver<u64>,
    /// Where this node is in Redis's history, shared with its follower.
    position: Arc<Mutex<Position>>,
    closed: Arc<AtomicBool>,
    scripts: Scripts,
    /// Why the last command failed, until one succeeds: one server answers every command, so
    /// any that succeeds (a readiness check's read included) says writes would go through.
    failure: Mutex<Option<String>>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.config.prefix)
            .field("followed", &*self.followed.borrow())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects (waiting, with backoff, until Redis answers), reads where the history ends,
    /// tells `listener` so, and starts following. Runs retention every second when bounded.
    pub async fn open(
        config: RedisConfig,
        listener: Arc<dyn CommitListener>,
    ) -> Result<Self, StoreError> {
        let client = Client::open(config.url.as_str()).map_err(backend)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.command_timeout))
            .set_connection_timeout(Some(config.command_timeout))
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1));
        let mut delay = Duration::from_millis(100);
        let connection = loop {
            match client.get_connection_manager_with_config(manager_config.clone()).await {
                Ok(connection) => break connection,
                Err(error) => {
                    tracing::warn!(%error, url = %redacted(&config.url), "waiting for Redis");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        };
        let keys = Keys::new(&config.prefix);
        let mut head_connection = connection.clone();
        let epoch = new_epoch(&mut head_connection, &keys, "").await.map_err(backend)?;
        let head: Option<u64> = redis::cmd("GET")
            .arg(&keys.seq)
            .query_async(&mut head_connection)
            .await
            .map_err(backend)?;
        let head = head.unwrap_or(0);
        listener.starts_after(head);
        let (followed_tx, followed) = watch::channel(head);
        let closed = Arc::new(AtomicBool::new(false));
        let position = Arc::new(Mutex::new(Position { epoch, offset: 0, seen: head }));
        tokio::spawn(follow(
            Follower {
                client: client.clone(),
                keys: keys.clone(),
                listener,
                followed: followed_tx,
                position: Arc::clone(&position),
                closed: Arc::clone(&closed),
            },
            head,
        ));
        let store = RedisStore {
            client,
            connection,
            keys,
            config,
            followed,
            position,
            closed,
            scripts: Scripts::new(),
            failure: Mutex::new(None),
        };
        if store.config.max_age.is_some() {
            tokio::spawn(retain_by_age(store.retention_handle()));
        }
        Ok(store)
    }

    /// What the age-retention task needs.
    fn retention_handle(&self) -> Retention {
        Retention {
            connection: self.connection.clone(),
            keys: self.keys.clone(),
            max_age: self.config.max_age.unwrap_or(Duration::MAX),
            timeout: self.config.command_timeout,
            closed: Arc::clone(&self.closed),
        }
    }

    /// Runs `f` on a clone of the shared connection, bounded by the command timeout.
    async fn run<T>(
        &self,
        f: impl AsyncFnOnce(&mut ConnectionManager) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let mut connection = self.connection.clone();
        let outcome =
            match tokio::time::timeout(self.config.command_timeout, f(&mut connection)).await {
                Ok(result) => result.map_err(backend),
                Err(_) => Err(backend(format!(
                    "no answer within {} ms",
                    self.config.command_timeout.as_millis()
                ))),
            };
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) =
            outcome.as_ref().err().map(ToString::to_string);
        outcome
    }

    /// Runs `command` and reads the epoch in one pipeline: its reply, if Redis still holds the
    /// history `position` names (else a reset this node's follower has yet to notice).
    async fn in_epoch<T: FromRedisValue>(
        &self,
        position: &Position,
        command: redis::Cmd,
    ) -> Result<T, StoreError> {
        let (reply, now): (T, Option<String>) = self
            .run(async |c| {
                redis::pipe()
                    .add_command(command)
                    .cmd("GET")
                    .arg(&self.keys.epoch)
                    .query_async(c)
                    .await
            })
            .await?;
        if now.as_deref() != Some(position.epoch.as_str()) {
            return Err(reset_unseen());
        }
        Ok(reply)
    }

    async fn append_now(&self, draft: Draft) -> Result<Arc<Update>, StoreError> {
        let position = Position::current(&self.position);
        let id = draft.id.clone().unwrap_or_default();
        let encoded = encode(&draft);
        // Checked before Redis sees it: an update the wire cannot carry is refused here.
        Update::new(0, 0, draft.clone())?;
        let keep = self.config.max_updates.unwrap_or(0);
        let keys = &self.keys;
        let reply: Value = self
            .run(async |c| {
                self.scripts
                    .append
                    .key(&keys.updates)
                    .key(&keys.ids)
                    .key(&keys.seq)
                    .key(&keys.last_ms)
                    .key(&keys.epoch)
                    .arg(&id)
                    .arg(&encoded)
                    .arg(now_ms())
                    .arg(keep)
                    .arg(&position.epoch)
                    .arg(position.floor())
                    .invoke_async(c)
                    .await
            })
            .await?;
        let (seq, published_ms) = match reply {
            Value::Int(0) => return Err(StoreError::Conflict(id)),
            Value::Int(-1) => return Err(reset_unseen()),
            Value::Array(pair) => match pair.as_slice() {
                [Value::Int(seq), Value::Int(ms)] => (*seq as u64 + position.offset, *ms as u64),
                _ => return Err(backend("unexpected append reply")),
            },
            _ => return Err(backend("unexpected append reply")),
        };
        Position::saw(&self.position, &position.epoch, seq);
        // Resolve once this node's follower has passed it (bounded: it is acknowledged).
        let mut followed = self.followed.clone();
        let caught_up = followed.wait_for(|&at| at >= seq);
        if tokio::time::timeout(self.config.command_timeout, caught_up).await.is_err() {
            tracing::debug!(seq, "appended; this node's follower has not seen it yet");
        }
        Ok(Arc::new(Update::new(seq, published_ms, draft)?))
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        // Stops the follower and the retention task.
        self.closed.store(true, Ordering::Release);
    }
}

/// The URL without its password, for logs.
fn redacted(url: &str) -> String {
    match url.split_once('@') {
        Some((scheme_and_auth, rest)) => {
            let scheme = scheme_and_auth.split("://").next().unwrap_or("redis");
            format!("{scheme}://…@{rest}")
        }
        None => url.to_owned(),
    }
}

impl Store for RedisStore {
    fn append(&self, draft: Draft) -> BoxFuture<'_, Result<Arc<Update>, StoreError>> {
        self.append_now(draft).boxed()
    }

    fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Arc<Update>>, StoreError>> {
        async move {
            let position = Position::current(&self.position);
            // A seq from before the last reset is before everything Redis holds now.
            let after = after.saturating_sub(position.offset);
            let mut range = redis::cmd("XRANGE");
            range
                .arg(&self.keys.updates)
                .arg(format!("({after}-0"))
                .arg("+")
                .arg("COUNT")
                .arg(limit);
            let reply: Value = self.in_epoch(&position, range).await?;
            entries(&reply, position.offset)
        }
        .boxed()
    }

    fn find(&self, id: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        let id = id.to_owned();
        async move {
            let position = Position::current(&self.position);
            let mut lookup = redis::cmd("HGET");
            lookup.arg(&self.keys.ids).arg(&id);
            let seq: Option<u64> = self.in_epoch(&position, lookup).await?;
            Ok(seq.map(|seq| seq + position.offset))
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.closed.store(true, Ordering::Release);
        futures_util::future::ready(Ok(())).boxed()
    }

    fn put_stream(&self, record: StreamRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let encoded = json!({
                "token_hash": hex(&record.token_hash),
                "kind": record.kind,
                "created_ms": record.created_ms,
                "key": record.key,
            })
            .to_string();
            let keys = &self.keys;
            let inserted: i64 = self
                .run(async |c| {
                    self.scripts
                        .put_stream
                        .key(&keys.streams)
                        .key(&keys.streams_age)
                        .key(&keys.streams_latest)
                        .arg(&record.id)
                        .arg(&encoded)
                        .arg(record.created_ms)
                        .arg(record.key.as_deref().unwrap_or_default())
                        .invoke_async(c)
                        .await
                })
                .await?;
            if inserted == 0 {
                return Err(StoreError::Conflict(record.id));
            }
            Ok(())
        }
        .boxed()
    }

    fn stream(&self, id: &str) -> BoxFuture<'_, Result<Option<StreamRecord>, StoreError>> {
        let id = id.to_owned();
        async move {
            let found: Option<String> = self
                .run(async |c| {
                    redis::cmd("HGET").arg(&self.keys.streams).arg(&id).query_async(c).await
                })
                .await?;
            let Some(found) = found else { return Ok(None) };
            let value: serde_json::Value = serde_json::from_str(&found).map_err(backend)?;
            let token_hash = unhex(value["token_hash"].as_str().unwrap_or_default())
                .ok_or_else(|| backend("a malformed stream record"))?;
            Ok(Some(StreamRecord {
                id,
                token_hash,
                kind: value["kind"].as_str().unwrap_or_default().to_owned(),
                created_ms: value["created_ms"].as_u64().unwrap_or(0),
                key: value["key"].as_str().map(str::to_owned),
            }))
        }
        .boxed()
    }

    fn latest_stream(&self, key: &str) -> BoxFuture<'_, Result<Option<StreamRecord>, StoreError>> {
        let key = key.to_owned();
        async move {
            let id: Option<String> = self
                .run(async |c| {
                    redis::cmd("HGET").arg(&self.keys.streams_latest).arg(&key).query_async(c).await
                })
                .await?;
            match id {
                Some(id) => self.stream(&id).await,
                None => Ok(None),
            }
        }
        .boxed()
    }

    fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn control(&self) -> Option<&dyn StreamControl> {
        Some(self)
    }

    fn ledger(&self) -> &dyn Ledger {
        self
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
