//! The reading side: `GET` as a catch-up read, a long-poll, or an SSE tail.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::json;
use sluice_streams::{Chunk, ReadFrom, Streams, cursor};
use tokio::time::Instant;

use super::{Access, error_response, head_headers, permitted, refused, security_headers, value};
use crate::error::ApiError;
use crate::state::AppState;

/// How a `GET` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live {
    /// What is there now.
    CatchUp,
    /// What is there, or the next change, or 204 after a while.
    LongPoll,
    /// Everything from the offset on, as it comes, as Server-Sent Events.
    Sse,
}

/// The query of a read: `offset`, `live`, `cursor`.
struct Query {
    from: ReadFrom,
    live: Live,
    cursor: Option<String>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_stream_request", message)
}

fn parse_query(raw: Option<&str>) -> Result<Query, ApiError> {
    let (mut offset, mut live, mut cursor) = (None, None, None);
    for (key, val) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let slot = match &*key {
            "offset" => &mut offset,
            "live" => &mut live,
            "cursor" => &mut cursor,
            _ => continue,
        };
        if slot.replace(val.into_owned()).is_some() {
            return Err(invalid(format!("`{key}` is given twice")));
        }
    }
    let live = match live.as_deref() {
        None => Live::CatchUp,
        Some("long-poll") => Live::LongPoll,
        Some("sse") => Live::Sse,
        Some(other) => return Err(invalid(format!("live={other:?}: use long-poll or sse"))),
    };
    if live != Live::CatchUp && offset.is_none() {
        return Err(invalid("a live read needs an offset (-1 for the start, now for the tail)"));
    }
    let from = ReadFrom::parse(offset.as_deref())
        .ok_or_else(|| invalid("the offset is not one this server gave"))?;
    Ok(Query { from, live, cursor })
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Reads a stream.
pub(super) async fn get(
    State(state): State<AppState>,
    Path(path): Path<String>,
    RawQuery(raw): RawQuery,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let checked = permitted(&state, &path, &headers, &uri, Access::Read)
        .and_then(|path| Ok((path, parse_query(raw.as_deref())?)));
    let (path, query) = match checked {
        Ok(checked) => checked,
        Err(error) => return refused(error),
    };
    let streams = Arc::clone(state.streams());
    let config = state.config();
    let cache = if config.open_streams { "public" } else { "private" };
    let result = match query.live {
        Live::CatchUp => streams.read(&path, query.from).await,
        Live::LongPoll => streams.read_live(&path, query.from, config.streams_long_poll).await,
        Live::Sse => {
            return match streams.head(&path).await {
                Ok(head) => {
                    sse(streams, path, head.is_json() || is_text(&head.content_type), query, &state)
                }
                Err(error) => error_response(error),
            };
        }
    };
    match result {
        Ok(chunk) if query.live == Live::CatchUp => catch_up(&chunk, &headers, query.from, cache),
        Ok(chunk) => long_poll(&chunk, query.cursor.as_deref(), cache),
        Err(error) => error_response(error),
    }
}

/// Whether SSE carries a content type's bytes as text (else base64).
fn is_text(content_type: &str) -> bool {
    sluice_streams::essence(content_type).starts_with("text/")
}

/// The ETag of a read: the stream, the range, and whether it ends the stream (so that a
/// stream closed since does not revalidate to a 304 that hides the closure).
fn etag(chunk: &Chunk) -> String {
    let closed = if chunk.at_end() { ":c" } else { "" };
    format!("\"{}:{}:{}{closed}\"", chunk.head.id, chunk.start, chunk.next)
}

/// The headers every read with data carries.
fn read_headers(chunk: &Chunk, headers: &mut HeaderMap) {
    security_headers(headers);
    head_headers(&chunk.head, headers);
    headers.remove("stream-closed");
    headers.insert("stream-next-offset", value(chunk.next.to_string()));
    if chunk.up_to_date() {
        headers.insert("stream-up-to-date", HeaderValue::from_static("true"));
    }
    if chunk.at_end() {
        headers.insert("stream-closed", HeaderValue::from_static("true"));
    }
}

fn catch_up(chunk: &Chunk, request: &HeaderMap, from: ReadFrom, cache: &str) -> Response {
    let tag = etag(chunk);
    let matches = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, chunk.body()).into_response()
    };
    let headers = response.headers_mut();
    read_headers(chunk, headers);
    headers.insert(header::ETAG, value(&tag));
    let cache_control = if from == ReadFrom::Now {
        "no-store".to_owned()
    } else {
        format!("{cache}, max-age=60, stale-while-revalidate=300")
    };
    headers.insert(header::CACHE_CONTROL, value(cache_control));
    response
}

fn long_poll(chunk: &Chunk, echoed: Option<&str>, cache: &str) -> Response {
    let mut response = if chunk.records.is_empty() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::OK, chunk.body()).into_response()
    };
    let headers = response.headers_mut();
    read_headers(chunk, headers);
    if chunk.records.is_empty() {
        headers.remove(header::CONTENT_TYPE);
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    } else {
        headers.insert(header::ETAG, value(etag(chunk)));
        let cache_control = format!("{cache}, max-age=60, stale-while-revalidate=300");
        headers.insert(header::CACHE_CONTROL, value(cache_control));
    }
    if !chunk.at_end() {
        headers.insert("stream-cursor", value(cursor::next(now_ms(), echoed)));
    }
    response
}

/// An SSE tail: a `data` event per read with data, each followed by a `control` event with
/// the next offset, the cursor and whether the reader is up to date; the connection ends at
/// the stream's end, or after `--streams-sse-lifetime` so that CDNs can collapse readers.
fn sse(
    streams: Arc<Streams>,
    path: String,
    text: bool,
    query: Query,
    state: &AppState,
) -> Response {
    let deadline = Instant::now() + state.config().streams_sse_lifetime;
    struct Tail {
        from: ReadFrom,
        cursor: Option<String>,
        first: bool,
        ended: bool,
    }
    let tail = Tail { from: query.from, cursor: query.cursor, first: true, ended: false };
    let frames = futures_util::stream::unfold(tail, move |mut tail| {
        let (streams, path) = (Arc::clone(&streams), path.clone());
        async move {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if tail.ended || remaining.is_zero() {
                return None;
            }
            let chunk = if tail.first {
                streams.read(&path, tail.from).await
            } else {
                streams.read_live(&path, tail.from, remaining).await
            };
            // A failed read ends the connection: the reader resumes from its last offset.
            let chunk = chunk.ok()?;
            if chunk.records.is_empty() && !chunk.at_end() && !tail.first {
                return None;
            }
            // The first cursor answers the one the client echoed; later ones only move on.
            let cursor = (!chunk.at_end()).then(|| match (&tail.cursor, tail.first) {
                (Some(given), false) => cursor::later(now_ms(), given),
                (echoed, _) => cursor::next(now_ms(), echoed.as_deref()),
            });
            let frame = sse_frames(&chunk, text, cursor.as_deref());
            tail = Tail {
                from: ReadFrom::At(chunk.next),
                cursor,
                first: false,
                ended: chunk.at_end(),
            };
            Some((frame, tail))
        }
    });
    let mut response =
        crate::sse::event_stream(None, frames.boxed(), state.config().keep_alive, None, ());
    let headers = response.headers_mut();
    security_headers(headers);
    if !text {
        headers.insert("stream-sse-data-encoding", HeaderValue::from_static("base64"));
    }
    response
}

/// One read as SSE: its `data` event (if it has data) and its `control` event.
fn sse_frames(chunk: &Chunk, text: bool, cursor: Option<&str>) -> Bytes {
    let mut out = BytesMut::new();
    if !chunk.records.is_empty() {
        out.put_slice(b"event: data\n");
        let body = chunk.body();
        if text {
            // Every line ending (CR, LF or CRLF) starts a new `data:` line, so no payload can
            // end the event or forge one.
            let text = String::from_utf8_lossy(&body);
            for line in text.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
                // A reader drops one space after the colon: send one more where a line has its own.
                out.put_slice(if line.starts_with(' ') { b"data: " } else { b"data:" });
                out.put_slice(line.as_bytes());
                out.put_slice(b"\n");
            }
        } else {
            out.put_slice(b"data:");
            out.put_slice(base64::engine::general_purpose::STANDARD.encode(&body).as_bytes());
            out.put_slice(b"\n");
        }
        out.put_slice(b"\n");
    }
    let mut control = json!({ "streamNextOffset": chunk.next.to_string() });
    if let Some(cursor) = cursor {
        control["streamCursor"] = json!(cursor);
    }
    if chunk.up_to_date() {
        control["upToDate"] = json!(true);
    }
    if chunk.at_end() {
        control["streamClosed"] = json!(true);
    }
    out.put_slice(format!("event: control\ndata:{control}\n\n").as_bytes());
    out.freeze()
}
