//! The one-shot form for a plain `new EventSource("/api/chat/stream?prompt=…")`: OpenAI chunk
//! objects as `data:`, then `event: end`, with ids that name the answer, so a reconnect
//! resumes the answer it was reading (never starts a new one), and only answers made by this
//! endpoint; a reconnect after `end` gets 204.

use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use serde_json::json;
use sluice_llm::{ChatRequest, Message, Role};

use super::chat_completions::wire::Chunker;
use super::generations::{event_frame, no_content};
use super::upstream::ask_lazily;
use crate::answers::events::{AnswerEvent, Encoder, encode};
use crate::answers::read::{cursor, ended_at};
use crate::answers::{Kind, NewAnswer, Unread, answer_of};
use crate::conn::ClientAddr;
use crate::error::{ApiError, ErrorBody};
use crate::sse::event_stream;
use crate::state::AppState;

/// How long a one-shot answer waits for its reader to come back: long enough for a browser's
/// reconnection (about 3 s), short enough that closing the page stops the upstream soon.
const ONE_SHOT_GRACE: Duration = Duration::from_secs(5);

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/api/chat/stream", get(one_shot))
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
              (status = 400, description = "No prompt, or no model", body = ErrorBody),
              (status = 401, description = "A missing or wrong API key", body = ErrorBody),
              (status = 403, description = "The API key may not use the model", body = ErrorBody),
              (status = 404, description = "No such answer to resume, or no provider serves the model", body = ErrorBody),
              (status = 429, description = "Rate limited or the model is busy", body = ErrorBody),
              (status = 503, description = "The store is unavailable", body = ErrorBody)),
    security((), ("api_key" = [])))]
pub(crate) async fn one_shot(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    // A reconnection names its answer in Last-Event-ID (`#{answer}.{n}`): resume it, never
    // start a new one. Its id is 128 random bits, known only to its reader.
    let (id, (pieces, reader)) = match cursor(&headers, None) {
        Some(last) => {
            let id = answer_of(&last).to_owned();
            state.answers().authorize(state.hub(), &id, Kind::OneShot, None).await?;
            if ended_at(state.hub(), &last).await? {
                return Ok(no_content());
            }
            let read = state.answers().follow(state.hub(), &id, Some(last), true).await?;
            (id, read)
        }
        None => {
            let store = state.hub().store();
            let caller = state.admission().admit(&headers, client.0.ip(), store, true).await?;
            let chat = one_shot_request(raw.as_deref(), state.default_model().as_deref())?;
            let new = NewAnswer {
                kind: Kind::OneShot,
                start: json!({"model": chat.model}),
                unread: Unread::CancelAfter(ONE_SHOT_GRACE),
                id: None,
                key: None,
            };
            let deltas = ask_lazily(&state, &caller, chat)?;
            let started = state.answers().start(state.hub(), deltas, new).await?;
            (started.id.clone(), state.answers().read_new(state.hub(), started, true))
        }
    };
    let chunker = Chunker::new(format!("chatcmpl-{id}"), String::new(), false);
    let frames = encode(pieces, OneShot { chunker, first: true });
    Ok(event_stream(None, frames, state.config().keep_alive, None, reader))
}

/// The one-shot form's events: text as OpenAI chunks (the first with the assistant's role),
/// everything else under its own event type; each with its id.
struct OneShot {
    chunker: Chunker,
    first: bool,
}

impl Encoder for OneShot {
    fn event(&mut self, event: &AnswerEvent, id: Option<&str>, out: &mut Vec<Bytes>) {
        let (event_type, body) = match event {
            AnswerEvent::Start(start) => {
                let model = start["model"].as_str().unwrap_or_default();
                model.clone_into(&mut self.chunker.model);
                return;
            }
            AnswerEvent::Text(text) => {
                let mut chunk = self.chunker.text(text);
                if std::mem::take(&mut self.first) {
                    chunk.choices[0].delta.role = Some("assistant");
                }
                return out.push(event_frame(None, id, &chunk));
            }
            AnswerEvent::Error(error) => (Some("error"), json!({"error": error})),
            other => (Some(other.event_type()), other.data()),
        };
        out.push(event_frame(event_type, id, &body));
    }
}
