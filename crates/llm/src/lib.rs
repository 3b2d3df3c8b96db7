//! Chat model providers behind one streaming trait.
//!
//! A [`Provider`] turns a [`ChatRequest`] into a stream of [`Delta`]s: text, tool-call
//! fragments, token usage, and a finish reason. Dropping the stream cancels the request
//! upstream (an HTTP request is aborted, the local model stops within one token), which is
//! what makes "stop" in a chat page stop the bill too.

pub mod types;

pub use types::{
    ChatRequest, Delta, DeltaStream, FinishReason, Message, Provider, ProviderError, Role, Usage,
};
