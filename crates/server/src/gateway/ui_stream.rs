//! The AI SDK's UI message stream at its default paths, so `useChat` with
//! `DefaultChatTransport` gets resume and stop together:
//!
//! - `POST /api/chat` takes the transport's body (`id`, `messages` as UI messages with
//!   `parts`, `trigger`, `messageId`, and what the app adds: `model`, else the first model,
//!   and `max_tokens`) and answers with the chunks the `ai` package parses, then `data: [DONE]`.
//! - `GET /api/chat/{id}/stream` resumes the chat's running answer, replayed from its first
//!   chunk then live (the transport's `resumeStreamIsReplay` default); 204 when none runs or
//!   it has ended.
//! - `POST /api/chat/{id}/stop` stops it: the upstream is cancelled, open streams end with
//!   `abort`, a later resume is 204.
//!
//! The answer is in the hub, so a dropped connection does not stop it; one nobody reads and
//! nobody stops ends by the reader-presence rule of `/api/generations`. A chat has one answer
//! at a time: a new message stops the one before. Chat ids come from the client, so a chat is
//! found by its id together with the caller's API key (a hash of the `Authorization` header):
//! another key cannot read or stop it, and where no keys are configured the id's entropy (the
//! AI SDK's are 16 random characters) is what keeps others out.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice_llm::{ChatRequest, Message, Role};

use super::generations::no_content;
use super::upstream::{Admitted, Allowed, ask_lazily};
use crate::answers::events::{AnswerEvent, Encoder, Finish, encode};
use crate::answers::read::Piece;
use crate::answers::{Kind, NewAnswer, Reader, Started, Unread, random_id};
use crate::error::ApiError;
use crate::keys::Caller;
use crate::sse::event_stream;
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/chat", post(chat))
        .route("/api/chat/{id}/stream", get(resume))
        .route("/api/chat/{id}/stop", post(stop))
}

/// The longest chat id accepted.
const MAX_CHAT_ID: usize = 256;
/// The most messages in one request.
const MAX_MESSAGES: usize = 2048;

/// The transport's body.
#[derive(Debug, Deserialize)]
struct ChatBody {
    id: String,
    messages: Vec<UiMessage>,
    #[serde(default)]
    trigger: Option<String>,
    #[serde(default, rename = "messageId")]
    message_id: Option<String>,
    /// Added by the app (`body: {model}` in the transport's options).
    model: Option<String>,
    /// Added by the app too: the most tokens the answer may take.
    #[serde(default, deserialize_with = "super::upstream::token_count")]
    max_tokens: Option<u32>,
}

/// A UI message: its role and its parts.
#[derive(Debug, Deserialize)]
struct UiMessage {
    role: Role,
    #[serde(default)]
    parts: Vec<Value>,
}

/// The schemas of the document: what the handlers below accept and answer.
pub(crate) mod doc {
    use serde_json::{Value, json};

    use crate::api_schema::written_schema;

    /// A chat id: 1 to 256 characters, none a control character.
    pub(super) fn chat_id() -> Value {
        json!({"type": "string", "minLength": 1, "maxLength": super::MAX_CHAT_ID,
            "not": {"pattern": "[\\u0000-\\u001f\\u007f-\\u009f]"}})
    }

    written_schema!(
        /// The body `DefaultChatTransport` sends (and what the app adds: `model`,
        /// `max_tokens`); other fields are ignored.
        ChatBody,
        json!({
            "type": "object",
            "required": ["id", "messages"],
            "properties": {
                "id": chat_id(),
                "messages": {"type": "array", "minItems": 1, "maxItems": super::MAX_MESSAGES,
                    "description": "UI messages: text parts are read as text, tool parts \
                        with their output as the call and its result, others are skipped",
                    "items": {"type": "object", "required": ["role"], "properties": {
                        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
                        "parts": {"type": "array"}}}},
                "trigger": {"type": ["string", "null"],
                    "description": "`submit-message` or `regenerate-message`"},
                "messageId": {"type": ["string", "null"],
                    "description": "The message a `regenerate-message` replaces"},
                "model": {"type": ["string", "null"],
                    "description": "The model; the first configured one when absent",
                    "examples": ["scripted"]},
                "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": u32::MAX},
            },
        })
    );

    written_schema!(
        /// A chat id, in a path.
        ChatId,
        chat_id()
    );

    written_schema!(
        /// The reply to a stop request.
        Stopped,
        json!({"type": "object", "required": ["id", "stopped"], "properties": {
            "id": {"type": "string"},
            "stopped": {"type": "boolean",
                "description": "Whether an answer was running (and is now cancelled)"}}})
    );
}

fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_request", message).with_param(param)
}

/// A chat id, checked: it names the chat in the resume and stop URLs.
fn chat_id(id: &str) -> Result<&str, ApiError> {
    if id.is_empty() || id.chars().count() > MAX_CHAT_ID || id.chars().any(char::is_control) {
        return Err(invalid("id", format!("a chat id is 1 to {MAX_CHAT_ID} printable characters")));
    }
    Ok(id)
}

/// What a chat is found by: its id, scoped by the caller's credentials.
fn chat_key(headers: &HeaderMap, id: &str) -> String {
    let credentials = headers
        .get(header::AUTHORIZATION)
        .or_else(|| headers.get("x-api-key"))
        .map_or(&[][..], HeaderValue::as_bytes);
    let scope = Sha256::digest(credentials);
    let scope: String = scope[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("ui-chat:{scope}:{id}")
}

/// The chat messages UI messages make: text parts as text, tool parts that have their output
/// as the assistant's call and the tool's result.
fn messages(ui: &[UiMessage]) -> Result<Vec<Message>, ApiError> {
    if ui.is_empty() || ui.len() > MAX_MESSAGES {
        return Err(invalid("messages", format!("1 to {MAX_MESSAGES} messages are required")));
    }
    let mut out = Vec::new();
    for message in ui {
        let mut said = Message::new(message.role, "");
        let mut results = Vec::new();
        for part in &message.parts {
            let kind = part["type"].as_str().unwrap_or_default();
            let tool_name = match kind {
                "dynamic-tool" => part["toolName"].as_str(),
                _ => kind.strip_prefix("tool-"),
            };
            match (kind, tool_name) {
                ("text", _) => said.content.push_str(part["text"].as_str().unwrap_or_default()),
                (_, Some(name)) if part["state"] == "output-available" => {
                    let call_id = part["toolCallId"].as_str().unwrap_or_default();
                    said.tool_calls.push(json!({"id": call_id, "type": "function",
                        "function": {"name": name, "arguments": part["input"].to_string()}}));
                    results.push(Message {
                        tool_call_id: Some(call_id.to_owned()),
                        ..Message::new(Role::Tool, part["output"].to_string())
                    });
                }
                // Reasoning, step marks, sources, data parts, calls without a result: nothing
                // a chat upstream takes.
                _ => {}
            }
        }
        if !said.content.is_empty() || !said.tool_calls.is_empty() {
            out.push(said);
        }
        out.extend(results);
    }
    Ok(out)
}

/// One `data:` chunk.
fn chunk(body: &Value) -> Bytes {
    let mut frame = BytesMut::new();
    sluice_sse::Event::new(body.to_string()).encode(&mut frame);
    frame.freeze()
}

/// The UI message stream's part now open.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Open {
    Text(String),
    /// A tool call: its index, id, name and the input so far.
    Tool {
        index: u32,
        id: String,
        name: String,
        input: String,
    },
}

/// The UI message stream's chunks for an answer.
#[derive(Debug, Default)]
pub(super) struct UiChunks {
    open: Option<Open>,
    parts: u32,
    failed: bool,
}

impl UiChunks {
    fn close(&mut self, out: &mut Vec<Value>) {
        match self.open.take() {
            Some(Open::Text(id)) => out.push(json!({"type": "text-end", "id": id})),
            Some(Open::Tool { id, name, input, .. }) => {
                let input: Value = serde_json::from_str(&input).unwrap_or(json!({}));
                out.push(json!({"type": "tool-input-available", "toolCallId": id,
                    "toolName": name, "input": input}));
            }
            None => {}
        }
    }
}

impl UiChunks {
    /// The chunks (as JSON values) an answer event makes, in order: what both the SSE body
    /// and the durable stream of an answer carry.
    pub(super) fn chunks(&mut self, event: &AnswerEvent) -> Vec<Value> {
        let mut out = Vec::new();
        match event {
            AnswerEvent::Start(start) => {
                out.push(json!({"type": "start", "messageId": start["messageId"]}));
                out.push(json!({"type": "start-step"}));
            }
            AnswerEvent::Text(text) => {
                let id = match &self.open {
                    Some(Open::Text(id)) => id.clone(),
                    _ => {
                        self.close(&mut out);
                        self.parts += 1;
                        let id = format!("text-{}", self.parts);
                        out.push(json!({"type": "text-start", "id": id}));
                        self.open = Some(Open::Text(id.clone()));
                        id
                    }
                };
                out.push(json!({"type": "text-delta", "id": id, "delta": text}));
            }
            AnswerEvent::ToolCall(part) => {
                if !matches!(&self.open, Some(Open::Tool { index, .. }) if *index == part.index) {
                    self.close(&mut out);
                    let id = part.id.clone().unwrap_or_else(|| format!("call-{}", part.index));
                    let name = part.name.clone().unwrap_or_default();
                    out.push(json!({"type": "tool-input-start", "toolCallId": id,
                        "toolName": name}));
                    self.open =
                        Some(Open::Tool { index: part.index, id, name, input: String::new() });
                }
                if let Some(Open::Tool { id, input, .. }) = &mut self.open
                    && !part.arguments.is_empty()
                {
                    input.push_str(&part.arguments);
                    out.push(json!({"type": "tool-input-delta", "toolCallId": id,
                        "inputTextDelta": part.arguments}));
                }
            }
            AnswerEvent::Error(error) => {
                self.failed = true;
                self.close(&mut out);
                out.push(json!({"type": "error", "errorText": error["message"]}));
            }
            AnswerEvent::Usage(_) => {}
            AnswerEvent::End(finish) => {
                self.close(&mut out);
                if !self.failed {
                    out.push(json!({"type": "finish-step"}));
                }
                out.push(match finish {
                    Finish::Cancelled => json!({"type": "abort"}),
                    finish => json!({"type": "finish", "finishReason": match finish {
                        Finish::Length => "length",
                        Finish::ToolCalls => "tool-calls",
                        Finish::ContentFilter => "content-filter",
                        Finish::Error => "error",
                        _ => "stop",
                    }}),
                });
            }
        }
        out
    }
}

impl Encoder for UiChunks {
    fn event(&mut self, event: &AnswerEvent, _id: Option<&str>, out: &mut Vec<Bytes>) {
        out.extend(self.chunks(event).iter().map(chunk));
        if matches!(event, AnswerEvent::End(_)) {
            let mut done = BytesMut::new();
            sluice_sse::Event::new("[DONE]").encode(&mut done);
            out.push(done.freeze());
        }
    }
}

/// A chat's answer from its first chunk, then live, as a UI message stream.
fn ui_stream(pieces: BoxStream<'static, Piece>, reader: Reader, state: &AppState) -> Response {
    let frames = encode(pieces, UiChunks::default());
    let mut response = event_stream(None, frames, state.config().keep_alive, None, reader);
    response.headers_mut().insert("x-vercel-ai-ui-message-stream", HeaderValue::from_static("v1"));
    response
}

/// The running answer of the chat `id` names for this caller: its answer id, if it has not
/// ended.
pub(super) async fn running(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<Option<String>, ApiError> {
    let key = chat_key(headers, chat_id(id)?);
    let Some(record) = state.answers().latest(state.hub(), &key, Kind::UiChat).await? else {
        return Ok(None);
    };
    state.answers().settle(state.hub(), &record.id).await?;
    let ended = state.answers().ended(state.hub(), &record.id).await?;
    Ok((!ended).then_some(record.id))
}

/// Sends a message: starts the chat's answer (stopping the one before) and streams it.
#[utoipa::path(post, path = "/api/chat", operation_id = "send_chat_message", tag = "ui-chat",
    request_body(content = doc::ChatBody, content_type = "application/json",
        description = "The AI SDK's `DefaultChatTransport` body"),
    responses(
        (status = 200, description = "The answer as the AI SDK's UI message stream (`data:` chunks, then `[DONE]`)", content_type = "text/event-stream", body = crate::sse::SseEvent),
        crate::api_schema::BodyRefusals,
        crate::api_schema::UpstreamFailures,
    ),
    security((), ("api_key" = [])))]
pub(crate) async fn chat(
    State(state): State<AppState>,
    headers: HeaderMap,
    Admitted(body, caller): Admitted,
) -> Result<Response, ApiError> {
    let started = start_chat(&state, &caller, &headers, &body).await?;
    let (pieces, reader) = state.answers().read_new(state.hub(), started, true);
    Ok(ui_stream(pieces, reader, &state))
}

/// Starts the answer to a chat message (the transport's body), stopping the chat's answer
/// still running.
pub(super) async fn start_chat(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Started, ApiError> {
    let body: ChatBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid request body: {e}")))?;
    let id = chat_id(&body.id)?;
    let model = body
        .model
        .clone()
        .or_else(|| state.default_model())
        .ok_or_else(|| invalid("model", "no model is configured"))?;
    let messages = messages(&body.messages)?;
    let chat =
        ChatRequest { model, messages, max_tokens: body.max_tokens, ..ChatRequest::default() };
    let deltas = ask_lazily(state, caller, chat)?;
    // One answer per chat: a new message stops the one still running.
    if let Some(previous) = running(state, headers, id).await? {
        state.answers().cancel(state.hub(), &previous).await?;
    }
    let message_id = match (body.trigger.as_deref(), body.message_id) {
        (Some("regenerate-message"), Some(message_id)) => message_id,
        _ => format!("msg-{}", random_id()),
    };
    let new = NewAnswer {
        kind: Kind::UiChat,
        start: json!({"messageId": message_id}),
        unread: Unread::CancelAfter(state.config().generation_grace),
        id: None,
        key: Some(chat_key(headers, id)),
    };
    state.answers().start(state.hub(), deltas, new).await
}

/// Resumes the chat's running answer: replayed from its first chunk, then live.
#[utoipa::path(get, path = "/api/chat/{id}/stream", operation_id = "resume_chat", tag = "ui-chat",
    params(("id" = doc::ChatId, Path, description = "The chat")),
    responses(
        (status = 200, description = "The running answer as a UI message stream", content_type = "text/event-stream", body = crate::sse::SseEvent),
        (status = 204, description = "No answer runs (or it has ended): nothing to resume"),
        (status = 400, description = "A malformed chat id", body = crate::error::ErrorBody),
        crate::api_schema::StoreRefusals,
    ),
    security((), ("api_key" = [])))]
pub(crate) async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    _: Allowed,
) -> Result<Response, ApiError> {
    match running(&state, &headers, &id).await? {
        Some(answer) => {
            let (pieces, reader) = state.answers().follow(state.hub(), &answer, None, true).await?;
            Ok(ui_stream(pieces, reader, &state))
        }
        None => Ok(no_content()),
    }
}

/// Stops the chat's running answer: its upstream is cancelled, its streams end with `abort`.
#[utoipa::path(post, path = "/api/chat/{id}/stop", operation_id = "stop_chat", tag = "ui-chat",
    params(("id" = doc::ChatId, Path, description = "The chat")),
    responses(
        (status = 200, description = "Stopped (or nothing was running)", body = doc::Stopped),
        (status = 400, description = "A malformed chat id", body = crate::error::ErrorBody),
        crate::api_schema::StoreRefusals,
    ),
    security((), ("api_key" = [])))]
pub(crate) async fn stop(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    _: Allowed,
) -> Result<Response, ApiError> {
    let stopped = match running(&state, &headers, &id).await? {
        Some(answer) => state.answers().cancel(state.hub(), &answer).await?,
        None => false,
    };
    Ok(axum::Json(json!({"id": id, "stopped": stopped})).into_response())
}

#[cfg(test)]
mod tests {
    use super::{MAX_CHAT_ID, chat_id};

    #[test]
    fn a_chat_id_is_measured_in_characters() {
        assert!(chat_id(&"é".repeat(MAX_CHAT_ID)).is_ok());
        assert!(chat_id(&"é".repeat(MAX_CHAT_ID + 1)).is_err());
        assert!(chat_id(&"a".repeat(MAX_CHAT_ID + 1)).is_err());
        assert!(chat_id("").is_err());
        assert!(chat_id("a\u{85}b").is_err());
    }
}
