//! [`SqliteStore`]: the embedded durable store, one SQLite file in WAL mode.
//!
//! ```
//! use std::sync::Arc;
//! use sluice_hub::{Draft, Fanout, SqliteConfig, SqliteStore, Store};
//!
//! # tokio_test_block_on(async {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("hub.db");
//! let store = SqliteStore::open(SqliteConfig::new(&path), Fanout::new().listener())?;
//! let draft = Draft { id: Some("urn:uuid:1".to_owned()), ..Draft::new("/books/1", "in stock") };
//! let update = store.append(draft).await?; // resolves once the update is on disk
//! assert_eq!(store.find("urn:uuid:1").await?, Some(update.seq()));
//! store.close().await?;
//!
//! // Reopened, the history is there and the order goes on where it stopped.
//! let store = SqliteStore::open(SqliteConfig::new(&path), Fanout::new().listener())?;
//! assert_eq!(store.read_after(0, 10).await?[0].data(), "in stock");
//! let next = store.append(Draft { id: Some("urn:uuid:2".to_owned()), ..Draft::new("/t", "x") });
//! assert!(next.await?.seq() > update.seq());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(f)
//! # }
//! ```
//!
//! # One writer thread, group commit
//!
//! Every append goes through one channel to one thread that owns the only writing
//! connection. It takes whatever requests are waiting (up to a bound) and writes them in *one*
//! transaction, then tells the [`CommitListener`] and answers each publisher.
//!
//! - **Throughput under concurrent publishers.** A commit has a cost whatever it holds: a
//!   write to the log, the writer's wake-up, and with [`Synchronous::Full`] an `fsync`. One
//!   transaction per append makes sixteen publishers pay sixteen of them in a row; grouped,
//!   the updates that arrived while the previous commit was under way share the next one.
//!   The busier the hub, the bigger the groups, and the cost per update falls just when it
//!   matters. No timer is involved: a lone publisher is never made to wait for company.
//! - **One order.** A single writer gives seqs in the order it writes, so the order of seqs,
//!   the order of commits and the order the listener hears are the same order by
//!   construction. There is no lock to contend for between publishers (SQLite would
//!   serialise the writers anyway, with busy retries instead of a queue).
//!
//! Reads ([`Store::read_after`], [`Store::find`]) use their own read-only connections on
//! tokio's blocking pool: in WAL mode readers see the last committed state and neither wait
//! for the writer nor hold it up.
//!
//! # Durability
//!
//! An append resolves only after its transaction has committed, so an acknowledged update is
//! in the file (or its write-ahead log). How far "in the file" goes is
//! [`SqliteConfig::synchronous`]:
//!
//! - [`Synchronous::Normal`] (the default): the log is `fsync`ed at checkpoints only. An
//!   acknowledged update survives a killed process (`kill -9`, a panic, an OOM kill): the
//!   commit has written it to the log before the append resolves, and the operating system
//!   keeps what was written. A power loss or kernel crash may lose the last commits before
//!   it. The file is never corrupted either way.
//! - [`Synchronous::Full`]: the log is `fsync`ed at every commit. An acknowledged update
//!   survives a power loss too.
//!
//! Normal is the default because an `fsync` per commit costs several times the throughput
//! for protection against power loss only, which a replay buffer can mostly do without.
//! Measured with
//! `benches/sqlite_append.rs` on a 2-core VM with an ext4 disk (shared, so the figures are
//! the range of two runs), one publisher awaiting each append made 7,400 to 12,100 appends/s
//! with Normal and 460 to 790 with Full; sixteen concurrent publishers 51,000 to 59,000/s and
//! 8,900 to 10,200/s (group commit putting 10 to 12 updates in each transaction). Choose
//! Full where an acknowledged update must outlive the machine.
//!
//! # Retention
//!
//! [`SqliteConfig::max_updates`] and [`SqliteConfig::max_age`] bound the history. The writer
//! thread enforces them between batches, at most every half second (and when idle), deleting
//! the oldest updates; [`SqliteStore::enforce_retention`] runs it at once. A seq is never
//! given twice: the highest one given is kept in a `meta` table, even when retention has
//! deleted every update.
//!
//! # Layout
//!
//! One table `updates` (`seq INTEGER PRIMARY KEY`, `id TEXT UNIQUE`, the topics as a JSON
//! array, `data`, `event_type`, `retry`, `private`, `published_ms`) and one table `meta`;
//! `streams` holds answers' records, `api_keys` and `key_usage` the [`Ledger`]'s keys and
//! counters. The layout's version is SQLite's `PRAGMA user_version`; opening a file migrates it forward,
//! and a file from a newer version is refused.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use rusqlite::types::Type;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use self::ledger::KeyWrite;
use super::{CommitListener, Ledger, Store, StoreError, StreamRecord};
use crate::update::{Draft, Update, now_ms};

mod ledger;

/// The most appends written in one transaction.
const MAX_BATCH: usize = 512;
/// How often, at most, the writer enforces retention on its own.
const RETENTION_EVERY: Duration = Duration::from_millis(500);
/// The most updates one retention transaction deletes, so that a large backlog of expired
/// updates (after the limits were lowered, say) does not hold up appends for long.
const RETENTION_CHUNK: u64 = 10_000;
/// Requests queued for the writer at most; past it, appends wait (asynchronously) for room,
/// so a burst of publishers slows down instead of growing memory without bound.
const QUEUE_BOUND: usize = 8192;
/// How long a stream record outlives the oldest kept update at least: a record is written
/// before its stream's first event, and must not be taken for an expired one meanwhile.
const STREAM_RECORD_SLACK_MS: u64 = 10 * 60 * 1000;
/// Idle read connections kept open for the next read.
const IDLE_READERS: usize = 4;
/// How long a connection waits for a lock held by another before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema, one step per version: step `n` takes a file from `user_version` `n` to
/// `n + 1`. Append steps; never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE updates (
        seq          INTEGER PRIMARY KEY,
        id           TEXT    NOT NULL UNIQUE,
        topics       TEXT    NOT NULL, -- a JSON array of strings, the canonical topic first
        data         TEXT    NOT NULL,
        event_type   TEXT,
        retry        INTEGER,          -- the u64 bit-cast to i64
        private      INTEGER NOT NULL,
        published_ms INTEGER NOT NULL
    );
    CREATE TABLE meta (
        key   TEXT    PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO meta (key, value) VALUES ('high_water_seq', 0);
",
    "
    CREATE TABLE streams (
        id         TEXT    PRIMARY KEY,
        token_hash BLOB    NOT NULL, -- SHA-256 of the capability token, never the token
        kind       TEXT    NOT NULL,
        created_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
",
    "
    ALTER TABLE streams ADD COLUMN key TEXT; -- what a reader finds the stream by (a chat's id)
    CREATE INDEX streams_by_key ON streams (key, created_ms) WHERE key IS NOT NULL;
",
    "
    CREATE TABLE api_keys (
        id         TEXT    PRIMARY KEY,
        name       TEXT    NOT NULL,
        hash       BLOB    NOT NULL, -- SHA-256 of the key, never the key
        prefix     TEXT    NOT NULL,
        limits     TEXT    NOT NULL, -- JSON
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER,
        revoked_ms INTEGER
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX api_keys_live_names ON api_keys (name) WHERE revoked_ms IS NULL;
    CREATE TABLE key_usage (
        id                TEXT    PRIMARY KEY, -- a key's id, of api_keys or of the settings
        requests          INTEGER NOT NULL,
        prompt_tokens     INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cancelled         INTEGER NOT NULL,
        cancelled_tokens  INTEGER NOT NULL,
        minute            INTEGER NOT NULL,
        minute_requests   INTEGER NOT NULL,
        minute_tokens     INTEGER NOT NULL,
        period            INTEGER NOT NULL,
        period_tokens     INTEGER NOT NULL
    ) WITHOUT ROWID;
",
];

const SELECT_STREAM: &str = "SELECT id, token_hash, kind, created_ms, key FROM streams";

fn stream_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<StreamRecord> {
    Ok(StreamRecord {
        id: row.get(0)?,
        token_hash: row.get(1)?,
        kind: row.get(2)?,
        created_ms: row.get(3)?,
        key: row.get(4)?,
    })
}

const INSERT_UPDATE: &str = "
    INSERT INTO updates (seq, id, topics, data, event_type, retry, private, published_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
    ON CONFLICT (id) DO NOTHING";
const SELECT_UPDATES: &str = "
    SELECT seq, id, topics, data, event_type, retry, private, published_ms
    FROM updates WHERE seq > ?1 ORDER BY seq LIMIT ?2";
/// The highest seq ever given: the mark in `meta`, or a stored seq should one be higher.
const SELECT_HIGH_WATER: &str = "
    SELECT max(value, coalesce((SELECT max(seq) FROM updates), 0))
    FROM meta WHERE key = 'high_water_seq'";
const UPDATE_HIGH_WATER: &str = "UPDATE meta SET value = ?1 WHERE key = 'high_water_seq'";

/// How hard a commit pushes to the disk before the append is acknowledged.
///
/// See the [module docs](self#durability).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Synchronous {
    /// `PRAGMA synchronous = FULL`: every commit is `fsync`ed. Survives power loss.
    Full,
    /// `PRAGMA synchronous = NORMAL`: `fsync` at checkpoints only. Survives a killed process,
    /// may lose the last commits on power loss. The default.
    #[default]
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

/// Where and how a [`SqliteStore`] keeps its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteConfig {
    /// The database file; created (with its parent directories) if missing. SQLite keeps
    /// `-wal` and `-shm` files beside it.
    pub path: PathBuf,
    /// Keep at most this many of the latest updates (`None`: no bound by count).
    pub max_updates: Option<u64>,
    /// Delete updates older than this (`None`: no bound by age).
    pub max_age: Option<Duration>,
    /// How far a commit goes before an append is acknowledged.
    pub synchronous: Synchronous,
}

impl SqliteConfig {
    /// A file at `path`, unbounded history, [`Synchronous::Normal`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteConfig {
            path: path.into(),
            max_updates: None,
            max_age: None,
            synchronous: Synchronous::default(),
        }
    }
}

/// Counters of what a [`SqliteStore`]'s writer has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteStats {
    /// Append transactions committed (one per group of appends).
    pub transactions: u64,
    /// Updates committed.
    pub updates: u64,
    /// The most updates committed in one transaction.
    pub largest_batch: u64,
    /// Updates deleted by retention.
    pub expired: u64,
}

#[derive(Debug, Default)]
struct Counters {
    transactions: AtomicU64,
    updates: AtomicU64,
    largest_batch: AtomicU64,
    expired: AtomicU64,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Request {
    Append { draft: Draft, reply: Reply<Arc<Update>>, _room: OwnedSemaphorePermit },
    PutStream { record: StreamRecord, reply: Reply<()>, _room: OwnedSemaphorePermit },
    Retention { reply: Reply<u64> },
    Keys(KeyWrite),
    Close { reply: Reply<()> },
}

/// The durable store: one SQLite file in WAL mode, written by one thread with group commit.
///
/// See the [module docs](self) for the design. Appends are queued when [`Store::append`] is
/// called (not when its future is first polled), so appends called one after the other get
/// increasing seqs; an append whose future is dropped may still be committed.
pub struct SqliteStore {
    /// The writer's queue; `None` once closed.
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    /// Room in the writer's queue: each append holds a permit until the writer has taken it.
    room: Arc<Semaphore>,
    writer: Mutex<Option<thread::JoinHandle<()>>>,
    readers: Arc<Readers>,
    counters: Arc<Counters>,
    /// Why the writer's last commit failed, until one succeeds: reads go on while writes fail
    /// (a full disk), so only a commit tells that writes work again.
    failure: Arc<Mutex<Option<String>>>,
    path: PathBuf,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("closed", &lock(&self.requests).is_none())
            .field("stats", &self.stats())
            .finish()
    }
}

impl SqliteStore {
    /// Opens (or creates) the store at `config.path`, migrating its layout forward, and
    /// starts its writer thread. `listener` hears every update committed from now on.
    ///
    /// Blocks while the file is opened (and recovered, after a crash).
    pub fn open(
        config: SqliteConfig,
        listener: Arc<dyn CommitListener>,
    ) -> Result<Self, StoreError> {
        let SqliteConfig { path, max_updates, max_age, synchronous } = config;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Backend(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let mut conn = open_writer(&path, synchronous).map_err(backend)?;
        migrate(&mut conn)?;
        let last_published: u64 = conn
            .query_row("SELECT published_ms FROM updates ORDER BY seq DESC LIMIT 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(backend)?
            .unwrap_or(0);
        let high_water: u64 =
            conn.query_row(SELECT_HIGH_WATER, [], |r| r.get(0)).map_err(backend)?;
        listener.starts_after(high_water);

        let readers = Arc::new(Readers { path: path.clone(), idle: Mutex::new(Vec::new()) });
        // Open one reader now, so that a file readers cannot open fails here, not later.
        readers.with(|_| Ok(()))?;

        let counters = Arc::new(Counters::default());
        let failure = Arc::new(Mutex::new(None));
        let (sender, receiver) = mpsc::channel();
        let writer = Writer {
            conn,
            requests: receiver,
            listener,
            counters: Arc::clone(&counters),
            failure: Arc::clone(&failure),
            max_updates,
            max_age,
            last_published,
            retention_due: Instant::now(),
        };
        let handle = thread::Builder::new()
            .name("sluice-sqlite-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            requests: Mutex::new(Some(sender)),
            room: Arc::new(Semaphore::new(QUEUE_BOUND)),
            writer: Mutex::new(Some(handle)),
            readers,
            counters,
            failure,
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> SqliteStats {
        let c = &self.counters;
        SqliteStats {
            transactions: c.transactions.load(Ordering::Relaxed),
            updates: c.updates.load(Ordering::Relaxed),
            largest_batch: c.largest_batch.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
        }
    }

    /// Enforces the retention limits now, after every append queued before this call, and
    /// returns how many updates it deleted.
    pub async fn enforce_retention(&self) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Retention { reply })?;
        answer.await.map_err(|_| writer_gone())?
    }

    fn send(&self, request: Request) -> Result<(), StoreError> {
        match &*lock(&self.requests) {
            None => Err(StoreError::Closed),
            Some(sender) => sender.send(request).map_err(|_| writer_gone()),
        }
    }

    /// Queues a request that needs room in the queue, waiting for room first.
    fn send_with_room<T: Send + 'static>(
        &self,
        request: impl FnOnce(Reply<T>, OwnedSemaphorePermit) -> Request + Send + 'static,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        let (reply, answer) = oneshot::channel();
        // Appends called one after the other must keep their order: take room at once when
        // there is some, and only wait (in the future) when the queue is full.
        let queued = match Arc::clone(&self.room).try_acquire_owned() {
            Ok(room) => self.send(request(reply, room)).map(|()| None),
            Err(_) => Ok(Some((reply, request))),
        };
        async move {
            match queued? {
                None => {}
                Some((reply, request)) => {
                    let room = Arc::clone(&self.room)
                        .acquire_owned()
                        .await
                        .map_err(|_| StoreError::Closed)?;
                    self.send(request(reply, room))?;
                }
            }
            answer.await.map_err(|_| writer_gone())?
        }
        .boxed()
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let readers = Arc::clone(&self.readers);
        async move {
            tokio::task::spawn_blocking(move || readers.with(f))
                .await
                .map_err(|e| StoreError::Backend(format!("a read failed: {e}")))?
        }
        .boxed()
    }
}

impl Store for SqliteStore {
    fn append(&self, draft: Draft) -> BoxFuture<'_, Result<Arc<Update>, StoreError>> {
        self.send_with_room(move |reply, room| Request::Append { draft, reply, _room: room })
    }

    fn put_stream(&self, record: StreamRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        self.send_with_room(move |reply, room| Request::PutStream { record, reply, _room: room })
    }

    fn stream(&self, id: &str) -> BoxFuture<'_, Result<Option<StreamRecord>, StoreError>> {
        let id = id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(&format!("{SELECT_STREAM} WHERE id = ?1"))?
                .query_row([id], stream_record)
                .optional()
        })
    }

    fn latest_stream(&self, key: &str) -> BoxFuture<'_, Result<Option<StreamRecord>, StoreError>> {
        let key = key.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "{SELECT_STREAM} WHERE key = ?1 ORDER BY created_ms DESC LIMIT 1"
            ))?
            .query_row([key], stream_record)
            .optional()
        })
    }

    fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Arc<Update>>, StoreError>> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut select = conn.prepare_cached(SELECT_UPDATES)?;
            let rows =
                select.query_map(params![after, limit], |row| read_update(row).map(Arc::new))?;
            rows.collect()
        })
    }

    fn find(&self, id: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        let id = id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached("SELECT seq FROM updates WHERE id = ?1")?
                .query_row([id], |r| r.get(0))
                .optional()
        })
    }

    fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    fn ledger(&self) -> &dyn Ledger {
        self
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // Taken now: appends called after `close` are refused even before it is polled.
        let sender = lock(&self.requests).take();
        async move {
            let Some(sender) = sender else { return Ok(()) };
            let (reply, answer) = oneshot::channel();
            sender.send(Request::Close { reply }).map_err(|_| writer_gone())?;
            drop(sender);
            answer.await.map_err(|_| writer_gone())?
        }
        .boxed()
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer commit what is queued, then stop. Every
        // acknowledged update is already committed; waiting only settles the file.
        self.requests.get_mut().unwrap_or_else(PoisonError::into_inner).take();
        let writer = self.writer.get_mut().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(writer) = writer {
            // A listener that drops the last handle runs on the writer: it cannot join itself.
            if writer.thread().id() != thread::current().id() {
                let _ = writer.join();
            }
        }
    }
}

/// The thread that owns the writing connection.
struct Writer {
    conn: Connection,
    requests: mpsc::Receiver<Request>,
    listener: Arc<dyn CommitListener>,
    counters: Arc<Counters>,
    failure: Arc<Mutex<Option<String>>>,
    max_updates: Option<u64>,
    max_age: Option<Duration>,
    /// The `published_ms` of the latest update: the next is never earlier, so that age and
    /// seq order agree and retention by age can delete a prefix.
    last_published: u64,
    retention_due: Instant,
}

impl Writer {
    fn run(mut self) {
        while let Some(request) = self.next_request() {
            let control = match request {
                Request::Append { draft, reply, _room } => {
                    let mut batch = vec![(draft, reply)];
                    let mut control = None;
                    while batch.len() < MAX_BATCH {
                        match self.requests.try_recv() {
                            Ok(Request::Append { draft, reply, _room }) => {
                                batch.push((draft, reply));
                            }
                            Ok(other) => {
                                control = Some(other);
                                break;
                            }
                            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                        }
                    }
                    self.commit(batch);
                    if Instant::now() >= self.retention_due {
                        self.retention_pass();
                    }
                    control
                }
                other => Some(other),
            };
            match control {
                None => {}
                Some(Request::PutStream { record, reply, _room }) => {
                    let _ = reply.send(self.put_stream(&record));
                }
                Some(Request::Retention { reply }) => {
                    let _ = reply.send(self.retention_all());
                }
                Some(Request::Keys(write)) => write.apply(&mut self.conn),
                Some(Request::Close { reply }) => {
                    let _ = reply.send(self.close());
                    break;
                }
                Some(Request::Append { .. }) => unreachable!("appends are batched above"),
            }
        }
        // Closed: nothing should be left, but answer whatever is.
        while let Ok(request) = self.requests.try_recv() {
            match request {
                Request::Append { reply, .. } => drop(reply.send(Err(StoreError::Closed))),
                Request::PutStream { reply, .. } => drop(reply.send(Err(StoreError::Closed))),
                Request::Retention { reply } => drop(reply.send(Err(StoreError::Closed))),
                Request::Keys(write) => write.refuse(),
                Request::Close { reply } => drop(reply.send(Ok(()))),
            }
        }
    }

    /// The next request, enforcing retention while idle; `None` once every sender is gone.
    fn next_request(&mut self) -> Option<Request> {
        if self.max_updates.is_none() && self.max_age.is_none() {
            return self.requests.recv().ok();
        }
        loop {
            let wait = self.retention_due.saturating_duration_since(Instant::now());
            match self.requests.recv_timeout(wait) {
                Ok(request) => return Some(request),
                Err(RecvTimeoutError::Timeout) => self.retention_pass(),
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Writes `batch` in one transaction, tells the listener, then answers each requester.
    fn commit(&mut self, batch: Vec<(Draft, Reply<Arc<Update>>)>) {
        let (drafts, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let written = self.write(drafts);
        *lock(&self.failure) = written.as_ref().err().map(ToString::to_string);
        match written {
            Ok((outcomes, committed)) => {
                let c = &self.counters;
                c.transactions.fetch_add(1, Ordering::Relaxed);
                c.updates.fetch_add(committed.len() as u64, Ordering::Relaxed);
                c.largest_batch.fetch_max(committed.len() as u64, Ordering::Relaxed);
                if !committed.is_empty() {
                    self.listener.committed(&committed);
                }
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the SQLite store failed to commit a batch");
                let message = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Backend(message.clone())));
                }
            }
        }
    }

    /// One transaction: each draft gets the next seq, or its own error (invalid, or its id is
    /// taken) without failing the others. Returns one outcome per draft, and the committed.
    #[allow(clippy::type_complexity)]
    fn write(
        &mut self,
        drafts: Vec<Draft>,
    ) -> rusqlite::Result<(Vec<Result<Arc<Update>, StoreError>>, Vec<Arc<Update>>)> {
        let published_ms = now_ms().max(self.last_published);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut seq: u64 = tx.prepare_cached(SELECT_HIGH_WATER)?.query_row([], |r| r.get(0))?;
        let mut outcomes = Vec::with_capacity(drafts.len());
        let mut committed = Vec::with_capacity(drafts.len());
        {
            let mut insert = tx.prepare_cached(INSERT_UPDATE)?;
            for draft in drafts {
                let update = match Update::new(seq + 1, published_ms, draft) {
                    Ok(update) => update,
                    Err(e) => {
                        outcomes.push(Err(StoreError::Invalid(e)));
                        continue;
                    }
                };
                let inserted = insert.execute(params![
                    update.seq(),
                    update.id(),
                    topics_json(update.topics()),
                    update.data(),
                    update.event_type(),
                    update.retry().map(|r| r as i64),
                    update.private(),
                    update.published_ms(),
                ])?;
                if inserted == 0 {
                    outcomes.push(Err(StoreError::Conflict(update.id().to_owned())));
                    continue;
                }
                seq += 1;
                let update = Arc::new(update);
                committed.push(Arc::clone(&update));
                outcomes.push(Ok(update));
            }
        }
        if !committed.is_empty() {
            tx.prepare_cached(UPDATE_HIGH_WATER)?.execute([seq])?;
        }
        tx.commit()?;
        self.last_published = published_ms;
        Ok((outcomes, committed))
    }

    /// Inserts a stream record in a transaction of its own.
    fn put_stream(&mut self, record: &StreamRecord) -> Result<(), StoreError> {
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO streams (id, token_hash, kind, created_ms, key)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO NOTHING",
            )
            .and_then(|mut insert| {
                insert.execute(params![
                    record.id,
                    record.token_hash,
                    record.kind,
                    record.created_ms,
                    record.key
                ])
            })
            .map_err(backend)?;
        if inserted == 0 {
            return Err(StoreError::Conflict(record.id.clone()));
        }
        Ok(())
    }

    /// Deletes expired updates until none is left.
    fn retention_all(&mut self) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let deleted = self.expire().map_err(backend)?;
            total += deleted;
            if deleted < RETENTION_CHUNK {
                self.retention_due = Instant::now() + RETENTION_EVERY;
                return Ok(total);
            }
        }
    }

    /// One bounded pass; the next is due at once if this one may have left some behind.
    fn retention_pass(&mut self) {
        match self.expire() {
            Ok(deleted) if deleted >= RETENTION_CHUNK => self.retention_due = Instant::now(),
            Ok(_) => self.retention_due = Instant::now() + RETENTION_EVERY,
            Err(e) => {
                tracing::warn!(error = %e, "the SQLite store failed to enforce retention");
                self.retention_due = Instant::now() + RETENTION_EVERY;
            }
        }
    }

    /// Deletes up to [`RETENTION_CHUNK`] of the oldest updates beyond the limits.
    fn expire(&mut self) -> rusqlite::Result<u64> {
        if self.max_updates.is_none() && self.max_age.is_none() {
            return Ok(0);
        }
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let high_water: u64 = tx.prepare_cached(SELECT_HIGH_WATER)?.query_row([], |r| r.get(0))?;
        // Delete every seq below `keep_from`, whichever limit deletes more.
        let mut keep_from = 0;
        if let Some(max) = self.max_updates {
            // Seqs are given without gaps, so this keeps the latest `max`.
            keep_from = keep_from.max((high_water + 1).saturating_sub(max));
        }
        if let Some(max_age) = self.max_age {
            let max_age = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
            let cutoff = now_ms().saturating_sub(max_age);
            // `published_ms` never decreases along seqs: the expired are a prefix.
            let first_young: Option<u64> = tx
                .prepare_cached(
                    "SELECT seq FROM updates WHERE published_ms >= ?1 ORDER BY seq LIMIT 1",
                )?
                .query_row([cutoff], |r| r.get(0))
                .optional()?;
            keep_from = keep_from.max(first_young.unwrap_or(high_water + 1));
        }
        let deleted = tx
            .prepare_cached(
                "DELETE FROM updates
                 WHERE seq < min(?1, coalesce((SELECT min(seq) FROM updates), 0) + ?2)",
            )?
            .execute(params![keep_from, RETENTION_CHUNK])? as u64;
        // Stream records go with their history: older than the oldest kept update (and than
        // the slack that covers a record whose first event is still to come).
        let oldest_kept: Option<u64> = tx
            .prepare_cached("SELECT published_ms FROM updates ORDER BY seq LIMIT 1")?
            .query_row([], |r| r.get(0))
            .optional()?;
        let now = now_ms();
        let records_before =
            oldest_kept.unwrap_or(now).min(now.saturating_sub(STREAM_RECORD_SLACK_MS));
        tx.prepare_cached("DELETE FROM streams WHERE created_ms < ?1")?
            .execute([records_before])?;
        tx.commit()?;
        self.counters.expired.fetch_add(deleted, Ordering::Relaxed);
        Ok(deleted)
    }

    /// Everything queued before the close is committed by now: move the log into the file.
    fn close(&mut self) -> Result<(), StoreError> {
        // Busy (a reader in the way) is not a failure: the log is durable as it is.
        self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(backend)
    }
}

/// Idle read-only connections, opened on demand.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl fmt::Debug for Readers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readers").field("idle", &lock(&self.idle).len()).finish()
    }
}

impl Readers {
    /// Runs `f` on an idle connection or a new one (blocking).
    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let idle = lock(&self.idle).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => open_reader(&self.path).map_err(backend)?,
        };
        let result = f(&conn).map_err(backend);
        let mut idle = lock(&self.idle);
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}

fn open_writer(path: &Path, synchronous: Synchronous) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode: WAL was asked, the file is in {mode}"
        )));
    }
    conn.pragma_update(None, "synchronous", synchronous.pragma())?;
    Ok(conn)
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    // Read-write at the file level (a WAL reader may need to create the `-shm` file once the
    // writer is gone), read-only at the SQL level.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// Brings the layout to the newest version, in one transaction.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)?;
    let known = MIGRATIONS.len();
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > known {
        return Err(StoreError::Backend(format!(
            "the store's layout is version {version}, newer than this build knows ({known})"
        )));
    }
    if version < known {
        for step in &MIGRATIONS[version..] {
            tx.execute_batch(step).map_err(backend)?;
        }
        tx.pragma_update(None, "user_version", known as i64).map_err(backend)?;
    }
    tx.commit().map_err(backend)
}

fn read_update(row: &Row<'_>) -> rusqlite::Result<Update> {
    let topics: String = row.get(2)?;
    let topics: Vec<String> = serde_json::from_str(&topics)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(2, Type::Text, Box::new(e)))?;
    let draft = Draft {
        id: Some(row.get(1)?),
        topics,
        data: row.get(3)?,
        event_type: row.get(4)?,
        retry: row.get::<_, Option<i64>>(5)?.map(|r| r as u64),
        private: row.get(6)?,
    };
    Update::new(row.get(0)?, row.get(7)?, draft)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(3, Type::Text, Box::new(e)))
}

fn topics_json(topics: &[String]) -> String {
    serde_json::to_string(topics).expect("a list of strings always serializes")
}

#[allow(clippy::needless_pass_by_value)] // for `map_err(backend)`
fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn writer_gone() -> StoreError {
    StoreError::Backend("the SQLite writer thread stopped".to_owned())
}

/// Locks, ignoring poisoning: every critical section here leaves its data consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
