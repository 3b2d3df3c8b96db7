//! Mercure draft-08 as its clients speak it, beside draft-07 on the same hub: matchers,
//! `last_event_id` and `Mercure-Last-Event-ID`, access tokens and RFC 6750 errors, the
//! publication rules, subscription events and the subscription API in plain JSON, and the
//! protected resource metadata. Each test is written from the specification's text.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde_json::Value;
use sluice_client::EventSource;
use sluice_hub::HubConfig;
use sluice_server::{
    AccessGrant, Config, Grant, MatchType, TopicMatcher, Verifier, mint_access_hs256, mint_hs256,
};

mod common;

use common::events::{error_json, messages, opened};

const SECRET: &[u8] = b"draft-08 test secret";
const ISSUER: &str = "https://issuer.test";

struct Hub {
    running: common::Running,
}

impl Hub {
    async fn start(anonymous: bool) -> Hub {
        let verifier = Verifier::hs256(SECRET).trusting(vec![ISSUER.to_owned()]);
        let config = Config {
            publisher: Some(verifier.clone()),
            subscriber: Some(verifier),
            anonymous,
            ..Config::default()
        };
        Hub { running: common::serve(config, HubConfig::default()).await }
    }

    /// The hub's URL, which is also the audience of its access tokens.
    fn url(&self) -> String {
        format!("{}/.well-known/mercure", self.running.url)
    }

    fn access_token(
        &self,
        publish: &[(MatchType, &str)],
        subscribe: &[(MatchType, &str)],
    ) -> String {
        mint_access_hs256(SECRET, &self.grant(publish, subscribe))
    }

    fn grant(&self, publish: &[(MatchType, &str)], subscribe: &[(MatchType, &str)]) -> AccessGrant {
        let matchers = |list: &[(MatchType, &str)]| {
            list.iter()
                .map(|(match_type, text)| TopicMatcher {
                    match_type: *match_type,
                    text: (*text).into(),
                })
                .collect()
        };
        AccessGrant {
            issuer: ISSUER.into(),
            audience: self.url(),
            exp: now() + 3600,
            subject: "test".into(),
            publish: matchers(publish),
            subscribe: matchers(subscribe),
            payload: None,
        }
    }

    fn publisher(&self) -> String {
        self.access_token(&[(MatchType::Exact, "*")], &[])
    }

    async fn publish(&self, token: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let request = reqwest::Client::new().post(self.url()).bearer_auth(token).form(fields);
        request.send().await.unwrap()
    }

    async fn publish_ok(&self, fields: &[(&str, &str)]) -> String {
        let response = self.publish(&self.publisher(), fields).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/plain; charset=utf-8");
        response.text().await.unwrap()
    }

    /// An EventSource on `?query`, with extra request headers.
    fn source(&self, query: &str, headers: &[(&str, String)]) -> EventSource {
        let mut builder = EventSource::get(&format!("{}?{query}", self.url())).reconnect(false);
        for (name, value) in headers {
            builder = builder.header(*name, value.clone());
        }
        builder.build().unwrap()
    }

    async fn get(&self, query: &str, headers: &[(&str, String)]) -> reqwest::Response {
        let mut request = reqwest::Client::new().get(format!("{}?{query}", self.url()));
        for (name, value) in headers {
            request = request.header(*name, value.clone());
        }
        request.send().await.unwrap()
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

fn challenge(response: &reqwest::Response) -> String {
    response.headers()["www-authenticate"].to_str().unwrap().to_owned()
}

/// Percent-encodes a query value or a path segment (everything but unreserved characters).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn both_versions_see_one_history_and_one_stream_of_updates() {
    let hub = Hub::start(true).await;
    let mut draft07 = hub.source("topic=https://example.com/books/{id}", &[]);
    let mut exact = hub.source(&format!("match={}", encode("https://example.com/books/1")), &[]);
    let mut pattern =
        hub.source(&format!("match_urlpattern={}", encode("https://example.com/books/:id")), &[]);
    for source in [&mut draft07, &mut exact, &mut pattern] {
        opened(source).await;
    }
    // One update published with an access token, one with a draft-07 token.
    let first =
        hub.publish_ok(&[("topic", "https://example.com/books/1"), ("data", "a\r\nb")]).await;
    let draft07_token =
        mint_hs256(SECRET, &Grant { publish: vec!["*".into()], ..Grant::default() });
    let response = reqwest::Client::new()
        .post(hub.url())
        .bearer_auth(draft07_token)
        .form(&[("topic", "https://example.com/books/1"), ("data", "second"), ("id", "second-id")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "second-id");
    hub.publish_ok(&[("topic", "https://example.com/books/1/reviews"), ("data", "not a book")])
        .await;
    for (name, source) in
        [("draft-07", &mut draft07), ("exact", &mut exact), ("pattern", &mut pattern)]
    {
        let got = messages(source, 2).await;
        assert_eq!(got[0].data, "a\nb", "{name}: data split into lines, joined by LF");
        assert_eq!(got[0].last_event_id, first, "{name}");
        assert_eq!(got[1].last_event_id, "second-id", "{name}");
    }

    // Resuming: draft-08 from last_event_id, answered with Mercure-Last-Event-ID.
    let query =
        format!("match={}&last_event_id={}", encode("https://example.com/books/1"), encode(&first));
    let response = hub.get(&query, &[]).await;
    assert_eq!(response.headers()["mercure-last-event-id"], first.as_str());
    assert!(response.headers().get("last-event-id").is_none());
    drop(response);
    let mut resumed = hub.source(&query, &[]);
    opened(&mut resumed).await;
    assert_eq!(messages(&mut resumed, 1).await[0].last_event_id, "second-id");
    // The Last-Event-ID header wins over the query parameter.
    let header_wins = hub.get(&query, &[("Last-Event-ID", "second-id".into())]).await;
    assert_eq!(header_wins.headers()["mercure-last-event-id"], "second-id");
    // An id the hub does not know: earliest, and the history from its start.
    let unknown = hub
        .get(&format!("match={}&last_event_id=nope", encode("https://example.com/books/1")), &[])
        .await;
    assert_eq!(unknown.headers()["mercure-last-event-id"], "earliest");
    // Draft-07 from lastEventID, answered with Last-Event-ID.
    let old = hub
        .get(
            &format!(
                "topic={}&lastEventID={}",
                encode("https://example.com/books/1"),
                encode(&first)
            ),
            &[],
        )
        .await;
    assert_eq!(old.headers()["last-event-id"], first.as_str());
    assert!(old.headers().get("mercure-last-event-id").is_none());
}

#[tokio::test]
async fn matchers_are_case_sensitive_exact_or_url_patterns_and_unknown_ones_are_refused() {
    let hub = Hub::start(true).await;
    for bad in [
        "MATCH=a",
        "Match_urlpattern=a",
        "match_regex=a",
        "matchfoo=a",
        "match_uritemplate=a",
        "match_urlpattern=https%3A%2F%2F%5B",
        "match=a%E2%80%8Bb",
        "match=a&topic=b",
    ] {
        let (status, body) = error_json(hub.get(bad, &[]).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    // Braces are literal in an exact matcher; :id does not cross a slash; the host is
    // case-insensitive, the path is not; relative topics resolve against the hub's URL.
    let mut braces = hub.source("match=/books/%7Bid%7D", &[]);
    let mut pattern = hub.source("match_urlpattern=https%3A%2F%2Fexample.com%2Fbooks%2F%3Aid", &[]);
    let mut relative = hub.source("match_urlpattern=%2Fshelves%2F%3Aid", &[]);
    for source in [&mut braces, &mut pattern, &mut relative] {
        opened(source).await;
    }
    for topic in [
        "/books/1",
        "https://example.com/Books/1",
        "https://example.com/books/1/2",
        "https://EXAMPLE.com/books/1?page=2",
        "/shelves/7",
        "/books/{id}",
    ] {
        hub.publish_ok(&[("topic", topic), ("data", topic)]).await;
    }
    assert_eq!(messages(&mut braces, 1).await[0].data, "/books/{id}");
    assert_eq!(messages(&mut pattern, 1).await[0].data, "https://EXAMPLE.com/books/1?page=2");
    assert_eq!(messages(&mut relative, 1).await[0].data, "/shelves/7");
}

#[tokio::test]
async fn access_tokens_are_checked_and_refusals_follow_rfc_6750() {
    let hub = Hub::start(false).await;
    let query = "match=%2Fp";
    // No token: 401 with a bare challenge.
    let none = hub.get(query, &[]).await;
    assert_eq!(challenge(&none), "Bearer");
    assert_eq!(error_json(none).await.0, StatusCode::UNAUTHORIZED);
    // Invalid tokens: 401 invalid_token, each for its own reason.
    let subscribe_all = [(MatchType::Exact, "*")];
    let invalid = [
        (
            "expired",
            mint_access_hs256(
                SECRET,
                &AccessGrant { exp: now() - 5, ..hub.grant(&[], &subscribe_all) },
            ),
        ),
        ("forged", mint_access_hs256(b"another key", &hub.grant(&[], &subscribe_all))),
        (
            "another hub",
            mint_access_hs256(
                SECRET,
                &AccessGrant {
                    audience: "https://other.test/.well-known/mercure".into(),
                    ..hub.grant(&[], &subscribe_all)
                },
            ),
        ),
        (
            "untrusted issuer",
            mint_access_hs256(
                SECRET,
                &AccessGrant {
                    issuer: "https://evil.test".into(),
                    ..hub.grant(&[], &subscribe_all)
                },
            ),
        ),
        (
            "a draft-07 token",
            mint_hs256(SECRET, &Grant { subscribe: vec!["*".into()], ..Grant::default() }),
        ),
    ];
    for (why, token) in &invalid {
        let response = hub.get(query, &[bearer(token)]).await;
        assert_eq!(challenge(&response), r#"Bearer error="invalid_token""#, "{why}");
        let (status, body) = error_json(response).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("invalid_token")),
            "{why}"
        );
    }
    // A malformed presentation: 400 invalid_request. A token in the URL: refused too.
    let valid = hub.access_token(&[], &subscribe_all);
    for (headers, query) in [
        (vec![("Authorization", format!("Bearer {valid} extra"))], query.to_owned()),
        (vec![], format!("{query}&authorization={valid}")),
    ] {
        let response = hub.get(&query, &headers).await;
        assert_eq!(challenge(&response), r#"Bearer error="invalid_request""#);
        assert_eq!(error_json(response).await.0, StatusCode::BAD_REQUEST);
    }
    // The header and the cookie are both accepted; with both, the header's token is used.
    let cookie = ("Cookie", format!("__Secure-mercure_access_token={valid}"));
    assert_eq!(hub.get(query, &[cookie]).await.status(), StatusCode::OK);
    let garbage_cookie = ("Cookie", "__Secure-mercure_access_token=garbage".to_owned());
    assert_eq!(hub.get(query, &[bearer(&valid), garbage_cookie]).await.status(), StatusCode::OK);
    // Publishing without the grant for every topic: 403 insufficient_scope, nothing sent.
    let narrow = hub.access_token(&[(MatchType::Urlpattern, "https://example.com/books/:id")], &[]);
    let response = hub
        .publish(
            &narrow,
            &[("topic", "https://example.com/books/1"), ("topic", "https://example.com/authors/1")],
        )
        .await;
    assert_eq!(challenge(&response), r#"Bearer error="insufficient_scope""#);
    assert_eq!(error_json(response).await.0, StatusCode::FORBIDDEN);
    let allowed = hub.publish(&narrow, &[("topic", "https://example.com/books/1")]).await;
    assert_eq!(allowed.status(), StatusCode::OK);
}

#[tokio::test]
async fn private_updates_are_checked_against_the_current_token_live_and_replayed() {
    let hub = Hub::start(true).await;
    let books = "https://example.com/books/:id";
    for (topic, data) in
        [("https://example.com/books/1", "one"), ("https://example.com/books/2", "two")]
    {
        hub.publish_ok(&[("topic", topic), ("data", data), ("private", "")]).await;
    }
    hub.publish_ok(&[("topic", "https://example.com/books/3"), ("data", "public")]).await;
    // The token grants books/1 exactly, and users/42/* (the alternate-topic example).
    let token = hub.access_token(
        &[],
        &[
            (MatchType::Exact, "https://example.com/books/1"),
            (MatchType::Urlpattern, "https://example.com/users/42/*"),
        ],
    );
    let query = format!("match_urlpattern={}&last_event_id=earliest", encode(books));
    let mut reader = hub.source(&query, &[bearer(&token)]);
    let mut anonymous = hub.source(&query, &[]);
    opened(&mut reader).await;
    opened(&mut anonymous).await;
    let replayed: Vec<String> =
        messages(&mut reader, 2).await.into_iter().map(|m| m.data).collect();
    assert_eq!(replayed, ["one", "public"], "books/2 is private and not granted");
    assert_eq!(messages(&mut anonymous, 1).await[0].data, "public");
    // Live: a private update whose alternate topic the token grants is delivered.
    hub.publish_ok(&[
        ("topic", "https://example.com/books/9"),
        ("topic", "https://example.com/users/42/books/9"),
        ("data", "via the alternate topic"),
        ("private", "on"),
    ])
    .await;
    hub.publish_ok(&[
        ("topic", "https://example.com/books/2"),
        ("data", "still not"),
        ("private", "on"),
    ])
    .await;
    hub.publish_ok(&[("topic", "https://example.com/books/4"), ("data", "public again")]).await;
    let live: Vec<String> = messages(&mut reader, 2).await.into_iter().map(|m| m.data).collect();
    assert_eq!(live, ["via the alternate topic", "public again"]);
    assert_eq!(messages(&mut anonymous, 1).await[0].data, "public again");
}

#[tokio::test]
async fn publications_breaking_the_draft08_rules_are_refused_and_deliver_nothing() {
    let hub = Hub::start(true).await;
    let mut everything = hub.source("match=*", &[]);
    opened(&mut everything).await;
    for fields in [
        vec![("topic", "*")],
        vec![("topic", "/a"), ("id", "earliest")],
        vec![("topic", "/a"), ("type", "mercure")],
        vec![("topic", "/.well-known/mercure/subscriptions/exact/x/y")],
        vec![("topic", "https://anywhere.test/.well-known/mercure")],
        vec![("topic", "/a"), ("retry", "+5")],
        vec![("topic", "/a\u{202e}b")],
        vec![("topic", "/a"), ("id", "x\u{85}y")],
        vec![("topic", "/a"), ("type", "x\u{7f}")],
    ] {
        let (status, body) = error_json(hub.publish(&hub.publisher(), &fields).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{fields:?}: {body}");
    }
    hub.publish_ok(&[("topic", "/a"), ("data", "the first accepted"), ("unknown", "ignored")])
        .await;
    assert_eq!(messages(&mut everything, 1).await[0].data, "the first accepted");
}

#[tokio::test]
async fn subscription_events_and_the_api_speak_plain_json() {
    let hub = Hub::start(true).await;
    let events = "/.well-known/mercure/subscriptions/*";
    // The pattern grants the events and each subscription's URL; the collection's own URL
    // (no trailing slash) needs its own grant.
    let watcher_token = hub.access_token(
        &[],
        &[
            (MatchType::Urlpattern, events),
            (MatchType::Exact, "/.well-known/mercure/subscriptions"),
        ],
    );
    let mut watcher =
        hub.source(&format!("match_urlpattern={}", encode(events)), &[bearer(&watcher_token)]);
    opened(&mut watcher).await;
    // Its own subscription's event comes first.
    let own: Value =
        serde_json::from_str(&messages_of_type(&mut watcher, "mercure", 1).await[0]).unwrap();
    assert_eq!(
        (own["match_type"].as_str(), own["match"].as_str()),
        (Some("urlpattern"), Some(events))
    );

    let mut payload_grant = hub.grant(&[], &[(MatchType::Exact, "https://example.com/a")]);
    payload_grant.payload = Some(serde_json::json!({"user": "alice"}));
    let subscriber_token = mint_access_hs256(SECRET, &payload_grant);
    let topic = "https://example.com/a";
    let mut subscriber =
        hub.source(&format!("match={}", encode(topic)), &[bearer(&subscriber_token)]);
    opened(&mut subscriber).await;
    let created: Value =
        serde_json::from_str(&messages_of_type(&mut watcher, "mercure", 1).await[0]).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let subscriber_id = created["subscriber"].as_str().unwrap().to_owned();
    assert!(subscriber_id.starts_with("urn:uuid:"));
    assert_eq!(
        id,
        format!(
            "/.well-known/mercure/subscriptions/exact/{}/{}",
            encode(topic),
            encode(&subscriber_id)
        )
    );
    assert_eq!(created["type"], "subscription");
    assert_eq!(created["active"], true);
    assert_eq!(created["payload"], serde_json::json!({"user": "alice"}));
    assert!(created.get("@context").is_none(), "plain JSON, not JSON-LD");

    // The API: the collection, one matcher's collection, one subscription.
    let api = |path: String| {
        let token = watcher_token.clone();
        let url = format!("{}{path}", hub.running.url);
        async move { reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap() }
    };
    let all = api("/.well-known/mercure/subscriptions".into()).await;
    assert_eq!(all.status(), StatusCode::OK);
    assert_eq!(all.headers()["content-type"], "application/json");
    let link = all.headers()["link"].to_str().unwrap().to_owned();
    assert!(link.contains(r#"rel="mercure""#) && link.contains("last-event-id=\""), "{link}");
    let all: Value = all.json().await.unwrap();
    assert_eq!(all["type"], "subscriptions");
    assert!(all["subscriptions"].as_array().unwrap().iter().any(|s| s["id"] == id.as_str()));
    let one: Value = api(id.clone()).await.json().await.unwrap();
    assert_eq!(one["subscriber"], subscriber_id.as_str());
    let by_matcher: Value =
        api(format!("/.well-known/mercure/subscriptions/exact/{}", encode(topic)))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(by_matcher["subscriptions"].as_array().unwrap().len(), 1);
    // A token without a grant on the API's URL: 403 insufficient_scope.
    let outsider = hub.access_token(&[], &[(MatchType::Exact, topic)]);
    let refused = reqwest::Client::new()
        .get(format!("{}/.well-known/mercure/subscriptions", hub.running.url))
        .bearer_auth(outsider)
        .send()
        .await
        .unwrap();
    assert_eq!(challenge(&refused), r#"Bearer error="insufficient_scope""#);
    assert_eq!(error_json(refused).await.0, StatusCode::FORBIDDEN);

    // Leaving: an event says so, and the API forgets it.
    drop(subscriber);
    let ended: Value =
        serde_json::from_str(&messages_of_type(&mut watcher, "mercure", 1).await[0]).unwrap();
    assert_eq!((ended["id"].as_str(), ended["active"].as_bool()), (Some(id.as_str()), Some(false)));
    assert_eq!(api(id).await.status(), StatusCode::NOT_FOUND);
}

/// The data of the next `n` events of type `event_type`.
async fn messages_of_type(source: &mut EventSource, event_type: &str, n: usize) -> Vec<String> {
    let mut found = Vec::new();
    while found.len() < n {
        let message = tokio::time::timeout(Duration::from_secs(30), messages(source, 1))
            .await
            .expect("an event within 30 s")
            .remove(0);
        if message.event_type == event_type {
            found.push(message.data);
        }
    }
    found
}

#[tokio::test]
async fn the_protected_resource_metadata_describes_the_hub() {
    let hub = Hub::start(true).await;
    let url =
        format!("{}/.well-known/oauth-protected-resource/.well-known/mercure", hub.running.url);
    let metadata: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(metadata["resource"], hub.url().as_str());
    assert_eq!(
        metadata["authorization_details_types_supported"][0],
        "https://mercure.rocks/authorization-detail"
    );
    assert_eq!(metadata["bearer_methods_supported"], serde_json::json!(["header"]));
    assert_eq!(metadata["mercure_cookie"], "__Secure-mercure_access_token");
    assert_eq!(metadata["mercure_subscriptions"], true);
}
