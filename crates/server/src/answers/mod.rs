//! The one answer engine: answers as streams in the hub, who may read one, which run here, and
//! the pump that writes a provider's answer into the hub. Every wire protocol of the gateway
//! reads and writes answers through this module and knows nothing of the others.
//!
//! An answer lives on the reserved topic `/.well-known/sluice/generations/{id}` as private
//! updates, so no `*` or template subscriber can read it. Its events ([`events`]) are `start`,
//! `delta` `{"text"}`, `tool_call`, `usage`, then `end` `{"finish_reason"}` (or `error` then
//! `end`), with ids `#{answer}.{n}`; `start`, `usage` and `end` have the fixed ids
//! `#{answer}.start`, `#{answer}.usage` and `#{answer}.end`, and the `error` of an answer whose
//! producer is gone `#{answer}.lost`. Fixed ids make ending an answer idempotent: whoever
//! writes `end` first wins, and the store refuses a second one. Ids starting with `#` are the
//! hub's own: no publisher can take one, so none can keep an answer from ending by publishing
//! its next ids first.
//!
//! Who may read an answer depends on what made it ([`Kind`]): a capability token (128 random
//! bits, given once to the creator, kept only as its SHA-256 in the answer's record and
//! compared in constant time) for `/api/generations`; the answer's own unguessable id for the
//! others. The record lives as long as the answer's history, so access still works after a
//! restart and, with a shared store, on every node.
//!
//! When every reader has gone, an answer goes on for a grace period (a reload takes a
//! moment), then is cancelled; an answer started to run in the background has no such rule.
//! An answer whose events cannot be stored is cancelled too; its pump keeps trying to write
//! `error` and `end` for a while, and the readers following it here are told to reconnect, so
//! no reader waits forever on an answer that will not end.
//!
//! The request that starts an answer reads it from its pump directly: each event is handed to
//! it once it is stored, through a queue of its own rather than the hub's fan-out
//! ([`Answers::read_new`]). Any later reader, and the creator itself once it falls behind,
//! reads from the hub; both see the same events under the same ids.
//!
//! With a store several nodes share (Redis), an answer runs on the node that started it and is
//! read, resumed and cancelled from any node ([`cluster`]).

mod cluster;
pub(crate) mod events;
mod pump;
pub(crate) mod read;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice_hub::{
    Draft, Hub, PublishError, RESERVED_TOPIC_PREFIX, StoreError, StreamRecord, now_ms, queue,
};
use sluice_llm::DeltaStream;
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

pub(crate) use cluster::coordinate;
use events::AnswerEvent;
use read::Piece;

use crate::error::{ApiError, store_unavailable};

/// What made an answer, as kept in its record: which protocol may read it, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `POST /api/generations`: read with its capability token.
    Generation,
    /// `GET /api/chat/stream`: resumed only through that endpoint, by its event ids.
    OneShot,
    /// `POST /v1/responses`: read by its id (`resp_…`).
    Response,
    /// `POST /api/chat` (the AI SDK's UI message stream): read by its chat's id.
    UiChat,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Generation => "generation",
            Kind::OneShot => "one-shot",
            Kind::Response => "response",
            Kind::UiChat => "ui-chat",
        }
    }
}

/// The hub topic of answer `id`.
pub(crate) fn topic(id: &str) -> String {
    format!("{RESERVED_TOPIC_PREFIX}generations/{id}")
}

/// The id of event `suffix` (a number, `start`, `usage`, `end`, …) of answer `id`.
fn event_id(id: &str, suffix: impl std::fmt::Display) -> String {
    format!("#{id}.{suffix}")
}

/// The id of the `end` event of answer `id`.
pub(crate) fn end_id(id: &str) -> String {
    event_id(id, "end")
}

/// The id of the `start` event of answer `id`.
pub(crate) fn start_id(id: &str) -> String {
    event_id(id, "start")
}

/// The answer an event id belongs to (`#{answer}.{n}`; answers stored before ids were the
/// hub's own have no `#`).
pub(crate) fn answer_of(event_id: &str) -> &str {
    let id = event_id.strip_prefix('#').unwrap_or(event_id);
    id.split('.').next().unwrap_or_default()
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// 128 random bits, as 32 hex digits.
pub(crate) fn random_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// When an answer nobody reads is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unread {
    /// After this long without a reader (here or, through the store, on any node).
    CancelAfter(Duration),
    /// Never: it runs to its end unless cancelled (a background response).
    RunOn,
}

/// What to start.
#[derive(Debug)]
pub(crate) struct NewAnswer {
    pub(crate) kind: Kind,
    /// The `start` event's payload: what the protocol says before anything else.
    pub(crate) start: Value,
    pub(crate) unread: Unread,
    /// The id to give it, when the protocol chose one (else 128 random bits).
    pub(crate) id: Option<String>,
    /// The key a later reader finds it by ([`Answers::latest`]), such as a chat's id.
    pub(crate) key: Option<String>,
}

/// A new answer: its id, the capability token to give its creator, and its events as they
/// are stored, for its creator to read ([`Answers::read_new`]).
pub(crate) struct Started {
    pub(crate) id: String,
    pub(crate) token: String,
    feed: queue::Receiver<Piece>,
}

/// The answers running in this process, and the readers it serves.
#[derive(Debug, Default)]
pub(crate) struct Answers {
    running: Mutex<HashMap<String, Arc<Running>>>,
    /// Readers connected here, per answer (whichever node produces it).
    reading: Mutex<HashMap<String, usize>>,
}

/// A running answer's controls.
#[derive(Debug, Default)]
pub(crate) struct Running {
    cancel: Notify,
    readers: AtomicUsize,
    readers_changed: Notify,
    /// Set when the pump gave up on the store: its readers here should reconnect.
    abandoned: Latch,
    /// When another node last reported readers of this answer.
    read_elsewhere: Mutex<Option<tokio::time::Instant>>,
}

impl Running {
    /// Resolves once the answer's pump has given up on the store.
    pub(crate) async fn abandoned(&self) {
        self.abandoned.wait().await;
    }
}

/// A flag set once, and a wait for it.
#[derive(Debug, Default)]
struct Latch {
    set: AtomicBool,
    notify: Notify,
}

impl Latch {
    fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Resolves once the flag is set (at once if it is).
    async fn wait(&self) {
        loop {
            // Made before the flag is read: a `set` between the two still wakes it.
            let notified = self.notify.notified();
            if self.set.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// Counts a reader of an answer for as long as it is connected.
#[derive(Debug)]
pub(crate) struct Reader {
    answers: Arc<Answers>,
    id: String,
    running: Option<Arc<Running>>,
}

impl Reader {
    /// The answer's controls, if it runs in this process.
    pub(crate) fn running(&self) -> Option<&Arc<Running>> {
        self.running.as_ref()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.readers.fetch_sub(1, Ordering::SeqCst);
            running.readers_changed.notify_one();
        }
        let mut reading = self.answers.reading.lock().unwrap();
        if let Some(count) = reading.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                reading.remove(&self.id);
            }
        }
    }
}

/// Polls `deltas` once on the creator's task, which sends the upstream its request, and keeps
/// whatever that poll yields for the pump.
///
/// The pump is a task of its own, and the creator's task runs on until it waits: left to the
/// pump, the upstream was asked only after the answer's record was stored and its first frames
/// (Responses' preamble carries the whole response object twice) were encoded and written, all
/// of it added to the first token. Asked here, the upstream thinks while this server works.
/// The poll's waker wakes nothing: the pump's first poll registers its own.
fn ask_now(deltas: DeltaStream) -> DeltaStream {
    let mut deltas = deltas.peekable();
    // Ready or not, the request is out; a ready item stays in the peekable for the pump.
    let _ = std::pin::Pin::new(&mut deltas).peek().now_or_never();
    deltas.boxed()
}

impl Answers {
    /// Records a new answer, stores its `start` event, and starts pumping `deltas` into the
    /// hub. Fails (503) when the record cannot be stored; `deltas` is then dropped, which
    /// cancels the upstream. The upstream is asked first ([`ask_now`]), but resolves before
    /// it answers anything, so a slow upstream never holds up the answer's creator: what
    /// happens upstream, failures included, is the answer's to tell.
    pub(crate) async fn start(
        self: &Arc<Self>,
        hub: &Hub,
        deltas: DeltaStream,
        new: NewAnswer,
    ) -> Result<Started, ApiError> {
        let deltas = ask_now(deltas);
        let id = new.id.unwrap_or_else(random_id);
        let token = random_id();
        let record = StreamRecord {
            id: id.clone(),
            token_hash: token_hash(&token),
            kind: new.kind.as_str().to_owned(),
            created_ms: now_ms(),
            key: new.key,
        };
        let store = hub.store();
        store.put_stream(record).await.map_err(store_unavailable)?;
        let start = AnswerEvent::Start(new.start);
        publish(hub, &id, start_id(&id), &start).await.map_err(publish_failure)?;
        let (feed, fed) = queue::queue(hub.config().queue_capacity);
        // A new queue has room for its first item.
        let _ = feed.try_send(Piece::Event(Some(start_id(&id)), start));
        if let Some(control) = store.control() {
            // Claimed now, so that nodes where its readers land see it live at once.
            control.heartbeat(std::slice::from_ref(&id), &[]).await.map_err(store_unavailable)?;
        }
        let running = Arc::new(Running::default());
        self.running.lock().unwrap().insert(id.clone(), Arc::clone(&running));
        let pump = pump::Pump::new(hub.clone(), id.clone(), feed);
        let (answers, answer) = (Arc::clone(self), id.clone());
        let store = Arc::clone(store);
        tokio::spawn(async move {
            metrics::gauge!("sluice_generations_active").increment(1.0);
            pump.run(deltas, &running, new.unread).await;
            answers.running.lock().unwrap().remove(&answer);
            if let Some(control) = store.control()
                && let Err(error) = control.release(&answer).await
            {
                tracing::debug!(%error, answer, "the lease could not be released; it will lapse");
            }
            metrics::gauge!("sluice_generations_active").decrement(1.0);
        });
        Ok(Started { id, token, feed: fed })
    }

    /// The record of answer `id` made by `kind`: 404 when there is none (or another kind made
    /// it, so one endpoint cannot read another's answers), 403 when `token` is given and wrong.
    pub(crate) async fn authorize(
        &self,
        hub: &Hub,
        id: &str,
        kind: Kind,
        token: Option<&str>,
    ) -> Result<StreamRecord, ApiError> {
        let record = hub.store().stream(id).await.map_err(store_unavailable)?;
        let Some(record) = record.filter(|r| r.kind == kind.as_str()) else {
            return Err(ApiError::not_found("no such answer"));
        };
        if let Some(token) = token
            && !bool::from(token_hash(token).ct_eq(&record.token_hash))
        {
            metrics::counter!("sluice_auth_failures_total").increment(1);
            return Err(ApiError::forbidden("a valid token for this answer is required"));
        }
        Ok(record)
    }

    /// The newest answer of `kind` started with `key`, if its record is still kept.
    pub(crate) async fn latest(
        &self,
        hub: &Hub,
        key: &str,
        kind: Kind,
    ) -> Result<Option<StreamRecord>, ApiError> {
        let record = hub.store().latest_stream(key).await.map_err(store_unavailable)?;
        Ok(record.filter(|r| r.kind == kind.as_str()))
    }

    /// Counts a reader of answer `id` (for the grace period, here and, through the store's
    /// heartbeat, on the node that produces it) while the guard lives.
    pub(crate) fn reader(self: &Arc<Self>, id: &str) -> Reader {
        let running = self.running.lock().unwrap().get(id).cloned();
        if let Some(running) = &running {
            running.readers.fetch_add(1, Ordering::SeqCst);
            running.readers_changed.notify_one();
        }
        *self.reading.lock().unwrap().entry(id.to_owned()).or_default() += 1;
        Reader { answers: Arc::clone(self), id: id.to_owned(), running }
    }

    /// Stops answer `id` if it runs here; false if it does not.
    fn cancel_here(&self, id: &str) -> bool {
        match self.running.lock().unwrap().get(id) {
            Some(running) => {
                running.cancel.notify_one();
                true
            }
            None => false,
        }
    }

    /// Stops answer `id`, here or on the node that produces it; false when nothing does.
    pub(crate) async fn cancel(&self, hub: &Hub, id: &str) -> Result<bool, ApiError> {
        if self.cancel_here(id) {
            return Ok(true);
        }
        match hub.store().control() {
            Some(control) => control.request_cancel(id).await.map_err(store_unavailable),
            None => Ok(false),
        }
    }

    /// Whether answer `id` has ended (its `end` is stored).
    pub(crate) async fn ended(&self, hub: &Hub, id: &str) -> Result<bool, ApiError> {
        Ok(hub.store().find(&end_id(id)).await.map_err(store_unavailable)?.is_some())
    }

    /// Ends answer `id` with `error` and `end` if it has no `end` and nothing produces it any
    /// more (its process stopped mid-answer): its readers get an ending instead of waiting
    /// forever. Idempotent: the fixed ids of those events make a second call change nothing.
    pub(crate) async fn settle(&self, hub: &Hub, id: &str) -> Result<(), ApiError> {
        if self.running.lock().unwrap().contains_key(id) || self.ended(hub, id).await? {
            return Ok(());
        }
        if let Some(control) = hub.store().control()
            && control.is_live(id).await.map_err(store_unavailable)?
        {
            return Ok(());
        }
        end_orphan(hub, id).await
    }
}

/// Ends answer `id`, whose producer is gone, with `error` then `end` (once: their ids are
/// fixed, so whichever node writes them first wins).
async fn end_orphan(hub: &Hub, id: &str) -> Result<(), ApiError> {
    tracing::warn!(answer = id, "an answer has no producer left: ending it with an error");
    let error = json!({"message": "the answer was interrupted: its server stopped",
        "type": "server_error", "code": "interrupted"});
    for (event_id, event) in [
        (event_id(id, "lost"), AnswerEvent::Error(error)),
        (end_id(id), AnswerEvent::End(events::Finish::Error)),
    ] {
        match publish(hub, id, event_id, &event).await {
            Ok(()) | Err(PublishError::Store(StoreError::Conflict(_))) => {}
            Err(e) => return Err(publish_failure(e)),
        }
    }
    Ok(())
}

/// Stores `event` of answer `answer` under `event_id`.
async fn publish(
    hub: &Hub,
    answer: &str,
    event_id: String,
    event: &AnswerEvent,
) -> Result<(), PublishError> {
    let draft = Draft {
        id: Some(event_id),
        topics: vec![topic(answer)],
        data: event.data().to_string(),
        event_type: Some(event.event_type().to_owned()),
        retry: None,
        private: true,
    };
    hub.publish_own(draft).await.map(drop)
}

/// A failed write of an answer's event, as the client sees it.
fn publish_failure(error: PublishError) -> ApiError {
    match error {
        PublishError::Store(e) => store_unavailable(e),
        e => ApiError::internal(e),
    }
}
