//! The hub over real HTTP: a server on a loopback port, driven by reqwest and the Rust
//! EventSource client, as an application would.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use reqwest::StatusCode;
use sluice_client::EventSource;
use sluice_hub::HubConfig;
use sluice_server::{Config, Grant, Timeouts, Verifier, mint_hs256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &[u8] = b"test secret";

mod common;

use common::events::{error_json, messages, opened};

struct Server(common::Running);

impl Server {
    fn hub_url(&self) -> String {
        format!("{}/.well-known/mercure", self.0.url)
    }

    async fn stop(self) {
        self.0.stop().await;
    }
}

fn secure() -> Config {
    Config {
        publisher: Some(Verifier::hs256(SECRET)),
        subscriber: Some(Verifier::hs256(SECRET)),
        anonymous: true,
        ..Config::default()
    }
}

async fn start_with(config: Config, hub_config: HubConfig) -> Server {
    Server(common::serve(config, hub_config).await)
}

async fn start(config: Config) -> Server {
    start_with(config, HubConfig::default()).await
}

fn token(publish: &[&str], subscribe: &[&str]) -> String {
    let list = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect();
    mint_hs256(
        SECRET,
        &Grant { publish: list(publish), subscribe: list(subscribe), ..Grant::default() },
    )
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

async fn publish(server: &Server, token: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.hub_url())
        .bearer_auth(token)
        .form(fields)
        .send()
        .await
        .unwrap()
}

async fn publish_ok(server: &Server, fields: &[(&str, &str)]) -> String {
    let response = publish(server, &token(&["*"], &[]), fields).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

/// The subscriptions API's list of every active subscription, read with `token`.
async fn subscriptions(server: &Server, token: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{}/subscriptions", server.hub_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// An EventSource on the hub; `query` is appended to the hub URL.
fn source(server: &Server, query: &str, bearer: Option<&str>) -> EventSource {
    let mut builder = EventSource::get(&format!("{}?{query}", server.hub_url())).reconnect(false);
    if let Some(bearer) = bearer {
        builder = builder.header("Authorization", format!("Bearer {bearer}"));
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn an_update_reaches_a_subscriber_with_the_proxy_friendly_headers() {
    let server = start(secure()).await;
    let response = reqwest::Client::new()
        .get(format!("{}?topic=/books/{{id}}", server.hub_url()))
        .header("Accept-Encoding", "gzip, br")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache, no-transform");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(headers.get("content-encoding").is_none(), "an event stream is never compressed");
    drop(response);

    let mut subscriber = source(&server, "topic=/books/{id}", None);
    opened(&mut subscriber).await;
    let id =
        publish_ok(&server, &[("topic", "/books/1"), ("data", "line 1\nline 2"), ("type", "note")])
            .await;
    publish_ok(&server, &[("topic", "/authors/1"), ("data", "not for this subscriber")]).await;
    publish_ok(&server, &[("topic", "/books/2"), ("data", "second"), ("id", "my-id")]).await;
    let got = messages(&mut subscriber, 2).await;
    assert_eq!((got[0].event_type.as_ref(), got[0].data.as_str()), ("note", "line 1\nline 2"));
    assert_eq!(got[0].last_event_id, id);
    assert!(id.starts_with("urn:uuid:"));
    assert_eq!((got[1].data.as_str(), got[1].last_event_id.as_str()), ("second", "my-id"));
    server.stop().await;
}

#[tokio::test]
async fn private_updates_follow_the_subscribe_claim() {
    let server = start(secure()).await;
    let expired = mint_hs256(
        SECRET,
        &Grant { subscribe: vec!["*".into()], exp: Some(now() - 60), ..Grant::default() },
    );
    let forged =
        mint_hs256(b"not the secret", &Grant { subscribe: vec!["*".into()], ..Grant::default() });
    // Refused outright: an expired or forged token is never treated as anonymous.
    for bad in [&expired, &forged] {
        let response = reqwest::Client::new()
            .get(format!("{}?topic=/p", server.hub_url()))
            .bearer_auth(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(error_json(response).await.0, StatusCode::UNAUTHORIZED);
    }
    let mut anonymous = source(&server, "topic=/p", None);
    let mut wrong = source(&server, "topic=/p", Some(&token(&[], &["/other"])));
    let mut right = source(&server, "topic=/p", Some(&token(&[], &["/p"])));
    let query_token = token(&[], &["/{x}"]);
    let mut via_query = source(&server, &format!("topic=/p&authorization={query_token}"), None);
    for s in [&mut anonymous, &mut wrong, &mut right, &mut via_query] {
        opened(s).await;
    }
    publish_ok(&server, &[("topic", "/p"), ("data", "secret"), ("private", "on")]).await;
    publish_ok(&server, &[("topic", "/p"), ("data", "public")]).await;
    for (name, s) in [("anonymous", &mut anonymous), ("wrong selector", &mut wrong)] {
        assert_eq!(messages(s, 1).await[0].data, "public", "{name} must not see the private one");
    }
    for (name, s) in [("right selector", &mut right), ("query token", &mut via_query)] {
        let got = messages(s, 2).await;
        assert_eq!([got[0].data.as_str(), got[1].data.as_str()], ["secret", "public"], "{name}");
    }
    server.stop().await;
}

#[tokio::test]
async fn publishing_needs_a_valid_token_for_every_topic() {
    let server = start(secure()).await;
    let fields = [("topic", "/books/1"), ("topic", "/shelves/1"), ("data", "x")];
    let cases = [
        (None, StatusCode::UNAUTHORIZED),
        (Some(token(&["/books/{id}"], &[])), StatusCode::FORBIDDEN),
        (
            Some(mint_hs256(b"forged", &Grant { publish: vec!["*".into()], ..Grant::default() })),
            StatusCode::UNAUTHORIZED,
        ),
        (
            Some(mint_hs256(
                SECRET,
                &Grant { publish: vec!["*".into()], exp: Some(now() - 5), ..Grant::default() },
            )),
            StatusCode::UNAUTHORIZED,
        ),
        (Some(token(&["/books/{id}", "/shelves/{id}"], &[])), StatusCode::OK),
    ];
    for (bearer, want) in cases {
        let mut request = reqwest::Client::new().post(server.hub_url()).form(&fields);
        if let Some(bearer) = &bearer {
            request = request.bearer_auth(bearer);
        }
        let response = request.send().await.unwrap();
        if want == StatusCode::OK {
            assert_eq!(response.status(), want);
        } else {
            assert_eq!(error_json(response).await.0, want, "token {bearer:?}");
        }
    }
    let reserved =
        publish(&server, &token(&["*"], &[]), &[("topic", "/.well-known/sluice/generations/x")])
            .await;
    assert_eq!(error_json(reserved).await.0, StatusCode::FORBIDDEN);
    server.stop().await;
}

#[tokio::test]
async fn publishing_is_refused_when_no_key_is_configured() {
    let server = start(Config::default()).await;
    let response = publish(&server, &token(&["*"], &[]), &[("topic", "/t")]).await;
    let (status, body) = error_json(response).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"]["message"].as_str().unwrap().contains("--jwt-secret"));
    server.stop().await;
}

#[tokio::test]
async fn resume_by_header_or_query_and_say_where_it_resumed() {
    let server = start(secure()).await;
    let ids: Vec<String> = futures_util::stream::iter(0..5)
        .then(|n| {
            let server = &server;
            async move { publish_ok(server, &[("topic", "/r"), ("data", &n.to_string())]).await }
        })
        .collect()
        .await;
    let get = |query: String, header: Option<&str>| {
        let mut request = reqwest::Client::new().get(format!("{}?{query}", server.hub_url()));
        if let Some(id) = header {
            request = request.header("Last-Event-ID", id);
        }
        request.send()
    };
    let response = get("topic=/r".into(), Some(&ids[2])).await.unwrap();
    assert_eq!(response.headers()["last-event-id"], ids[2].as_str());
    let response = get(format!("topic=/r&lastEventID={}", ids[0]), Some(&ids[3])).await.unwrap();
    assert_eq!(response.headers()["last-event-id"], ids[3].as_str(), "the header wins");
    let response = get(format!("topic=/r&lastEventID={}", ids[1]), None).await.unwrap();
    assert_eq!(response.headers()["last-event-id"], ids[1].as_str());
    let response = get("topic=/r&lastEventID=earliest".into(), None).await.unwrap();
    assert_eq!(response.headers()["last-event-id"], "earliest");
    let response = get("topic=/r".into(), None).await.unwrap();
    assert!(response.headers().get("last-event-id").is_none(), "no cursor, no header");

    let mut resumed = EventSource::get(&format!("{}?topic=/r", server.hub_url()))
        .last_event_id(ids[2].clone())
        .reconnect(false)
        .build()
        .unwrap();
    let got = messages(&mut resumed, 2).await;
    assert_eq!([got[0].data.as_str(), got[1].data.as_str()], ["3", "4"]);

    let mut unknown = EventSource::get(&format!("{}?topic=/r", server.hub_url()))
        .last_event_id("urn:uuid:not-in-history")
        .reconnect(false)
        .build()
        .unwrap();
    let got = messages(&mut unknown, 6).await;
    assert_eq!(got[0].event_type, "sluice-reset", "an unknown cursor is said, never silent");
    let data: Vec<_> = got[1..].iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, ["0", "1", "2", "3", "4"]);
    server.stop().await;
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_clear_errors() {
    let config = Config {
        max_body_bytes: 2048,
        max_event_bytes: 1024,
        max_topics_per_subscription: 3,
        ..secure()
    };
    let server = start(config).await;
    let publisher = token(&["*"], &[]);
    let big = "x".repeat(1500);
    let huge = "x".repeat(5000);
    type Case<'a> = (Vec<(&'a str, &'a str)>, StatusCode, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (vec![("data", "no topic")], StatusCode::BAD_REQUEST, "missing_topic"),
        (vec![("topic", "/t"), ("retry", "soon")], StatusCode::BAD_REQUEST, "invalid_retry"),
        (vec![("topic", "/t"), ("id", "#hash")], StatusCode::BAD_REQUEST, "invalid_id"),
        (vec![("topic", "/t"), ("type", "a\nb")], StatusCode::BAD_REQUEST, "invalid_type"),
        (vec![("topic", "/t"), ("data", &big)], StatusCode::PAYLOAD_TOO_LARGE, "event_too_large"),
        (vec![("topic", "/t"), ("data", &huge)], StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
    ];
    for (fields, status, code) in cases {
        let response = publish(&server, &publisher, &fields).await;
        // A body refused before its end leaves the rest unread: the connection ends, and the
        // answer says so, so that a client does not send its next request on it.
        let closes = response.headers().get("connection").is_some_and(|v| v == "close");
        assert_eq!(closes, code == "body_too_large", "{fields:?}");
        let (got, body) = error_json(response).await;
        assert_eq!((got, body["error"]["code"].as_str().unwrap()), (status, code), "{fields:?}");
    }
    publish_ok(&server, &[("topic", "/t"), ("id", "once")]).await;
    let (status, _) =
        error_json(publish(&server, &publisher, &[("topic", "/t"), ("id", "once")]).await).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let json = reqwest::Client::new()
        .post(server.hub_url())
        .bearer_auth(&publisher)
        .json(&serde_json::json!({"topic": "/t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_json(json).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    for (query, code) in [
        ("", "missing_topic"),
        ("topic=/a&topic=/b&topic=/c&topic=/d", "too_many_topics"),
        ("topic=/books/{id", "invalid_topic"),
    ] {
        let response = reqwest::get(format!("{}?{query}", server.hub_url())).await.unwrap();
        let (status, body) = error_json(response).await;
        assert_eq!(
            (status, body["error"]["code"].as_str().unwrap()),
            (StatusCode::BAD_REQUEST, code)
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn limits_on_subscriptions_and_connections_answer_429_and_503() {
    let server =
        start(Config { max_subscriptions_per_client: Some(2), max_connections: 3, ..secure() })
            .await;
    let mut first = source(&server, "topic=/a", None);
    let mut second = source(&server, "topic=/a", None);
    opened(&mut first).await;
    opened(&mut second).await;
    let third = reqwest::get(format!("{}?topic=/a", server.hub_url())).await.unwrap();
    assert_eq!(error_json(third).await.0, StatusCode::TOO_MANY_REQUESTS);
    drop(first);

    // Three connections are open now (two streams, one idle keep-alive from reqwest::get may
    // be pooled); hold raw ones until the server starts refusing, and check the refusal.
    let addr = server.0.url.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    let refusal = loop {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = vec![0; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with("HTTP/1.1 503") {
            break text;
        }
        assert!(held.len() < 10, "the connection limit never applied");
        held.push(stream);
    };
    assert!(
        refusal.contains("Retry-After: 1") || refusal.to_lowercase().contains("retry-after: 1")
    );
    assert!(refusal.contains(r#""code":"unavailable""#), "{refusal}");
    drop(held);
    drop(second);
    server.stop().await;
}

#[tokio::test]
async fn idle_streams_get_keep_alive_comments_and_end_when_the_token_expires() {
    let server = start(Config { keep_alive: Duration::from_millis(100), ..secure() }).await;
    let soon = mint_hs256(
        SECRET,
        &Grant { subscribe: vec!["*".into()], exp: Some(now() + 2), ..Grant::default() },
    );
    let response = reqwest::Client::new()
        .get(format!("{}?topic=/quiet", server.hub_url()))
        .bearer_auth(&soon)
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut seen = Vec::new();
    while let Some(chunk) = body.next().await {
        seen.extend_from_slice(&chunk.unwrap());
    }
    // The stream ended by itself (the token expired) after several keep-alive comments.
    let comments = seen.split(|b| *b == b'\n').filter(|line| line.starts_with(b":")).count();
    assert!(comments >= 3, "{:?}", String::from_utf8_lossy(&seen));
    server.stop().await;
}

#[tokio::test]
async fn cors_allows_configured_origins_with_credentials_only() {
    let server = start(Config { cors_origins: vec!["http://app.test".into()], ..secure() }).await;
    let get = |origin: &'static str| {
        reqwest::Client::new()
            .get(format!("{}/healthz", server.0.url))
            .header("Origin", origin)
            .send()
    };
    let allowed = get("http://app.test").await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "http://app.test");
    assert_eq!(allowed.headers()["access-control-allow-credentials"], "true");
    let other = get("http://evil.test").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    server.stop().await;
}

#[tokio::test]
async fn subscription_events_and_the_subscription_api() {
    let server = start(secure()).await;
    let watcher_token = token(&[], &["/.well-known/mercure/subscriptions{/topic}{/subscriber}"]);
    let mut watcher = source(
        &server,
        "topic=/.well-known/mercure/subscriptions{/topic}{/subscriber}",
        Some(&watcher_token),
    );
    opened(&mut watcher).await;
    let mut subscriber = source(&server, "topic=/books/{id}", None);
    opened(&mut subscriber).await;
    // The watcher first hears of its own subscription, then of the new one.
    let joined = loop {
        let event: serde_json::Value =
            serde_json::from_str(&messages(&mut watcher, 1).await[0].data).unwrap();
        if event["topic"] != "/.well-known/mercure/subscriptions{/topic}{/subscriber}" {
            break event;
        }
    };
    assert_eq!(joined["type"], "Subscription");
    assert_eq!(joined["topic"], "/books/{id}");
    assert_eq!(joined["active"], true);
    let who = joined["subscriber"].as_str().unwrap().to_owned();

    let listing = subscriptions(&server, &watcher_token).await;
    assert_eq!(listing["type"], "Subscriptions");
    let listed: Vec<&str> = listing["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subscriber"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&who.as_str()), "{listing}");
    let anonymous = reqwest::get(format!("{}/subscriptions", server.hub_url())).await.unwrap();
    assert_eq!(error_json(anonymous).await.0, StatusCode::UNAUTHORIZED);

    drop(subscriber);
    let left = loop {
        let event: serde_json::Value =
            serde_json::from_str(&messages(&mut watcher, 1).await[0].data).unwrap();
        if event["subscriber"] == who.as_str() && event["active"] == false {
            break event;
        }
    };
    assert_eq!(left["topic"], "/books/{id}");
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_subscriber_does_not_delay_the_others() {
    let server =
        start_with(secure(), HubConfig { queue_capacity: 16, ..HubConfig::default() }).await;
    // A raw client that subscribes and then never reads: its socket buffers fill up.
    let addr = server.0.url.trim_start_matches("http://").to_owned();
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stalled
        .write_all(b"GET /.well-known/mercure?topic=/load HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 64];
    stalled.read_exact(&mut head).await.unwrap();
    let mut reader = source(&server, "topic=/load", None);
    opened(&mut reader).await;
    let payload = "y".repeat(64 * 1024);
    let reading = tokio::spawn(async move { messages(&mut reader, 200).await });
    for _ in 0..200 {
        publish_ok(&server, &[("topic", "/load"), ("data", &payload)]).await;
    }
    let got = reading.await.unwrap();
    assert_eq!(got.len(), 200);
    assert!(got.iter().all(|e| e.data.len() == payload.len()));
    drop(stalled);
    server.stop().await;
}

/// Reads from `socket` until `needle` has arrived; everything read so far.
async fn read_until_found(socket: &mut tokio::net::TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = socket.read(&mut buffer).await.unwrap();
        assert!(n > 0, "closed before {needle:?}: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8(seen).unwrap()
}

/// Issue 16, finding 7: a subscriber that stops reading is closed at the write timeout with a
/// reset, as the slow-consumer cut does, not with a FIN that leaves what the kernel still
/// holds for it queued (in FIN-WAIT-1) until it reads or times out: after what its receive
/// buffer had, its read fails with ECONNRESET instead of ending cleanly. On the direct path
/// (a first request) and through hyper (a subscription after another request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_timeout_resets_the_connection() {
    let timeouts = Timeouts { write: Duration::from_secs(1), ..Timeouts::default() };
    let server = start(Config { timeouts, ..secure() }).await;
    const WRITE_TIMEOUTS: &str = r#"sluice_timeouts_total{wait="write"}"#;
    let before = metric(&server, WRITE_TIMEOUTS).await;
    let addr: std::net::SocketAddr = server.0.url.trim_start_matches("http://").parse().unwrap();
    let subscribe = "GET /.well-known/mercure?topic=/stall HTTP/1.1\r\nHost: x\r\n\r\n";
    let after_health = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n{subscribe}");
    let mut stalled = Vec::new();
    for (what, request) in [("direct", subscribe.to_owned()), ("through hyper", after_health)] {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        read_until_found(&mut stream, "text/event-stream").await;
        stalled.push((what, stream)); // and not read again until the server gives up
    }
    // More than the socket buffers hold, fewer than the subscriber's queue (1,024 updates):
    // the write timeout ends these streams, not the slow-consumer cut.
    let big = "x".repeat(64 * 1024);
    for _ in 0..200 {
        publish_ok(&server, &[("topic", "/stall"), ("data", &big)]).await;
    }
    let timed_out = async {
        while metric(&server, WRITE_TIMEOUTS).await < before + 2.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), timed_out).await.expect("both writes time out");
    for (what, mut stream) in stalled {
        let ended = async {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) => return None,
                    Ok(_) => {}
                    Err(error) => return Some(error.kind()),
                }
            }
        };
        let ended = tokio::time::timeout(Duration::from_secs(30), ended).await.expect("it ends");
        assert_eq!(ended, Some(std::io::ErrorKind::ConnectionReset), "{what}: reset, not closed");
    }
    server.stop().await;
}

/// Issue 16, finding 7: a token in an `access_token` query parameter (RFC 6750's URI form) is
/// refused with 400 on every hub route, as draft-08 refuses `authorization=`, rather than
/// ignored while the request goes on as anonymous or with another token.
#[tokio::test]
async fn an_access_token_in_the_url_is_refused() {
    let server = start(secure()).await;
    let all = token(&["*"], &["*"]);
    let client = reqwest::Client::new();
    let hub = server.hub_url();
    let requests = [
        ("draft-07 subscribe", client.get(format!("{hub}?topic=/t&access_token={all}"))),
        ("draft-08 subscribe", client.get(format!("{hub}?match=/t&access_token={all}"))),
        (
            "publish",
            client
                .post(format!("{hub}?access_token={all}"))
                .bearer_auth(&all)
                .form(&[("topic", "/t")]),
        ),
        (
            "subscription API",
            client.get(format!("{hub}/subscriptions?access_token={all}")).bearer_auth(&all),
        ),
    ];
    for (what, request) in requests {
        let (status, body) = error_json(request.send().await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{what}: {body}");
    }
    server.stop().await;
}

/// A connection that opens with a subscription is served straight on its socket: the stream
/// is delimited by the close (no chunk framing), errors carry their length, and the server
/// closes after either. A subscription later on a kept-alive connection is hyper's, chunked.
#[tokio::test]
async fn a_first_request_subscription_is_written_straight_to_the_socket() {
    let server = start(secure()).await;
    let addr = server.0.url.trim_start_matches("http://").to_owned();
    let subscribe = b"GET /.well-known/mercure?topic=/raw HTTP/1.1\r\nHost: x\r\n\r\n";

    let mut direct = tokio::net::TcpStream::connect(&addr).await.unwrap();
    direct.write_all(subscribe).await.unwrap();
    let head = read_until_found(&mut direct, "\r\n\r\n").await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    assert!(head.contains("\r\ncontent-type: text/event-stream\r\n"), "{head}");
    assert!(head.contains("\r\ndate: "), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");

    let mut kept_alive = tokio::net::TcpStream::connect(&addr).await.unwrap();
    kept_alive.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    read_until_found(&mut kept_alive, "HTTP/1.1 200").await;
    kept_alive.write_all(subscribe).await.unwrap();
    let head = read_until_found(&mut kept_alive, "text/event-stream").await.to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");

    publish_ok(&server, &[("topic", "/raw"), ("data", "straight"), ("id", "raw-1")]).await;
    let body = read_until_found(&mut direct, "data: straight\n\n").await;
    assert!(body.contains("id: raw-1\ndata: straight\n\n"), "unframed: {body:?}");
    let body = read_until_found(&mut kept_alive, "data: straight\n\n").await;
    assert!(body.contains("\r\nid: raw-1\ndata: straight\n\n\r\n"), "one chunk: {body:?}");

    // The client closing its end ends the subscription: nothing is left behind for it.
    let watcher = token(&[], &["/.well-known/mercure/subscriptions{/topic}{/subscriber}"]);
    let listed = || async {
        let listing = subscriptions(&server, &watcher).await;
        let all = listing["subscriptions"].as_array().unwrap().clone();
        all.iter().filter(|s| s["topic"] == "/raw").count()
    };
    assert_eq!(listed().await, 2);
    drop(direct);
    let closed = async {
        while listed().await > 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), closed).await.expect("the closed one leaves");

    let mut refused = tokio::net::TcpStream::connect(&addr).await.unwrap();
    refused
        .write_all(b"GET /.well-known/mercure?nothing=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    refused.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
    assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())), "{head}");
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"]["code"], "missing_topic", "{body}");
    server.stop().await;
}

/// The counter `name`'s value in the server's `/metrics`.
async fn metric(server: &Server, name: &str) -> f64 {
    let metrics =
        reqwest::get(format!("{}/metrics", server.0.url)).await.unwrap().text().await.unwrap();
    let line = metrics.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_default();
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// Live updates go straight to an idle subscriber's socket from the fan-out, and through its
/// queue when it is busy; a reader with a small receive buffer that pauses now and then makes
/// the two alternate and frames split across writes, and still gets every update once, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_queued_deliveries_keep_the_order() {
    let server = start(secure()).await;
    let addr: std::net::SocketAddr = server.0.url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut reader = socket.connect(addr).await.unwrap();
    reader
        .write_all(b"GET /.well-known/mercure?topic=/order HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_until_found(&mut reader, "\r\n\r\n").await;
    let written_before = metric(&server, "sluice_updates_written_directly_total").await;

    const UPDATES: usize = 200;
    let reading = tokio::spawn(async move {
        let (mut ids, mut seen) = (Vec::new(), String::new());
        let mut sip = [0u8; 4096];
        while ids.len() < UPDATES {
            let n = reader.read(&mut sip).await.unwrap();
            assert!(n > 0, "closed after {} updates", ids.len());
            seen.push_str(std::str::from_utf8(&sip[..n]).unwrap());
            while let Some(end) = seen.find("\n\n") {
                let event: String = seen.drain(..end + 2).collect();
                ids.extend(event.lines().filter_map(|l| l.strip_prefix("id: ").map(String::from)));
            }
            // Now and then a pause long enough for the socket's buffers to fill up.
            if ids.len() % 25 == 24 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        ids
    });
    let expected: Vec<String> = (0..UPDATES).map(|i| format!("o-{i}")).collect();
    for (i, id) in expected.iter().enumerate() {
        // Sizes from a few bytes to 20 KB: some fit the socket's buffers, some do not.
        let data = "d".repeat(i * 7919 % 20_000);
        publish_ok(&server, &[("topic", "/order"), ("id", id), ("data", &data)]).await;
    }
    let ids = tokio::time::timeout(Duration::from_secs(60), reading).await.unwrap().unwrap();
    assert_eq!(ids, expected);
    let written = metric(&server, "sluice_updates_written_directly_total").await - written_before;
    assert!(written > 0.0, "no update went straight to the socket");
    server.stop().await;
}

/// Updates the fan-out writes straight to the socket count as traffic: no keep-alive comment
/// goes out while they flow, and one does once they stop.
#[tokio::test]
async fn direct_writes_hold_back_keep_alive_comments() {
    let server = start(Config { keep_alive: Duration::from_millis(1500), ..secure() }).await;
    let address = server.0.url.trim_start_matches("http://").to_owned();
    let mut reader = tokio::net::TcpStream::connect(address).await.unwrap();
    reader
        .write_all(b"GET /.well-known/mercure?topic=/beat HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let opened = read_until_found(&mut reader, "\r\n\r\n").await;
    let written_before = metric(&server, "sluice_updates_written_directly_total").await;
    let (mut seen, mut sip) = (String::new(), [0u8; 4096]);
    // Updates a tenth of a second apart for 3.5 s: more than two keep-alive periods in all,
    // a fifteenth of one between two.
    for i in 0..35 {
        publish_ok(&server, &[("topic", "/beat"), ("id", &format!("b-{i}"))]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while !seen.contains("id: b-34\n") {
        let n = reader.read(&mut sip).await.unwrap();
        assert!(n > 0, "closed");
        seen.push_str(std::str::from_utf8(&sip[..n]).unwrap());
    }
    let written = metric(&server, "sluice_updates_written_directly_total").await - written_before;
    assert!(written > 0.0, "no update went straight to the socket");
    let comments = |text: &str| text.lines().filter(|l| l.starts_with(':')).count();
    // The stream's opening comment is the only one so far.
    assert_eq!(comments(&opened) + comments(&seen), 1, "{opened}{seen}");
    // Quiet now: the next comment comes.
    while comments(&opened) + comments(&seen) == 1 {
        let n = reader.read(&mut sip).await.unwrap();
        assert!(n > 0, "closed");
        seen.push_str(std::str::from_utf8(&sip[..n]).unwrap());
    }
    server.stop().await;
}

#[tokio::test]
async fn stopping_the_server_ends_event_streams() {
    let server = start(secure()).await;
    let mut subscriber = source(&server, "topic=/t", None);
    opened(&mut subscriber).await;
    let stopping = tokio::spawn(server.stop());
    assert!(subscriber.next().await.is_none(), "the stream ends so the client can reconnect");
    stopping.await.unwrap();
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let server = start(secure()).await;
    publish_ok(&server, &[("topic", "/m")]).await;
    let health = reqwest::get(format!("{}/healthz", server.0.url)).await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = reqwest::get(format!("{}/readyz", server.0.url)).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let metrics =
        reqwest::get(format!("{}/metrics", server.0.url)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("sluice_updates_published_total"), "{metrics}");
    let openapi: serde_json::Value =
        reqwest::get(format!("{}/openapi.json", server.0.url)).await.unwrap().json().await.unwrap();
    assert!(openapi["paths"]["/.well-known/mercure"]["post"].is_object());
    server.stop().await;
}
