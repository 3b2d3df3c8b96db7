//! The connect / read / wait-and-reconnect loop behind an [`EventSource`](crate::EventSource).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::{Stream, StreamExt};
use rand::Rng;
use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use sluice_sse::{Decoder, MessageEvent};

use crate::{Disconnect, Error, Item, ReadyState, SharedState};

/// How much of an error response's body an [`Error`] keeps.
const ERROR_BODY_LIMIT: usize = 1024;
/// How long reading an error response's body may take.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// What is sent on every attempt.
pub(crate) struct Request {
    pub(crate) client: reqwest::Client,
    pub(crate) method: Method,
    pub(crate) url: Url,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Option<Bytes>,
}

/// When and how often to try again.
pub(crate) struct Policy {
    pub(crate) reconnect: bool,
    pub(crate) retry: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) read_timeout: Option<Duration>,
}

type Body = BoxStream<'static, reqwest::Result<Bytes>>;

/// One logical stream across any number of HTTP connections.
pub(crate) struct Connection {
    request: Request,
    policy: Policy,
    decoder: Decoder,
    state: Arc<SharedState>,
    body: Option<Body>,
    ready: VecDeque<MessageEvent>,
    /// Failed attempts since events last flowed: the backoff exponent.
    failures: u32,
    /// The wait before the next attempt, set when a connection is lost.
    wait: Option<Duration>,
    finished: bool,
}

enum Failure {
    /// Worth another attempt.
    Lost(Disconnect),
    /// The server said stop, or the stream is broken.
    Fatal(Error),
}

impl Connection {
    pub(crate) fn new(
        request: Request,
        policy: Policy,
        decoder: Decoder,
        state: Arc<SharedState>,
    ) -> Self {
        Connection {
            request,
            policy,
            decoder,
            state,
            body: None,
            ready: VecDeque::new(),
            failures: 0,
            wait: None,
            finished: false,
        }
    }

    /// The items, as a stream that owns this connection: polling it drives every step, and a
    /// step in progress (a wait, a connect) survives a dropped `next()` future.
    pub(crate) fn into_stream(self) -> BoxStream<'static, Result<Item, Error>> {
        stream::unfold(self, |mut connection| async move {
            let item = connection.step().await?;
            Some((item, connection))
        })
        .boxed()
    }

    async fn step(&mut self) -> Option<Result<Item, Error>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                self.failures = 0;
                return Some(Ok(Item::Message(event)));
            }
            if self.finished {
                return None;
            }
            let Some(body) = self.body.as_mut() else {
                if let Some(wait) = self.wait.take() {
                    tokio::time::sleep(wait).await;
                }
                return match self.connect().await {
                    Ok(body) => {
                        self.body = Some(body);
                        self.state.set(ReadyState::Open);
                        Some(Ok(Item::Open))
                    }
                    Err(Failure::Lost(cause)) => self.lost(cause),
                    Err(Failure::Fatal(error)) => self.fail(error),
                };
            };
            let chunk = match self.policy.read_timeout {
                Some(limit) => match tokio::time::timeout(limit, body.next()).await {
                    Ok(chunk) => chunk,
                    Err(_) => return self.lost(Disconnect::ReadTimeout(limit)),
                },
                None => body.next().await,
            };
            match chunk {
                Some(Ok(bytes)) => {
                    let ready = &mut self.ready;
                    if let Err(error) = self.decoder.feed(&bytes, |event| ready.push_back(event)) {
                        return self.fail(error.into());
                    }
                }
                Some(Err(error)) => return self.lost(Disconnect::Network(error)),
                None => return self.lost(Disconnect::Ended),
            }
        }
    }

    async fn connect(&mut self) -> Result<Body, Failure> {
        let request = &self.request;
        let mut builder = request
            .client
            .request(request.method.clone(), request.url.clone())
            .headers(request.headers.clone())
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache");
        let last_event_id = self.decoder.last_event_id();
        if !last_event_id.is_empty() {
            // Ids are UTF-8; a header carries them as raw bytes, as browsers send them. An id
            // with a control character cannot be sent at all, so the request goes without.
            if let Ok(value) = HeaderValue::from_bytes(last_event_id.as_bytes()) {
                builder = builder.header("Last-Event-ID", value);
            }
        }
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
        }
        let response = builder.send().await.map_err(|e| Failure::Lost(Disconnect::Network(e)))?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let is_event_stream = content_type.as_deref().is_some_and(|ct| {
            let essence = ct.split(';').next().unwrap_or_default().trim();
            essence.eq_ignore_ascii_case("text/event-stream")
        });
        if status == StatusCode::OK && is_event_stream {
            return Ok(response.bytes_stream().boxed());
        }
        if status.is_redirection() {
            return Err(Failure::Lost(Disconnect::Redirect(status)));
        }
        let body = body_start(response.bytes_stream()).await;
        Err(Failure::Fatal(if status == StatusCode::OK {
            Error::ContentType { content_type, body }
        } else {
            Error::Status { status, body }
        }))
    }

    /// Ends the current connection; schedules the next attempt, or ends the stream.
    fn lost(&mut self, cause: Disconnect) -> Option<Result<Item, Error>> {
        self.body = None;
        self.decoder.reset();
        if !self.policy.reconnect {
            self.finished = true;
            self.state.set(ReadyState::Closed);
            return match cause {
                Disconnect::Ended => None,
                other => Some(Err(Error::Disconnected(other))),
            };
        }
        let delay = self.backoff();
        self.failures = self.failures.saturating_add(1);
        self.wait = Some(delay);
        self.state.set(ReadyState::Connecting);
        Some(Ok(Item::Reconnecting { delay, cause }))
    }

    fn fail(&mut self, error: Error) -> Option<Result<Item, Error>> {
        self.body = None;
        self.finished = true;
        self.state.set(ReadyState::Closed);
        Some(Err(error))
    }

    /// The reconnection time doubled per failure in a row, capped, then drawn uniformly from
    /// its upper half: never sooner than half the server's `retry:`, never in lockstep.
    fn backoff(&self) -> Duration {
        let base = self.decoder.retry().map_or(self.policy.retry, Duration::from_millis);
        let cap = self.policy.max_backoff.max(base);
        let exponential = base.saturating_mul(1 << self.failures.min(16)).min(cap);
        let half = exponential / 2;
        half + rand::rng().random_range(Duration::ZERO..=exponential - half)
    }
}

/// Up to [`ERROR_BODY_LIMIT`] bytes of a body, for an error message.
async fn body_start(body: impl Stream<Item = reqwest::Result<Bytes>>) -> String {
    let mut start = Vec::new();
    let read = async {
        let mut body = std::pin::pin!(body);
        while let Some(Ok(chunk)) = body.next().await {
            start.extend_from_slice(&chunk);
            if start.len() >= ERROR_BODY_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(ERROR_BODY_TIMEOUT, read).await;
    start.truncate(ERROR_BODY_LIMIT);
    String::from_utf8_lossy(&start).into_owned()
}
