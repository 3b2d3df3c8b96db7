//! Subscribing: an event stream of every update whose topics match, in either version.
//!
//! | | draft-07 | draft-08 |
//! |---|---|---|
//! | matchers | `topic=` (exact, URI template or `*`) | `match=`/`match_exact=`, `match_urlpattern=` |
//! | resume from | `Last-Event-ID`, else `lastEventID` | `Last-Event-ID`, else `last_event_id` |
//! | response field | `Last-Event-ID` | `Mercure-Last-Event-ID` |
//! | token | any, from header, `authorization=` or `mercureAuthorization` | an access token, from header or `__Secure-mercure_access_token` |
//!
//! Any other parameter whose name begins with `match` (in any case) is a matcher type this hub
//! does not know: 400, as draft-08 asks, rather than a subscription that silently matches
//! nothing. Private updates, replayed or live, go only to tokens granting one of their topics
//! now; the stream ends when the token expires.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Extension, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::response::Response;
use serde_json::Value;
use sluice_hub::{Cursor, Hangup, Selector, SubscribeRequest};
use url::Url;

use super::{access_token_in_url, check_text, hub_url, subscriptions};
use crate::auth::{Claims, Protocol, TokenKind, find_token};
use crate::conn::{ClientAddr, ConnHandle, DirectHandle, SubscriberSocket};
use crate::error::subscribe_error;
use crate::error::{ApiError, ErrorBody};
use crate::grants::MatchType;
use crate::sse::{KeepAlive, event_stream, opening};
use crate::state::{ActiveMatcher, ActiveSubscription, AppState};

/// A subscription request's query, with the version it speaks.
#[derive(Debug)]
struct SubscribeQuery {
    protocol: Protocol,
    /// The matchers in order: their type (`None`: a draft-07 selector) and text.
    matchers: Vec<(Option<MatchType>, String)>,
    last_event_id: Option<String>,
    authorization: Option<String>,
}

impl SubscribeQuery {
    fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let (mut topics, mut matchers) = (Vec::new(), Vec::new());
        let (mut draft07_cursor, mut draft08_cursor, mut authorization) = (None, None, None);
        for (key, value) in crate::form::parse(raw.unwrap_or_default().as_bytes())? {
            match &*key {
                "topic" => topics.push((None, value)),
                "match" | "match_exact" => matchers.push((Some(MatchType::Exact), value)),
                "match_urlpattern" => matchers.push((Some(MatchType::Urlpattern), value)),
                "lastEventID" => draft07_cursor = Some(value),
                "last_event_id" => draft08_cursor = Some(value),
                "authorization" => authorization = Some(value),
                "access_token" => return Err(access_token_in_url()),
                other if other.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("match")) => {
                    return Err(ApiError::bad_request(
                        "unsupported_matcher",
                        format!(
                            "{other} is not a matcher this hub supports: use match (or \
                             match_exact) or match_urlpattern, in lower case"
                        ),
                    ));
                }
                _ => {}
            }
        }
        let protocol = match (topics.is_empty(), matchers.is_empty()) {
            (true, true) => {
                return Err(ApiError::bad_request(
                    "missing_topic",
                    "at least one topic (draft-07) or match (draft-08) parameter is required",
                ));
            }
            (false, false) => {
                return Err(ApiError::bad_request(
                    "mixed_protocols",
                    "topic (draft-07) and match (draft-08) parameters cannot be mixed",
                ));
            }
            (false, true) => Protocol::Draft07,
            (true, false) => Protocol::Draft08,
        };
        let (matchers, last_event_id) = match protocol {
            Protocol::Draft07 => (topics, draft07_cursor.or(draft08_cursor)),
            Protocol::Draft08 => {
                if authorization.is_some() {
                    return Err(ApiError::invalid_request(
                        "draft-08 takes no token in the URL: send it in the Authorization \
                         header or the __Secure-mercure_access_token cookie",
                    ));
                }
                (matchers, draft08_cursor)
            }
        };
        Ok(SubscribeQuery { protocol, matchers, last_event_id, authorization })
    }

    /// The matchers, compiled; relative URL patterns resolve against `hub`.
    fn selectors(&self, hub: &Url) -> Result<Vec<Selector>, ApiError> {
        self.matchers
            .iter()
            .map(|(match_type, text)| {
                let compiled = match match_type {
                    None => Selector::parse(text),
                    Some(match_type) => {
                        check_text("invalid_matcher", match_type.name(), text)?;
                        match_type.compile(text, hub)
                    }
                };
                compiled.map_err(|e| ApiError::bad_request("invalid_topic", e.to_string()))
            })
            .collect()
    }
}

/// The verified claims of the request's token, `None` for an anonymous subscriber. A draft-08
/// subscription takes access tokens only.
fn subscriber_claims(
    state: &AppState,
    headers: &HeaderMap,
    query: &SubscribeQuery,
    hub: &Url,
) -> Result<Option<Claims>, ApiError> {
    let config = state.config();
    let token = find_token(headers, query.authorization.as_deref(), query.protocol)?;
    match (token, &config.subscriber) {
        (Some((token, _)), Some(verifier)) => {
            let claims = verifier.verify(&token, hub)?;
            if query.protocol == Protocol::Draft08 && claims.kind != TokenKind::Access {
                return Err(ApiError::invalid_token(
                    "draft-08 subscriptions take an OAuth access token (typ: at+jwt)",
                ));
            }
            Ok(Some(claims))
        }
        (_, _) if config.anonymous => Ok(None),
        _ => Err(ApiError::unauthorized("a subscriber token is required")),
    }
}

/// Subscribes to updates: an event stream of every update whose topics match.
#[utoipa::path(get, path = "/.well-known/mercure", tag = "hub",
    params(
        ("topic" = Option<Vec<String>>, Query, description = "Draft-07 topic selectors: a topic, a URI template, or *; repeatable", explode = true),
        ("match" = Option<Vec<String>>, Query, description = "Draft-08 exact matchers: a topic, or *; repeatable", explode = true),
        ("match_urlpattern" = Option<Vec<String>>, Query, description = "Draft-08 URL pattern matchers (https://example.com/books/:id); repeatable", explode = true),
        ("lastEventID" = Option<String>, Query, description = "Draft-07: resume after this id (the Last-Event-ID header wins); earliest for all history"),
        ("last_event_id" = Option<String>, Query, description = "Draft-08: resume after this id (the Last-Event-ID header wins); earliest for all history"),
        ("authorization" = Option<String>, Query, description = "A draft-07 subscriber JWT, when no header or cookie can carry it (refused in draft-08)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this id; earliest for all history"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = crate::sse::SseEvent,
            headers(("Last-Event-ID" = String, description = "Draft-07, when a cursor was sent: the id of the event before the first one sent, or earliest"),
                    ("Mercure-Last-Event-ID" = String, description = "Draft-08, when a cursor was sent: the id of the event before the first one sent, or earliest"))),
        (status = 400, description = "No matcher, an unknown match* parameter, mixed versions, too many matchers, an invalid or too large matcher, a malformed Authorization header, or an access_token parameter", body = ErrorBody),
        (status = 401, description = "A token is required, or the token is invalid or expired (WWW-Authenticate says which)", body = ErrorBody),
        (status = 429, description = "Too many subscriptions from this client", body = ErrorBody),
        (status = 503, description = "Shutting down, or the store does not answer (Retry-After)", body = ErrorBody),
    ),
    security((), ("mercure_jwt" = []), ("mercure_access_token" = [])))]
pub(crate) async fn subscribe(
    State(state): State<AppState>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    connection: Option<Extension<ConnHandle>>,
    socket: Option<Extension<SubscriberSocket>>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = SubscribeQuery::parse(raw.as_deref())?;
    let config = state.config();
    if query.matchers.len() > config.max_topics_per_subscription {
        return Err(ApiError::bad_request(
            "too_many_topics",
            format!(
                "a subscription has {} topic selectors (topic, match, match_urlpattern); at most {} are allowed",
                query.matchers.len(),
                config.max_topics_per_subscription
            ),
        ));
    }
    let hub = hub_url(config, &headers, &uri);
    let selectors = query.selectors(&hub)?;
    let claims = subscriber_claims(&state, &headers, &query, &hub)?;
    let slot = state.admission().claim_subscription(client.ip())?;

    let header_cursor = headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .filter(|v| !v.is_empty());
    let cursor = match header_cursor.or(query.last_event_id) {
        None => Cursor::Live,
        Some(id) if id == "earliest" => Cursor::Earliest,
        Some(id) => Cursor::After(id),
    };
    let claims = claims.unwrap_or_default();
    // Cut off as too slow, the connection is closed at once, even mid-write.
    let hangup = connection.map(|Extension(connection)| Hangup::new(move || connection.hang_up()));
    let request = SubscribeRequest {
        selectors,
        allowed_private: claims.subscribe.clone(),
        cursor,
        until_event_type: None,
        hangup,
        direct: socket.map(|Extension(socket)| socket.0),
    };
    let subscription = state.hub().subscribe(request).await.map_err(subscribe_error)?;

    let subscriber = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let matchers = query
        .matchers
        .into_iter()
        .map(|(match_type, text)| ActiveMatcher {
            payload: claims.payload_for(&text).unwrap_or(Value::Null),
            match_type,
            text,
        })
        .collect();
    let active = ActiveSubscription { subscriber, protocol: query.protocol, matchers };
    let guard = subscriptions::Presence::enter(&state, active);

    let deadline = claims.exp.map(|exp| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        tokio::time::Instant::now() + Duration::from_secs(exp.saturating_sub(now))
    });
    let keep_alive =
        KeepAlive { written_by: subscription.direct.clone(), ..KeepAlive::from(config.keep_alive) };
    let mut response = event_stream(
        Some(opening(config.retry)),
        subscription.frames,
        keep_alive,
        deadline,
        (guard, slot),
    );
    let field = match query.protocol {
        Protocol::Draft07 => "last-event-id",
        Protocol::Draft08 => "mercure-last-event-id",
    };
    if let Some(direct) = subscription.direct {
        response.extensions_mut().insert(DirectHandle(direct));
    }
    if let Some(resumed) = subscription.resumed_after
        && let Ok(value) = HeaderValue::from_str(&resumed)
    {
        response.headers_mut().insert(field, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(raw: &str) -> u16 {
        SubscribeQuery::parse(Some(raw)).unwrap_err().status().as_u16()
    }

    #[test]
    fn the_parameters_say_which_version_a_request_speaks() {
        let draft07 = SubscribeQuery::parse(Some("topic=a&lastEventID=1&last_event_id=2")).unwrap();
        assert_eq!(
            (draft07.protocol, draft07.last_event_id.as_deref()),
            (Protocol::Draft07, Some("1"))
        );
        let draft08 = SubscribeQuery::parse(Some(
            "match=a&match_urlpattern=/b/:id&lastEventID=1&last_event_id=2",
        ))
        .unwrap();
        assert_eq!(
            (draft08.protocol, draft08.last_event_id.as_deref()),
            (Protocol::Draft08, Some("2"))
        );
        assert_eq!(draft08.matchers[1].0, Some(MatchType::Urlpattern));
        assert_eq!(status("topic=a&match=b"), 400, "mixed");
        assert_eq!(status("lastEventID=1"), 400, "no matcher");
        for unknown in
            ["MATCH=a", "Match_urlpattern=a", "match_regex=a", "matchfoo=a", "match_uritemplate=a"]
        {
            assert_eq!(status(unknown), 400, "{unknown}");
        }
        assert_eq!(status("match=a&authorization=token"), 400, "no token in a draft-08 URL");
        assert_eq!(status("topic=a&access_token=token"), 400, "no access_token in any URL");
        assert_eq!(status("match=a&access_token=token"), 400, "no access_token in any URL");
    }

    #[test]
    fn draft08_matchers_refuse_invisible_characters_and_bad_patterns() {
        let hub: Url = "https://hub.example/.well-known/mercure".parse().unwrap();
        let selectors = |raw: &str| SubscribeQuery::parse(Some(raw)).unwrap().selectors(&hub);
        assert!(selectors("match=a%E2%80%AEb").is_err(), "U+202E");
        assert!(selectors("match_urlpattern=https://[").is_err());
        let exact = selectors("match=/books/{id}").unwrap();
        assert_eq!(exact[0].exact(), Some("/books/{id}"), "braces are literal in draft-08");
        // The same text in draft-07 is a template.
        assert!(selectors("topic=/books/{id}").unwrap()[0].matches("/books/1"));
    }
}
