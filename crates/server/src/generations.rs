//! The answers API: every answer started here is a stream in the hub, so a reader can drop,
//! reload, or join late and get the whole answer exactly once, and "stop" cancels the
//! upstream at once.
//!
//! - `POST /api/generations` starts an answer and returns its id, `events_url` and
//!   `cancel_url` (both carrying the answer's capability token).
//! - `GET /api/generations/{id}/events` follows it (EventSource): `delta` `{"text"}` events,
//!   then `usage`, then `end` `{"finish_reason"}` (or `error`, then `end`), each with an id.
//!   A reconnect with `Last-Event-ID` continues where it stopped; after `end` it gets 204,
//!   which makes a browser's EventSource stop for good.
//! - `POST /api/generations/{id}/cancel` stops the upstream and still ends the stream.
//! - `GET /api/chat/stream?prompt=…` is the one-shot form for a plain `new EventSource(url)`:
//!   OpenAI chunk objects as `data:`, then `event: end`, with ids that name the answer, so a
//!   reconnect resumes the answer it was reading (and only answers made by this endpoint).
//!
//! What an answer is in the hub, and who may read it, is in [`crate::answers`].

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
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sluice_hub::{Cursor, Delivery, Hub, Selector, SubscribeRequest};
use sluice_llm::{ChatRequest, Message, Role};
use utoipa::{IntoParams, ToSchema};

use crate::answers::{Kind, Reader, answer_of, end_id, store_unavailable, topic};
use crate::conn::ClientAddr;
use crate::error::ApiError;
use crate::openai::admitted_request;
use crate::sse::event_stream;
use crate::state::AppState;
use crate::wire::{Chunker, provider_error};

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

/// A started answer: where to follow it and how to stop it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Created {
    /// The answer's id.
    id: String,
    /// Follow the answer here (EventSource); the URL carries the capability token.
    events_url: String,
    /// `POST` here to stop the answer; the URL carries the capability token.
    cancel_url: String,
}

/// The reply to a cancel request.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Cancelling {
    /// The answer's id.
    id: String,
    /// Always `cancelling`.
    status: String,
}

/// Starts an answer: `201 {"id", "events_url", "cancel_url"}`.
#[utoipa::path(post, path = "/api/generations", tag = "answers",
    request_body(content = crate::wire::CompletionRequest, content_type = "application/json",
        description = "The same body as /v1/chat/completions (`stream` is ignored)"),
    responses((status = 201, description = "Started", body = Created),
              (status = 400, description = "A malformed request", body = crate::error::ErrorBody),
              (status = 401, description = "A missing or wrong API key", body = crate::error::ErrorBody),
              (status = 404, description = "No provider serves the model", body = crate::error::ErrorBody),
              (status = 408, description = "The request body stalled", body = crate::error::ErrorBody),
              (status = 413, description = "The request body is too large", body = crate::error::ErrorBody),
              (status = 429, description = "Rate limited or the model is busy", body = crate::error::ErrorBody),
              (status = 502, description = "The upstream failed before answering", body = crate::error::ErrorBody),
              (status = 503, description = "The store is unavailable", body = crate::error::ErrorBody),
              (status = 504, description = "The upstream did not answer in time", body = crate::error::ErrorBody)),
    security((), ("api_key" = [])))]
pub(crate) async fn create(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = admitted_request(&state, &headers, client, body).await?;
    let chat = request.into_chat(state.default_model().as_deref())?;
    let deltas = state.config().models.stream(chat).await.map_err(provider_error)?;
    let grace = state.config().generation_grace;
    let started = state.answers().start(state.hub(), deltas, Kind::Generation, grace).await?;
    let (id, token) = (started.id, started.token);
    let created = Created {
        events_url: format!("/api/generations/{id}/events?token={token}"),
        cancel_url: format!("/api/generations/{id}/cancel?token={token}"),
        id,
    };
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// The query of an answer's URLs.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TokenQuery {
    /// The capability token from `events_url` or `cancel_url`.
    token: String,
    /// Resume after this event id (the `Last-Event-ID` header wins).
    #[serde(default, rename = "lastEventID")]
    #[param(rename = "lastEventID")]
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

/// Whether event `id` is the `end` of answer `answer` or later (so a reconnect gets 204).
async fn ended_at(hub: &Hub, answer: &str, id: &str) -> Result<bool, ApiError> {
    if id == end_id(answer) {
        return Ok(hub.store().find(id).await.map_err(store_unavailable)?.is_some());
    }
    Ok(false)
}

/// Follows answer `id` from after `after` (or from its start), ending after `end`. An answer
/// that nothing produces any more is ended first, so the reader never waits forever.
async fn follow(
    state: &AppState,
    id: &str,
    after: Option<String>,
) -> Result<(BoxStream<'static, Delivery>, Reader), ApiError> {
    state.answers().settle(state.hub(), id).await?;
    let selector = Selector::parse(&topic(id)).map_err(ApiError::internal)?;
    let request = SubscribeRequest {
        selectors: vec![selector.clone()],
        allowed_private: vec![selector],
        cursor: after.map_or(Cursor::Earliest, Cursor::After),
        until_event_type: Some("end".to_owned()),
        hangup: None,
        direct: None,
    };
    let reader = state.answers().reader(id);
    let deliveries =
        state.hub().deliveries(request).await.map_err(crate::mercure::subscribe_error)?;
    // If the answer's pump gives up on the store, its readers here are told to reconnect.
    let stream = match reader.running() {
        Some(running) => until_abandoned(deliveries.stream, std::sync::Arc::clone(running)),
        None => deliveries.stream,
    };
    Ok((stream, reader))
}

/// `deliveries`, cut short by a comment that says to reconnect if the answer's pump gives up
/// on the store.
fn until_abandoned(
    deliveries: BoxStream<'static, Delivery>,
    running: std::sync::Arc<crate::answers::Running>,
) -> BoxStream<'static, Delivery> {
    futures_util::stream::unfold(Some((deliveries, running)), |state| async move {
        let (mut deliveries, running) = state?;
        tokio::select! {
            biased;
            delivery = deliveries.next() => delivery.map(|d| (d, Some((deliveries, running)))),
            () = running.abandoned() => Some((Delivery::ReplayFailed, None)),
        }
    })
    .boxed()
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// Follows an answer (EventSource, resumable).
#[utoipa::path(get, path = "/api/generations/{id}/events", tag = "answers",
    params(("id" = String, Path, description = "The answer"), TokenQuery,
           ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses((status = 200, description = "delta, usage, end (or error, end) events", content_type = "text/event-stream", body = crate::sse::SseEvent),
              (status = 204, description = "The answer has ended: stop reconnecting"),
              (status = 400, description = "No token", body = crate::error::ErrorBody),
              (status = 403, description = "A wrong token", body = crate::error::ErrorBody),
              (status = 404, description = "No such answer", body = crate::error::ErrorBody),
              (status = 503, description = "The store is unavailable", body = crate::error::ErrorBody)))]
pub(crate) async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    state.answers().authorize(state.hub(), &id, Kind::Generation, Some(&query.token)).await?;
    let after = cursor(&headers, query.last_event_id);
    if let Some(after) = &after
        && ended_at(state.hub(), &id, after).await?
    {
        return Ok(no_content());
    }
    let (deliveries, reader) = follow(&state, &id, after).await?;
    let frames = pieces(deliveries)
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
    params(("id" = String, Path, description = "The answer"), TokenQuery),
    responses((status = 202, description = "Cancelling", body = Cancelling),
              (status = 400, description = "No token", body = crate::error::ErrorBody),
              (status = 403, description = "A wrong token", body = crate::error::ErrorBody),
              (status = 404, description = "No such answer", body = crate::error::ErrorBody),
              (status = 409, description = "The answer is not running (it ended)", body = crate::error::ErrorBody),
              (status = 503, description = "The store is unavailable", body = crate::error::ErrorBody)))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    state.answers().authorize(state.hub(), &id, Kind::Generation, Some(&query.token)).await?;
    if state.answers().cancel(state.hub(), &id).await? {
        let body = Cancelling { id, status: "cancelling".to_owned() };
        Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
    } else {
        Err(ApiError::new(StatusCode::CONFLICT, "not_running", "the answer is not running"))
    }
}

/// The one-shot query: a prompt, and optionally a model and a system prompt.
fn one_shot_request(
    raw: Option<&str>,
    default_model: Option<&str>,
) -> Result<ChatRequest, ApiError> {
    let (mut prompt, mut model, mut system) = (None, None, None);
    for (key, value) in crate::form::parse(raw.unwrap_or_default().as_bytes())? {
        match &*key {
            "prompt" => prompt = Some(value),
            "model" => model = Some(value),
            "system" => system = Some(value),
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
    params(("prompt" = String, Query, description = "The user's message", min_length = 1),
           ("model" = Option<String>, Query, description = "The model (default: the first configured)"),
           ("system" = Option<String>, Query, description = "A system prompt"),
           ("Last-Event-ID" = Option<String>, Header, description = "Resume the answer this event id belongs to")),
    responses((status = 200, description = "OpenAI chunk objects as data, then event: end", content_type = "text/event-stream", body = crate::sse::SseEvent),
              (status = 204, description = "The answer has ended: stop reconnecting"),
              (status = 400, description = "No prompt, or no model", body = crate::error::ErrorBody),
              (status = 401, description = "A missing or wrong API key", body = crate::error::ErrorBody),
              (status = 404, description = "No such answer to resume, or no provider serves the model", body = crate::error::ErrorBody),
              (status = 429, description = "Rate limited or the model is busy", body = crate::error::ErrorBody),
              (status = 503, description = "The store is unavailable", body = crate::error::ErrorBody)),
    security((), ("api_key" = [])))]
pub(crate) async fn one_shot(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    // A reconnection names its answer in Last-Event-ID (`{answer}.{n}`): resume it, never
    // start a new one. Its id is 128 random bits, known only to its reader.
    let (id, after) = match cursor(&headers, None) {
        Some(last) => {
            let id = answer_of(&last).to_owned();
            state.answers().authorize(state.hub(), &id, Kind::OneShot, None).await?;
            if ended_at(state.hub(), &id, &last).await? {
                return Ok(no_content());
            }
            (id, Some(last))
        }
        None => {
            state.admission().admit(&headers, client.0.ip())?;
            let chat = one_shot_request(raw.as_deref(), state.default_model().as_deref())?;
            let deltas = state.config().models.stream(chat).await.map_err(provider_error)?;
            let started =
                state.answers().start(state.hub(), deltas, Kind::OneShot, ONE_SHOT_GRACE).await?;
            (started.id, None)
        }
    };
    let (deliveries, reader) = follow(&state, &id, after).await?;
    let chunker =
        Chunker::new(format!("chatcmpl-{id}"), state.default_model().unwrap_or_default(), false);
    let mut first = true;
    let frames = pieces(deliveries)
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
