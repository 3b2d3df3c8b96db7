//! [`Router`]: model name → providers, with retries and fallover before the first token.
//!
//! A model may be served by several providers, tried in configuration order. Until the
//! first delta of an answer arrives nothing has reached the reader, so a retryable failure
//! (the upstream is busy, unreachable, slow to start, or fails before its first token) is
//! retried with backoff and then handed to the next provider, unseen by the reader. After
//! the first delta, an error is the answer's error: replaying the answer elsewhere would show
//! the reader a second, different beginning.
//!
//! Every wait is bounded: the first delta by [`Attempts::first_token_timeout`] (counted from
//! the request to the provider, so it covers connecting and the response head too), each later
//! one by [`Attempts::gap_timeout`] (an upstream that stalls mid-answer ends it with a
//! timeout error, which releases the upstream request). Both are counted in
//! `sluice_timeouts_total{wait="upstream_first_token"|"upstream_gap"}`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream;

use crate::observe::{Observer, Watch};
use crate::types::{ChatRequest, Delta, DeltaStream, Provider, ProviderError};

/// How one provider is tried.
#[derive(Debug, Clone, Copy)]
pub struct Attempts {
    /// Extra attempts on the same provider after a retryable failure.
    pub retries: u32,
    /// The wait before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// The longest wait for the first delta once the provider accepted the request.
    pub first_token_timeout: Duration,
    /// The longest wait between two deltas after the first.
    pub gap_timeout: Duration,
}

impl Default for Attempts {
    fn default() -> Self {
        Attempts {
            retries: 1,
            backoff: Duration::from_millis(200),
            first_token_timeout: Duration::from_secs(120),
            gap_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone)]
struct Route {
    provider: Arc<dyn Provider>,
    models: Vec<String>,
    attempts: Attempts,
}

/// Routes requests to providers by model name.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
    observer: Option<Observer>,
}

impl Router {
    /// A router with no providers.
    pub fn new() -> Self {
        Router::default()
    }

    /// Serves `models` with `provider`, after any provider added earlier for the same model.
    pub fn add(&mut self, provider: Arc<dyn Provider>, models: Vec<String>, attempts: Attempts) {
        self.routes.push(Route { provider, models, attempts });
    }

    /// Tells `observer` of every answer once it is over (traces, usage).
    pub fn observe(&mut self, observer: Observer) {
        self.observer = Some(observer);
    }

    /// Every model served, once, with the name of its first provider, in configuration order.
    pub fn models(&self) -> Vec<(String, String)> {
        let mut seen = Vec::<(String, String)>::new();
        for route in &self.routes {
            for model in &route.models {
                if !seen.iter().any(|(m, _)| m == model) {
                    seen.push((model.clone(), route.provider.name().to_owned()));
                }
            }
        }
        seen
    }

    /// Whether any provider serves `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.routes.iter().any(|r| r.models.iter().any(|m| m == model))
    }

    /// The prompt's token count from the first provider for `request.model` that can count:
    /// `None` when none can.
    pub fn count_tokens(&self, request: &ChatRequest) -> Option<Result<u32, ProviderError>> {
        let serving = self.routes.iter().filter(|r| r.models.contains(&request.model));
        serving.filter_map(|r| r.provider.count_tokens(request)).next()
    }

    /// Starts an answer on the first provider for `request.model` that accepts it. Fails
    /// (before anything is sent to the reader) when none does.
    pub async fn stream(&self, request: ChatRequest) -> Result<DeltaStream, ProviderError> {
        let candidates: VecDeque<Route> =
            self.routes.iter().filter(|r| r.models.contains(&request.model)).cloned().collect();
        if candidates.is_empty() {
            return Err(ProviderError::UnknownModel(request.model));
        }
        let watch = self.observer.clone().map(|observer| Watch::new(observer, &request));
        let mut fallover = Fallover { request, candidates, last_error: None, watch };
        match fallover.open_next().await {
            Ok((current, limits)) => Ok(fallover.into_stream(current, limits)),
            Err(error) => {
                if let Some(watch) = &mut fallover.watch {
                    watch.end(Some(error.clone()));
                }
                Err(error)
            }
        }
    }
}

/// The bounds on one provider's waits.
#[derive(Debug, Clone, Copy)]
struct Limits {
    first_token: Duration,
    gap: Duration,
}

/// The providers still to try for one answer.
struct Fallover {
    request: ChatRequest,
    candidates: VecDeque<Route>,
    last_error: Option<ProviderError>,
    /// What the answer became, for the router's observer.
    watch: Option<Watch>,
}

impl Fallover {
    /// Opens a stream on the first candidate that accepts, retrying and falling over as
    /// configured.
    async fn open_next(&mut self) -> Result<(DeltaStream, Limits), ProviderError> {
        while let Some(route) = self.candidates.front() {
            if let Some(watch) = &mut self.watch {
                watch.serving(route.provider.name(), route.provider.system());
            }
            let limits = Limits {
                first_token: route.attempts.first_token_timeout,
                gap: route.attempts.gap_timeout,
            };
            // The first-token bound covers everything before the first token: connecting,
            // the upstream's response head, and its first chunk (the rest of the bound).
            let started = tokio::time::Instant::now();
            let provider = Arc::clone(&route.provider);
            let opened = provider.stream(self.request.clone());
            let opened = match tokio::time::timeout(limits.first_token, opened).await {
                Ok(opened) => opened,
                Err(_) => Err(ProviderError::Timeout(limits.first_token)),
            };
            match opened {
                Ok(stream) => {
                    let first_token = limits.first_token.saturating_sub(started.elapsed());
                    return Ok((stream, Limits { first_token, ..limits }));
                }
                Err(error) => {
                    if matches!(error, ProviderError::Timeout(_)) {
                        metrics::counter!("sluice_timeouts_total", "wait" => "upstream_first_token")
                            .increment(1);
                    }
                    self.failed(error).await?;
                }
            }
        }
        Err(self
            .last_error
            .take()
            .unwrap_or_else(|| ProviderError::UnknownModel(self.request.model.clone())))
    }

    /// Takes note of a failure of the current candidate before its first token: waits to
    /// retry it, or drops it for the next one. An error no other attempt can fix (a malformed
    /// request) ends the answer.
    async fn failed(&mut self, error: ProviderError) -> Result<(), ProviderError> {
        let Some(route) = self.candidates.front_mut() else { return Err(error) };
        tracing::warn!(provider = route.provider.name(), %error, "provider failed before its first token");
        if error.is_retryable() && route.attempts.retries > 0 {
            route.attempts.retries -= 1;
            let wait = route.attempts.backoff;
            route.attempts.backoff *= 2;
            self.last_error = Some(error);
            tokio::time::sleep(wait).await;
            return Ok(());
        }
        self.candidates.pop_front();
        if !error.is_retryable() && !matches!(error, ProviderError::Unauthorized(_)) {
            return Err(error);
        }
        self.last_error = Some(error);
        Ok(())
    }

    /// Shows the reader's next item to the watch, and passes it on.
    fn saw(&mut self, item: Result<Delta, ProviderError>) -> Result<Delta, ProviderError> {
        if let Some(watch) = &mut self.watch {
            watch.saw(Some(&item));
        }
        item
    }

    fn into_stream(self, current: DeltaStream, limits: Limits) -> DeltaStream {
        // `started`: whether the reader has seen a delta (then no fallover, and gaps apply).
        let state = (self, current, limits, false);
        stream::unfold(state, |(mut fallover, mut current, mut limits, mut started)| async move {
            loop {
                let (limit, wait) = if started {
                    (limits.gap, "upstream_gap")
                } else {
                    (limits.first_token, "upstream_first_token")
                };
                let item = match tokio::time::timeout(limit, current.next()).await {
                    Ok(item) => item,
                    Err(_) => {
                        metrics::counter!("sluice_timeouts_total", "wait" => wait).increment(1);
                        Some(Err(ProviderError::Timeout(limit)))
                    }
                };
                match item {
                    Some(Err(error)) if !started && error.is_retryable() => {
                        drop(current);
                        let next = match fallover.failed(error).await {
                            Ok(()) => fallover.open_next().await,
                            Err(error) => Err(error),
                        };
                        match next {
                            Ok((next, next_limits)) => {
                                current = next;
                                limits = next_limits;
                            }
                            Err(error) => {
                                let done: DeltaStream = stream::empty().boxed();
                                let item = fallover.saw(Err(error));
                                return Some((item, (fallover, done, limits, true)));
                            }
                        }
                    }
                    Some(Err(error)) => {
                        // The answer's error ends it: the upstream request is dropped now.
                        let done: DeltaStream = stream::empty().boxed();
                        let item = fallover.saw(Err(error));
                        return Some((item, (fallover, done, limits, true)));
                    }
                    Some(item) => {
                        started |= matches!(item, Ok(Delta::Text(_) | Delta::ToolCall { .. }));
                        let item = fallover.saw(item);
                        return Some((item, (fallover, current, limits, started)));
                    }
                    None => {
                        if let Some(watch) = &mut fallover.watch {
                            watch.saw(None);
                        }
                        return None;
                    }
                }
            }
        })
        .boxed()
    }
}
