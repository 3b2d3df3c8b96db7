//! The OpenAI Responses API: `POST /v1/responses`, `GET /v1/responses/{id}` (whole, or
//! `?stream=true&starting_after=N` to resume) and `POST /v1/responses/{id}/cancel`.
//!
//! A response is an answer in the hub (unless the request says `store: false`), so it is
//! retrievable while its history is kept, and resumable and cancellable from any node. Its
//! events are numbered from 0 by [`ResponseEvents`], a pure function of the answer's events
//! (deltas are never merged here), so every read of a response numbers its events the same and
//! `starting_after=N` sends exactly the events after N, each once.
//!
//! Without `background`, a client that leaves cancels the upstream, as OpenAI's does. With it,
//! the answer runs to its end (bounded by `max_output_tokens` and the upstream timeouts)
//! unless cancelled, whoever reads it. A cancelled response ends its stream with
//! `response.incomplete` whose response has `status: "cancelled"` (OpenAI names no event for
//! it). Ids are `resp_` and 128 random bits: the id is what lets a reader in, with the API key
//! where keys are configured.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice_llm::{ChatRequest, Message, Role, Usage};

use super::upstream::{Admitted, Allowed, ask_lazily};
use crate::answers::events::{AnswerEvent, Encoder, Finish, encode, from_provider, unix_now};
use crate::answers::read::{Piece, so_far, unstored};
use crate::answers::{Kind, NewAnswer, Unread, random_id};
use crate::error::ApiError;
use crate::sse::event_stream;
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/responses", post(create))
        .route("/v1/responses/{id}", get(retrieve))
        .route("/v1/responses/{id}/cancel", post(cancel))
}

/// The most input items one request may give.
const MAX_ITEMS: usize = 2048;
/// How long a cancel waits for the answer's end to be stored before answering.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// The body of `POST /v1/responses`: the parameters Sluice honours (others are ignored).
#[derive(Debug, Deserialize)]
struct CreateRequest {
    model: Option<String>,
    input: Value,
    instructions: Option<String>,
    #[serde(default, deserialize_with = "super::upstream::token_count")]
    max_output_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    #[serde(default)]
    tools: Vec<Value>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    background: bool,
    store: Option<bool>,
    metadata: Option<Map<String, Value>>,
    previous_response_id: Option<String>,
}

/// The schemas of the document: what the handlers below accept and answer.
mod doc {
    use serde_json::json;

    use crate::api_schema::written_schema;

    /// Message content: a string, or text parts (`refusal` parts are read too).
    fn content() -> serde_json::Value {
        json!({"oneOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": [
            {"type": "object", "required": ["type", "text"], "properties": {
                "type": {"enum": ["input_text", "output_text", "text"]},
                "text": {"type": "string"}}},
            {"type": "object", "required": ["type"], "properties": {"type": {"const": "refusal"}}},
        ]}}]})
    }

    written_schema!(
        /// The body of `POST /v1/responses`: the parameters Sluice honours (others are
        /// ignored).
        CreateResponse,
        json!({
            "type": "object",
            "required": ["input"],
            "properties": {
                "model": {"type": ["string", "null"],
                    "description": "The model; the first configured one when absent",
                    "examples": ["scripted"]},
                "input": {"description": "A string (the user's message), or 1 to 2048 items: \
                    messages (`type` `message` or none), `function_call`, \
                    `function_call_output` and `reasoning` items",
                    "oneOf": [{"type": "string"}, {"type": "array", "minItems": 1,
                    "maxItems": super::MAX_ITEMS, "items": {"anyOf": [
                        {"type": "object", "required": ["role", "content"], "properties": {
                            "type": {"anyOf": [{"const": "message"}, {"not": {"type": "string"}}]},
                            "role": {"enum": ["user", "assistant", "system", "developer", "tool"]},
                            "content": content()}},
                        {"type": "object", "required": ["type"], "properties": {
                            "type": {"const": "function_call"}}},
                        {"type": "object", "required": ["type", "output"], "properties": {
                            "type": {"const": "function_call_output"}, "output": content()}},
                        {"type": "object", "required": ["type"], "properties": {
                            "type": {"const": "reasoning"}}},
                    ]}}]},
                "instructions": {"type": ["string", "null"]},
                "max_output_tokens": {"type": ["integer", "null"], "minimum": 1,
                    "maximum": u32::MAX},
                "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
                "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                "tools": {"type": "array", "description": "Function tools only",
                    "items": {"type": "object", "required": ["type", "name"], "properties": {
                        "type": {"const": "function"}, "name": {"type": "string"}}}},
                "tool_choice": {"description": "`auto`, `none`, `required` or a function"},
                "parallel_tool_calls": {"type": ["boolean", "null"]},
                "stream": {"type": "boolean", "description": "Stream the response's events"},
                "background": {"type": "boolean",
                    "description": "Run on whoever reads (it must be stored)"},
                "store": {"type": ["boolean", "null"],
                    "description": "Keep the response (retrievable, resumable); the default"},
                "metadata": {"type": ["object", "null"]},
                "previous_response_id": {"type": "null",
                    "description": "Not supported: send the conversation as input"},
            },
            "not": {"required": ["background", "store"], "properties": {
                "background": {"const": true}, "store": {"const": false}}},
        })
    );

    written_schema!(
        /// A response object, OpenAI's shape.
        ResponseObject,
        json!({
            "type": "object",
            "required": ["id", "object", "status", "output", "model", "created_at"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "response"},
                "status": {"enum": ["queued", "in_progress", "completed", "incomplete",
                    "cancelled", "failed"]},
                "output": {"type": "array", "items": {"type": "object"}},
                "model": {"type": "string"},
                "created_at": {"type": "integer"},
                "usage": {"type": ["object", "null"]},
                "error": {"type": ["object", "null"]},
                "incomplete_details": {"type": ["object", "null"]},
            },
        })
    );
}

fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_request", message).with_param(param)
}

/// The text of a message's `content`: a string, or the text of its text parts.
fn content_text(content: &Value) -> Result<String, ApiError> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(|part| match (part["type"].as_str(), part["text"].as_str()) {
                (Some("input_text" | "output_text" | "text"), Some(text)) => Ok(text),
                (Some("refusal"), _) => Ok(part["refusal"].as_str().unwrap_or_default()),
                (kind, _) => Err(invalid(
                    "input",
                    format!(
                        "only text content is supported, not {}",
                        kind.unwrap_or("untyped parts")
                    ),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| texts.concat()),
        _ => Err(invalid("input", "a message's content must be a string or a list of parts")),
    }
}

/// The conversation `input` gives (a string, or message and function-call items).
fn messages(input: &Value) -> Result<Vec<Message>, ApiError> {
    let items = match input {
        Value::String(text) => return Ok(vec![Message::new(Role::User, text.clone())]),
        Value::Array(items) if !items.is_empty() && items.len() <= MAX_ITEMS => items,
        Value::Array(_) => {
            return Err(invalid("input", format!("input takes 1 to {MAX_ITEMS} items")));
        }
        _ => return Err(invalid("input", "input must be a string or a list of items")),
    };
    let mut messages: Vec<Message> = Vec::new();
    for item in items {
        match item["type"].as_str() {
            None | Some("message") => {
                let role: Role = serde_json::from_value(item["role"].clone()).map_err(|_| {
                    invalid(
                        "input",
                        "a message item needs a role: user, assistant, system or developer",
                    )
                })?;
                messages.push(Message::new(role, content_text(&item["content"])?));
            }
            Some("function_call") => {
                let call = json!({"id": item["call_id"], "type": "function", "function":
                    {"name": item["name"], "arguments": item["arguments"]}});
                match messages.last_mut() {
                    Some(last) if last.role == Role::Assistant => last.tool_calls.push(call),
                    _ => messages.push(Message {
                        tool_calls: vec![call],
                        ..Message::new(Role::Assistant, "")
                    }),
                }
            }
            Some("function_call_output") => {
                let output = match &item["output"] {
                    Value::String(text) => text.clone(),
                    other => content_text(other)?,
                };
                messages.push(Message {
                    tool_call_id: item["call_id"].as_str().map(str::to_owned),
                    ..Message::new(Role::Tool, output)
                });
            }
            // The model's reasoning from an earlier turn: nothing a chat upstream takes.
            Some("reasoning") => {}
            Some(other) => {
                return Err(invalid(
                    "input",
                    format!("input items of type {other} are not supported"),
                ));
            }
        }
    }
    Ok(messages)
}

/// Function tools, from the Responses API's shape to Chat Completions'.
fn chat_tools(tools: &[Value]) -> Result<Vec<Value>, ApiError> {
    tools
        .iter()
        .map(|tool| match (tool["type"].as_str(), tool["name"].as_str()) {
            (Some("function"), Some(name)) => Ok(json!({"type": "function", "function": {
                "name": name, "description": tool["description"], "parameters": tool["parameters"],
            }})),
            _ => Err(invalid("tools", "only function tools (with a name) are supported")),
        })
        .collect()
}

impl CreateRequest {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let request: CreateRequest = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request("invalid_json", format!("invalid request body: {e}"))
        })?;
        if request.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(invalid("temperature", "temperature must be between 0 and 2"));
        }
        if request.top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
            return Err(invalid("top_p", "top_p must be between 0 and 1"));
        }
        if request.background && request.store == Some(false) {
            return Err(invalid("background", "a background response must be stored"));
        }
        if request.previous_response_id.is_some() {
            return Err(invalid(
                "previous_response_id",
                "previous_response_id is not supported: send the conversation as input",
            ));
        }
        Ok(request)
    }

    /// The provider-facing request, and the response object's fields that the request sets.
    fn into_chat(self, default_model: Option<&str>) -> Result<(ChatRequest, Value), ApiError> {
        let model = self
            .model
            .or_else(|| default_model.map(str::to_owned))
            .ok_or_else(|| invalid("model", "model is required"))?;
        let mut conversation = Vec::new();
        if let Some(instructions) = &self.instructions {
            conversation.push(Message::new(Role::System, instructions.clone()));
        }
        conversation.extend(messages(&self.input)?);
        let tool_choice = self.tool_choice.clone().map(|choice| match choice["type"].as_str() {
            Some("function") => json!({"type": "function", "function": {"name": choice["name"]}}),
            _ => choice,
        });
        let chat = ChatRequest {
            model: model.clone(),
            messages: conversation,
            temperature: self.temperature.map(|t| t as f32),
            top_p: self.top_p.map(|p| p as f32),
            max_tokens: self.max_output_tokens,
            tools: chat_tools(&self.tools)?,
            tool_choice,
            ..ChatRequest::default()
        };
        let fields = json!({
            "created_at": unix_now(),
            "model": model,
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "temperature": self.temperature.unwrap_or(1.0),
            "top_p": self.top_p.unwrap_or(1.0),
            "tools": self.tools,
            "tool_choice": self.tool_choice.unwrap_or_else(|| json!("auto")),
            "parallel_tool_calls": self.parallel_tool_calls.unwrap_or(true),
            "metadata": self.metadata.unwrap_or_default(),
            "background": self.background,
            "store": self.store.unwrap_or(true),
        });
        Ok((chat, fields))
    }
}

/// An output item being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    /// The message item at this output index.
    Message(usize),
    /// The function call item at this output index, for the call with this index.
    Call(usize, u32),
}

/// A response as its events say it, and the events that say it: numbered from 0, the same on
/// every read.
struct ResponseEvents {
    id: String,
    /// The response object's fields the request set (the answer's `start` event).
    fields: Value,
    output: Vec<Value>,
    open: Option<Open>,
    usage: Option<Usage>,
    error: Option<Value>,
    finish: Option<Finish>,
    next: u64,
    /// Events numbered up to this one are not sent (a resume's `starting_after`).
    skip_through: Option<u64>,
}

impl ResponseEvents {
    fn new(id: &str, skip_through: Option<u64>) -> Self {
        ResponseEvents {
            id: id.to_owned(),
            fields: Value::Null,
            output: Vec::new(),
            open: None,
            usage: None,
            error: None,
            finish: None,
            next: 0,
            skip_through,
        }
    }

    fn status(&self) -> &'static str {
        match self.finish {
            None if self.fields["background"] == json!(true) && self.next <= 2 => "queued",
            None => "in_progress",
            Some(Finish::Stop | Finish::ToolCalls | Finish::ContentFilter) => "completed",
            Some(Finish::Length) => "incomplete",
            Some(Finish::Cancelled) => "cancelled",
            Some(Finish::Error) => "failed",
        }
    }

    /// The response object as it stands.
    fn response(&self) -> Value {
        let mut response = match &self.fields {
            Value::Object(fields) => fields.clone(),
            _ => Map::new(),
        };
        let usage = self.usage.map(|u| {
            json!({"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": u.total_tokens})
        });
        let incomplete =
            (self.finish == Some(Finish::Length)).then(|| json!({"reason": "max_output_tokens"}));
        let error =
            self.error.as_ref().map(|e| json!({"code": "server_error", "message": e["message"]}));
        for (key, value) in [
            ("id", json!(format!("resp_{}", self.id))),
            ("object", json!("response")),
            ("status", json!(self.status())),
            ("error", json!(error)),
            ("incomplete_details", json!(incomplete)),
            ("output", json!(self.output)),
            ("usage", json!(usage)),
            ("previous_response_id", Value::Null),
            ("reasoning", json!({"effort": null, "summary": null})),
            ("text", json!({"format": {"type": "text"}})),
            ("truncation", json!("disabled")),
            ("user", Value::Null),
        ] {
            response.insert(key.to_owned(), value);
        }
        Value::Object(response)
    }

    fn emit(&mut self, out: &mut Vec<Bytes>, kind: &str, mut body: Value) {
        let sequence = self.next;
        self.next += 1;
        if self.skip_through.is_some_and(|n| sequence <= n) {
            return;
        }
        body["type"] = json!(kind);
        body["sequence_number"] = json!(sequence);
        let mut frame = BytesMut::new();
        let event =
            sluice_sse::Event::new(body.to_string()).with_event(kind).expect("a plain type");
        event.encode(&mut frame);
        out.push(frame.freeze());
    }

    fn item_id(&self, prefix: &str, index: usize) -> String {
        format!("{prefix}_{}{index:04}", self.id)
    }

    /// Finishes the open output item, if any.
    fn close(&mut self, out: &mut Vec<Bytes>) {
        match self.open.take() {
            Some(Open::Message(index)) => {
                let item_id = self.item_id("msg", index);
                let text = self.output[index]["content"][0]["text"].clone();
                let at = json!({"item_id": item_id, "output_index": index, "content_index": 0});
                let mut done = at.clone();
                done["text"] = text;
                done["logprobs"] = json!([]);
                self.emit(out, "response.output_text.done", done);
                let mut part = at;
                part["part"] = self.output[index]["content"][0].clone();
                self.emit(out, "response.content_part.done", part);
                self.output[index]["status"] = json!("completed");
                let item = self.output[index].clone();
                self.emit(
                    out,
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                );
            }
            Some(Open::Call(index, _)) => {
                self.output[index]["status"] = json!("completed");
                let item = self.output[index].clone();
                let done = json!({"item_id": item["id"], "output_index": index,
                    "name": item["name"], "arguments": item["arguments"]});
                self.emit(out, "response.function_call_arguments.done", done);
                self.emit(
                    out,
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                );
            }
            None => {}
        }
    }
}

/// Appends `more` to the string `value` in place (anything else becomes `more`): an output's
/// text grows by each delta without being copied whole each time, which made a long answer's
/// encoding quadratic in its length.
fn append(value: &mut Value, more: &str) {
    match value {
        Value::String(text) => text.push_str(more),
        other => *other = Value::String(more.to_owned()),
    }
}

impl Encoder for ResponseEvents {
    fn event(&mut self, event: &AnswerEvent, _id: Option<&str>, out: &mut Vec<Bytes>) {
        match event {
            AnswerEvent::Start(fields) => {
                self.fields = fields.clone();
                let created = self.response();
                self.emit(out, "response.created", json!({"response": created}));
                let mut running = self.response();
                running["status"] = json!("in_progress");
                self.emit(out, "response.in_progress", json!({"response": running}));
            }
            AnswerEvent::Text(text) => {
                let index = match self.open {
                    Some(Open::Message(index)) => index,
                    _ => {
                        self.close(out);
                        let index = self.output.len();
                        let item = json!({"id": self.item_id("msg", index), "type": "message",
                            "status": "in_progress", "role": "assistant", "content": []});
                        self.output.push(item.clone());
                        self.emit(
                            out,
                            "response.output_item.added",
                            json!({"output_index": index, "item": item}),
                        );
                        let part = json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
                        let added = json!({"item_id": self.item_id("msg", index), "output_index": index,
                            "content_index": 0, "part": part});
                        self.output[index]["content"] = json!([part]);
                        self.emit(out, "response.content_part.added", added);
                        self.open = Some(Open::Message(index));
                        index
                    }
                };
                append(&mut self.output[index]["content"][0]["text"], text);
                let delta = json!({"item_id": self.item_id("msg", index), "output_index": index,
                    "content_index": 0, "delta": text, "logprobs": []});
                self.emit(out, "response.output_text.delta", delta);
            }
            AnswerEvent::ToolCall(part) => {
                let index = match self.open {
                    Some(Open::Call(index, call)) if call == part.index => index,
                    _ => {
                        self.close(out);
                        let index = self.output.len();
                        let call_id = part
                            .id
                            .clone()
                            .unwrap_or_else(|| format!("call_{}_{}", self.id, part.index));
                        let item = json!({"id": self.item_id("fc", index), "type": "function_call",
                            "status": "in_progress", "call_id": call_id,
                            "name": part.name.clone().unwrap_or_default(), "arguments": ""});
                        self.output.push(item.clone());
                        self.emit(
                            out,
                            "response.output_item.added",
                            json!({"output_index": index, "item": item}),
                        );
                        self.open = Some(Open::Call(index, part.index));
                        index
                    }
                };
                if !part.arguments.is_empty() {
                    append(&mut self.output[index]["arguments"], &part.arguments);
                    let delta = json!({"item_id": self.item_id("fc", index), "output_index": index,
                        "delta": part.arguments});
                    self.emit(out, "response.function_call_arguments.delta", delta);
                }
            }
            AnswerEvent::Error(error) => self.error = Some(error.clone()),
            AnswerEvent::Usage(usage) => self.usage = Some(*usage),
            AnswerEvent::End(finish) => {
                self.close(out);
                self.finish = Some(*finish);
                if let Some(error) = &self.error {
                    let body =
                        json!({"code": "server_error", "message": error["message"], "param": null});
                    self.emit(out, "error", body);
                }
                let kind = match finish {
                    Finish::Stop | Finish::ToolCalls | Finish::ContentFilter => {
                        "response.completed"
                    }
                    Finish::Length | Finish::Cancelled => "response.incomplete",
                    Finish::Error => "response.failed",
                };
                let response = self.response();
                self.emit(out, kind, json!({"response": response}));
            }
        }
    }
}

/// Creates a response: streamed, whole, or started in the background.
#[utoipa::path(post, path = "/v1/responses", operation_id = "create_response", tag = "responses",
    request_body(content = doc::CreateResponse, content_type = "application/json",
        description = "OpenAI's Responses API request"),
    responses(
        (status = 200, description = "The response object (with `background`, as it stands), or with `stream: true` its events as an event stream",
            content((doc::ResponseObject = "application/json"), (crate::sse::SseEvent = "text/event-stream"))),
        crate::api_schema::BodyRefusals,
        crate::api_schema::UpstreamFailures,
    ),
    security((), ("api_key" = [])))]
pub(crate) async fn create(
    State(state): State<AppState>,
    Admitted(body, caller): Admitted,
) -> Result<Response, ApiError> {
    let request = CreateRequest::parse(&body)?;
    let (stream, background) = (request.stream, request.background);
    let stored = request.store != Some(false);
    let (chat, fields) = request.into_chat(state.default_model().as_deref())?;
    let deltas = ask_lazily(&state, &caller, chat)?;
    let id = random_id();
    if !stored {
        // Not kept: straight from the provider, read once.
        let start = stream::once(std::future::ready(AnswerEvent::Start(fields)));
        let events = unstored(start.chain(from_provider(deltas)).boxed());
        if stream {
            let frames = encode(events, ResponseEvents::new(&id, None));
            return Ok(event_stream(None, frames, state.config().keep_alive, None, ()));
        }
        return Ok(axum::Json(whole(&id, events).await).into_response());
    }
    let unread = if background {
        Unread::RunOn
    } else {
        Unread::CancelAfter(state.config().generation_grace)
    };
    let new = NewAnswer { kind: Kind::Response, start: fields, unread, id: Some(id), key: None };
    let started = state.answers().start(state.hub(), deltas, new).await?;
    let id = started.id.clone();
    // Without `background`, the answer is this request's: it stops when the client leaves.
    let leaving = (!background).then(|| CancelOnLeave { state: state.clone(), id: id.clone() });
    if stream {
        let (pieces, reader) = state.answers().read_new(state.hub(), started, false);
        let frames = encode(pieces, ResponseEvents::new(&id, None));
        return Ok(event_stream(None, frames, state.config().keep_alive, None, (reader, leaving)));
    }
    if background {
        return Ok(axum::Json(current(&state, &id).await?).into_response());
    }
    let (pieces, _reader) = state.answers().read_new(state.hub(), started, false);
    let response = whole(&id, pieces).await;
    drop(leaving);
    Ok(axum::Json(response).into_response())
}

/// The response object of answer `id` once `pieces` end (frames the hub made are no part of
/// it).
async fn whole(id: &str, mut pieces: BoxStream<'static, Piece>) -> Value {
    let mut response = ResponseEvents::new(id, None);
    while let Some(piece) = pieces.next().await {
        if let Piece::Event(_, event) = piece {
            response.event(&event, None, &mut Vec::new());
        }
    }
    response.response()
}

/// Cancels the answer of a response made without `background` when its client leaves (a
/// no-op once it has ended).
struct CancelOnLeave {
    state: AppState,
    id: String,
}

impl Drop for CancelOnLeave {
    fn drop(&mut self) {
        let (state, id) = (self.state.clone(), std::mem::take(&mut self.id));
        tokio::spawn(async move {
            if let Err(error) = state.answers().cancel(state.hub(), &id).await {
                tracing::warn!(%error, answer = id, "a left response could not be cancelled");
            }
        });
    }
}

/// The response object of answer `id` as stored now.
async fn current(state: &AppState, id: &str) -> Result<Value, ApiError> {
    let stored = so_far(state.hub(), id).await?;
    Ok(whole(id, stream::iter(stored).map(|event| Piece::Event(None, event)).boxed()).await)
}

/// The answer id of response `resp_{id}`: 404 for any other (an answer another protocol made
/// included).
async fn authorized(state: &AppState, response_id: &str) -> Result<String, ApiError> {
    let not_found = || ApiError::not_found(format!("No response found with id '{response_id}'."));
    let id = response_id.strip_prefix("resp_").ok_or_else(not_found)?;
    state.answers().authorize(state.hub(), id, Kind::Response, None).await.map_err(|e| {
        if e.status() == axum::http::StatusCode::NOT_FOUND { not_found() } else { e }
    })?;
    state.answers().settle(state.hub(), id).await?;
    Ok(id.to_owned())
}

/// The query of `GET /v1/responses/{id}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RetrieveQuery {
    /// Stream the response's events (from the first, or after `starting_after`), then live.
    #[serde(default)]
    stream: bool,
    /// With `stream`, send the events numbered after this one.
    #[param(minimum = 0, maximum = 18446744073709551615_u64)]
    starting_after: Option<u64>,
}

/// A response: its object as it stands, or its events from after `starting_after`, then live.
#[utoipa::path(get, path = "/v1/responses/{id}", operation_id = "retrieve_response", tag = "responses",
    params(("id" = String, Path, description = "The response (`resp_…`)"), RetrieveQuery),
    responses(
        (status = 200, description = "The response object, or with `stream=true` its events as an event stream",
            content((doc::ResponseObject = "application/json"), (crate::sse::SseEvent = "text/event-stream"))),
        (status = 400, description = "A malformed query", body = crate::error::ErrorBody),
        (status = 404, description = "No such response", body = crate::error::ErrorBody),
        crate::api_schema::StoreRefusals,
    ),
    security((), ("api_key" = [])))]
pub(crate) async fn retrieve(
    State(state): State<AppState>,
    _: Allowed,
    Path(response_id): Path<String>,
    query: Result<Query<RetrieveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let id = authorized(&state, &response_id).await?;
    if !query.stream {
        return Ok(axum::Json(current(&state, &id).await?).into_response());
    }
    let (pieces, reader) = state.answers().follow(state.hub(), &id, None, false).await?;
    let frames = encode(pieces, ResponseEvents::new(&id, query.starting_after));
    Ok(event_stream(None, frames, state.config().keep_alive, None, reader))
}

/// Cancels a response: its upstream is stopped; answers the response object, `cancelled`.
#[utoipa::path(post, path = "/v1/responses/{id}/cancel", operation_id = "cancel_response", tag = "responses",
    params(("id" = String, Path, description = "The response (`resp_…`)")),
    responses(
        (status = 200, description = "The response object (`cancelled` unless it had ended)", body = doc::ResponseObject),
        (status = 404, description = "No such response", body = crate::error::ErrorBody),
        crate::api_schema::StoreRefusals,
    ),
    security((), ("api_key" = [])))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    _: Allowed,
    Path(response_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = authorized(&state, &response_id).await?;
    state.answers().cancel(state.hub(), &id).await?;
    // The object once its end is stored (soon: the pump stops at once), or as it stands.
    let give_up = tokio::time::Instant::now() + CANCEL_WAIT;
    while !state.answers().ended(state.hub(), &id).await? && tokio::time::Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(axum::Json(current(&state, &id).await?).into_response())
}
