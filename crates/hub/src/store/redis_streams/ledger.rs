//! The [`Ledger`] of a [`RedisStore`]: keys as JSON records in `{P}:apikeys` (names of the
//! keys not revoked in `{P}:apikeys:names`, revocations in `{P}:apikeys:revoked`), and every
//! key's counters as fields `{id}:{counter}` of one hash, `{P}:usage`. A charge or a spend is
//! one script: one round trip, atomic on every node.

use std::collections::HashMap;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::RedisStore;
use super::error::backend;
use crate::store::{Charge, Charged, KeyRecord, KeyUsage, Ledger, Limit, Spend, StoreError};

/// A limit for a script: -1 for none.
fn limit(value: Option<u64>) -> i64 {
    value.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

impl Ledger for RedisStore {
    fn put_key(&self, key: KeyRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let record = serde_json::to_string(&key).map_err(backend)?;
            let keys = &self.keys;
            let put: i64 = self
                .run(async |c| {
                    self.scripts
                        .put_key
                        .key(&keys.api_keys)
                        .key(&keys.key_names)
                        .arg(&key.id)
                        .arg(&key.name)
                        .arg(&record)
                        .invoke_async(c)
                        .await
                })
                .await?;
            if put == 0 {
                return Err(StoreError::Conflict(key.name));
            }
            Ok(())
        }
        .boxed()
    }

    fn keys(&self) -> BoxFuture<'_, Result<Vec<KeyRecord>, StoreError>> {
        async move {
            let (records, revoked): (HashMap<String, String>, HashMap<String, u64>) = self
                .run(async |c| {
                    redis::pipe()
                        .cmd("HGETALL")
                        .arg(&self.keys.api_keys)
                        .cmd("HGETALL")
                        .arg(&self.keys.revoked_keys)
                        .query_async(c)
                        .await
                })
                .await?;
            let mut keys = records
                .values()
                .map(|record| {
                    let mut key: KeyRecord = serde_json::from_str(record).map_err(backend)?;
                    key.revoked_ms = revoked.get(&key.id).copied();
                    Ok(key)
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            keys.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
            Ok(keys)
        }
        .boxed()
    }

    fn revoke_key<'a>(
        &'a self,
        id: &'a str,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let keys = &self.keys;
            let revoked: i64 = self
                .run(async |c| {
                    self.scripts
                        .revoke_key
                        .key(&keys.api_keys)
                        .key(&keys.key_names)
                        .key(&keys.revoked_keys)
                        .arg(id)
                        .arg(now_ms)
                        .invoke_async(c)
                        .await
                })
                .await?;
            Ok(revoked == 1)
        }
        .boxed()
    }

    fn charge<'a>(&'a self, charge: &'a Charge) -> BoxFuture<'a, Result<Charged, StoreError>> {
        async move {
            let keys = &self.keys;
            let reply: i64 = self
                .run(async |c| {
                    self.scripts
                        .charge
                        .key(&keys.usage)
                        .key(&keys.revoked_keys)
                        .arg(&charge.key)
                        .arg(charge.minute)
                        .arg(charge.period)
                        .arg(limit(charge.requests_per_minute))
                        .arg(limit(charge.tokens_per_minute))
                        .arg(limit(charge.token_budget))
                        .arg(u8::from(charge.revocable))
                        .invoke_async(c)
                        .await
                })
                .await?;
            match reply {
                0 => Ok(Charged::Admitted),
                1 => Ok(Charged::Over(Limit::RequestsPerMinute)),
                2 => Ok(Charged::Over(Limit::TokensPerMinute)),
                3 => Ok(Charged::Over(Limit::Budget)),
                -1 => Ok(Charged::Revoked),
                other => Err(backend(format!("unexpected charge reply {other}"))),
            }
        }
        .boxed()
    }

    fn spend<'a>(&'a self, spend: &'a Spend) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let keys = &self.keys;
            let _: i64 = self
                .run(async |c| {
                    self.scripts
                        .spend
                        .key(&keys.usage)
                        .arg(&spend.key)
                        .arg(spend.minute)
                        .arg(spend.period)
                        .arg(spend.prompt_tokens)
                        .arg(spend.completion_tokens)
                        .arg(u8::from(spend.cancelled))
                        .invoke_async(c)
                        .await
                })
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn usage(&self) -> BoxFuture<'_, Result<Vec<(String, KeyUsage)>, StoreError>> {
        async move {
            let fields: HashMap<String, u64> = self
                .run(async |c| redis::cmd("HGETALL").arg(&self.keys.usage).query_async(c).await)
                .await?;
            let mut usage: HashMap<String, KeyUsage> = HashMap::new();
            for (field, value) in fields {
                let Some((id, counter)) = field.rsplit_once(':') else { continue };
                let counters = usage.entry(id.to_owned()).or_default();
                let slot = match counter {
                    "requests" => &mut counters.requests,
                    "prompt_tokens" => &mut counters.prompt_tokens,
                    "completion_tokens" => &mut counters.completion_tokens,
                    "cancelled" => &mut counters.cancelled,
                    "cancelled_tokens" => &mut counters.cancelled_tokens,
                    "minute" => &mut counters.minute,
                    "minute_requests" => &mut counters.minute_requests,
                    "minute_tokens" => &mut counters.minute_tokens,
                    "period" => &mut counters.period,
                    "period_tokens" => &mut counters.period_tokens,
                    _ => continue,
                };
                *slot = value;
            }
            Ok(usage.into_iter().collect())
        }
        .boxed()
    }
}
