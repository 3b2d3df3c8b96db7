//! The [`Ledger`] of a [`SqliteStore`]: keys in `api_keys`, counters in `key_usage`. Writes go
//! through the writer thread like appends (each in a transaction of its own, so a charge reads
//! and counts in one step); reads use the read connections.

use futures_util::future::BoxFuture;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{Request, SqliteStore, backend};
use crate::store::{Charge, Charged, KeyRecord, KeyUsage, Ledger, Spend, StoreError};

/// A write to the ledger, for the writer thread, with where to answer.
pub(super) enum KeyWrite {
    Put(KeyRecord, oneshot::Sender<Result<(), StoreError>>),
    Revoke(String, u64, oneshot::Sender<Result<bool, StoreError>>),
    Charge(Charge, oneshot::Sender<Result<Charged, StoreError>>),
    Spend(Spend, oneshot::Sender<Result<(), StoreError>>),
}

impl KeyWrite {
    /// Does it on the writer's connection and answers.
    pub(super) fn apply(self, conn: &mut Connection) {
        match self {
            KeyWrite::Put(key, reply) => drop(reply.send(put(conn, &key))),
            KeyWrite::Revoke(id, now, reply) => drop(reply.send(revoke(conn, &id, now))),
            KeyWrite::Charge(charge, reply) => drop(reply.send(charge_key(conn, &charge))),
            KeyWrite::Spend(spend, reply) => drop(reply.send(spend_key(conn, &spend))),
        }
    }

    /// Answers that the store is closed.
    pub(super) fn refuse(self) {
        match self {
            KeyWrite::Put(_, reply) | KeyWrite::Spend(_, reply) => {
                drop(reply.send(Err(StoreError::Closed)));
            }
            KeyWrite::Revoke(_, _, reply) => drop(reply.send(Err(StoreError::Closed))),
            KeyWrite::Charge(_, reply) => drop(reply.send(Err(StoreError::Closed))),
        }
    }
}

fn put(conn: &Connection, key: &KeyRecord) -> Result<(), StoreError> {
    let limits =
        serde_json::to_string(&key.limits).map_err(|e| StoreError::Backend(e.to_string()))?;
    let inserted = conn
        .prepare_cached(
            "INSERT INTO api_keys (id, name, hash, prefix, limits, created_ms, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
        )
        .and_then(|mut insert| {
            insert.execute(params![
                key.id,
                key.name,
                key.hash,
                key.prefix,
                limits,
                key.created_ms,
                key.expires_ms
            ])
        })
        .map_err(backend)?;
    if inserted == 0 {
        return Err(StoreError::Conflict(key.name.clone()));
    }
    Ok(())
}

fn revoke(conn: &Connection, id: &str, now: u64) -> Result<bool, StoreError> {
    let revoked = conn
        .prepare_cached("UPDATE api_keys SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL")
        .and_then(|mut update| update.execute(params![id, now]))
        .map_err(backend)?;
    Ok(revoked == 1)
}

/// The counters of key `id` (zero for a key never charged).
fn load(conn: &Connection, id: &str) -> rusqlite::Result<KeyUsage> {
    let found = conn
        .prepare_cached(&format!("{SELECT_USAGE} WHERE id = ?1"))?
        .query_row([id], |row| usage_row(row).map(|(_, usage)| usage))
        .optional()?;
    Ok(found.unwrap_or_default())
}

fn save(conn: &Connection, id: &str, u: &KeyUsage) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO key_usage (id, requests, prompt_tokens, completion_tokens,
             cancelled, cancelled_tokens, minute, minute_requests, minute_tokens, period,
             period_tokens)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        id,
        u.requests,
        u.prompt_tokens,
        u.completion_tokens,
        u.cancelled,
        u.cancelled_tokens,
        u.minute,
        u.minute_requests,
        u.minute_tokens,
        u.period,
        u.period_tokens
    ])
    .map(drop)
}

/// Changes key `id`'s counters with `change` in one transaction: `change` gives the answer
/// and whether to save the counters.
fn update<T>(
    conn: &mut Connection,
    id: &str,
    change: impl FnOnce(&rusqlite::Transaction<'_>, &mut KeyUsage) -> rusqlite::Result<(T, bool)>,
) -> Result<T, StoreError> {
    let run = || {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut usage = load(&tx, id)?;
        let (answer, changed) = change(&tx, &mut usage)?;
        if changed {
            save(&tx, id, &usage)?;
        }
        tx.commit()?;
        Ok(answer)
    };
    run().map_err(backend)
}

fn charge_key(conn: &mut Connection, charge: &Charge) -> Result<Charged, StoreError> {
    update(conn, &charge.key, |tx, usage| {
        if charge.revocable {
            let revoked: Option<Option<u64>> = tx
                .prepare_cached("SELECT revoked_ms FROM api_keys WHERE id = ?1")?
                .query_row([&charge.key], |r| r.get(0))
                .optional()?;
            if matches!(revoked, Some(Some(_))) {
                return Ok((Charged::Revoked, false));
            }
        }
        let charged = usage.charge(charge);
        Ok((charged, charged == Charged::Admitted))
    })
}

fn spend_key(conn: &mut Connection, spend: &Spend) -> Result<(), StoreError> {
    update(conn, &spend.key, |_, usage| {
        usage.spend(spend);
        Ok(((), true))
    })
}

const SELECT_USAGE: &str = "SELECT id, requests, prompt_tokens, completion_tokens, cancelled,
    cancelled_tokens, minute, minute_requests, minute_tokens, period, period_tokens
    FROM key_usage";

fn usage_row(row: &Row<'_>) -> rusqlite::Result<(String, KeyUsage)> {
    let usage = KeyUsage {
        requests: row.get(1)?,
        prompt_tokens: row.get(2)?,
        completion_tokens: row.get(3)?,
        cancelled: row.get(4)?,
        cancelled_tokens: row.get(5)?,
        minute: row.get(6)?,
        minute_requests: row.get(7)?,
        minute_tokens: row.get(8)?,
        period: row.get(9)?,
        period_tokens: row.get(10)?,
    };
    Ok((row.get(0)?, usage))
}

fn key_row(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    let limits: String = row.get(4)?;
    let limits = serde_json::from_str(&limits).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(KeyRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        hash: row.get(2)?,
        prefix: row.get(3)?,
        limits,
        created_ms: row.get(5)?,
        expires_ms: row.get(6)?,
        revoked_ms: row.get(7)?,
    })
}

impl SqliteStore {
    /// Sends `write` (made with its reply channel) to the writer and waits for its answer.
    fn write_key<T: Send + 'static>(
        &self,
        write: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> KeyWrite,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        let (reply, answer) = oneshot::channel();
        let sent = self.send(Request::Keys(write(reply)));
        Box::pin(async move {
            sent?;
            answer.await.map_err(|_| super::writer_gone())?
        })
    }
}

impl Ledger for SqliteStore {
    fn put_key(&self, key: KeyRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        self.write_key(|reply| KeyWrite::Put(key, reply))
    }

    fn keys(&self) -> BoxFuture<'_, Result<Vec<KeyRecord>, StoreError>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT id, name, hash, prefix, limits, created_ms, expires_ms, revoked_ms
                 FROM api_keys ORDER BY created_ms, id",
            )?
            .query_map([], key_row)?
            .collect()
        })
    }

    fn revoke_key<'a>(
        &'a self,
        id: &'a str,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.write_key(|reply| KeyWrite::Revoke(id.to_owned(), now_ms, reply))
    }

    fn charge<'a>(&'a self, charge: &'a Charge) -> BoxFuture<'a, Result<Charged, StoreError>> {
        self.write_key(|reply| KeyWrite::Charge(charge.clone(), reply))
    }

    fn spend<'a>(&'a self, spend: &'a Spend) -> BoxFuture<'a, Result<(), StoreError>> {
        self.write_key(|reply| KeyWrite::Spend(spend.clone(), reply))
    }

    fn usage(&self) -> BoxFuture<'_, Result<Vec<(String, KeyUsage)>, StoreError>> {
        self.read(|conn| conn.prepare_cached(SELECT_USAGE)?.query_map([], usage_row)?.collect())
    }
}
