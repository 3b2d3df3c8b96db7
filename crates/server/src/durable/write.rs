//! The writing side and metadata: `PUT`, `POST`, `DELETE`, `HEAD`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sluice_streams::{
    Append, Create, Created, Expiry, ForkFrom, Producer, parse_integer, parse_rfc3339,
};

use super::{
    Access, ROOT, error_response, head_headers, permitted, refused, security_headers, value,
};
use crate::error::ApiError;
use crate::hub_url::hub_url;
use crate::state::AppState;

/// A request header as text; a value that is not visible ASCII is malformed (400).
fn text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| {
                ApiError::bad_request("invalid_header", format!("{name} is not visible ASCII"))
            })
        })
        .transpose()
}

/// `Stream-Closed`: present only when exactly `true`, in any case; other values are ignored.
fn closed_flag(headers: &HeaderMap) -> bool {
    headers.get("stream-closed").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
}

/// `Stream-TTL` or `Stream-Expires-At` (not both).
fn expiry(headers: &HeaderMap) -> Result<Expiry, ApiError> {
    let invalid = |message: &str| ApiError::bad_request("invalid_expiry", message.to_owned());
    match (text(headers, "stream-ttl")?, text(headers, "stream-expires-at")?) {
        (Some(_), Some(_)) => Err(invalid("send Stream-TTL or Stream-Expires-At, not both")),
        (Some(ttl), None) => parse_integer(ttl)
            .map(Expiry::Ttl)
            .ok_or_else(|| invalid("Stream-TTL is a non-negative integer of seconds")),
        (None, Some(at)) => parse_rfc3339(at)
            .map(|ms| Expiry::At { text: at.to_owned(), ms })
            .ok_or_else(|| invalid("Stream-Expires-At is an RFC 3339 timestamp")),
        (None, None) => Ok(Expiry::Never),
    }
}

/// The idempotent producer's headers: all three or none.
fn producer(headers: &HeaderMap) -> Result<Option<Producer>, ApiError> {
    let invalid = |message: &str| ApiError::bad_request("invalid_producer", message.to_owned());
    let (id, epoch, seq) = (
        text(headers, "producer-id")?,
        text(headers, "producer-epoch")?,
        text(headers, "producer-seq")?,
    );
    match (id, epoch, seq) {
        (None, None, None) => Ok(None),
        (Some(id), Some(epoch), Some(seq)) => {
            if id.is_empty() {
                return Err(invalid("Producer-Id is empty"));
            }
            let number = |text: &str, name: &str| {
                parse_integer(text).ok_or_else(|| {
                    invalid(&format!("{name} is a non-negative integer up to 2^53 - 1"))
                })
            };
            Ok(Some(Producer {
                id: id.to_owned(),
                epoch: number(epoch, "Producer-Epoch")?,
                seq: number(seq, "Producer-Seq")?,
            }))
        }
        _ => Err(invalid("Producer-Id, Producer-Epoch and Producer-Seq go together")),
    }
}

/// The request body, bounded by the streams' append limit (413 past it).
async fn body(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let limit = state.streams().limits().max_append_bytes;
    crate::body::read_body(body, limit, state.config().timeouts.request_body).await
}

/// Creates a stream (201), or finds it there with the same settings (200); with
/// `Stream-Forked-From`, forks one.
pub(super) async fn create(
    State(state): State<AppState>,
    Path(path): Path<String>,
    uri: Uri,
    request_headers: HeaderMap,
    request_body: Body,
) -> Response {
    let headers = &request_headers;
    let request = async {
        let path = permitted(&state, &path, headers, &uri, Access::Write)?;
        let forked_from = text(headers, "stream-forked-from")?;
        if forked_from.is_none()
            && (headers.contains_key("stream-fork-offset")
                || headers.contains_key("stream-fork-sub-offset"))
        {
            return Err(ApiError::bad_request(
                "invalid_fork",
                "Stream-Fork-Offset and Stream-Fork-Sub-Offset need Stream-Forked-From",
            ));
        }
        let fork = forked_from.map(|source| {
            Ok::<_, ApiError>(ForkFrom {
                source: source
                    .strip_prefix(ROOT)
                    .unwrap_or(source.trim_start_matches('/'))
                    .to_owned(),
                offset: text(headers, "stream-fork-offset")?.map(str::to_owned),
                sub_offset: text(headers, "stream-fork-sub-offset")?.map(str::to_owned),
            })
        });
        let create = Create {
            content_type: text(headers, "content-type")?.map(str::to_owned),
            expiry: expiry(headers)?,
            closed: closed_flag(headers),
            body: body(&state, request_body).await?,
            fork: fork.transpose()?,
        };
        Ok::<_, ApiError>((path, create))
    };
    let (path, create) = match request.await {
        Ok(request) => request,
        Err(error) => return refused(error),
    };
    match state.streams().create(&path, create).await {
        Ok(created) => {
            let (status, head) = match created {
                Created::New(head) => (StatusCode::CREATED, head),
                Created::Existing(head) => (StatusCode::OK, head),
            };
            let mut response = status.into_response();
            let headers = response.headers_mut();
            security_headers(headers);
            head_headers(&head, headers);
            if status == StatusCode::CREATED {
                headers.insert(
                    header::LOCATION,
                    value(location(&state, &request_headers, &uri, &path)),
                );
            }
            response
        }
        Err(error) => error_response(error),
    }
}

/// The stream's absolute URL, for `Location`: on the hub's origin (the configured public URL,
/// else the host the request named).
fn location(state: &AppState, headers: &HeaderMap, uri: &Uri, path: &str) -> String {
    let origin = hub_url(state.config(), headers, uri).origin().ascii_serialization();
    let path = percent_encoding::utf8_percent_encode(path, super::PATH_ESCAPES);
    format!("{origin}{ROOT}{path}")
}

/// Appends (204; 200 for an idempotent producer's new data), closes, or both.
pub(super) async fn append(
    State(state): State<AppState>,
    Path(path): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    request_body: Body,
) -> Response {
    let request = async {
        let path = permitted(&state, &path, &headers, &uri, Access::Write)?;
        let append = Append {
            content_type: text(&headers, "content-type")?.map(str::to_owned),
            close: closed_flag(&headers),
            writer_seq: text(&headers, "stream-seq")?.map(str::to_owned),
            producer: producer(&headers)?,
            body: body(&state, request_body).await?,
        };
        Ok::<_, ApiError>((path, append))
    };
    let (path, append) = match request.await {
        Ok(request) => request,
        Err(error) => return refused(error),
    };
    // An idempotent producer's new data is 200; a duplicate, a close or a plain append 204.
    let stamped_data = append.producer.is_some() && !append.body.is_empty();
    match state.streams().append(&path, append).await {
        Ok(appended) => {
            let status = if stamped_data && !appended.duplicate {
                StatusCode::OK
            } else {
                StatusCode::NO_CONTENT
            };
            let mut response = status.into_response();
            let headers = response.headers_mut();
            security_headers(headers);
            headers.insert("stream-next-offset", value(appended.head.tail.to_string()));
            if appended.head.closed {
                headers.insert("stream-closed", HeaderValue::from_static("true"));
            }
            if let Some(producer) = appended.producer {
                headers.insert("producer-epoch", value(producer.epoch.to_string()));
                headers.insert("producer-seq", value(producer.seq.to_string()));
            }
            response
        }
        Err(error) => error_response(error),
    }
}

/// Deletes a stream (204).
pub(super) async fn delete(
    State(state): State<AppState>,
    Path(path): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = match permitted(&state, &path, &headers, &uri, Access::Write) {
        Ok(path) => path,
        Err(error) => return refused(error),
    };
    match state.streams().delete(&path).await {
        Ok(()) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            security_headers(response.headers_mut());
            response
        }
        Err(error) => error_response(error),
    }
}

/// The stream's metadata, never cached.
pub(super) async fn head(
    State(state): State<AppState>,
    Path(path): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = match permitted(&state, &path, &headers, &uri, Access::Read) {
        Ok(path) => path,
        Err(error) => return refused(error),
    };
    match state.streams().head(&path).await {
        Ok(head) => {
            let mut response = StatusCode::OK.into_response();
            let headers = response.headers_mut();
            security_headers(headers);
            head_headers(&head, headers);
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(error) => error_response(error),
    }
}
