//! The bad-input catalogue: what an attacker or a broken client sends, and the answer each
//! gets. Every refusal has the right status and the JSON error shape; no input crashes the
//! server, changes what others receive, or puts a token in an error body or a log line.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice_client::{EventSource, Item, MessageEvent};
use sluice_hub::HubConfig;
use sluice_llm::{Attempts, Router, Script, Scripted};
use sluice_server::{Config, Grant, Verifier, mint_hs256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &[u8] = b"bad input secret";
const ALLOWED_ORIGIN: &str = "https://allowed.example";

/// Everything the process logs, at every level, for the "no token in the logs" check.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .init();
        logs
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn start() -> common::Running {
    logs();
    let mut router = Router::new();
    let scripted =
        Scripted::new("scripted", Script { tokens_per_second: 0.0, ..Script::default() });
    router.add(Arc::new(scripted), vec!["scripted".into()], Attempts::default());
    let config = Config {
        publisher: Some(Verifier::hs256(SECRET)),
        subscriber: Some(Verifier::hs256(SECRET)),
        anonymous: true,
        cors_origins: vec![ALLOWED_ORIGIN.into()],
        models: Arc::new(router),
        ..Config::default()
    };
    common::serve(config, HubConfig::default()).await
}

fn publisher() -> String {
    mint_hs256(SECRET, &Grant { publish: vec!["*".into()], ..Grant::default() })
}

fn hub(server: &common::Running) -> String {
    format!("{}/.well-known/mercure", server.url)
}

/// Posts a raw form body with the publisher's token.
async fn publish_raw(
    server: &common::Running,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(hub(server))
        .bearer_auth(publisher())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Checks the status and the JSON error shape; returns the body.
async fn refused(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "{:?}", response.url().path());
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/json");
    let body: Value = response.json().await.unwrap();
    for field in ["message", "type", "code"] {
        assert!(body["error"][field].as_str().is_some_and(|v| !v.is_empty()), "{body}");
    }
    body
}

#[tokio::test]
async fn malformed_and_oversized_publications_are_refused() {
    let server = start().await;
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"data=no+topic".to_vec(), 400, "missing_topic"),
        (b"topic=/a&retry=soon".to_vec(), 400, "invalid_retry"),
        (b"topic=/a&data=%FF%FE".to_vec(), 400, "invalid_utf8"),
        (b"topic=/a&id=".to_vec(), 400, "invalid_id"),
        (b"topic=/a&id=%23hash".to_vec(), 400, "invalid_id"),
        (b"topic=/a&id=a%0Adata:+forged".to_vec(), 400, "invalid_id"),
        (b"topic=/a&id=a%00b".to_vec(), 400, "invalid_id"),
        (b"topic=/a&type=a%0D%0Aevent:+x".to_vec(), 400, "invalid_type"),
        (b"topic=/a&type=a%00".to_vec(), 400, "invalid_type"),
        (b"topic=/a%0Ab".to_vec(), 400, "invalid_topic"),
        (format!("topic=/{}", "a".repeat(2000)).into_bytes(), 400, "topic_too_long"),
        (
            (0..10_000).map(|n| format!("topic=/t{n}")).collect::<Vec<_>>().join("&").into_bytes(),
            400,
            "too_many_topics",
        ),
        (format!("topic=/a&data={}", "x".repeat(600 * 1024)).into_bytes(), 413, "event_too_large"),
        (format!("topic=/a&data={}", "x".repeat(1100 * 1024)).into_bytes(), 413, "body_too_large"),
    ];
    for (body, status, code) in cases {
        let error = refused(publish_raw(&server, body).await, status).await;
        assert_eq!(error["error"]["code"], code, "{error}");
    }
    let json = reqwest::Client::new()
        .post(hub(&server))
        .bearer_auth(publisher())
        .json(&json!({"topic": "/a"}))
        .send()
        .await
        .unwrap();
    refused(json, 415).await;
    let first = publish_raw(&server, "topic=/a&id=taken").await;
    assert_eq!(first.status(), 200);
    refused(publish_raw(&server, "topic=/a&id=taken").await, 409).await;
}

/// A chunked body that breaks its own framing is a 400, not a 413.
#[tokio::test]
async fn a_malformed_chunked_body_is_a_bad_request() {
    let server = start().await;
    let address = server.url.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "POST /.well-known/mercure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\ntopic\r\nzz\r\n=/a\r\n0\r\n\r\n",
        publisher()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), socket.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("malformed_body"), "{answer}");
}

#[tokio::test]
async fn bad_subscriptions_are_refused() {
    let server = start().await;
    let get = |query: String| {
        let url = format!("{}?{query}", hub(&server));
        async move { reqwest::get(url).await.unwrap() }
    };
    let too_many = (0..65).map(|n| format!("topic=/t{n}")).collect::<Vec<_>>().join("&");
    let backtracking = "{+a}".repeat(17);
    for (query, code) in [
        (String::new(), "missing_topic"),
        (too_many, "too_many_topics"),
        ("topic=/books/{id".to_owned(), "invalid_topic"),
        (format!("topic=/{}/{{id}}", "a".repeat(300)), "selector_too_long"),
        (format!("topic={}", urlencode(&backtracking)), "selector_too_complex"),
        (format!("topic=/{}", "a".repeat(2000)), "topic_too_long"),
        ("topic=/a&lastEventID=%FF".to_owned(), "invalid_utf8"),
    ] {
        let error = refused(get(query).await, 400).await;
        assert_eq!(error["error"]["code"], code, "{error}");
    }
    // A 1 MB Last-Event-ID: past even hyper's own buffer, which answers 431 itself.
    let huge = reqwest::Client::new()
        .get(format!("{}?topic=/a", hub(&server)))
        .header("last-event-id", "x".repeat(1024 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 431);
    // The same in the query: past the target limit (below http's own 64 KiB).
    let huge = get(format!("topic=/a&lastEventID={}", "x".repeat(62 * 1024))).await;
    refused(huge, 414).await;
    // A long cursor within the limits is only an unknown cursor.
    let long = reqwest::Client::new()
        .get(format!("{}?topic=/a", hub(&server)))
        .header("last-event-id", "x".repeat(16 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(long.status(), 200);
    assert_eq!(long.headers()["last-event-id"], "earliest");
}

fn urlencode(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// Templates built to make a matcher backtrack, at the limits, against the longest topics:
/// publishing still works and the template subscriber still gets what it asked for.
#[tokio::test]
async fn templates_built_to_backtrack_stay_linear() {
    let server = start().await;
    let template = format!("/{}", "{+a}".repeat(16));
    let mut source = EventSource::get(&format!("{}?topic={}", hub(&server), urlencode(&template)))
        .build()
        .unwrap();
    assert!(matches!(source.next().await, Some(Ok(Item::Open))));
    let topic = format!("/{}", "a/".repeat(500));
    for n in 0..20 {
        let response = publish_raw(&server, format!("topic={}&data={n}", urlencode(&topic))).await;
        assert_eq!(response.status(), 200);
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        if let Some(Ok(Item::Message(event))) = source.next().await {
            got.push(event.data);
        }
    }
    assert_eq!(got.last().map(String::as_str), Some("19"));
}

#[tokio::test]
async fn bad_tokens_are_refused_without_echo_or_log() {
    let server = start().await;
    let claims = json!({"mercure": {"publish": ["*"]}});
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let sign = |claims: &Value, key: &[u8], algorithm| {
        let header = jsonwebtoken::Header::new(algorithm);
        jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_secret(key)).unwrap()
    };
    let unsigned = |claims: &Value| {
        let part = |v: &Value| base64url(v.to_string().as_bytes());
        format!("{}.{}.", part(&json!({"alg": "none", "typ": "JWT"})), part(claims))
    };
    let mut expired = claims.clone();
    expired["exp"] = json!(now - 60);
    let mut early = claims.clone();
    early["nbf"] = json!(now + 3600);
    let tokens = [
        ("expired", sign(&expired, SECRET, jsonwebtoken::Algorithm::HS256)),
        ("not yet valid", sign(&early, SECRET, jsonwebtoken::Algorithm::HS256)),
        ("forged", sign(&claims, b"another key", jsonwebtoken::Algorithm::HS256)),
        ("alg none", unsigned(&claims)),
        ("wrong algorithm", sign(&claims, SECRET, jsonwebtoken::Algorithm::HS512)),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (what, token) in &tokens {
        let response = reqwest::Client::new()
            .post(hub(&server))
            .bearer_auth(token)
            .form(&[("topic", "/a"), ("data", "x")])
            .send()
            .await
            .unwrap();
        let body = refused(response, 401).await;
        let text = body.to_string();
        assert!(!text.contains(token.as_str()), "{what}: the token is echoed: {text}");
        for internal in ["variant", "expected one of", "Base64", "InvalidSignature"] {
            assert!(!text.contains(internal), "{what}: library internals in {text}");
        }
        // The same token as a subscriber (query parameter): refused too.
        let url = format!("{}?topic=/a&authorization={token}", hub(&server));
        refused(reqwest::get(url).await.unwrap(), 401).await;
    }
    let logged = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    for (what, token) in &tokens {
        assert!(!logged.contains(token.as_str()), "{what}: the token is in the logs");
    }
    assert!(!logged.contains(&publisher()), "a valid token is never logged either");
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn a_disallowed_origin_gets_no_cors_grant() {
    let server = start().await;
    let client = reqwest::Client::new();
    for origin in ["https://evil.example", ALLOWED_ORIGIN] {
        let preflight = client
            .request(reqwest::Method::OPTIONS, hub(&server))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "last-event-id")
            .send()
            .await
            .unwrap();
        let granted = preflight.headers().get("access-control-allow-origin").cloned();
        let simple = client.get(format!("{}?topic=/a", hub(&server))).header("origin", origin);
        let simple = simple.send().await.unwrap();
        if origin == ALLOWED_ORIGIN {
            assert_eq!(granted.unwrap(), origin);
            assert_eq!(simple.headers()["access-control-allow-credentials"], "true");
        } else {
            assert!(granted.is_none(), "{origin} must not be granted");
            assert!(simple.headers().get("access-control-allow-origin").is_none());
        }
    }
}

#[tokio::test]
async fn bad_chat_requests_are_refused_and_name_their_parameter() {
    let server = start().await;
    let url = format!("{}/v1/chat/completions", server.url);
    let user = json!([{"role": "user", "content": "hi"}]);
    let post = |body: String| {
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let cases = [
        ("{not json".to_owned(), 400, None),
        (json!({"model": "scripted", "messages": []}).to_string(), 400, Some("messages")),
        (json!({"model": "nope", "messages": user}).to_string(), 404, Some("model")),
        (
            json!({"model": "scripted", "messages": user, "temperature": -1}).to_string(),
            400,
            Some("temperature"),
        ),
        (
            r#"{"model":"scripted","messages":[{"role":"user","content":"hi"}],"temperature":NaN}"#
                .to_owned(),
            400,
            None,
        ),
        (
            json!({"model": "scripted", "messages": user, "top_p": 7}).to_string(),
            400,
            Some("top_p"),
        ),
        (
            json!({"model": "scripted", "messages": user, "max_tokens": 0}).to_string(),
            400,
            Some("max_tokens"),
        ),
        (json!({"model": "scripted", "messages": user, "max_tokens": 1e12}).to_string(), 400, None),
        (json!({"model": "scripted", "messages": user, "n": 3}).to_string(), 400, Some("n")),
        (
            format!(
                r#"{{"model":"scripted","messages":[{{"role":"user","content":"{}"}}]}}"#,
                "x".repeat(1100 * 1024)
            ),
            413,
            None,
        ),
    ];
    for (body, status, param) in cases {
        let error = refused(post(body.clone()).await, status).await;
        if let Some(param) = param {
            assert_eq!(error["error"]["param"], param, "{error}");
        }
    }
    // The server still answers well-formed requests.
    let fine = post(json!({"model": "scripted", "messages": user}).to_string()).await;
    assert_eq!(fine.status(), 200);
}

/// The AI clients' protocols refuse what they cannot serve with their own error shapes: the
/// Responses API and the UI message stream OpenAI's, the Messages API Anthropic's; and
/// nothing anyone sends there stops the server answering.
#[tokio::test]
async fn bad_requests_to_the_ai_client_protocols_are_refused_in_their_shapes() {
    let server = start().await;
    let post = |path: &str, body: String| {
        let url = format!("{}{path}", server.url);
        async move {
            reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let huge = "x".repeat(1100 * 1024);
    let responses = [
        ("{not json".to_owned(), 400, None),
        (json!({"model": "scripted"}).to_string(), 400, None),
        (json!({"model": "scripted", "input": 7}).to_string(), 400, Some("input")),
        (json!({"model": "scripted", "input": []}).to_string(), 400, Some("input")),
        (json!({"model": "nope", "input": "hi"}).to_string(), 404, Some("model")),
        (json!({"input": "hi", "temperature": 9}).to_string(), 400, Some("temperature")),
        (json!({"input": "hi", "max_output_tokens": 0}).to_string(), 400, None),
        (
            json!({"input": "hi", "background": true, "store": false}).to_string(),
            400,
            Some("background"),
        ),
        (json!({"input": "hi", "tools": [{"type": "web_search"}]}).to_string(), 400, Some("tools")),
        (json!({"input": [{"type": "input_image"}]}).to_string(), 400, Some("input")),
        (
            json!({"input": "hi", "previous_response_id": "resp_x"}).to_string(),
            400,
            Some("previous_response_id"),
        ),
        (json!({"input": huge}).to_string(), 413, None),
    ];
    for (body, status, param) in responses {
        let error = refused(post("/v1/responses", body).await, status).await;
        if let Some(param) = param {
            assert_eq!(error["error"]["param"], param, "{error}");
        }
    }
    for path in ["/v1/responses/resp_0123", "/v1/responses/nope", "/v1/responses/resp_0123/cancel"]
    {
        let url = format!("{}{path}", server.url);
        let response = if path.ends_with("cancel") {
            reqwest::Client::new().post(url).send().await.unwrap()
        } else {
            reqwest::get(url).await.unwrap()
        };
        refused(response, 404).await;
    }

    let user = json!([{"role": "user", "content": "hi"}]);
    let messages = [
        ("{not json".to_owned(), 400, "invalid_request_error"),
        (json!({"model": "scripted", "messages": user}).to_string(), 400, "invalid_request_error"),
        (json!({"model": "scripted", "max_tokens": 5, "messages": []}).to_string(), 400, "invalid_request_error"),
        (json!({"model": "nope", "max_tokens": 5, "messages": user}).to_string(), 404, "not_found_error"),
        (
            json!({"model": "scripted", "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "image"}]}]}).to_string(),
            400,
            "invalid_request_error",
        ),
        (
            json!({"model": "scripted", "max_tokens": 5, "messages": [{"role": "wizard", "content": "x"}]})
                .to_string(),
            400,
            "invalid_request_error",
        ),
        (json!({"max_tokens": 5, "messages": [{"role": "user", "content": huge}]}).to_string(), 413, "request_too_large"),
    ];
    for (body, status, kind) in messages {
        let response = post("/v1/messages", body).await;
        assert_eq!(response.status().as_u16(), status);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["error"]["type"], kind, "{error}");
        assert!(error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
    }

    let chat = [
        ("{not json".to_owned(), 400, None),
        (json!({"messages": []}).to_string(), 400, None),
        (json!({"id": "c1", "messages": []}).to_string(), 400, Some("messages")),
        (
            json!({"id": "", "messages": [{"role": "user", "parts": []}]}).to_string(),
            400,
            Some("id"),
        ),
        (
            json!({"id": "c1", "model": "nope", "messages": [{"role": "user", "parts": []}]})
                .to_string(),
            404,
            Some("model"),
        ),
    ];
    for (body, status, param) in chat {
        let error = refused(post("/api/chat", body).await, status).await;
        if let Some(param) = param {
            assert_eq!(error["error"]["param"], param, "{error}");
        }
    }
    let nothing =
        reqwest::get(format!("{}/api/chat/no-such-chat/stream", server.url)).await.unwrap();
    assert_eq!(nothing.status(), 204);

    // The server still answers well-formed requests.
    let fine = post("/v1/responses", json!({"model": "scripted", "input": "hi"}).to_string()).await;
    assert_eq!(fine.status(), 200);
    let fine = json!({"model": "scripted", "max_tokens": 5, "messages": user});
    assert_eq!(post("/v1/messages", fine.to_string()).await.status(), 200);
}

/// Unknown routes and methods get the JSON shape too.
#[tokio::test]
async fn unknown_routes_get_the_error_shape() {
    let server = start().await;
    refused(reqwest::get(format!("{}/no/such/thing", server.url)).await.unwrap(), 404).await;
}

/// The data of an event as a subscriber decodes it: line ends become LF.
fn as_decoded(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever a publisher puts in `id`, `type` and `data`, it is refused with 400 or it
    /// reaches the subscriber as exactly one event with exactly those values: no input adds a
    /// field or an event to anyone's stream.
    #[test]
    fn no_publication_injects_a_field_or_an_event(
        cases in prop::collection::vec(
            (
                prop::option::of("[a-z:\r\n\0 ]{0,6}"),
                prop::option::of("[a-z:\r\n\0 ]{0,6}"),
                "(data: x|\r\n|\n|\r|id: y|event: z|:|a|\u{2028}|é){0,8}",
            ),
            1..8,
        )
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async move {
            let server = start().await;
            let mut source = EventSource::get(&format!("{}?topic=/p", hub(&server))).reconnect(false).build().unwrap();
            assert!(matches!(source.next().await, Some(Ok(Item::Open))));
            let mut expected: Vec<(String, String, String)> = Vec::new();
            for (n, (id, event_type, data)) in cases.iter().enumerate() {
                let id = id.as_ref().map(|id| format!("{id}{n}"));
                let mut form = vec![("topic", "/p".to_owned()), ("data", data.clone())];
                if let Some(id) = &id {
                    form.push(("id", id.clone()));
                }
                if let Some(event_type) = event_type {
                    form.push(("type", event_type.clone()));
                }
                let response = reqwest::Client::new().post(hub(&server)).bearer_auth(publisher()).form(&form).send().await.unwrap();
                match response.status() {
                    StatusCode::OK => {
                        let given = response.text().await.unwrap();
                        let event_type = match event_type.as_deref() {
                            None | Some("") => "message".to_owned(),
                            Some(t) => t.to_owned(),
                        };
                        expected.push((given, event_type, as_decoded(data)));
                    }
                    StatusCode::BAD_REQUEST | StatusCode::CONFLICT => {}
                    other => panic!("unexpected {other}"),
                }
            }
            // A last marker: everything before it must match `expected`, one for one.
            let marker = reqwest::Client::new().post(hub(&server)).bearer_auth(publisher())
                .form(&[("topic", "/p"), ("data", "marker")]).send().await.unwrap().text().await.unwrap();
            let mut got: Vec<MessageEvent> = Vec::new();
            while got.last().is_none_or(|e| e.last_event_id != marker) {
                match source.next().await {
                    Some(Ok(Item::Message(event))) => got.push(event),
                    Some(Ok(_)) => {}
                    other => panic!("the stream broke: {other:?}"),
                }
            }
            got.pop();
            let got: Vec<(String, String, String)> = got
                .into_iter()
                .map(|e| (e.last_event_id, e.event_type.into_owned(), e.data))
                .collect();
            // Empty data too is one `data:` line, so it is dispatched (as "").
            assert_eq!(got, expected);
        });
    }
}
