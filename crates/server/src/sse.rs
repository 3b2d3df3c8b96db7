//! Writing an event stream to a client: the headers every proxy needs to pass events through
//! at once, keep-alive comments when nothing happens, and an end when the token expires.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, BoxStream};
use futures_util::{FutureExt, StreamExt};
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
        ended: false,
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

/// The most bytes [`State::with_ready`] joins into one piece.
const COALESCE_BYTES: usize = 64 * 1024;

struct State<G> {
    first: Option<Bytes>,
    frames: BoxStream<'static, Bytes>,
    keep_alive: KeepAlive,
    idle: std::pin::Pin<Box<Sleep>>,
    deadline: Option<std::pin::Pin<Box<Sleep>>>,
    /// The frames have ended (seen while joining ready ones).
    ended: bool,
    _on_end: G,
}

impl<G> State<G> {
    /// `first` and the frames that are ready right after it, as one piece (up to
    /// [`COALESCE_BYTES`]): a burst of events (an upstream's read holding many tokens, a
    /// replay from history) goes out in one write instead of one per event. Writes were most
    /// of a streamed answer's CPU, in the kernel's loopback path.
    fn with_ready(&mut self, first: Bytes) -> Bytes {
        let mut joined: Option<BytesMut> = None;
        while joined.as_ref().map_or(first.len(), BytesMut::len) < COALESCE_BYTES {
            let frame = match self.frames.next().now_or_never() {
                Some(Some(frame)) => frame,
                Some(None) => {
                    // A stream must not be polled past its end: remember it.
                    self.ended = true;
                    break;
                }
                None => break,
            };
            joined.get_or_insert_with(|| BytesMut::from(&first[..])).extend_from_slice(&frame);
        }
        joined.map_or(first, BytesMut::freeze)
    }

    async fn next(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if self.ended {
            return None;
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
                    return frame.map(|first| self.with_ready(first));
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use futures_util::stream;
    use http_body_util::BodyExt;

    /// The body's pieces as they are handed to the connection, one per write.
    async fn pieces(frames: Vec<&'static str>, pause_after: Option<usize>) -> Vec<String> {
        // An unfold stream panics if polled past its end, as many streams do.
        let frames = stream::unfold((frames, 0), move |(mut frames, n)| async move {
            if pause_after == Some(n) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (!frames.is_empty()).then(|| (Bytes::from(frames.remove(0)), (frames, n + 1)))
        });
        let response = super::event_stream(None, frames.boxed(), Duration::from_secs(60), None, ());
        let mut body = response.into_body();
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            out.push(String::from_utf8(data.to_vec()).unwrap());
        }
        out
    }

    #[tokio::test]
    async fn frames_ready_together_go_out_as_one_piece_and_the_end_is_kept() {
        assert_eq!(pieces(vec!["a\n\n", "b\n\n", "c\n\n"], None).await, ["a\n\nb\n\nc\n\n"]);
        assert_eq!(pieces(vec!["a\n\n"], None).await, ["a\n\n"]);
    }

    #[tokio::test]
    async fn a_frame_not_yet_ready_is_not_waited_for() {
        let got = pieces(vec!["a\n\n", "b\n\n", "c\n\n"], Some(2)).await;
        assert_eq!(got, ["a\n\nb\n\n", "c\n\n"]);
    }
}
