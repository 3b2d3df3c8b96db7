//! Resumable answers: every answer started here is a stream in the hub, so a reader can
//! drop, reload, or join late and get the whole answer exactly once, and "stop" cancels the
//! upstream at once.
//!
//! - `POST /api/generations` starts an answer and returns its id and `events_url`.
//! - `GET /api/generations/{id}/events` follows it (EventSource): `delta` `{"text"}` events,
//!   then `usage`, then `end` `{"finish_reason"}` (or `error`, then `end`), each with an id.
//!   A reconnect with `Last-Event-ID` continues where it stopped; after `end` it gets 204,
//!   which makes a browser's EventSource stop for good.
//! - `POST /api/generations/{id}/cancel` stops the upstream and still ends the stream.
//! - `GET /api/chat/stream?prompt=…` is the one-shot form for a plain `new EventSource(url)`:
//!   OpenAI chunk objects as `data:`, then `event: end`, with ids that name the answer.
//!
//! An answer lives on the reserved topic `/.well-known/sluice/generations/{id}` as private
//! updates, so no `*` or template subscriber can read it; the events URL carries a capability
//! token, an HMAC of the id under a per-process key (so it needs no table, and is checked in
//! constant time). When every reader has gone, the answer goes on for a grace period (a
//! reload takes a moment), then is cancelled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use sluice_hub::{Cursor, Delivery, Draft, Hub, RESERVED_TOPIC_PREFIX, Selector, SubscribeRequest};
use sluice_llm::{ChatRequest, Delta, DeltaStream, Message, Role, Usage};
use tokio::sync::Notify;

use crate::error::ApiError;
use crate::limits::ClientAddr;
use crate::openai::{Chunker, admit, admitted_request, provider_error};
use crate::sse::event_stream;
use crate::state::AppState;

/// How long a one-shot `/api/chat/stream` answer waits for its reader to come back: long
/// enough for a browser's reconnection (about 3 s), short enough that closing the page
/// stops the upstream soon.
const ONE_SHOT_GRACE: Duration = Duration::from_secs(5);

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/generations", post(create))
        .route("/api/generations/{id}/events", get(events))
        .route("/api/generations/{id}/cancel", post(cancel))
        .route("/api/chat/stream", get(one_shot))
}

/// The answers running in this process.
#[derive(Debug)]
pub(crate) struct Generations {
    key: [u8; 32],
    running: Mutex<HashMap<String, Arc<Running>>>,
}

/// A running answer's controls.
#[derive(Debug, Default)]
struct Running {
    cancel: Notify,
    readers: AtomicUsize,
    readers_changed: Notify,
}

/// Counts a reader of an answer for as long as it is connected.
struct Reader(Option<Arc<Running>>);

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(running) = &self.0 {
            running.readers.fetch_sub(1, Ordering::SeqCst);
            running.readers_changed.notify_one();
        }
    }
}

impl Default for Generations {
    fn default() -> Self {
        Generations { key: rand::random(), running: Mutex::new(HashMap::new()) }
    }
}

impl Generations {
    /// The capability token for answer `id`: 128 bits of HMAC-SHA256, hex.
    fn token(&self, id: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length works");
        mac.update(id.as_bytes());
        mac.finalize().into_bytes()[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn check(&self, id: &str, token: &str) -> Result<(), ApiError> {
        if crate::openai::constant_time_eq(self.token(id).as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::forbidden("a valid token for this generation is required"))
        }
    }

    fn reader(&self, id: &str) -> Reader {
        let running = self.running.lock().unwrap().get(id).cloned();
        if let Some(running) = &running {
            running.readers.fetch_add(1, Ordering::SeqCst);
            running.readers_changed.notify_one();
        }
        Reader(running)
    }

    /// Asks a running answer to stop; false if it is not running here.
    fn cancel(&self, id: &str) -> bool {
        match self.running.lock().unwrap().get(id) {
            Some(running) => {
                running.cancel.notify_one();
                true
            }
            None => false,
        }
    }
}

/// The hub topic of answer `id`.
pub(crate) fn topic(id: &str) -> String {
    format!("{RESERVED_TOPIC_PREFIX}generations/{id}")
}

/// Starts an answer: asks the provider (its refusal is an HTTP error), then pumps its deltas
/// into the hub in the background. Returns the answer's id.
async fn start(state: &AppState, chat: ChatRequest, grace: Duration) -> Result<String, ApiError> {
    let deltas = state.config().models.stream(chat).await.map_err(provider_error)?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let running = Arc::new(Running::default());
    state.generations().running.lock().unwrap().insert(id.clone(), Arc::clone(&running));
    let (hub, state_for_task, id_for_task) = (state.hub().clone(), state.clone(), id.clone());
    tokio::spawn(async move {
        metrics::gauge!("sluice_generations_active").increment(1.0);
        let pump = Pump { hub, topic: topic(&id_for_task), id: id_for_task.clone(), next: 0 };
        pump.run(deltas, &running, grace).await;
        state_for_task.generations().running.lock().unwrap().remove(&id_for_task);
        metrics::gauge!("sluice_generations_active").decrement(1.0);
    });
    Ok(id)
}

/// Writes one answer's events into the hub.
struct Pump {
    hub: Hub,
    topic: String,
    id: String,
    next: u64,
}

impl Pump {
    async fn publish(&mut self, event_type: &str, data: Value) {
        let draft = Draft {
            id: Some(format!("{}.{}", self.id, self.next)),
            topics: vec![self.topic.clone()],
            data: data.to_string(),
            event_type: Some(event_type.to_owned()),
            retry: None,
            private: true,
        };
        self.next += 1;
        if let Err(error) = self.hub.publish(draft).await {
            tracing::error!(%error, generation = self.id, "an answer event could not be stored");
        }
    }

    async fn run(mut self, mut deltas: DeltaStream, running: &Running, grace: Duration) {
        let (mut usage, mut texts) = (None::<Usage>, 0u32);
        let mut finish = "error";
        let mut idle_since = Some(tokio::time::Instant::now());
        loop {
            let abandoned = async {
                match idle_since {
                    Some(since) => tokio::time::sleep_until(since + grace).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                delta = deltas.next() => match delta {
                    Some(Ok(Delta::Text(text))) => {
                        texts += 1;
                        self.publish("delta", json!({"text": text})).await;
                    }
                    Some(Ok(Delta::ToolCall { index, id, name, arguments })) => {
                        let call = json!({"index": index, "id": id, "name": name, "arguments": arguments});
                        self.publish("tool_call", call).await;
                    }
                    Some(Ok(Delta::Usage(u))) => usage = Some(u),
                    Some(Ok(Delta::Finish(reason))) => finish = reason.as_str(),
                    Some(Err(error)) => {
                        let body = json!({"message": error.to_string(), "type": "server_error", "code": null});
                        self.publish("error", body).await;
                        finish = "error";
                        break;
                    }
                    None => break,
                },
                () = running.cancel.notified() => {
                    finish = "cancelled";
                    break;
                }
                () = running.readers_changed.notified() => {
                    let readers = running.readers.load(Ordering::SeqCst);
                    idle_since = (readers == 0).then(tokio::time::Instant::now);
                }
                () = abandoned => {
                    tracing::info!(generation = self.id, "no reader for the grace period: cancelling");
                    finish = "cancelled";
                    break;
                }
            }
        }
        if finish == "cancelled" {
            drop(deltas);
            metrics::counter!("sluice_upstream_cancelled_total").increment(1);
        }
        // Usage is reported even when stopped: what was generated is what was paid for.
        let usage = usage.unwrap_or(Usage::new(0, texts));
        self.publish("usage", json!(usage)).await;
        self.publish("end", json!({"finish_reason": finish})).await;
    }
}

/// `201 {"id", "events_url"}`.
#[utoipa::path(post, path = "/api/generations", tag = "answers",
    request_body(content_type = "application/json", description = "The same body as /v1/chat/completions"),
    responses((status = 201, description = "Started: {id, events_url}"),
              (status = 400, description = "A malformed request"),
              (status = 404, description = "No provider serves the model"),
              (status = 429, description = "Rate limited or the model is busy")))]
pub(crate) async fn create(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = admitted_request(&state, &headers, client, body).await?;
    let chat = request.into_chat(state.default_model().as_deref())?;
    let id = start(&state, chat, state.config().generation_grace).await?;
    let token = state.generations().token(&id);
    let events_url = format!("/api/generations/{id}/events?token={token}");
    let cancel_url = format!("/api/generations/{id}/cancel?token={token}");
    let body = json!({"id": id, "events_url": events_url, "cancel_url": cancel_url});
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct TokenQuery {
    #[serde(default)]
    token: String,
    #[serde(default, rename = "lastEventID")]
    last_event_id: Option<String>,
}

/// The cursor of a reconnection: the `Last-Event-ID` header, else the `lastEventID` query.
fn cursor(headers: &HeaderMap, query: Option<String>) -> Option<String> {
    headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or(query)
        .filter(|id| !id.is_empty())
}

/// Whether `id` is the `end` event of an answer (so a reconnect after it gets 204).
async fn is_end(hub: &Hub, id: &str) -> Result<bool, ApiError> {
    let store = hub.store();
    let Some(seq) = store.find(id).await.map_err(ApiError::internal)? else { return Ok(false) };
    let update = store.read_after(seq - 1, 1).await.map_err(ApiError::internal)?;
    Ok(update.first().is_some_and(|u| u.seq() == seq && u.event_type() == Some("end")))
}

/// Whether answer `id` exists: running here, or with its first event in the history.
async fn exists(state: &AppState, id: &str) -> Result<bool, ApiError> {
    if state.generations().running.lock().unwrap().contains_key(id) {
        return Ok(true);
    }
    Ok(state.hub().store().find(&format!("{id}.0")).await.map_err(ApiError::internal)?.is_some())
}

/// The answer's updates from `after` (or from its start), ending after `end`.
async fn follow(
    state: &AppState,
    id: &str,
    after: Option<String>,
) -> Result<(sluice_hub::Deliveries, Reader), ApiError> {
    let selector = Selector::parse(&topic(id)).map_err(ApiError::internal)?;
    let request = SubscribeRequest {
        selectors: vec![selector.clone()],
        allowed_private: vec![selector],
        cursor: after.map_or(Cursor::Earliest, Cursor::After),
        until_event_type: Some("end".to_owned()),
    };
    let reader = state.generations().reader(id);
    let deliveries = state.hub().deliveries(request).await.map_err(ApiError::internal)?;
    Ok((deliveries, reader))
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// Follows an answer (EventSource, resumable).
#[utoipa::path(get, path = "/api/generations/{id}/events", tag = "answers",
    params(("id" = String, Path, description = "The answer"),
           ("token" = String, Query, description = "The capability token from events_url")),
    responses((status = 200, description = "delta, usage, end (or error, end) events", content_type = "text/event-stream"),
              (status = 204, description = "The answer has ended: stop reconnecting"),
              (status = 403, description = "A wrong token"),
              (status = 404, description = "No such answer")))]
pub(crate) async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.generations().check(&id, &query.token)?;
    let after = cursor(&headers, query.last_event_id);
    if let Some(after) = &after
        && is_end(state.hub(), after).await?
    {
        return Ok(no_content());
    }
    if !exists(&state, &id).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such generation"));
    }
    let (deliveries, reader) = follow(&state, &id, after).await?;
    let frames = pieces(deliveries.stream)
        .map(|piece| match piece {
            Piece::Text { text, id } => event_frame(Some("delta"), &id, &json!({"text": text})),
            Piece::Other(delivery) => delivery.frame(),
        })
        .boxed();
    Ok(event_stream(None, frames, state.config().keep_alive, None, reader))
}

/// What a reader is sent: an update, or several consecutive deltas merged into one.
enum Piece {
    /// The text of consecutive `delta` updates, with the id of the last one.
    Text { text: String, id: String },
    /// Anything else, as delivered.
    Other(Delivery),
}

/// Merges the deltas that are already waiting when the reader is ready for more: a reader
/// that keeps up gets every delta as it comes; a slow one gets fewer, larger events (the
/// merged event carries the last merged id, so resuming from it loses nothing) instead of
/// falling behind token by token.
fn pieces(deliveries: BoxStream<'static, Delivery>) -> BoxStream<'static, Piece> {
    deliveries
        .ready_chunks(256)
        .flat_map(|batch| {
            let mut out: Vec<Piece> = Vec::with_capacity(batch.len());
            for delivery in batch {
                let Delivery::Update(update) = &delivery else {
                    out.push(Piece::Other(delivery));
                    continue;
                };
                if update.event_type() != Some("delta") {
                    out.push(Piece::Other(delivery));
                    continue;
                }
                let data: Value = serde_json::from_str(update.data()).unwrap_or(Value::Null);
                let more = data["text"].as_str().unwrap_or_default();
                match out.last_mut() {
                    Some(Piece::Text { text, id }) => {
                        text.push_str(more);
                        update.id().clone_into(id);
                    }
                    _ => {
                        out.push(Piece::Text { text: more.to_owned(), id: update.id().to_owned() });
                    }
                }
            }
            futures_util::stream::iter(out)
        })
        .boxed()
}

/// One SSE event with an id.
fn event_frame(event: Option<&str>, id: &str, data: &Value) -> Bytes {
    let mut frame = BytesMut::new();
    let mut out =
        sluice_sse::Event::new(data.to_string()).with_id(id).expect("answer ids are plain");
    if let Some(event) = event {
        out = out.with_event(event).expect("constant event types");
    }
    out.encode(&mut frame);
    frame.freeze()
}

/// Stops an answer: the upstream is cancelled, the stream still ends with usage and end.
#[utoipa::path(post, path = "/api/generations/{id}/cancel", tag = "answers",
    params(("id" = String, Path, description = "The answer"),
           ("token" = String, Query, description = "The capability token")),
    responses((status = 202, description = "Cancelling"),
              (status = 403, description = "A wrong token"),
              (status = 409, description = "The answer is not running (it ended)")))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<TokenQuery>,
) -> Result<Response, ApiError> {
    state.generations().check(&id, &query.token)?;
    if state.generations().cancel(&id) {
        Ok((StatusCode::ACCEPTED, axum::Json(json!({"id": id, "status": "cancelling"})))
            .into_response())
    } else {
        Err(ApiError::new(StatusCode::CONFLICT, "not_running", "the generation is not running"))
    }
}

/// The one-shot query: a prompt, and optionally a model and a system prompt.
fn one_shot_request(
    raw: Option<&str>,
    default_model: Option<&str>,
) -> Result<ChatRequest, ApiError> {
    let (mut prompt, mut model, mut system) = (None, None, None);
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match &*key {
            "prompt" => prompt = Some(value.into_owned()),
            "model" => model = Some(value.into_owned()),
            "system" => system = Some(value.into_owned()),
            _ => {}
        }
    }
    let prompt = prompt.filter(|p| !p.is_empty()).ok_or_else(|| {
        ApiError::bad_request("missing_prompt", "the prompt parameter is required")
            .with_param("prompt")
    })?;
    let model = model.or(default_model.map(str::to_owned)).ok_or_else(|| {
        ApiError::bad_request("missing_model", "no model is configured").with_param("model")
    })?;
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(Message::new(Role::System, system));
    }
    messages.push(Message::new(Role::User, prompt));
    Ok(ChatRequest { model, messages, ..ChatRequest::default() })
}

/// The one-shot form: `new EventSource("/api/chat/stream?prompt=…")`.
#[utoipa::path(get, path = "/api/chat/stream", tag = "answers",
    params(("prompt" = String, Query, description = "The user's message"),
           ("model" = Option<String>, Query, description = "The model (default: the first configured)"),
           ("system" = Option<String>, Query, description = "A system prompt")),
    responses((status = 200, description = "OpenAI chunk objects as data, then event: end", content_type = "text/event-stream"),
              (status = 204, description = "The answer has ended: stop reconnecting")))]
pub(crate) async fn one_shot(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    // A reconnection names its answer in Last-Event-ID (`{answer}.{n}`): resume it, never
    // start a new one. The answer id is 128 random bits, known only to its reader.
    let resumed = cursor(&headers, None);
    let (id, after) = match resumed {
        Some(last) => {
            if is_end(state.hub(), &last).await? {
                return Ok(no_content());
            }
            let id = last.split('.').next().unwrap_or_default().to_owned();
            if !exists(&state, &id).await? {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no such answer to resume",
                ));
            }
            (id, Some(last))
        }
        None => {
            admit(&state, &headers, client)?;
            let chat = one_shot_request(raw.as_deref(), state.default_model().as_deref())?;
            (start(&state, chat, ONE_SHOT_GRACE).await?, None)
        }
    };
    let (deliveries, reader) = follow(&state, &id, after).await?;
    let chunker =
        Chunker::new(format!("chatcmpl-{id}"), state.default_model().unwrap_or_default(), false);
    let mut first = true;
    let frames = pieces(deliveries.stream)
        .map(move |piece| {
            let (event, id, body) = match piece {
                Piece::Text { text, id } => {
                    let mut chunk = chunker.text(&text);
                    if std::mem::take(&mut first) {
                        chunk["choices"][0]["delta"]["role"] = json!("assistant");
                    }
                    (None, id, chunk)
                }
                Piece::Other(Delivery::Update(update)) => {
                    let data: Value = serde_json::from_str(update.data()).unwrap_or(Value::Null);
                    let body = if update.event_type() == Some("error") {
                        json!({"error": data})
                    } else {
                        data
                    };
                    (update.event_type().map(str::to_owned), update.id().to_owned(), body)
                }
                Piece::Other(other) => return other.frame(),
            };
            event_frame(event.as_deref(), &id, &body)
        })
        .boxed();
    Ok(event_stream(None, frames, state.config().keep_alive, None, reader))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::StreamExt;
    use sluice_hub::{Delivery, Draft, Update};

    use super::{Piece, pieces};

    fn update(n: u64, event_type: &str, data: &str) -> Delivery {
        let draft = Draft {
            id: Some(format!("a.{n}")),
            event_type: Some(event_type.to_owned()),
            ..Draft::new("/t", data)
        };
        Delivery::Update(Arc::new(Update::new(n, 0, draft).unwrap()))
    }

    #[tokio::test]
    async fn deltas_waiting_together_merge_under_the_last_id() {
        let waiting = vec![
            update(1, "delta", r#"{"text":"a"}"#),
            update(2, "delta", r#"{"text":"b"}"#),
            update(3, "delta", r#"{"text":"c"}"#),
            update(4, "usage", "{}"),
            update(5, "delta", r#"{"text":"d"}"#),
        ];
        let out: Vec<Piece> = pieces(futures_util::stream::iter(waiting).boxed()).collect().await;
        let described: Vec<String> = out
            .iter()
            .map(|p| match p {
                Piece::Text { text, id } => format!("{text}@{id}"),
                Piece::Other(Delivery::Update(u)) => u.id().to_owned(),
                Piece::Other(_) => "other".to_owned(),
            })
            .collect();
        assert_eq!(described, ["abc@a.3", "a.4", "d@a.5"]);
    }
}
