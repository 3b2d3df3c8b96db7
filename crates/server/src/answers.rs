//! Answers as streams in the hub: who may read one, which are running here, and the pump
//! that writes a provider's deltas into the hub.
//!
//! An answer lives on the reserved topic `/.well-known/sluice/generations/{id}` as private
//! updates, so no `*` or template subscriber can read it. Its reader proves access with a
//! capability token: 128 random bits, given once to the answer's creator, kept only as its
//! SHA-256 in the answer's record in the store and compared in constant time. The record lives
//! as long as the answer's history, so the token still works after a restart (and, with a
//! shared store, on every node), and the record also says which endpoint made the answer, so
//! the one-shot `EventSource` form resumes only its own answers.
//!
//! Events: `delta` `{"text"}`, `tool_call`, `usage`, then `end` `{"finish_reason"}` (or
//! `error` then `end`), with ids `{answer}.{n}`, except the two that end an answer:
//! `{answer}.end` for `end` and `{answer}.lost` for the `error` of an answer whose producer
//! is gone. Fixed ids make ending an answer idempotent: whoever writes `end` first wins, and
//! the store refuses a second one.
//!
//! When every reader has gone, an answer goes on for a grace period (a reload takes a
//! moment), then is cancelled. An answer whose events cannot be stored is cancelled too; its
//! pump keeps trying to write `error` and `end` for a while, and the readers following it here
//! are told to reconnect, so no reader waits forever on an answer that will not end.
//!
//! With a store several nodes share (Redis), an answer runs on the node that started it and
//! is read, resumed and cancelled from any node: [`coordinate`] renews this node's leases on
//! the answers it produces every second, reports which answers have readers here (so the
//! producer elsewhere does not cancel them as abandoned), relays cancel requests made on
//! other nodes, and ends with `error` and `end` the answers whose producer died (its lease
//! lapsed), so their readers anywhere stop waiting within seconds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice_hub::{
    Draft, Hub, PublishError, RESERVED_TOPIC_PREFIX, StoreError, StreamRecord, now_ms,
};
use sluice_llm::{Delta, DeltaStream, Usage};
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

use futures_util::StreamExt;

use crate::error::ApiError;

/// What made an answer, as kept in its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `POST /api/generations`: read with its capability token.
    Generation,
    /// `GET /api/chat/stream`: resumed only through that endpoint, by its event ids.
    OneShot,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Generation => "generation",
            Kind::OneShot => "one-shot",
        }
    }
}

/// How long a pump keeps trying to end an answer in a store that fails.
const END_RETRY_FOR: Duration = Duration::from_secs(30);

/// The hub topic of answer `id`.
pub(crate) fn topic(id: &str) -> String {
    format!("{RESERVED_TOPIC_PREFIX}generations/{id}")
}

/// The id of the `end` event of answer `id`.
pub(crate) fn end_id(id: &str) -> String {
    format!("{id}.end")
}

/// The answer an event id belongs to (`{answer}.{n}`).
pub(crate) fn answer_of(event_id: &str) -> &str {
    event_id.split('.').next().unwrap_or_default()
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new answer: its id and the capability token to give its creator.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) id: String,
    pub(crate) token: String,
}

/// How often a node renews its leases and reports its readers.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How long another node's report of readers keeps an answer from being abandoned.
const READ_ELSEWHERE_FOR: Duration = Duration::from_secs(5);

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
    abandoned: AtomicBool,
    abandoned_notify: Notify,
    /// When another node last reported readers of this answer.
    read_elsewhere: Mutex<Option<tokio::time::Instant>>,
}

impl Running {
    /// Resolves once the answer's pump has given up on the store.
    pub(crate) async fn abandoned(&self) {
        loop {
            let notified = self.abandoned_notify.notified();
            if self.abandoned.load(Ordering::Acquire) {
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

impl Answers {
    /// Records a new answer and starts pumping `deltas` into the hub. Fails (503) when the
    /// record cannot be stored; `deltas` is then dropped, which cancels the upstream.
    pub(crate) async fn start(
        self: &Arc<Self>,
        hub: &Hub,
        deltas: DeltaStream,
        kind: Kind,
        grace: Duration,
    ) -> Result<Started, ApiError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let record = StreamRecord {
            id: id.clone(),
            token_hash: token_hash(&token),
            kind: kind.as_str().to_owned(),
            created_ms: now_ms(),
        };
        let store = hub.store();
        store.put_stream(record).await.map_err(store_unavailable)?;
        if let Some(control) = store.control() {
            // Claimed now, so that nodes where its readers land see it live at once.
            control.heartbeat(std::slice::from_ref(&id), &[]).await.map_err(store_unavailable)?;
        }
        let running = Arc::new(Running::default());
        self.running.lock().unwrap().insert(id.clone(), Arc::clone(&running));
        let pump = Pump { hub: hub.clone(), id: id.clone(), next: 0 };
        let (answers, answer) = (Arc::clone(self), id.clone());
        let store = Arc::clone(store);
        tokio::spawn(async move {
            metrics::gauge!("sluice_generations_active").increment(1.0);
            pump.run(deltas, &running, grace).await;
            answers.running.lock().unwrap().remove(&answer);
            if let Some(control) = store.control()
                && let Err(error) = control.release(&answer).await
            {
                tracing::debug!(%error, answer, "the lease could not be released; it will lapse");
            }
            metrics::gauge!("sluice_generations_active").decrement(1.0);
        });
        Ok(Started { id, token })
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

    /// Ends answer `id` with `error` and `end` if it has no `end` and nothing produces it any
    /// more (its process stopped mid-answer): its readers get an ending instead of waiting
    /// forever. Idempotent: the fixed ids of those events make a second call change nothing.
    pub(crate) async fn settle(&self, hub: &Hub, id: &str) -> Result<(), ApiError> {
        if self.running.lock().unwrap().contains_key(id) {
            return Ok(());
        }
        let store = hub.store();
        if store.find(&end_id(id)).await.map_err(store_unavailable)?.is_some() {
            return Ok(());
        }
        if let Some(control) = store.control()
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
    for (event_id, event_type, data) in [
        (format!("{id}.lost"), "error", error),
        (end_id(id), "end", json!({"finish_reason": "error"})),
    ] {
        match hub.publish(event(id, event_id, event_type, &data)).await {
            Ok(_) | Err(PublishError::Store(StoreError::Conflict(_))) => {}
            Err(PublishError::Store(e)) => return Err(store_unavailable(e)),
            Err(e) => return Err(ApiError::internal(e)),
        }
    }
    Ok(())
}

/// Runs for as long as `answers` lives, when the hub's store is shared by several nodes: see
/// the [module docs](self). Does nothing for a store only this process uses.
pub(crate) fn coordinate(answers: &Arc<Answers>, hub: &Hub) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let store = Arc::clone(hub.store());
    let Some(control) = store.control() else { return };
    let mut requests = control.cancel_requests();
    let weak = Arc::downgrade(answers);
    runtime.spawn(async move {
        while let Some(id) = requests.next().await {
            let Some(answers) = weak.upgrade() else { return };
            answers.cancel_here(&id);
        }
    });
    let (weak, hub) = (Arc::downgrade(answers), hub.clone());
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for round in 0u64.. {
            tick.tick().await;
            let Some(answers) = weak.upgrade() else { return };
            if let Err(error) = answers.beat(&hub, round % 2 == 0).await {
                tracing::warn!(%error, "the answers' heartbeat failed");
            }
        }
    });
}

impl Answers {
    /// One heartbeat: renew leases, report readers, take cancel requests and news of readers
    /// elsewhere; with `reap`, also end the answers whose producer died.
    async fn beat(&self, hub: &Hub, reap: bool) -> Result<(), StoreError> {
        let Some(control) = hub.store().control() else { return Ok(()) };
        let owned: Vec<String> = self.running.lock().unwrap().keys().cloned().collect();
        let read: Vec<String> = self.reading.lock().unwrap().keys().cloned().collect();
        let heartbeat = control.heartbeat(&owned, &read).await?;
        for id in &heartbeat.cancelled {
            self.cancel_here(id);
        }
        let now = tokio::time::Instant::now();
        for id in &heartbeat.read_elsewhere {
            if let Some(running) = self.running.lock().unwrap().get(id) {
                *running.read_elsewhere.lock().unwrap() = Some(now);
            }
        }
        if reap {
            for id in control.lapsed().await? {
                if self.running.lock().unwrap().contains_key(&id) {
                    continue;
                }
                if hub.store().find(&end_id(&id)).await?.is_none()
                    && let Err(error) = end_orphan(hub, &id).await
                {
                    tracing::warn!(answer = id, %error, "a lapsed answer could not be ended");
                    continue;
                }
                control.release(&id).await?;
            }
        }
        Ok(())
    }
}

/// An event of answer `answer` with the given id, type and JSON data.
fn event(answer: &str, event_id: String, event_type: &str, data: &Value) -> Draft {
    Draft {
        id: Some(event_id),
        topics: vec![topic(answer)],
        data: data.to_string(),
        event_type: Some(event_type.to_owned()),
        retry: None,
        private: true,
    }
}

/// A store failure as the client sees it: try again later.
#[allow(clippy::needless_pass_by_value)] // for `map_err(store_unavailable)`
pub(crate) fn store_unavailable(error: StoreError) -> ApiError {
    metrics::counter!("sluice_store_failures_total").increment(1);
    tracing::warn!(%error, "the store failed");
    ApiError::unavailable("the store is unavailable; retry shortly", 1)
}

/// Writes one answer's events into the hub.
struct Pump {
    hub: Hub,
    id: String,
    next: u64,
}

/// Why a pump stopped reading its provider.
enum Stop {
    /// The answer is complete, or failed upstream: write `usage` and `end`.
    Finished(&'static str),
    /// An event could not be stored: the store is failing.
    StoreFailed,
}

impl Pump {
    async fn publish(&mut self, event_type: &str, data: &Value) -> Result<(), PublishError> {
        let event_id = format!("{}.{}", self.id, self.next);
        self.next += 1;
        self.hub.publish(event(&self.id, event_id, event_type, data)).await.map(drop)
    }

    async fn run(mut self, mut deltas: DeltaStream, running: &Running, grace: Duration) {
        let (mut usage, mut texts) = (None::<Usage>, 0u32);
        let mut finish = "error";
        let mut idle_since = Some(tokio::time::Instant::now());
        let stop = loop {
            let abandoned = async {
                match idle_since {
                    Some(since) => tokio::time::sleep_until(since + grace).await,
                    None => std::future::pending().await,
                }
            };
            let stored = tokio::select! {
                delta = deltas.next() => match delta {
                    Some(Ok(Delta::Text(text))) => {
                        texts += 1;
                        self.publish("delta", &json!({"text": text})).await
                    }
                    Some(Ok(Delta::ToolCall { index, id, name, arguments })) => {
                        let call = json!({"index": index, "id": id, "name": name, "arguments": arguments});
                        self.publish("tool_call", &call).await
                    }
                    Some(Ok(Delta::Usage(u))) => {
                        usage = Some(u);
                        Ok(())
                    }
                    Some(Ok(Delta::Finish(reason))) => {
                        finish = reason.as_str();
                        Ok(())
                    }
                    Some(Err(error)) => {
                        let body = json!({"message": error.to_string(), "type": "server_error", "code": null});
                        match self.publish("error", &body).await {
                            Ok(()) => break Stop::Finished("error"),
                            Err(e) => Err(e),
                        }
                    }
                    None => break Stop::Finished(finish),
                },
                () = running.cancel.notified() => break Stop::Finished("cancelled"),
                () = running.readers_changed.notified() => {
                    let readers = running.readers.load(Ordering::SeqCst);
                    idle_since = (readers == 0).then(tokio::time::Instant::now);
                    Ok(())
                }
                () = abandoned => {
                    let read_elsewhere = *running.read_elsewhere.lock().unwrap();
                    if read_elsewhere.is_some_and(|at| at.elapsed() < READ_ELSEWHERE_FOR) {
                        // Its readers are on another node: not abandoned.
                        idle_since = Some(tokio::time::Instant::now());
                        Ok(())
                    } else {
                        tracing::info!(answer = self.id, "no reader for the grace period: cancelling");
                        break Stop::Finished("cancelled");
                    }
                }
            };
            if let Err(error) = stored {
                tracing::error!(%error, answer = self.id, "an answer event could not be stored");
                break Stop::StoreFailed;
            }
        };
        let finish = match stop {
            Stop::Finished(finish) => finish,
            Stop::StoreFailed => "error",
        };
        if finish == "cancelled" || matches!(stop, Stop::StoreFailed) {
            drop(deltas);
            metrics::counter!("sluice_upstream_cancelled_total").increment(1);
        }
        // Usage is reported even when stopped: what was generated is what was paid for.
        let usage = json!(usage.unwrap_or(Usage::new(0, texts)));
        if let Stop::Finished(_) = stop
            && self.end(&usage, finish).await.is_ok()
        {
            return;
        }
        // The store fails: tell the readers here to reconnect (they will find the answer
        // ended, or settle it), and keep trying to end it for a while.
        running.abandoned.store(true, Ordering::Release);
        running.abandoned_notify.notify_waiters();
        let give_up = tokio::time::Instant::now() + END_RETRY_FOR;
        let mut backoff = Duration::from_millis(100);
        while tokio::time::Instant::now() < give_up {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            let error = json!({"message": "the answer could not be stored; it was stopped",
                "type": "server_error", "code": "store_unavailable"});
            if self.close(Some(&error), &usage, "error").await.is_ok() {
                return;
            }
        }
        tracing::error!(answer = self.id, "the answer could not be ended: the store still fails");
    }

    /// Writes `usage` (once) and `end`; a second `end` is a conflict, which is success.
    async fn end(&mut self, usage: &Value, finish: &str) -> Result<(), PublishError> {
        self.close(None, usage, finish).await
    }

    /// Writes `error` (once, when given), `usage` (once) and `end`; each has a fixed id, so a
    /// retry after a partial failure writes only what is missing.
    async fn close(
        &mut self,
        error: Option<&Value>,
        usage: &Value,
        finish: &str,
    ) -> Result<(), PublishError> {
        let end = json!({"finish_reason": finish});
        let error = error.map(|e| (format!("{}.failed", self.id), "error", e));
        let rest =
            [(format!("{}.usage", self.id), "usage", usage), (end_id(&self.id), "end", &end)];
        for (event_id, event_type, data) in error.into_iter().chain(rest) {
            match self.hub.publish(event(&self.id, event_id, event_type, data)).await {
                Ok(_) | Err(PublishError::Store(StoreError::Conflict(_))) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
