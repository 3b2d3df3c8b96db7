//! The answers' coordination across nodes ([`StreamControl`]): producers' leases and
//! heartbeats, readers reported per node, and cancel requests (a flag and a pub/sub channel).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};

use super::RedisStore;
use crate::store::{Heartbeat, StoreError, StreamControl};
use crate::update::now_ms;

/// How long a lease lasts without renewal: a producer renews every second, so a node that
/// died is seen as gone within this (plus the reaper's period).
const LEASE_MS: u64 = 5_000;
/// How long a node's report of readers counts.
const READERS_MS: u64 = 5_000;

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
