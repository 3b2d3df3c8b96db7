//! [`Scripted`]: a deterministic provider for tests and benchmarks.
//!
//! It "generates" a configured text in word-sized tokens at a set rate, after a set time to
//! first token, optionally failing after N tokens or calling tools, and it counts what
//! happened to each answer, so a test can assert that a cancelled answer really stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt};

use crate::types::{ChatRequest, Delta, DeltaStream, FinishReason, Provider, ProviderError, Usage};

/// What the scripted provider produces.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// The answer's text; `{prompt}` is replaced by the last user message.
    pub text: String,
    /// Tokens per second (0: as fast as possible).
    pub tokens_per_second: f64,
    /// Wait before the first token.
    pub time_to_first_token: Duration,
    /// Fail with an upstream error after this many tokens.
    pub fail_after: Option<usize>,
    /// Tool calls to make instead of (after) the text: (name, JSON arguments).
    pub tool_calls: Vec<(String, String)>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            text: "Hello! This is Sluice's scripted model. You said: {prompt}".to_owned(),
            tokens_per_second: 50.0,
            time_to_first_token: Duration::from_millis(50),
            fail_after: None,
            tool_calls: Vec::new(),
        }
    }
}

/// What happened to the answers so far.
#[derive(Debug, Default)]
pub struct ScriptedStats {
    started: AtomicU64,
    finished: AtomicU64,
    cancelled: AtomicU64,
    tokens: AtomicU64,
}

impl ScriptedStats {
    /// Answers started.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }

    /// Answers that ran to their end (or their scripted failure).
    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::SeqCst)
    }

    /// Answers whose stream was dropped before their end: the reader went away or stopped.
    pub fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Tokens produced, over all answers.
    pub fn tokens(&self) -> u64 {
        self.tokens.load(Ordering::SeqCst)
    }
}

/// The scripted provider.
#[derive(Debug, Clone)]
pub struct Scripted {
    name: String,
    script: Script,
    stats: Arc<ScriptedStats>,
}

impl Scripted {
    /// A provider named `name` following `script`.
    pub fn new(name: impl Into<String>, script: Script) -> Self {
        Scripted { name: name.into(), script, stats: Arc::default() }
    }

    /// The counters, shared with every answer.
    pub fn stats(&self) -> Arc<ScriptedStats> {
        Arc::clone(&self.stats)
    }
}

/// Splits text into word-sized tokens that join back to it exactly: each token is a run of
/// non-space characters with the spaces before it.
pub fn word_tokens(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    for ch in text.chars() {
        let space = ch.is_whitespace();
        if in_word && space {
            tokens.push(std::mem::take(&mut current));
        }
        in_word = !space;
        current.push(ch);
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

/// Counts a drop as a cancellation unless the answer reached its end first.
struct Watch {
    stats: Arc<ScriptedStats>,
    done: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let counter = if self.done { &self.stats.finished } else { &self.stats.cancelled };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

impl Provider for Scripted {
    fn name(&self) -> &str {
        &self.name
    }

    fn system(&self) -> &'static str {
        "sluice.scripted"
    }

    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<DeltaStream, ProviderError>> {
        let script = self.script.clone();
        let prompt = request.messages.iter().rev().find(|m| m.role == crate::Role::User);
        let prompt_text = prompt.map_or("", |m| m.content.as_str());
        let mut tokens = word_tokens(&script.text.replace("{prompt}", prompt_text));
        let limit = request.max_tokens.map(|m| m as usize);
        let truncated = limit.is_some_and(|l| tokens.len() > l);
        tokens.truncate(limit.unwrap_or(usize::MAX));
        let prompt_tokens =
            request.messages.iter().map(|m| word_tokens(&m.content).len()).sum::<usize>();
        let interval = (script.tokens_per_second > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / script.tokens_per_second));
        self.stats.started.fetch_add(1, Ordering::SeqCst);
        let watch = Watch { stats: Arc::clone(&self.stats), done: false };

        // Each step yields the deltas of one token (or the ending), so pacing is per token.
        let steps = tokens.len() + 1;
        let answer = stream::unfold((0usize, watch), move |(step, mut watch)| {
            let script = script.clone();
            let token = tokens.get(step).cloned();
            let completion = tokens.len();
            async move {
                if step >= steps {
                    return None;
                }
                let wait = if step == 0 { Some(script.time_to_first_token) } else { interval };
                if let Some(wait) = wait.filter(|w| !w.is_zero()) {
                    tokio::time::sleep(wait).await;
                }
                if script.fail_after.is_some_and(|n| step >= n) {
                    watch.done = true;
                    let error = ProviderError::Upstream {
                        status: 500,
                        message: format!("scripted failure after {step} tokens"),
                    };
                    return Some((vec![Err(error)], (steps + 1, watch)));
                }
                let deltas = match token {
                    Some(token) => {
                        watch.stats.tokens.fetch_add(1, Ordering::SeqCst);
                        vec![Ok(Delta::Text(token))]
                    }
                    None => {
                        watch.done = true;
                        let mut end: Vec<_> = script
                            .tool_calls
                            .iter()
                            .enumerate()
                            .map(|(index, (name, arguments))| {
                                Ok(Delta::ToolCall {
                                    index: index as u32,
                                    id: Some(format!("call_{index}")),
                                    name: Some(name.clone()),
                                    arguments: arguments.clone(),
                                })
                            })
                            .collect();
                        let finish = if !script.tool_calls.is_empty() {
                            FinishReason::ToolCalls
                        } else if truncated {
                            FinishReason::Length
                        } else {
                            FinishReason::Stop
                        };
                        end.push(Ok(Delta::Usage(Usage::new(
                            prompt_tokens as u32,
                            completion as u32,
                        ))));
                        end.push(Ok(Delta::Finish(finish)));
                        end
                    }
                };
                Some((deltas, (step + 1, watch)))
            }
        })
        .flat_map(stream::iter);
        async move { Ok(answer.boxed()) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_tokens_join_back_exactly() {
        for text in ["", "one", " two  words ", "中文 and emoji 🎉\nnew line"] {
            assert_eq!(word_tokens(text).concat(), text);
        }
        assert_eq!(word_tokens("a b  c"), ["a", " b", "  c"]);
    }
}
