//! The follower: each node's own connection reading the stream in order (`XREAD BLOCK`),
//! telling its listener of every entry, reconnecting with backoff, and noticing a reset.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Value};
use tokio::sync::watch;

use super::codec::entries;
use super::keys::Keys;
use super::position::Position;
use super::scripts::new_epoch;
use crate::store::CommitListener;

/// Entries read per `XREAD`.
const FOLLOW_BATCH: usize = 512;
/// How long one `XREAD` blocks.
const FOLLOW_BLOCK_MS: u64 = 1_000;

/// What the follower holds.
pub(super) struct Follower {
    pub(super) client: Client,
    pub(super) keys: Keys,
    pub(super) listener: Arc<dyn CommitListener>,
    pub(super) followed: watch::Sender<u64>,
    pub(super) position: Arc<Mutex<Position>>,
    pub(super) closed: Arc<AtomicBool>,
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
pub(super) async fn follow(follower: Follower, mut after: u64) {
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
