//! [`SqliteLog`]: streams in a SQLite file of their own, in WAL mode.
//!
//! A file of its own (beside the hub's): the hub's single writer thread batches appends into
//! group commits, and a second writer on the same file would make it wait on SQLite's lock.
//! Writes here are one transaction each, on one connection; reads use another, and in WAL
//! mode neither waits for the other. Both run on tokio's blocking pool.
//!
//! Layout: `streams (path PRIMARY KEY, version, meta JSON, accessed_ms)` and
//! `records (path, n, data)` keyed by `(path, n)`, so a read from any offset is one range scan.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Log, LogError, Stored};
use crate::meta::Meta;

/// The schema, one step per version (`PRAGMA user_version`). Append steps; never edit one.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE streams (
        path        TEXT    PRIMARY KEY,
        version     INTEGER NOT NULL,
        meta        TEXT    NOT NULL, -- crate::Meta as JSON
        accessed_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE records (
        path TEXT    NOT NULL,
        n    INTEGER NOT NULL, -- from 1
        data BLOB    NOT NULL,
        PRIMARY KEY (path, n)
    ) WITHOUT ROWID;
"];

/// How long a connection waits for the other's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Streams in one SQLite file; they survive restarts and `kill -9` (every write commits
/// before it is answered).
#[derive(Debug, Clone)]
pub struct SqliteLog {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
}

fn backend(error: impl std::fmt::Display) -> LogError {
    LogError::Backend(error.to_string())
}

impl SqliteLog {
    /// Opens (or creates) the file at `path`, and the folders it is in, and brings its layout
    /// up to date.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                LogError::Backend(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let writer = Connection::open(path).map_err(backend)?;
        writer.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        writer
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(backend)?;
        let version: usize =
            writer.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(backend)?;
        if version > MIGRATIONS.len() {
            return Err(LogError::Corrupt(format!(
                "{} has stream layout {version}, newer than this build's {}",
                path.display(),
                MIGRATIONS.len()
            )));
        }
        for (step, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            writer
                .execute_batch(&format!(
                    "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
                    step + 1
                ))
                .map_err(backend)?;
        }
        let reader = Connection::open(path).map_err(backend)?;
        reader.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        Ok(SqliteLog { writer: Arc::new(Mutex::new(writer)), reader: Arc::new(Mutex::new(reader)) })
    }

    /// Runs `job` on a connection, on the blocking pool.
    fn run<T: Send + 'static>(
        connection: &Arc<Mutex<Connection>>,
        job: impl FnOnce(&mut Connection) -> Result<T, LogError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, LogError>> {
        let connection = Arc::clone(connection);
        async move {
            tokio::task::spawn_blocking(move || job(&mut connection.lock().unwrap()))
                .await
                .map_err(backend)?
        }
        .boxed()
    }
}

fn encode(meta: &Meta) -> String {
    serde_json::to_string(meta).expect("a meta serialises")
}

fn insert_records(
    tx: &rusqlite::Transaction<'_>,
    path: &str,
    first: u64,
    records: &[Bytes],
) -> rusqlite::Result<()> {
    let mut insert =
        tx.prepare_cached("INSERT INTO records (path, n, data) VALUES (?1, ?2, ?3)")?;
    for (n, record) in (first..).zip(records) {
        insert.execute(params![path, n as i64, &record[..]])?;
    }
    Ok(())
}

impl Log for SqliteLog {
    fn load<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Stored>, LogError>> {
        let path = path.to_owned();
        Self::run(&self.reader, move |db| {
            let row = db
                .prepare_cached("SELECT version, meta, accessed_ms FROM streams WHERE path = ?1")
                .and_then(|mut q| {
                    q.query_row([&path], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
                    })
                    .optional()
                })
                .map_err(backend)?;
            row.map(|(version, meta, accessed_ms)| {
                Ok(Stored {
                    version: version as u64,
                    meta: serde_json::from_str(&meta)
                        .map_err(|e| LogError::Corrupt(e.to_string()))?,
                    accessed_ms: accessed_ms as u64,
                })
            })
            .transpose()
        })
    }

    fn insert<'a>(
        &'a self,
        path: &'a str,
        meta: &'a Meta,
        records: &'a [Bytes],
        now_ms: u64,
    ) -> BoxFuture<'a, Result<bool, LogError>> {
        let (path, meta, records) = (path.to_owned(), encode(meta), records.to_vec());
        Self::run(&self.writer, move |db| {
            let tx =
                db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let inserted = tx
                .execute(
                    "INSERT INTO streams (path, version, meta, accessed_ms) VALUES (?1, 1, ?2, ?3)
                     ON CONFLICT (path) DO NOTHING",
                    params![path, meta, now_ms as i64],
                )
                .map_err(backend)?
                == 1;
            if inserted {
                // A path removed earlier left no records behind, but be sure.
                tx.execute("DELETE FROM records WHERE path = ?1", [&path]).map_err(backend)?;
                insert_records(&tx, &path, 1, &records).map_err(backend)?;
            }
            tx.commit().map_err(backend)?;
            Ok(inserted)
        })
    }

    fn update<'a>(
        &'a self,
        path: &'a str,
        version: u64,
        meta: &'a Meta,
        records: &'a [Bytes],
        now_ms: u64,
    ) -> BoxFuture<'a, Result<bool, LogError>> {
        let first = meta.tail.records + 1 - records.len() as u64;
        let (path, meta, records) = (path.to_owned(), encode(meta), records.to_vec());
        Self::run(&self.writer, move |db| {
            let tx =
                db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let updated = tx
                .execute(
                    "UPDATE streams SET version = version + 1, meta = ?3, accessed_ms = max(accessed_ms, ?4)
                     WHERE path = ?1 AND version = ?2",
                    params![path, version as i64, meta, now_ms as i64],
                )
                .map_err(backend)?
                == 1;
            if updated {
                insert_records(&tx, &path, first, &records).map_err(backend)?;
                tx.commit().map_err(backend)?;
            }
            Ok(updated)
        })
    }

    fn records<'a>(
        &'a self,
        path: &'a str,
        after: u64,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Vec<Bytes>, LogError>> {
        let path = path.to_owned();
        Self::run(&self.reader, move |db| {
            let mut query = db
                .prepare_cached("SELECT data FROM records WHERE path = ?1 AND n > ?2 ORDER BY n")
                .map_err(backend)?;
            let rows = query
                .query_map(params![path, after.min(i64::MAX as u64) as i64], |r| {
                    r.get::<_, Vec<u8>>(0).map(Bytes::from)
                })
                .map_err(backend)?;
            super::take_fitting(rows, max_bytes).map_err(backend)
        })
    }

    fn remove<'a>(&'a self, path: &'a str, version: u64) -> BoxFuture<'a, Result<bool, LogError>> {
        let path = path.to_owned();
        Self::run(&self.writer, move |db| {
            let tx =
                db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let removed = tx
                .execute(
                    "DELETE FROM streams WHERE path = ?1 AND version = ?2",
                    params![path, version as i64],
                )
                .map_err(backend)?
                == 1;
            if removed {
                tx.execute("DELETE FROM records WHERE path = ?1", [&path]).map_err(backend)?;
                tx.commit().map_err(backend)?;
            }
            Ok(removed)
        })
    }

    fn touch<'a>(&'a self, path: &'a str, now_ms: u64) -> BoxFuture<'a, Result<(), LogError>> {
        let path = path.to_owned();
        Self::run(&self.writer, move |db| {
            db.execute(
                "UPDATE streams SET accessed_ms = max(accessed_ms, ?2) WHERE path = ?1",
                params![path, now_ms as i64],
            )
            .map_err(backend)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conforms_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("streams.db");
        crate::testing::log_conforms(&SqliteLog::open(&file).unwrap()).await;
        let reopened = SqliteLog::open(&file).unwrap();
        assert!(reopened.load("a/b c/ünïcode").await.unwrap().is_some());
    }

    /// `sluice serve`'s default store is `./sluice-data/sluice.db`: on a first start the
    /// folder is not there yet, and the streams' file beside the hub's may be opened first.
    #[test]
    fn makes_the_folders_it_is_in() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sluice-data/deeper/streams.db");
        SqliteLog::open(&file).unwrap();
        assert!(file.exists());
    }
}
