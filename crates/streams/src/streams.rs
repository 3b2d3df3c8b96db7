//! [`Streams`]: the protocol's operations over a [`Log`], every rule decided once here.
//!
//! Each write loads the stream, decides on the loaded meta (closure, content type, producer
//! epochs and sequence numbers, `Stream-Seq`), and commits the outcome only if the stream is
//! still at the version it loaded; if another writer got there first, it loads again and
//! decides again. So validation and append are one step per stream, on one node or many,
//! which is what the protocol's producers need ("serialise validation + append per stream").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;

use crate::body::{self, BodyError};
use crate::log::{Change, Log, LogError, Stored};
use crate::meta::{Closer, Expiry, ForkOf, Meta, ProducerState, essence, is_json};
use crate::offset::{Offset, ReadFrom};
use crate::tail::Tail;
use crate::waiters::{Waiters, Watch};

/// How often a write retries after losing a race to another writer of the same stream.
const MAX_RACES: usize = 64;
/// How many of its latest records a stream's tail starts with.
const FRESH_TAIL_RECORDS: u64 = 32;
/// The content type of a stream created without one.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Why an operation failed; the server maps each to its status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No stream at that path (or it expired).
    #[error("no stream at this path")]
    NotFound,
    /// The stream was deleted but is kept for its forks.
    #[error("the stream was deleted")]
    Gone,
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The request conflicts with the stream (its settings, content type, `Stream-Seq`).
    #[error("{0}")]
    Conflict(String),
    /// The stream is closed: nothing more can be appended.
    #[error("the stream is closed")]
    Closed {
        /// Its final offset.
        tail: Offset,
    },
    /// An idempotent producer from an epoch that a newer one replaced (a zombie).
    #[error("producer epoch {sent} is stale: the current epoch is {current}")]
    StaleEpoch {
        /// What it sent.
        sent: u64,
        /// The producer's current epoch.
        current: u64,
    },
    /// An idempotent producer skipped sequence numbers.
    #[error("producer sequence gap: expected {expected}, received {received}")]
    SequenceGap {
        /// The next sequence number the server expects.
        expected: u64,
        /// What it sent.
        received: u64,
    },
    /// The append is larger than the server takes.
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// The storage failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

impl From<BodyError> for Error {
    fn from(error: BodyError) -> Self {
        Error::BadRequest(error.to_string())
    }
}

/// A stream's metadata, as `HEAD` and every response's headers give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Distinguishes it from an earlier stream at the same path.
    pub id: u64,
    /// Its content type.
    pub content_type: String,
    /// The offset after its last record.
    pub tail: Offset,
    /// Whether it is closed.
    pub closed: bool,
    /// When it expires.
    pub expiry: Expiry,
}

impl Head {
    fn of(meta: &Meta) -> Head {
        Head {
            id: meta.id,
            content_type: meta.content_type.clone(),
            tail: meta.tail,
            closed: meta.closed.is_some(),
            expiry: meta.expiry.clone(),
        }
    }

    /// Whether the stream is in JSON mode.
    pub fn is_json(&self) -> bool {
        is_json(&self.content_type)
    }
}

/// A fork's source, as `PUT` names it.
#[derive(Debug, Clone, Default)]
pub struct ForkFrom {
    /// The source stream's path (relative to the streams' root).
    pub source: String,
    /// `Stream-Fork-Offset`, as sent; the source's tail when absent.
    pub offset: Option<String>,
    /// `Stream-Fork-Sub-Offset`, as sent.
    pub sub_offset: Option<String>,
}

/// A `PUT`.
#[derive(Debug, Clone)]
pub struct Create {
    /// `Content-Type`; the default (or for a fork, the source's) when absent.
    pub content_type: Option<String>,
    /// `Stream-TTL` or `Stream-Expires-At`.
    pub expiry: Expiry,
    /// `Stream-Closed: true`: created closed, the body its whole content.
    pub closed: bool,
    /// The initial content.
    pub body: Bytes,
    /// `Stream-Forked-From` and its offsets.
    pub fork: Option<ForkFrom>,
}

/// What a `PUT` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// Made the stream (201).
    New(Head),
    /// Found it already there with the same settings (200).
    Existing(Head),
}

/// An idempotent producer's stamp on an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    /// `Producer-Id`.
    pub id: String,
    /// `Producer-Epoch`.
    pub epoch: u64,
    /// `Producer-Seq`.
    pub seq: u64,
}

/// A `POST`.
#[derive(Debug, Clone)]
pub struct Append {
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// What to append; empty only with `close`.
    pub body: Bytes,
    /// `Stream-Closed: true`: close after appending.
    pub close: bool,
    /// `Stream-Seq`.
    pub writer_seq: Option<String>,
    /// The idempotent producer's stamp.
    pub producer: Option<Producer>,
}

/// What a `POST` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stream after it.
    pub head: Head,
    /// Whether this was a retry of what the stream already holds (nothing was written).
    pub duplicate: bool,
    /// The producer's epoch and highest accepted sequence number, for a stamped append.
    pub producer: Option<ProducerState>,
}

/// What a read returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The stream when it was read.
    pub head: Head,
    /// The records read, in order.
    pub records: Vec<Bytes>,
    /// Where they start.
    pub start: Offset,
    /// Where they end: the offset to read from next.
    pub next: Offset,
}

impl Chunk {
    /// Whether the read reached the stream's tail.
    pub fn up_to_date(&self) -> bool {
        self.next == self.head.tail
    }

    /// Whether the read reached the end of a closed stream: nothing more will ever come.
    pub fn at_end(&self) -> bool {
        self.up_to_date() && self.head.closed
    }

    /// The response body: the records as stored, or for JSON an array of them.
    pub fn body(&self) -> Bytes {
        body::frame(self.head.is_json(), &self.records)
    }
}

/// Limits on what one request may do.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most bytes of records one read returns (at least one record is always returned).
    pub max_read_bytes: usize,
    /// The largest append.
    pub max_append_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_read_bytes: 1 << 20, max_append_bytes: 8 << 20 }
    }
}

/// Durable Streams over one [`Log`], and the live readers waiting on them in this process.
#[derive(Debug)]
pub struct Streams {
    log: Arc<dyn Log>,
    waiters: Waiters,
    limits: Limits,
    stopping: AtomicBool,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Streams {
    /// Streams over `log`. A log shared with other processes tells this one of their
    /// writes, on a task spawned here (so call it inside a tokio runtime).
    pub fn new(log: Arc<dyn Log>, limits: Limits) -> Arc<Streams> {
        let streams = Arc::new(Streams {
            log,
            waiters: Waiters::default(),
            limits,
            stopping: AtomicBool::new(false),
        });
        if let Some(mut changes) = streams.log.changes() {
            let weak = Arc::downgrade(&streams);
            tokio::spawn(async move {
                while let Some(change) = changes.next().await {
                    let Some(streams) = weak.upgrade() else { return };
                    match change {
                        Change::Stream(path) => streams.waiters.changed(&path),
                        Change::Any => streams.waiters.wake_all(),
                    }
                }
            });
        }
        streams
    }

    /// Ends every live read at once, as if its wait had timed out, so that a server
    /// stopping answers long-polls and ends SSE tails cleanly (their readers resume
    /// elsewhere from their last offset) instead of cutting them off.
    pub fn shut_down(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.waiters.wake_all();
    }

    /// The limits it enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Loads a live stream: expired ones are removed on the way and count as absent; one
    /// deleted but kept for its forks is [`Error::Gone`] unless `deleted_ok`.
    async fn live(&self, path: &str, deleted_ok: bool) -> Result<Option<Stored>, Error> {
        let Some(stored) = self.log.load(path).await? else { return Ok(None) };
        if stored.meta.expired(now_ms(), stored.accessed_ms) {
            self.remove(path, stored).await?;
            return Ok(None);
        }
        if stored.meta.deleted && !deleted_ok {
            return Err(Error::Gone);
        }
        Ok(Some(stored))
    }

    async fn existing(&self, path: &str) -> Result<Stored, Error> {
        self.live(path, false).await?.ok_or(Error::NotFound)
    }

    /// `HEAD`: the stream's metadata.
    pub async fn head(&self, path: &str) -> Result<Head, Error> {
        Ok(Head::of(&self.existing(path).await?.meta))
    }

    /// `PUT`: creates the stream, or finds it already there with the same settings.
    pub async fn create(&self, path: &str, request: Create) -> Result<Created, Error> {
        for _ in 0..MAX_RACES {
            if let Some(stored) = self.live(path, true).await? {
                return same_settings(&stored.meta, &request).map(Created::Existing);
            }
            let (meta, records, source) = self.new_stream(&request).await?;
            if self.log.insert(path, &meta, &records, now_ms()).await? {
                if let Some(source) = source {
                    self.count_fork(&source, 1).await?;
                }
                self.waiters.changed(path);
                return Ok(Created::New(Head::of(&meta)));
            }
        }
        Err(busy())
    }

    /// The meta and first records of a new stream, and the source it forks.
    async fn new_stream(
        &self,
        request: &Create,
    ) -> Result<(Meta, Vec<Bytes>, Option<String>), Error> {
        let mut inherited = Vec::new();
        let (mut content_type, mut expiry, mut forked_from) =
            (request.content_type.clone(), request.expiry.clone(), None);
        if let Some(fork) = &request.fork {
            let source = match self.live(&fork.source, true).await? {
                None => return Err(Error::NotFound),
                Some(source) if source.meta.deleted => {
                    return Err(Error::Conflict("the source stream was deleted".into()));
                }
                Some(source) => source.meta,
            };
            match &content_type {
                Some(given) if essence(given) != essence(&source.content_type) => {
                    return Err(Error::Conflict(format!(
                        "a fork has its source's content type, {}",
                        source.content_type
                    )));
                }
                Some(_) => {}
                None => content_type = Some(source.content_type.clone()),
            }
            if expiry == Expiry::Never {
                expiry = source.expiry.clone();
            }
            let (offset, sub_offset) = fork_point(&source, fork)?;
            inherited = self.inherit(&fork.source, &source, offset, sub_offset).await?;
            forked_from = Some(ForkOf { source: fork.source.clone(), offset, sub_offset });
        }
        let content_type = content_type.unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned());
        let own = body::records(is_json(&content_type), &request.body, true)?;
        let records: Vec<Bytes> = inherited.into_iter().chain(own).collect();
        let tail = records.iter().fold(Offset::START, |at, r| at.after(r.len()));
        let meta = Meta {
            id: rand::random(),
            content_type,
            expiry,
            tail,
            closed: request.closed.then_some(Closer { producer: None }),
            producers: Default::default(),
            writer_seq: None,
            forked_from,
            forks: 0,
            deleted: false,
            created_ms: now_ms(),
        };
        Ok((meta, records, request.fork.as_ref().map(|f| f.source.clone())))
    }

    /// The records a fork starts with: its source's up to the fork offset, then as many more
    /// messages (JSON) or bytes as the sub-offset says. Copied, so the fork lives on its own.
    async fn inherit(
        &self,
        path: &str,
        source: &Meta,
        at: Offset,
        sub: u64,
    ) -> Result<Vec<Bytes>, Error> {
        let mut records = self.read_all(path, 0, at.records).await?;
        if sub > 0 {
            let after = self.read_all(path, at.records, source.tail.records).await?;
            let mut left = sub;
            for record in after {
                if left == 0 {
                    break;
                }
                let take = if source.is_json() { 1 } else { left.min(record.len() as u64) };
                records.push(if take == record.len() as u64 || source.is_json() {
                    record
                } else {
                    record.slice(..take as usize)
                });
                left -= take;
            }
            if left > 0 {
                return Err(Error::BadRequest("the sub-offset is past the source's data".into()));
            }
        }
        Ok(records)
    }

    /// Every record numbered in `(after, upto]`.
    async fn read_all(&self, path: &str, mut after: u64, upto: u64) -> Result<Vec<Bytes>, Error> {
        let mut out = Vec::new();
        while after < upto {
            let page = self.log.records(path, after, self.limits.max_read_bytes).await?;
            if page.is_empty() {
                return Err(LogError::Corrupt(format!("{path} lacks record {}", after + 1)).into());
            }
            for record in page.into_iter().take((upto - after) as usize) {
                out.push(record);
                after += 1;
            }
        }
        Ok(out)
    }

    /// Adds `delta` to the count of forks made from `path`; when the last fork of a deleted
    /// stream goes, the stream goes too (and so on up its own source).
    async fn count_fork(&self, path: &str, delta: i64) -> Result<(), Error> {
        for _ in 0..MAX_RACES {
            let Some(stored) = self.log.load(path).await? else { return Ok(()) };
            let mut meta = stored.meta.clone();
            meta.forks = meta.forks.saturating_add_signed(delta);
            if meta.deleted && meta.forks == 0 {
                if self.log.remove(path, stored.version).await? {
                    if let Some(fork) = &stored.meta.forked_from {
                        Box::pin(self.count_fork(&fork.source, -1)).await?;
                    }
                    return Ok(());
                }
            } else if self.log.update(path, stored.version, &meta, &[], stored.accessed_ms).await? {
                return Ok(());
            }
        }
        Err(busy())
    }

    /// `POST`: appends, closes, or both.
    pub async fn append(&self, path: &str, request: Append) -> Result<Appended, Error> {
        if request.body.is_empty() && !request.close {
            return Err(Error::BadRequest(
                "an append needs a body (or Stream-Closed: true)".into(),
            ));
        }
        if request.body.len() > self.limits.max_append_bytes {
            return Err(Error::TooLarge(self.limits.max_append_bytes));
        }
        for _ in 0..MAX_RACES {
            let stored = self.existing(path).await?;
            let Some((meta, records, appended)) = decide(&stored.meta, &request)? else {
                return Ok(Appended {
                    head: Head::of(&stored.meta),
                    duplicate: true,
                    producer: request.producer.as_ref().map(|p| current_state(&stored.meta, p)),
                });
            };
            if self.log.update(path, stored.version, &meta, &records, now_ms()).await? {
                self.waiters.changed(path);
                return Ok(appended);
            }
        }
        Err(busy())
    }

    /// `DELETE`: removes the stream, or hides it while forks still read from it.
    pub async fn delete(&self, path: &str) -> Result<(), Error> {
        for _ in 0..MAX_RACES {
            let stored = self.existing(path).await?;
            let done = if stored.meta.forks > 0 {
                let meta = Meta { deleted: true, ..stored.meta.clone() };
                self.log.update(path, stored.version, &meta, &[], stored.accessed_ms).await?
            } else {
                self.remove(path, stored).await?
            };
            if done {
                self.waiters.changed(path);
                return Ok(());
            }
        }
        Err(busy())
    }

    /// Removes a stream at its version, and lets its source know it lost a fork.
    async fn remove(&self, path: &str, stored: Stored) -> Result<bool, Error> {
        if !self.log.remove(path, stored.version).await? {
            return Ok(false);
        }
        if let Some(fork) = &stored.meta.forked_from {
            self.count_fork(&fork.source, -1).await?;
        }
        Ok(true)
    }

    /// A catch-up read from `from`: as many records as one read returns.
    pub async fn read(&self, path: &str, from: ReadFrom) -> Result<Chunk, Error> {
        let stored = self.existing(path).await?;
        if let Expiry::Ttl(_) = stored.meta.expiry {
            self.log.touch(path, now_ms()).await?;
        }
        let head = Head::of(&stored.meta);
        let start = match from {
            ReadFrom::Start => Offset::START,
            ReadFrom::Now => head.tail,
            ReadFrom::At(offset) if offset > head.tail => {
                return Err(Error::BadRequest("the offset is past the stream's tail".into()));
            }
            ReadFrom::At(offset) => offset,
        };
        let mut records = Vec::new();
        if start.records < head.tail.records {
            records = self.log.records(path, start.records, self.limits.max_read_bytes).await?;
            // A write after the meta was loaded is read next time, with its own tail.
            records.truncate((head.tail.records - start.records) as usize);
        }
        let next = records.iter().fold(start, |at, r| at.after(r.len()));
        Ok(Chunk { head, records, start, next })
    }

    /// A live read: what [`Streams::read`] gives, or if that is nothing new on an open
    /// stream, what it gives once the stream changes; an empty chunk after `timeout`.
    ///
    /// The records come from the stream's [`Tail`] where it has them: after a wake, the first
    /// reader to wake fetches what is new for all the others.
    pub async fn read_live(
        &self,
        path: &str,
        from: ReadFrom,
        timeout: Duration,
    ) -> Result<Chunk, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let watch = self.waiters.watch(path);
        let mut from = from;
        let mut first = true;
        loop {
            let notified = watch.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let chunk = self.read_tail(path, &watch, from, !first).await?;
            if !chunk.records.is_empty()
                || chunk.head.closed
                || self.stopping.load(Ordering::SeqCst)
            {
                return Ok(chunk);
            }
            // From here on, `now` means where the stream stood on the first look.
            from = ReadFrom::At(chunk.start);
            first = false;
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(chunk);
            }
        }
    }

    /// A read from `from` served by the stream's [`Tail`], brought up to date first (if
    /// `refresh`) when the stream changed since it was read; from the log when the tail is
    /// behind or `from` is not within it. A stream with a sliding TTL is always read from the
    /// log, since a read must count as one.
    async fn read_tail(
        &self,
        path: &str,
        watch: &Watch,
        from: ReadFrom,
        refresh: bool,
    ) -> Result<Chunk, Error> {
        let changes = watch.changes.load(Ordering::SeqCst);
        let mut guard = watch.tail.lock().await;
        let behind = guard.as_ref().is_none_or(|tail| tail.changes != changes);
        if behind && refresh {
            let stored = self.existing(path).await?;
            let (end, previous) = (stored.meta.tail.records, guard.take());
            // Continued from where the last tail ended, else from the stream's latest few
            // records, which is where readers woken by a change stand.
            let continues = previous.as_ref().is_some_and(|t| t.continued_by(&stored.meta));
            let after = match &previous {
                Some(tail) if continues => tail.end().records,
                _ => end.saturating_sub(FRESH_TAIL_RECORDS),
            };
            let mut records = Vec::new();
            if end > after {
                records = self.log.records(path, after, self.limits.max_read_bytes).await?;
                records.truncate((end - after) as usize);
            }
            let complete = records.len() as u64 == end - after;
            let tail = match previous {
                Some(mut tail) if continues && complete => {
                    tail.extend(changes, stored.meta, records);
                    tail
                }
                _ if complete => Tail::latest(changes, stored.meta, records),
                // More than one read brings: readers further back read the log.
                _ => Tail::latest(changes, stored.meta, Vec::new()),
            };
            *guard = Some(tail);
        }
        let tail = match guard.as_ref() {
            Some(tail) if tail.changes == changes || refresh => tail,
            _ => {
                drop(guard);
                return self.read(path, from).await;
            }
        };
        let at = match from {
            ReadFrom::Start => Offset::START,
            ReadFrom::Now => tail.end(),
            ReadFrom::At(offset) => offset,
        };
        let usable = match tail.meta.expiry {
            Expiry::Never => true,
            Expiry::Ttl(_) => false,
            Expiry::At { ms, .. } => (now_ms() as i128) < ms as i128,
        };
        match tail.from(at).filter(|_| usable) {
            Some(records) => {
                let records = crate::log::take_fitting(
                    records.iter().cloned().map(Ok::<_, Error>),
                    self.limits.max_read_bytes,
                )?;
                let next = records.iter().fold(at, |at, r| at.after(r.len()));
                Ok(Chunk { head: Head::of(&tail.meta), records, start: at, next })
            }
            None => {
                drop(guard);
                self.read(path, from).await
            }
        }
    }
}

fn busy() -> Error {
    Error::Log(LogError::Backend("too many concurrent writers of this stream".into()))
}

/// A non-negative decimal integer with no sign, leading zeros or fraction, at most 2^53 - 1.
pub fn parse_integer(text: &str) -> Option<u64> {
    let valid = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    valid.then(|| text.parse().ok()).flatten().filter(|n| *n < 1 << 53)
}

/// Where a fork of `source` branches: the offset (its tail when not given) and sub-offset.
fn fork_point(source: &Meta, fork: &ForkFrom) -> Result<(Offset, u64), Error> {
    let at = match fork.offset.as_deref() {
        None => source.tail,
        Some(text) => Offset::parse(text)
            .ok_or_else(|| Error::BadRequest(format!("{text:?} is not a fork offset")))?,
    };
    if at > source.tail {
        return Err(Error::BadRequest("the fork offset is past the source's tail".into()));
    }
    let sub = match fork.sub_offset.as_deref() {
        None => 0,
        Some(text) => parse_integer(text)
            .ok_or_else(|| Error::BadRequest(format!("{text:?} is not a sub-offset")))?,
    };
    Ok((at, sub))
}

/// A `PUT` on an existing stream succeeds if it asks for what is there.
fn same_settings(meta: &Meta, request: &Create) -> Result<Head, Error> {
    if meta.deleted {
        return Err(Error::Conflict(
            "a deleted stream's path cannot be reused while forks remain".into(),
        ));
    }
    let content_type = request.content_type.as_deref().map(essence);
    let same_fork = match (&request.fork, &meta.forked_from) {
        (None, None) => true,
        (Some(asked), Some(made)) => {
            let offset = asked.offset.as_deref().map(Offset::parse);
            let sub = asked.sub_offset.as_deref().map_or(Some(0), parse_integer);
            asked.source == made.source
                && offset.is_none_or(|o| o == Some(made.offset))
                && sub == Some(made.sub_offset)
        }
        _ => false,
    };
    let same = content_type.as_ref().is_none_or(|c| *c == essence(&meta.content_type))
        && (request.fork.is_some() || content_type.is_some() || is_default(&meta.content_type))
        && request.expiry == meta.expiry
        && request.closed == meta.closed.is_some()
        && same_fork;
    if same {
        Ok(Head::of(meta))
    } else {
        Err(Error::Conflict("a stream exists at this path with other settings".into()))
    }
}

fn is_default(content_type: &str) -> bool {
    essence(content_type) == DEFAULT_CONTENT_TYPE
}

/// The producer's state as the stream holds it now (for the headers of a duplicate).
fn current_state(meta: &Meta, producer: &Producer) -> ProducerState {
    meta.producers
        .get(&producer.id)
        .copied()
        .unwrap_or(ProducerState { epoch: producer.epoch, seq: producer.seq })
}

/// What an append does to the stream: its new meta, the records to add, and the answer; or
/// `None` when it is a retry of what the stream already holds.
fn decide(meta: &Meta, request: &Append) -> Result<Option<(Meta, Vec<Bytes>, Appended)>, Error> {
    if let Some(closer) = &meta.closed {
        let stamp = request.producer.as_ref().map(|p| (p.id.clone(), p.epoch, p.seq));
        let retry_of_close = stamp.is_some() && closer.producer == stamp;
        let close_again = request.close && request.body.is_empty();
        return if retry_of_close || close_again {
            Ok(None)
        } else {
            Err(Error::Closed { tail: meta.tail })
        };
    }
    if !request.body.is_empty() {
        match &request.content_type {
            None => {
                return Err(Error::BadRequest("an append with a body needs a Content-Type".into()));
            }
            Some(given) if essence(given) != essence(&meta.content_type) => {
                return Err(Error::Conflict(format!(
                    "this stream's content type is {}, not {given}",
                    meta.content_type
                )));
            }
            Some(_) => {}
        }
    }
    let mut next = meta.clone();
    let mut producer_state = None;
    if let Some(producer) = &request.producer {
        let state = match meta.producers.get(&producer.id) {
            None if producer.seq == 0 => ProducerState { epoch: producer.epoch, seq: 0 },
            None => return Err(Error::SequenceGap { expected: 0, received: producer.seq }),
            Some(state) if producer.epoch < state.epoch => {
                return Err(Error::StaleEpoch { sent: producer.epoch, current: state.epoch });
            }
            Some(state) if producer.epoch > state.epoch => {
                if producer.seq != 0 {
                    return Err(Error::BadRequest(
                        "a new producer epoch starts at sequence 0".into(),
                    ));
                }
                ProducerState { epoch: producer.epoch, seq: 0 }
            }
            Some(state) if producer.seq <= state.seq => return Ok(None),
            Some(state) if producer.seq == state.seq + 1 => {
                ProducerState { epoch: state.epoch, seq: producer.seq }
            }
            Some(state) => {
                return Err(Error::SequenceGap { expected: state.seq + 1, received: producer.seq });
            }
        };
        next.producers.insert(producer.id.clone(), state);
        producer_state = Some(state);
    }
    if let Some(seq) = &request.writer_seq {
        if meta.writer_seq.as_ref().is_some_and(|last| seq.as_bytes() <= last.as_bytes()) {
            return Err(Error::Conflict(format!("Stream-Seq {seq:?} is not above the last one")));
        }
        next.writer_seq = Some(seq.clone());
    }
    let records = body::records(meta.is_json(), &request.body, false)?;
    next.tail = records.iter().fold(meta.tail, |at, r| at.after(r.len()));
    if request.close {
        let producer = request.producer.as_ref().map(|p| (p.id.clone(), p.epoch, p.seq));
        next.closed = Some(Closer { producer });
    }
    let appended = Appended { head: Head::of(&next), duplicate: false, producer: producer_state };
    Ok(Some((next, records, appended)))
}

#[cfg(test)]
mod tests;
