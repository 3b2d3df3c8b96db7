//! [`Anthropic`]: the Messages API, translated into the same deltas as every provider.
//!
//! System messages become the top-level `system`; `max_tokens` (required there) defaults to
//! 4096. Named events map as: `content_block_delta` with `text_delta` → text,
//! `content_block_start` with `tool_use` and `input_json_delta` → tool-call fragments (one
//! index per tool block), `message_start` and `message_delta` → usage, `stop_reason` →
//! finish (`end_turn`, `stop_sequence` → stop; `max_tokens` → length; `tool_use` →
//! tool_calls), `error` → an upstream error. `ping` and `thinking` blocks are skipped.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use sluice_sse::MessageEvent;

use crate::types::{
    ChatRequest, Delta, DeltaStream, FinishReason, Provider, ProviderError, Role, Usage,
};
use crate::upstream::{Client, Endpoint, Out, Translate, translate};

/// The API version header Sluice speaks.
const API_VERSION: &str = "2023-06-01";
/// `max_tokens` when the request sets none (the API requires one).
const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Where the Anthropic API is and how to reach it.
#[derive(Debug, Clone)]
pub struct AnthropicConfig {
    /// The provider's name.
    pub name: String,
    /// The API base, e.g. `https://api.anthropic.com/v1` (`/messages` is appended).
    pub base_url: String,
    /// The `x-api-key`.
    pub api_key: Option<String>,
    /// The longest wait for the response to start.
    pub timeout: Duration,
    /// The longest wait for a connection to the upstream.
    pub connect_timeout: Duration,
}

/// The Anthropic Messages API as a provider.
#[derive(Debug, Clone)]
pub struct Anthropic {
    config: AnthropicConfig,
    endpoint: Endpoint,
    client: Client,
}

impl Anthropic {
    /// A provider for `config`.
    pub fn new(config: AnthropicConfig) -> Self {
        let client = Client::new(config.connect_timeout);
        let endpoint = Endpoint::new(&config.base_url, "messages");
        Anthropic { config, endpoint, client }
    }
}

/// The Messages API body for an OpenAI-shaped request.
fn body(request: &ChatRequest) -> Value {
    let system: Vec<&str> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.as_str())
        .collect();
    let messages: Vec<Value> = request
        .messages
        .iter()
        .filter(|m| m.role != Role::System)
        .map(|m| match m.role {
            Role::Tool => json!({"role": "user", "content": [{
                "type": "tool_result",
                "tool_use_id": m.tool_call_id,
                "content": m.content,
            }]}),
            Role::Assistant if !m.tool_calls.is_empty() => {
                let mut content = Vec::new();
                if !m.content.is_empty() {
                    content.push(json!({"type": "text", "text": m.content}));
                }
                for call in &m.tool_calls {
                    let input: Value = call["function"]["arguments"]
                        .as_str()
                        .and_then(|a| serde_json::from_str(a).ok())
                        .unwrap_or_else(|| json!({}));
                    content.push(json!({
                        "type": "tool_use",
                        "id": call["id"],
                        "name": call["function"]["name"],
                        "input": input,
                    }));
                }
                json!({"role": "assistant", "content": content})
            }
            role => json!({"role": if role == Role::Assistant { "assistant" } else { "user" },
                           "content": m.content}),
        })
        .collect();
    let mut body = json!({
        "model": request.model,
        "messages": messages,
        "max_tokens": request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "stream": true,
    });
    if !system.is_empty() {
        body["system"] = json!(system.join("\n\n"));
    }
    if let Some(t) = request.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(p) = request.top_p {
        body["top_p"] = json!(p);
    }
    if !request.stop.is_empty() {
        body["stop_sequences"] = json!(request.stop);
    }
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                json!({
                    "name": t["function"]["name"],
                    "description": t["function"]["description"],
                    "input_schema": t["function"]["parameters"],
                })
            })
            .collect();
        body["tools"] = json!(tools);
    }
    body
}

impl Provider for Anthropic {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn system(&self) -> &'static str {
        "anthropic"
    }

    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<DeltaStream, ProviderError>> {
        async move {
            let body = serde_json::to_vec(&body(&request))
                .map_err(|e| ProviderError::InvalidRequest(e.to_string()))?;
            let mut headers = vec![("anthropic-version", API_VERSION)];
            if let Some(key) = &self.config.api_key {
                headers.push(("x-api-key", key));
            }
            let events = self
                .client
                .open_event_stream(&self.endpoint, &headers, body, self.config.timeout)
                .await?;
            Ok(translate(events, Events::default()))
        }
        .boxed()
    }
}

/// What has been seen of an Anthropic message stream.
#[derive(Default)]
struct Events {
    input_tokens: u32,
    output_tokens: u32,
    finish: Option<FinishReason>,
    /// Content block index → tool-call index, for `tool_use` blocks.
    tools: HashMap<u64, u32>,
}

impl Translate for Events {
    fn end(&mut self, out: &mut Out) {
        out.fail(ProviderError::Network(
            "the upstream ended the stream before message_stop".to_owned(),
        ));
    }

    fn event(&mut self, event: &MessageEvent, out: &mut Out) {
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            return out.fail(ProviderError::Upstream {
                status: 502,
                message: format!("unparseable {} event from the upstream", event.event_type),
            });
        };
        let tokens = |v: &Value| v.as_u64().map(|n| n as u32);
        match &*event.event_type {
            "message_start" => {
                let usage = &data["message"]["usage"];
                self.input_tokens = tokens(&usage["input_tokens"]).unwrap_or(0);
                self.output_tokens = tokens(&usage["output_tokens"]).unwrap_or(0);
            }
            "content_block_start" if data["content_block"]["type"] == "tool_use" => {
                let block = data["index"].as_u64().unwrap_or(0);
                let index = self.tools.len() as u32;
                self.tools.insert(block, index);
                out.push(Delta::ToolCall {
                    index,
                    id: data["content_block"]["id"].as_str().map(str::to_owned),
                    name: data["content_block"]["name"].as_str().map(str::to_owned),
                    arguments: String::new(),
                });
            }
            "content_block_delta" => {
                let delta = &data["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        if let Some(text) = delta["text"].as_str().filter(|t| !t.is_empty()) {
                            out.push(Delta::Text(text.to_owned()));
                        }
                    }
                    Some("input_json_delta") => {
                        let block = data["index"].as_u64().unwrap_or(0);
                        if let Some(&index) = self.tools.get(&block) {
                            let partial = delta["partial_json"].as_str().unwrap_or_default();
                            out.push(Delta::ToolCall {
                                index,
                                id: None,
                                name: None,
                                arguments: partial.to_owned(),
                            });
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(output) = tokens(&data["usage"]["output_tokens"]) {
                    self.output_tokens = output;
                }
                self.finish = match data["delta"]["stop_reason"].as_str() {
                    Some("max_tokens") => Some(FinishReason::Length),
                    Some("tool_use") => Some(FinishReason::ToolCalls),
                    Some(_) => Some(FinishReason::Stop),
                    None => self.finish,
                };
            }
            "message_stop" => {
                let usage = Usage::new(self.input_tokens, self.output_tokens);
                out.finish(Some(usage), self.finish.unwrap_or(FinishReason::Stop));
            }
            "error" => {
                let kind = data["error"]["type"].as_str().unwrap_or("error");
                let message = data["error"]["message"].as_str().unwrap_or(kind).to_owned();
                let status = if kind == "overloaded_error" { 529 } else { 500 };
                out.fail(ProviderError::Upstream { status, message });
            }
            _ => {}
        }
    }
}
