//! Chat model providers behind one streaming trait.
//!
//! A [`Provider`] turns a [`ChatRequest`] into a stream of [`Delta`]s: text, tool-call
//! fragments, token usage, and a finish reason (usage, when known, comes right before the
//! finish). Dropping the stream cancels the request upstream (an HTTP request is aborted, the
//! local model stops within one token), which is what makes "stop" in a chat page stop the
//! bill too. A [`Router`] picks providers by model name and falls over between them before
//! the first token.

pub mod anthropic;
#[cfg(feature = "local")]
pub mod local;
pub mod observe;
pub mod openai;
mod plain;
pub mod router;
pub mod scripted;
#[cfg(all(feature = "testing", feature = "local"))]
pub mod testing;
pub mod types;
mod upstream;

pub use anthropic::{Anthropic, AnthropicConfig};
#[cfg(feature = "local")]
pub use local::{LoadError, LocalConfig, LocalModel, LocalStats};
pub use observe::{AnswerRecord, Observer, Watch};
pub use openai::{OpenAi, OpenAiConfig};
pub use router::{Attempts, Router};
pub use scripted::{Script, Scripted, ScriptedStats};
pub use types::{
    ChatRequest, Delta, DeltaStream, FinishReason, Message, Provider, ProviderError, Role, Usage,
};
