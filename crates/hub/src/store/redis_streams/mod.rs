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

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, FromRedisValue, Script, Value};
use serde_json::json;
use tokio::sync::watch;

use super::{CommitListener, Heartbeat, Store, StoreError, StreamControl, StreamRecord};
use crate::update::{Draft, Update, now_ms};

/// How long a lease lasts without renewal: a producer renews every second, so a node that
/// died is seen as gone within this (plus the reaper's period).
const LEASE_MS: u64 = 5_000;
/// How long a node's report of readers counts.
const READERS_MS: u64 = 5_000;
/// Entries read per `XREAD`.
const FOLLOW_BATCH: usize = 512;
/// How long one `XREAD` blocks.
const FOLLOW_BLOCK_MS: u64 = 1_000;

/// The append script. KEYS: updates, ids, seq, last-ms, epoch. ARGV: id, the update as JSON,
/// now in ms, the most updates to keep (0: no bound), the epoch the node follows, the last seq
/// the node saw given in it. Returns {seq, published_ms}, 0 when the id is taken, or -1 under
/// another epoch or when the seq went back (a reset the node has not noticed yet: it must not
/// give a seq again). Trimming by count happens here, so the history never holds more than
/// the bound.
const APPEND: &str = r"
if redis.call('GET', KEYS[5]) ~= ARGV[5] then return -1 end
if tonumber(redis.call('GET', KEYS[3]) or '0') < tonumber(ARGV[6]) then return -1 end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
local seq = redis.call('INCR', KEYS[3])
local ms = tonumber(ARGV[3])
local last = tonumber(redis.call('GET', KEYS[4]) or '0')
if ms < last then ms = last end
redis.call('SET', KEYS[4], ms)
redis.call('XADD', KEYS[1], seq .. '-0', 'u', ARGV[2], 'ms', ms)
redis.call('HSET', KEYS[2], ARGV[1], seq)
local keep = tonumber(ARGV[4])
if keep > 0 then
  local excess = redis.call('XLEN', KEYS[1]) - keep
  if excess > 0 then
    local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', excess)
    for _, entry in ipairs(old) do
      local fields = entry[2]
      for i = 1, #fields, 2 do
        if fields[i] == 'u' then redis.call('HDEL', KEYS[2], cjson.decode(fields[i + 1]).id) end
      end
      redis.call('XDEL', KEYS[1], entry[1])
    end
  end
end
return {seq, ms}
";

/// A new epoch, when the history was reset. KEYS: epoch. ARGV: the epoch the node followed
/// (empty: none yet), a new random one. Sets the new one if there is none or it is still the
/// one the node followed (its seq went back); returns the epoch in force, which another node
/// may have set first.
const NEW_EPOCH: &str = r"
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return ARGV[2]
end
return current
";

/// Retention by age. KEYS: updates, ids, streams, streams:age, streams:latest. ARGV: the oldest `ms` to keep,
/// the most entries to delete. Returns how many updates it deleted. Stream records older than
/// the oldest kept update (and than ARGV[3]) go too.
const EXPIRE: &str = r"
local deleted = 0
local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[2]))
for _, entry in ipairs(old) do
  local fields, ms, id = entry[2], nil, nil
  for i = 1, #fields, 2 do
    if fields[i] == 'ms' then ms = tonumber(fields[i + 1]) end
    if fields[i] == 'u' then id = cjson.decode(fields[i + 1]).id end
  end
  if ms == nil or ms >= tonumber(ARGV[1]) then break end
  redis.call('HDEL', KEYS[2], id)
  redis.call('XDEL', KEYS[1], entry[1])
  deleted = deleted + 1
end
local records = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[3], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(records) do
  local record = redis.call('HGET', KEYS[3], id)
  local key = record and cjson.decode(record).key
  if type(key) == 'string' and redis.call('HGET', KEYS[5], key) == id then
    redis.call('HDEL', KEYS[5], key)
  end
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[4], id)
end
return deleted
";

/// A stream record, once. KEYS: streams, streams:age, streams:latest. ARGV: id, JSON,
/// created ms, and the record's key (empty: none), whose newest stream it becomes.
const PUT_STREAM: &str = r"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], ARGV[4], ARGV[1]) end
return 1
";

/// A node's heartbeat. KEYS: leases, cancels, readers. ARGV: now ms, lease ms, readers ms,
/// the number of owned ids, the owned ids, then the ids read here. Renews the owned leases,
/// records the readers, and returns {ids with a cancel request, owned ids read elsewhere}.
const HEARTBEAT: &str = r"
local now, lease, window, owned = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cancelled, read = {}, {}
for i = 5, 4 + owned do
  local id = ARGV[i]
  redis.call('ZADD', KEYS[1], now + lease, id)
  if redis.call('HEXISTS', KEYS[2], id) == 1 then table.insert(cancelled, id) end
  local seen = tonumber(redis.call('HGET', KEYS[3], id) or '0')
  if seen + window > now then table.insert(read, id) end
end
for i = 5 + owned, #ARGV do
  redis.call('HSET', KEYS[3], ARGV[i], now)
end
return {cancelled, read}
";

/// A cancel request, if a live lease holds the stream. KEYS: leases, cancels. ARGV: id, now.
const REQUEST_CANCEL: &str = r"
local expires = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0')
if expires < tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], 1)
return 1
";

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

/// The keys of one hub.
#[derive(Debug, Clone)]
struct Keys {
    updates: String,
    ids: String,
    seq: String,
    last_ms: String,
    epoch: String,
    streams: String,
    streams_age: String,
    streams_latest: String,
    leases: String,
    cancels: String,
    readers: String,
    cancel_channel: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let key = |name: &str| format!("{{{prefix}}}:{name}");
        Keys {
            updates: key("updates"),
            ids: key("ids"),
            seq: key("seq"),
            last_ms: key("last-ms"),
            epoch: key("epoch"),
            streams: key("streams"),
            streams_age: key("streams:age"),
            streams_latest: key("streams:latest"),
            leases: key("leases"),
            cancels: key("cancels"),
            readers: key("readers"),
            cancel_channel: key("cancel"),
        }
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

struct Scripts {
    append: Script,
    put_stream: Script,
    heartbeat: Script,
    request_cancel: Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.config.prefix)
            .field("followed", &*self.followed.borrow())
            .finish_non_exhaustive()
    }
}

/// Where a node is in Redis's history: which history it follows (its epoch, see "Reset" in the
/// module docs), what it adds to that history's seqs to make its own (which keep rising across
/// resets), and the last seq it saw given, by its appends or its follower.
#[derive(Debug, Clone)]
struct Position {
    epoch: String,
    offset: u64,
    seen: u64,
}

impl Position {
    fn current(shared: &Mutex<Position>) -> Position {
        shared.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Redis's last seq given is at least this, unless it lost writes: the node saw it given.
    fn floor(&self) -> u64 {
        self.seen - self.offset
    }

    /// The node saw `seq` (its numbering) given in history `epoch`.
    fn saw(shared: &Mutex<Position>, epoch: &str, seq: u64) {
        let mut position = shared.lock().unwrap_or_else(PoisonError::into_inner);
        if position.epoch == epoch {
            position.seen = position.seen.max(seq);
        }
    }
}

/// An append or read that met a history this node has not noticed is new.
fn reset_unseen() -> StoreError {
    backend("the history was reset; this node is catching up")
}

fn backend(error: impl fmt::Display) -> StoreError {
    StoreError::Backend(format!("redis: {error}"))
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
            scripts: Scripts {
                append: Script::new(APPEND),
                put_stream: Script::new(PUT_STREAM),
                heartbeat: Script::new(HEARTBEAT),
                request_cancel: Script::new(REQUEST_CANCEL),
            },
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

/// The update as stored: everything but its seq and time, which are the entry's.
fn encode(draft: &Draft) -> String {
    json!({
        "id": draft.id,
        "topics": draft.topics,
        "data": draft.data,
        "type": draft.event_type,
        "retry": draft.retry,
        "private": draft.private,
    })
    .to_string()
}

fn decode(seq: u64, ms: u64, json: &str) -> Result<Update, StoreError> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(backend)?;
    let text = |key: &str| value[key].as_str().map(str::to_owned);
    let topics = value["topics"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let draft = Draft {
        id: text("id"),
        topics,
        data: text("data").unwrap_or_default(),
        event_type: text("type"),
        retry: value["retry"].as_u64(),
        private: value["private"].as_bool().unwrap_or(false),
    };
    Ok(Update::new(seq, ms, draft)?)
}

fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

/// One stream entry (`[id, [field, value, …]]`) as an update, `offset` added to its seq.
fn entry(value: &Value, offset: u64) -> Result<Update, StoreError> {
    let bad = || backend("a malformed stream entry");
    let Value::Array(parts) = value else { return Err(bad()) };
    let [id, Value::Array(fields)] = parts.as_slice() else { return Err(bad()) };
    let id = std::str::from_utf8(bytes(id).ok_or_else(bad)?).map_err(|_| bad())?;
    let seq = id.split('-').next().and_then(|s| s.parse::<u64>().ok()).ok_or_else(bad)?;
    let (mut json, mut ms) = (None, 0);
    for pair in fields.chunks(2) {
        match (pair.first().and_then(bytes), pair.get(1).and_then(bytes)) {
            (Some(b"u"), Some(value)) => {
                json = Some(std::str::from_utf8(value).map_err(|_| bad())?);
            }
            (Some(b"ms"), Some(value)) => {
                ms = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
            }
            _ => {}
        }
    }
    decode(seq + offset, ms, json.ok_or_else(bad)?)
}

/// The entries of an `XRANGE` reply, `offset` added to their seqs.
fn entries(reply: &Value, offset: u64) -> Result<Vec<Arc<Update>>, StoreError> {
    match reply {
        Value::Array(items) => items.iter().map(|item| entry(item, offset).map(Arc::new)).collect(),
        Value::Nil => Ok(Vec::new()),
        _ => Err(backend("a malformed range reply")),
    }
}

/// Sets a new random epoch if the one `known` (empty: none) is still in force or none is, and
/// returns the epoch in force (see [`NEW_EPOCH`]).
async fn new_epoch(
    connection: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    known: &str,
) -> redis::RedisResult<String> {
    let candidate = uuid::Uuid::new_v4().simple().to_string();
    Script::new(NEW_EPOCH).key(&keys.epoch).arg(known).arg(candidate).invoke_async(connection).await
}

/// What the follower holds.
struct Follower {
    client: Client,
    keys: Keys,
    listener: Arc<dyn CommitListener>,
    followed: watch::Sender<u64>,
    position: Arc<Mutex<Position>>,
    closed: Arc<AtomicBool>,
}

impl Follower {
    /// Redis's history is not the one followed any more: takes the new one (setting it if no
    /// node has yet) and tells the listener, at a seq past every one this node saw. False if
    /// Redis could not be asked (the follower tries again).
    async fn reset(&self, connection: &mut MultiplexedConnection) -> bool {
        let old = Position::current(&self.position);
        let epoch = match new_epoch(connection, &self.keys, &old.epoch).await {
            Ok(id) => id,
            Err(error) => {
                tracing::warn!(%error, "the Redis follower could not take the new epoch");
                return false;
            }
        };
        let at = old.seen + 1;
        tracing::warn!(
            seq = at,
            "Redis's history was reset (it came back without its data): subscribers are told"
        );
        *self.position.lock().unwrap_or_else(PoisonError::into_inner) =
            Position { epoch, offset: at, seen: at };
        self.listener.reset(at);
        self.followed.send_replace(at);
        true
    }
}

/// Follows the stream from `after`, telling the listener of each entry, reconnecting as needed.
async fn follow(follower: Follower, mut after: u64) {
    let mut delay = Duration::from_millis(100);
    let mut connection: Option<MultiplexedConnection> = None;
    while !follower.closed.load(Ordering::Acquire) {
        let mut current = match connection.take() {
            Some(current) => current,
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_millis(FOLLOW_BLOCK_MS + 2_000)));
                match follower.client.get_multiplexed_async_connection_with_config(&config).await {
                    Ok(current) => current,
                    Err(error) => {
                        tracing::warn!(%error, "the Redis follower cannot connect; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(1));
                        continue;
                    }
                }
            }
        };
        let keys = &follower.keys;
        let known = Position::current(&follower.position);
        // The last seq given, read first: below what this node saw given, Redis lost writes.
        // The epoch, read right after the entries: whether they are of the history followed.
        let read: redis::RedisResult<(Option<u64>, Value, Option<String>)> = redis::pipe()
            .cmd("GET")
            .arg(&keys.seq)
            .cmd("XREAD")
            .arg("COUNT")
            .arg(FOLLOW_BATCH)
            .arg("BLOCK")
            .arg(FOLLOW_BLOCK_MS)
            .arg("STREAMS")
            .arg(&keys.updates)
            .arg(format!("{after}-0"))
            .cmd("GET")
            .arg(&keys.epoch)
            .query_async(&mut current)
            .await;
        let (head, reply, epoch) = match read {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(%error, "the Redis follower lost its connection; reconnecting");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        delay = Duration::from_millis(100);
        if epoch.as_deref() != Some(known.epoch.as_str()) || head.unwrap_or(0) < known.floor() {
            if follower.reset(&mut current).await {
                // The new history, from its start.
                after = 0;
            } else {
                tokio::time::sleep(delay).await;
            }
            connection = Some(current);
            continue;
        }
        connection = Some(current);
        // XREAD answers [[stream, [entries]]] (RESP2) or {stream: [entries]} (RESP3), or nil.
        let batch = match &reply {
            Value::Array(streams) => streams.first().and_then(|s| match s {
                Value::Array(pair) => pair.get(1),
                _ => None,
            }),
            Value::Map(streams) => streams.first().map(|(_, entries)| entries),
            _ => None,
        };
        let Some(batch) = batch else { continue };
        match entries(batch, known.offset) {
            Ok(updates) if !updates.is_empty() => {
                if let Some(last) = updates.last() {
                    after = last.seq() - known.offset;
                    Position::saw(&follower.position, &known.epoch, last.seq());
                    follower.listener.committed(&updates);
                    follower.followed.send_replace(last.seq());
                }
            }
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "the Redis follower read a malformed entry"),
        }
    }
}

/// What the age-retention task holds.
struct Retention {
    connection: ConnectionManager,
    keys: Keys,
    max_age: Duration,
    timeout: Duration,
    closed: Arc<AtomicBool>,
}

/// Deletes updates older than the age bound, every second, from whichever node (the script
/// is idempotent: nodes doing it at once delete each entry once).
async fn retain_by_age(retention: Retention) {
    let script = Script::new(EXPIRE);
    let max_age = u64::try_from(retention.max_age.as_millis()).unwrap_or(u64::MAX);
    while !retention.closed.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = now_ms();
        let oldest_kept = now.saturating_sub(max_age);
        let records_before = oldest_kept.min(now.saturating_sub(10 * 60 * 1000));
        let mut connection = retention.connection.clone();
        let keys = &retention.keys;
        let mut invocation = script.key(&keys.updates);
        invocation
            .key(&keys.ids)
            .key(&keys.streams)
            .key(&keys.streams_age)
            .key(&keys.streams_latest)
            .arg(oldest_kept)
            .arg(10_000)
            .arg(records_before);
        let run = invocation.invoke_async::<i64>(&mut connection);
        match tokio::time::timeout(retention.timeout, run).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "retention by age failed"),
            Err(_) => tracing::warn!("retention by age timed out"),
        }
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

impl StreamControl for RedisStore {
    fn heartbeat<'a>(
        &'a self,
        owned: &'a [String],
        read: &'a [String],
    ) -> BoxFuture<'a, Result<Heartbeat, StoreError>> {
        async move {
            let keys = &self.keys;
            let reply: (Vec<String>, Vec<String>) = self
                .run(async |c| {
                    let mut invocation = self.scripts.heartbeat.key(&keys.leases);
                    invocation
                        .key(&keys.cancels)
                        .key(&keys.readers)
                        .arg(now_ms())
                        .arg(LEASE_MS)
                        .arg(READERS_MS)
                        .arg(owned.len());
                    for id in owned.iter().chain(read) {
                        invocation.arg(id);
                    }
                    invocation.invoke_async(c).await
                })
                .await?;
            Ok(Heartbeat { cancelled: reply.0, read_elsewhere: reply.1 })
        }
        .boxed()
    }

    fn release<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let keys = &self.keys;
            self.run(async |c| {
                redis::pipe()
                    .cmd("ZREM")
                    .arg(&keys.leases)
                    .arg(id)
                    .ignore()
                    .cmd("HDEL")
                    .arg(&keys.cancels)
                    .arg(id)
                    .ignore()
                    .cmd("HDEL")
                    .arg(&keys.readers)
                    .arg(id)
                    .ignore()
                    .query_async::<()>(c)
                    .await
            })
            .await
        }
        .boxed()
    }

    fn is_live<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let until: Option<u64> = self
                .run(async |c| {
                    redis::cmd("ZSCORE").arg(&self.keys.leases).arg(id).query_async(c).await
                })
                .await?;
            Ok(until.is_some_and(|until| until >= now_ms()))
        }
        .boxed()
    }

    fn request_cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let keys = &self.keys;
            let live: i64 = self
                .run(async |c| {
                    self.scripts
                        .request_cancel
                        .key(&keys.leases)
                        .key(&keys.cancels)
                        .arg(id)
                        .arg(now_ms())
                        .invoke_async(c)
                        .await
                })
                .await?;
            if live == 0 {
                return Ok(false);
            }
            // The owner hears it now; its next heartbeat would find the flag anyway.
            let _: Result<i64, _> = self
                .run(async |c| {
                    redis::cmd("PUBLISH").arg(&keys.cancel_channel).arg(id).query_async(c).await
                })
                .await;
            Ok(true)
        }
        .boxed()
    }

    fn cancel_requests(&self) -> BoxStream<'static, String> {
        let (client, channel, closed) =
            (self.client.clone(), self.keys.cancel_channel.clone(), Arc::clone(&self.closed));
        futures_util::stream::unfold(None, move |pubsub: Option<redis::aio::PubSubStream>| {
            let (client, channel, closed) = (client.clone(), channel.clone(), Arc::clone(&closed));
            async move {
                let mut pubsub = pubsub;
                loop {
                    if closed.load(Ordering::Acquire) {
                        return None;
                    }
                    let mut current = match pubsub.take() {
                        Some(current) => current,
                        None => match client.get_async_pubsub().await {
                            Ok(mut connection) => {
                                if connection.subscribe(&channel).await.is_err() {
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                    continue;
                                }
                                connection.into_on_message()
                            }
                            Err(_) => {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                continue;
                            }
                        },
                    };
                    match current.next().await {
                        Some(message) => {
                            if let Ok(id) = message.get_payload::<String>() {
                                return Some((id, Some(current)));
                            }
                            pubsub = Some(current);
                        }
                        // The connection ended: subscribe again.
                        None => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        })
        .boxed()
    }

    fn lapsed(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        async move {
            self.run(async |c| {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&self.keys.leases)
                    .arg("-inf")
                    .arg(format!("({}", now_ms()))
                    .arg("LIMIT")
                    .arg(0)
                    .arg(100)
                    .query_async(c)
                    .await
            })
            .await
        }
        .boxed()
    }
}
