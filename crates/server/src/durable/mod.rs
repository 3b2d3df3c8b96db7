//! Durable Streams over HTTP: the protocol's URLs (`/v1/stream/{path}`), methods and headers
//! mapped onto [`sluice_streams::Streams`], which holds its rules.
//!
//! - `PUT` creates (or forks), `POST` appends and closes, `DELETE` removes, `HEAD` tells the
//!   metadata ([`write`]); `GET` reads: catch-up, long-poll or SSE ([`read`]).
//! - **Who may.** A stream stands for the topic `/v1/stream/{path}`: a publisher token whose
//!   `publish` selectors match it may create, append to and delete it; a subscriber token
//!   whose `subscribe` selectors match it may read it (so `/v1/stream/chat/{id}` grants every
//!   chat). Under `answers/` are the answers' own streams (`gateway::durable_chat`): anyone
//!   with the URL reads, nobody writes. Tokens come as the hub takes them (the `Authorization` header, the
//!   `mercureAuthorization` cookie). With `--open-streams` anyone may do anything, for local
//!   use and the protocol's conformance suite.
//! - Every response carries the browser security headers the protocol lists; errors are the
//!   server's JSON errors plus the protocol's own headers (`Stream-Closed`, `Producer-*`).

mod read;
mod write;

use axum::Router;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sluice_streams::{Error, Expiry, Head};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::{Protocol, find_token};
use crate::error::ApiError;
use crate::hub_url::hub_url;
use crate::state::AppState;

/// Where streams live; a stream's path is what follows.
pub(crate) const ROOT: &str = "/v1/stream/";
/// What a stream path escapes in a URL: controls, spaces, and what would end or split a path.
const PATH_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');
/// Where answers' own streams live (`gateway::durable_chat`): readable by whoever has the URL
/// (the answer's random id is the capability), written by the server only.
pub(crate) const ANSWERS: &str = "answers/";
/// The longest stream path accepted.
const MAX_PATH_BYTES: usize = 1024;

/// The protocol's routes, with their own CORS (browsers read and write streams cross-origin).
pub(crate) fn routes(state: &AppState) -> Router<AppState> {
    let router = Router::new().route(
        "/v1/stream/{*path}",
        get(read::get)
            .head(write::head)
            .put(write::create)
            .post(write::append)
            .delete(write::delete),
    );
    match cors(state) {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// CORS for the streams: the configured origins, or with `--open-streams` and none configured
/// any origin; the protocol's headers allowed and exposed.
fn cors(state: &AppState) -> Option<CorsLayer> {
    let config = state.config();
    let origins = &config.cors_origins;
    let allow_origin =
        if origins.iter().any(|o| o == "*") || (origins.is_empty() && config.open_streams) {
            AllowOrigin::any()
        } else if origins.is_empty() {
            return None;
        } else {
            AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        };
    let names = |names: &[&'static str]| {
        names.iter().map(|n| HeaderName::from_static(n)).collect::<Vec<_>>()
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::HEAD, Method::PUT, Method::POST, Method::DELETE])
            .allow_headers(names(&[
                "authorization",
                "content-type",
                "if-none-match",
                "stream-ttl",
                "stream-expires-at",
                "stream-closed",
                "stream-seq",
                "stream-forked-from",
                "stream-fork-offset",
                "stream-fork-sub-offset",
                "producer-id",
                "producer-epoch",
                "producer-seq",
            ]))
            .expose_headers(names(&[
                "stream-next-offset",
                "stream-cursor",
                "stream-up-to-date",
                "stream-closed",
                "stream-ttl",
                "stream-expires-at",
                "stream-sse-data-encoding",
                "producer-epoch",
                "producer-seq",
                "producer-expected-seq",
                "producer-received-seq",
                "etag",
                "location",
            ])),
    )
}

/// What a request may do to a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// The stream's path from the route's capture: refused (400) when empty, too long, or
/// holding `.`/`..` segments; the reserved `__ds` namespace is not a stream (404).
fn stream_path(captured: &str) -> Result<String, ApiError> {
    if captured.is_empty() || captured.len() > MAX_PATH_BYTES {
        return Err(ApiError::bad_request(
            "invalid_stream_path",
            format!("a stream path is 1 to {MAX_PATH_BYTES} bytes"),
        ));
    }
    if captured.split('/').any(|s| s.is_empty() || s == "." || s == "..")
        || captured.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(
            "invalid_stream_path",
            "a stream path has no empty, `.` or `..` segments and no control characters",
        ));
    }
    if captured.split('/').next() == Some("__ds") {
        return Err(ApiError::not_found("`__ds` is reserved for the protocol's control APIs"));
    }
    Ok(captured.to_owned())
}

/// The stream's path from the route's capture, if the request may `access` it.
fn permitted(
    state: &AppState,
    captured: &str,
    headers: &HeaderMap,
    uri: &Uri,
    access: Access,
) -> Result<String, ApiError> {
    let path = stream_path(captured)?;
    authorize(state, headers, uri, &path, access)?;
    Ok(path)
}

/// Checks the request may `access` the stream at `path`.
fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    path: &str,
    access: Access,
) -> Result<(), ApiError> {
    let config = state.config();
    if path.starts_with(ANSWERS) {
        return match access {
            Access::Read => Ok(()),
            Access::Write => Err(ApiError::forbidden(format!(
                "streams under {ROOT}{ANSWERS} are the server's: answers are written there"
            ))),
        };
    }
    if config.open_streams {
        return Ok(());
    }
    let verifier = match access {
        Access::Write => config.publisher.as_ref(),
        Access::Read => config.subscriber.as_ref(),
    };
    let Some(verifier) = verifier else {
        return Err(ApiError::unauthorized(
            "streams need a key to check tokens with (--jwt-secret), or --open-streams",
        ));
    };
    let Some((token, _)) = find_token(headers, None, Protocol::Draft07)? else {
        return Err(ApiError::unauthorized("a token granting this stream is required"));
    };
    let claims = verifier.verify(&token, &hub_url(config, headers, uri))?;
    let topic = format!("{ROOT}{path}");
    let granted = match access {
        Access::Write => claims.may_publish(&topic),
        Access::Read => claims.may_subscribe(&topic) || claims.may_publish(&topic),
    };
    if granted {
        Ok(())
    } else {
        Err(ApiError::insufficient_scope(format!("the token does not grant {topic}")))
    }
}

/// Headers on every stream response: no MIME sniffing, readable cross-origin by `fetch`.
fn security_headers(headers: &mut HeaderMap) {
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("cross-origin"));
}

/// A header value from text this server produced (offsets, numbers, content types given).
fn value(text: impl AsRef<str>) -> HeaderValue {
    HeaderValue::from_str(text.as_ref()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The metadata headers: content type, tail, closure, TTL or expiry.
fn head_headers(head: &Head, headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_TYPE, value(&head.content_type));
    headers.insert("stream-next-offset", value(head.tail.to_string()));
    if head.closed {
        headers.insert("stream-closed", HeaderValue::from_static("true"));
    }
    match &head.expiry {
        Expiry::Never => {}
        Expiry::Ttl(secs) => {
            headers.insert("stream-ttl", value(secs.to_string()));
        }
        Expiry::At { text, .. } => {
            headers.insert("stream-expires-at", value(text));
        }
    }
}

/// A stream error as a response: the server's JSON error, with the protocol's headers.
fn error_response(error: Error) -> Response {
    let mut headers = HeaderMap::new();
    security_headers(&mut headers);
    let api = match error {
        Error::NotFound => ApiError::not_found("no stream at this path"),
        Error::Gone => ApiError::new(StatusCode::GONE, "stream_deleted", error.to_string()),
        Error::BadRequest(message) => ApiError::bad_request("invalid_stream_request", message),
        Error::Conflict(message) => ApiError::new(StatusCode::CONFLICT, "stream_conflict", message),
        Error::Closed { tail } => {
            headers.insert("stream-closed", HeaderValue::from_static("true"));
            headers.insert("stream-next-offset", value(tail.to_string()));
            ApiError::new(StatusCode::CONFLICT, "stream_closed", error.to_string())
        }
        Error::StaleEpoch { current, .. } => {
            headers.insert("producer-epoch", value(current.to_string()));
            ApiError::new(StatusCode::FORBIDDEN, "stale_producer_epoch", error.to_string())
        }
        Error::SequenceGap { expected, received } => {
            headers.insert("producer-expected-seq", value(expected.to_string()));
            headers.insert("producer-received-seq", value(received.to_string()));
            ApiError::new(StatusCode::CONFLICT, "producer_sequence_gap", error.to_string())
        }
        Error::TooLarge(_) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", error.to_string())
        }
        Error::Log(error) => {
            tracing::warn!(%error, "stream storage failed");
            ApiError::unavailable("stream storage is unavailable; retry shortly", 1)
        }
    };
    (headers, api).into_response()
}

/// An [`ApiError`] (a refused request, before the stream is touched) with the security
/// headers.
fn refused(error: ApiError) -> Response {
    let mut headers = HeaderMap::new();
    security_headers(&mut headers);
    (headers, error).into_response()
}
