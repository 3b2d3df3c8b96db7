//! Writing an event stream to a client: the headers every proxy needs to pass events through
//! at once, keep-alive comments when nothing happens, and an end when the token expires.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use sluice_hub::DirectWrite;
use tokio::time::{Instant, Sleep, sleep, sleep_until};

/// When a stream says it is still there: a comment after `every` without traffic. Traffic is
/// the stream's own frames and, for a subscriber the hub's fan-out writes to directly
/// (`written_by`), those writes too, which the stream does not see.
#[derive(Debug, Clone)]
pub(crate) struct KeepAlive {
    pub(crate) every: Duration,
    pub(crate) written_by: Option<Arc<DirectWrite>>,
    /// What is sent: an empty comment, unless the protocol has its own (Anthropic's `ping`).
    pub(crate) frame: Bytes,
}

impl From<Duration> for KeepAlive {
    fn from(every: Duration) -> Self {
        KeepAlive { every, written_by: None, frame: Bytes::from_static(b":\n") }
    }
}

/// A response streaming `frames` as `text/event-stream`.
///
/// `first`, if any, is written at once (a `retry:` or a comment), so the client and any proxy
/// see the stream open before the first event. A comment follows whenever `keep_alive` passes
/// without traffic. At `deadline` (a token's expiry) the stream ends. `on_end` runs when the
/// stream is dropped, however it ends.
pub(crate) fn event_stream(
    first: Option<Bytes>,
    frames: BoxStream<'static, Bytes>,
    keep_alive: impl Into<KeepAlive>,
    deadline: Option<Instant>,
    on_end: impl Send + 'static,
) -> Response {
    let keep_alive = keep_alive.into();
    let state = State {
        first,
        frames,
        idle: Box::pin(sleep(keep_alive.every)),
        keep_alive,
        deadline: deadline.map(|d| Box::pin(sleep_until(d))),
        _on_end: on_end,
    };
    // The counter's handle is looked up once per stream, not once per frame.
    let bytes_out = metrics::counter!("sluice_bytes_out_total");
    let body = stream::unfold((state, bytes_out), |(mut state, bytes_out)| async move {
        let frame = state.next().await?;
        bytes_out.increment(frame.len() as u64);
        Some((Ok::<_, std::convert::Infallible>(frame), (state, bytes_out)))
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-transform"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

struct State<G> {
    first: Option<Bytes>,
    frames: BoxStream<'static, Bytes>,
    keep_alive: KeepAlive,
    idle: std::pin::Pin<Box<Sleep>>,
    deadline: Option<std::pin::Pin<Box<Sleep>>>,
    _on_end: G,
}

impl<G> State<G> {
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        let deadline = async {
            match self.deadline.as_mut() {
                Some(deadline) => deadline.await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let every = self.keep_alive.every;
        loop {
            tokio::select! {
                frame = self.frames.next() => {
                    self.idle.as_mut().reset(Instant::now() + every);
                    return frame;
                }
                () = self.idle.as_mut() => {
                    let written = self.keep_alive.written_by.as_ref().and_then(|d| d.last_written());
                    let quiet_until = written.map(|at| Instant::from_std(at) + every);
                    match quiet_until {
                        Some(until) if until > Instant::now() => self.idle.as_mut().reset(until),
                        _ => {
                            self.idle.as_mut().reset(Instant::now() + every);
                            return Some(self.keep_alive.frame.clone());
                        }
                    }
                }
                () = &mut deadline => return None,
            }
        }
    }
}

/// One event of a stream, as an `EventSource` reads it (the document's description of every
/// `text/event-stream` response).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // a schema for the document only: frames are encoded by sluice-sse
pub(crate) struct SseEvent {
    /// The data (several `data:` lines joined by newlines).
    data: String,
    /// The event type (`message` when the stream names none).
    event: Option<String>,
    /// The event id: resume after it with `Last-Event-ID`.
    id: Option<String>,
    /// The reconnection time the server asks for, in milliseconds.
    retry: Option<u64>,
}

/// The first bytes of a stream: `retry:` when one is configured, else an empty comment.
pub(crate) fn opening(retry: Option<u64>) -> Bytes {
    let mut first = BytesMut::new();
    match retry {
        Some(millis) => sluice_sse::encode_retry(millis, &mut first),
        None => sluice_sse::encode_comment("", &mut first),
    }
    first.freeze()
}
