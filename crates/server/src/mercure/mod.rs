//! The Mercure hub's routes, speaking draft-07 and draft-08 side by side over one hub: each
//! request says by its own parameters (`topic=` or `match…=`) or its token (`typ: at+jwt`)
//! which version it speaks, and both see one history and one set of subscribers.
//!
//! - `subscribe`: the event stream, in either version;
//! - this module: publishing (the same form in both versions; draft-08's stricter rules on
//!   topics, ids and types apply to every publication, as a draft-07 publisher breaking them
//!   would spoof the hub's own events or collide with its cursors), and the hub's URL;
//! - `subscriptions`: subscription events and the subscription API, in each version's shape;
//! - `metadata`: draft-08's protected resource metadata (RFC 9728).

mod metadata;
mod subscribe;
mod subscriptions;

use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sluice_hub::{Draft, RESERVED_TOPIC_PREFIX};
use url::Url;

use crate::auth::{Protocol, TokenSource, find_token};
use crate::error::publish_error;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

// The handlers' OpenAPI descriptions, for `openapi`.
pub(crate) use metadata::{__path_protected_resource, protected_resource};
pub(crate) use subscribe::{__path_subscribe, subscribe};
pub(crate) use subscriptions::{
    __path_list_all, __path_list_matcher, __path_list_topic, __path_show_one,
};

pub(crate) use crate::hub_url::{HUB_PATH, hub_url};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(HUB_PATH, get(subscribe).post(publish))
        .route(metadata::PATH, get(protected_resource))
        .merge(subscriptions::routes())
}

/// The token in a request's query: draft-07's `authorization` parameter. An `access_token`
/// parameter is refused (see [`access_token_in_url`]).
fn query_token(raw: Option<&str>) -> Result<Option<String>, ApiError> {
    let mut token = None;
    for (key, value) in crate::form::parse(raw.unwrap_or_default().as_bytes())? {
        match &*key {
            "authorization" => token = Some(value),
            "access_token" => return Err(access_token_in_url()),
            _ => {}
        }
    }
    Ok(token)
}

/// 400 for an `access_token` query parameter (RFC 6750's way to send a token in a URL): the
/// hub never reads one there, and ignoring it would serve the request as anonymous, or under
/// another token, as if it had been read.
fn access_token_in_url() -> ApiError {
    ApiError::invalid_request(
        "the hub takes no access_token parameter: send the token in the Authorization header, \
         or a cookie (draft-07 also takes an authorization parameter)",
    )
}

/// Whether `c` may not appear in a topic, matcher, id or event type: C0 and C1 controls,
/// DEL, and Unicode format characters (general category Cf, such as U+200B or U+202E),
/// which would make two different strings look alike or reorder text on screen.
fn is_forbidden_char(c: char) -> bool {
    use icu_properties::CodePointMapData;
    use icu_properties::props::GeneralCategory;
    c.is_control() || CodePointMapData::<GeneralCategory>::new().get(c) == GeneralCategory::Format
}

/// [`check_text`], and refuses the one value of the field that draft-08 reserves (`why` says
/// what it means instead).
fn check_field(
    code: &'static str,
    field: &str,
    value: &str,
    reserved: &str,
    why: &'static str,
) -> Result<(), ApiError> {
    check_text(code, field, value)?;
    if value == reserved {
        return Err(ApiError::bad_request(code, why));
    }
    Ok(())
}

/// Refuses (400) a `field` value holding a forbidden character.
fn check_text(code: &'static str, field: &str, value: &str) -> Result<(), ApiError> {
    match value.char_indices().find(|(_, c)| is_forbidden_char(*c)) {
        Some((at, c)) => Err(ApiError::bad_request(
            code,
            format!(
                "the {field} holds U+{:04X} at byte {at}: control and format characters are not allowed",
                u32::from(c)
            ),
        )),
        None => Ok(()),
    }
}

/// Whether `topic` addresses the hub's own namespace (its URL path, or below it), once
/// resolved against the hub's URL, with dot segments removed and percent-encoded unreserved
/// characters decoded, whatever its scheme and host. Such topics are the hub's (subscription
/// events): nobody may publish to them.
fn in_hub_namespace(topic: &str, hub: &Url) -> bool {
    let Ok(url) = hub.join(topic) else { return false };
    let path = decode_unreserved(url.path());
    path == HUB_PATH || path.starts_with(&format!("{HUB_PATH}/"))
}

/// `%XX` triplets of unreserved characters (letters, digits, `-._~`) decoded; others kept.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| path.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|b| b.is_ascii_alphanumeric() || b"-._~".contains(b));
        match decoded {
            Some(byte) => {
                out.push(byte as char);
                i += 3;
            }
            None => {
                out.push(path[i..].chars().next().expect("in bounds"));
                i += path[i..].chars().next().map_or(1, char::len_utf8);
            }
        }
    }
    out
}

/// The form of a publication (both versions). The topics' and data's limits are the defaults.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // a schema for the document only: the form is parsed by `parse_publication`
pub(crate) struct PublishForm {
    /// The topics: the first is canonical, the rest alternates. Repeatable. Not `*`, no
    /// control or format characters, not under the hub's own path (`/.well-known/mercure`,
    /// 400) nor `/.well-known/sluice/` (403).
    #[schema(min_items = 1, max_items = 32)]
    topic: Vec<Topic>,
    /// The event's data (at most 512 KiB).
    #[schema(max_length = 524288, nullable = false)]
    data: Option<String>,
    /// Present (with any value): only authorized subscribers receive it.
    #[schema(nullable = false)]
    private: Option<String>,
    /// The event id; the hub makes one when absent. Not empty, not starting with `#`, not
    /// `earliest`, no control or format characters.
    #[schema(
        min_length = 1,
        pattern = r"^[^#\u0000-\u001f\u007f-\u009f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb][^\u0000-\u001f\u007f-\u009f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]*$",
        nullable = false
    )]
    id: Option<String>,
    /// The SSE event type: not `mercure`, no control or format characters.
    #[schema(
        pattern = r"^[^\u0000-\u001f\u007f-\u009f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]*$",
        nullable = false
    )]
    r#type: Option<String>,
    /// The SSE reconnection time, in milliseconds (digits only).
    #[schema(pattern = "^[0-9]{1,19}$", nullable = false)]
    retry: Option<String>,
}

/// A topic (an IRI, or any text) in the document: at most 1024 characters (the default limit).
#[derive(Debug)]
pub(crate) struct Topic;

impl utoipa::PartialSchema for Topic {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .max_length(Some(sluice_hub::Limits::default().max_topic_length))
            .pattern(Some(r"^[^\u0000-\u001f\u007f-\u009f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]+$"))
            .into()
    }
}

impl utoipa::ToSchema for Topic {}

/// Publishes an update; the response body is its id. A draft-07 token or a draft-08 access
/// token must grant publishing to every topic.
#[utoipa::path(post, path = "/.well-known/mercure", tag = "hub",
    request_body(content = PublishForm, content_type = "application/x-www-form-urlencoded",
        description = "topic (required, repeatable), data, private, id, type, retry"),
    params(("authorization" = Option<String>, Query, description = "A draft-07 publisher JWT, when no header or cookie can carry it")),
    responses(
        (status = 200, description = "The id of the update", content_type = "text/plain; charset=utf-8", body = String),
        (status = 400, description = "A malformed field, invalid UTF-8, a reserved topic, id or type, a topic past the limits, a malformed Authorization header, or an access_token parameter", body = ErrorBody),
        (status = 401, description = "No valid publisher token (WWW-Authenticate says which)", body = ErrorBody),
        (status = 403, description = "The token may not publish to a topic", body = ErrorBody),
        (status = 408, description = "The request body stalled", body = ErrorBody),
        (status = 409, description = "An update with this id exists", body = ErrorBody),
        (status = 413, description = "The body or the data is too large", body = ErrorBody),
        (status = 415, description = "Not application/x-www-form-urlencoded", body = ErrorBody),
        (status = 503, description = "The store cannot take the update now (Retry-After)", body = ErrorBody),
    ),
    security(("mercure_jwt" = []), ("mercure_access_token" = [])))]
pub(crate) async fn publish(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let config = state.config();
    let Some(verifier) = &config.publisher else {
        return Err(ApiError::unauthorized(
            "publishing is disabled: the hub has no publisher key (--jwt-secret)",
        ));
    };
    let query_token = query_token(raw.as_deref())?;
    let Some((token, source)) = find_token(&headers, query_token.as_deref(), Protocol::Draft07)?
    else {
        return Err(ApiError::unauthorized("a publisher token is required"));
    };
    if source == TokenSource::Cookie && !origin_allowed(&headers, &config.publish_origins) {
        return Err(ApiError::forbidden("this origin may not publish with a cookie"));
    }
    let hub = hub_url(config, &headers, &uri);
    let claims = verifier.verify(&token, &hub)?;
    let is_form =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
            ct.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "publish with Content-Type: application/x-www-form-urlencoded",
        ));
    }
    let body =
        crate::body::read_body(body, config.max_body_bytes, config.timeouts.request_body).await?;
    let draft = parse_publication(&body, config.max_event_bytes)?;
    for topic in &draft.topics {
        if in_hub_namespace(topic, &hub) {
            return Err(ApiError::bad_request(
                "reserved_topic",
                format!("topic {topic:?} is in the hub's own namespace ({HUB_PATH})"),
            ));
        }
        if topic.starts_with(RESERVED_TOPIC_PREFIX) {
            return Err(ApiError::forbidden(format!("topic {topic:?} is reserved for the hub")));
        }
    }
    if let Some(topic) = draft.topics.iter().find(|topic| !claims.may_publish(topic)) {
        return Err(ApiError::insufficient_scope(format!(
            "the token may not publish to {topic:?}"
        )));
    }
    let update = state.hub().publish(draft).await.map_err(publish_error)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], update.id().to_owned())
        .into_response())
}

fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    allowed.iter().any(|a| a == "*" || Some(a.as_str()) == origin)
}

/// The form fields: `topic` (repeatable), `data`, `private`, `id`, `type`, `retry`; others
/// are ignored. Refused (400): no topic; a topic that is `*` or holds a control or format
/// character; an id that is `earliest` or holds one; a type that is `mercure` or holds one;
/// a retry that is not all digits. Data past `max_data` bytes: 413.
pub(crate) fn parse_publication(body: &[u8], max_data: usize) -> Result<Draft, ApiError> {
    let mut draft = Draft { topics: Vec::new(), ..Draft::new("", "") };
    for (key, value) in crate::form::parse(body)? {
        match &*key {
            "topic" => draft.topics.push(value),
            "data" => draft.data = value,
            "private" => draft.private = true,
            "id" => draft.id = Some(value),
            "type" => draft.event_type = Some(value),
            "retry" => {
                let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
                draft.retry = Some(value.parse().ok().filter(|_| digits).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_retry",
                        "retry must be a whole number of milliseconds, in digits",
                    )
                })?);
            }
            _ => {}
        }
    }
    if draft.topics.is_empty() {
        return Err(ApiError::bad_request("missing_topic", "at least one topic field is required"));
    }
    for topic in &draft.topics {
        check_field(
            "invalid_topic",
            "topic",
            topic,
            "*",
            "* matches every topic: it cannot be a topic itself",
        )?;
    }
    if let Some(id) = &draft.id {
        check_field(
            "invalid_id",
            "id",
            id,
            "earliest",
            "earliest is reserved: it asks for all history",
        )?;
    }
    if let Some(event_type) = &draft.event_type {
        let why = "the type mercure is reserved for the hub's subscription events";
        check_field("invalid_type", "type", event_type, "mercure", why)?;
    }
    if draft.data.len() > max_data {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "event_too_large",
            format!("data exceeds {max_data} bytes"),
        ));
    }
    Ok(draft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_namespace_is_found_however_a_topic_spells_it() {
        let hub: Url = "https://hub.example/.well-known/mercure".parse().unwrap();
        for topic in [
            "/.well-known/mercure",
            "/.well-known/mercure/subscriptions/exact/a/b",
            "https://elsewhere.example/.well-known/mercure/x",
            "/a/../.well-known/mercure/x",
            "/.well-known/%6Dercure/x",
        ] {
            assert!(in_hub_namespace(topic, &hub), "{topic}");
        }
        for topic in ["/.well-known/mercurex", "https://example.com/books/1", "subscriptions/x"] {
            assert!(!in_hub_namespace(topic, &hub), "{topic}");
        }
    }

    #[test]
    fn reserved_values_and_invisible_characters_are_refused() {
        let refused = |body: &str| parse_publication(body.as_bytes(), 1024).unwrap_err().status();
        assert_eq!(refused("topic=*"), 400);
        assert_eq!(refused("topic=a&id=earliest"), 400);
        assert_eq!(refused("topic=a&type=mercure"), 400);
        assert_eq!(refused("topic=a%E2%80%8Bb"), 400, "U+200B is a format character");
        assert_eq!(refused("topic=a%C2%85"), 400, "U+0085 is a C1 control");
        assert_eq!(refused("topic=a&id=x%7Fy"), 400);
        assert_eq!(refused("topic=a&retry=%2B5"), 400, "retry is digits only");
        let draft = parse_publication(b"topic=a&retry=5&private=&unknown=1", 1024).unwrap();
        assert_eq!((draft.retry, draft.private), (Some(5), true));
    }
}
