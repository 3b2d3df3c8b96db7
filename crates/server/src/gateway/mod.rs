//! The gateway: one answer engine, many wire protocols.
//!
//! [`crate::answers`] is the engine: an answer is a stream of `AnswerEvent`s,
//! straight from a provider or kept in the hub (resumable from any node, stoppable, readable
//! by its capability). Each module here is one wire protocol, a decoder of its requests and
//! an `Encoder` of the same events, knowing nothing of the others:
//!
//! - [`chat_completions`]: OpenAI Chat Completions, `/v1/chat/completions` and `/v1/models`;
//! - [`generations`]: Sluice's own answers API, `/api/generations`;
//! - [`chat_stream`]: the one-shot `EventSource` form, `/api/chat/stream`;
//! - [`responses`]: the OpenAI Responses API, `/v1/responses`;
//! - [`messages`]: the Anthropic Messages API, `/v1/messages`;
//! - [`ui_stream`]: the AI SDK's UI message stream, `/api/chat` (`useChat`);
//! - [`durable_chat`]: the same chunks copied into a Durable Stream, `/api/durable-chat`
//!   (`useChat` with `@durable-streams/aisdk-transport`); the one module built on another
//!   ([`ui_stream`]'s requests and chunks), since it is that protocol over another transport.
//!
//! [`upstream`] is what they all do first: admit the caller, read the body, ask the providers.

pub(crate) mod chat_completions;
pub(crate) mod chat_stream;
pub(crate) mod durable_chat;
pub(crate) mod generations;
pub(crate) mod messages;
pub(crate) mod responses;
pub(crate) mod ui_stream;
mod upstream;

use axum::Router;

use crate::state::AppState;

/// The paths whose `POST` streams an answer: served past hyper on HTTP/1.1 connections
/// (`conn::direct`), where an answer does not hold hyper's buffers while it streams.
pub(crate) const STREAMED_ANSWER_PATHS: &[&str] =
    &["/v1/chat/completions", "/v1/responses", "/v1/messages", "/api/chat"];

/// Every protocol's routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .merge(chat_completions::routes())
        .merge(generations::routes())
        .merge(chat_stream::routes())
        .merge(responses::routes())
        .merge(messages::routes())
        .merge(ui_stream::routes())
        .merge(durable_chat::routes())
}
