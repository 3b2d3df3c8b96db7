//! End-user tokens over real HTTP: a browser's JWT in place of an API key on the chat routes,
//! held to its models and max tokens, its subject charged in the ledger whichever route it
//! uses, and every bad token refused with 401 and a message that says what was wrong.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice_hub::HubConfig;
use sluice_llm::Script;
use sluice_server::{ChatClaim, ChatGrant, ChatLimits, Config, Verifier, mint_chat_hs256};

mod common;

use common::usage::{Who, usage_when};

const SECRET: &[u8] = b"chat-secret";
const AUDIENCE: &str = "sluice-chat";
const ADMIN: &str = "admin-secret";

async fn start() -> common::Running {
    let script = Script {
        text: "token ".repeat(50),
        tokens_per_second: 0.0,
        time_to_first_token: Duration::ZERO,
        ..Script::default()
    };
    let config = Config {
        models: common::scripted_models(script),
        admin_key: Some(ADMIN.into()),
        end_users: Some(Verifier::hs256(SECRET).for_audience(Some(AUDIENCE.into()))),
        ..Config::default()
    };
    common::serve(config, HubConfig::default()).await
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn grant(subject: &str, chat: ChatLimits) -> ChatGrant {
    ChatGrant {
        subject: subject.into(),
        audience: AUDIENCE.into(),
        exp: now() + 3600,
        sluice: ChatClaim { chat },
    }
}

fn token(subject: &str, chat: ChatLimits) -> String {
    mint_chat_hs256(SECRET, &grant(subject, chat))
}

fn chat(model: &str, max_tokens: Option<u32>) -> Value {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    if let Some(n) = max_tokens {
        body["max_tokens"] = json!(n);
    }
    body
}

async fn post(url: &str, token: &str, body: &Value) -> reqwest::Response {
    let client = reqwest::Client::new();
    client.post(url).bearer_auth(token).json(body).send().await.unwrap()
}

/// A Messages API request, with the token in `x-api-key` as Anthropic's SDK sends it.
async fn message(server: &str, token: &str) -> reqwest::Response {
    let body = json!({"model": "scripted", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}]});
    let client = reqwest::Client::new();
    let request = client.post(format!("{server}/v1/messages")).header("x-api-key", token);
    request.json(&body).send().await.unwrap()
}

#[tokio::test]
async fn a_token_reaches_only_its_models_and_answers_are_held_to_its_max_tokens() {
    let server = start().await;
    let completions = format!("{}/v1/chat/completions", server.url);
    let limits =
        ChatLimits { models: vec!["scripted".into()], max_tokens: Some(3), ..Default::default() };
    let alice = token("alice", limits);
    // None asked (as useChat sends), more asked, and fewer asked than the grant.
    for (asked, given) in [(None, 3), (Some(100), 3), (Some(2), 2)] {
        let answered = post(&completions, &alice, &chat("scripted", asked)).await;
        assert_eq!(answered.status(), StatusCode::OK, "{asked:?}");
        let body: Value = answered.json().await.unwrap();
        assert_eq!(body["usage"]["completion_tokens"], given, "{asked:?}: {body}");
        assert_eq!(body["choices"][0]["finish_reason"], "length", "{body}");
    }
    for path in ["/v1/chat/completions", "/api/generations"] {
        let refused = post(&format!("{}{path}", server.url), &alice, &chat("other", None)).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{path}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "model_not_allowed", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("end user alice"), "{body}");
    }
    // The cookie, as a page on the same site sends it.
    let client = reqwest::Client::new();
    let cookie = format!("theme=dark; sluiceChatToken={alice}");
    let request = client.post(&completions).header("cookie", cookie);
    let answered = request.json(&chat("scripted", None)).send().await.unwrap();
    assert_eq!(answered.status(), StatusCode::OK);
    // useChat's route, with the cookie: a model not granted is refused before any stream.
    let ui = json!({"id": "c1", "model": "other",
        "messages": [{"role": "user", "parts": [{"type": "text", "text": "hi"}]}]});
    let cookie = format!("sluiceChatToken={alice}");
    let request = client.post(format!("{}/api/chat", server.url)).header("cookie", cookie);
    assert_eq!(request.json(&ui).send().await.unwrap().status(), StatusCode::FORBIDDEN);
    let nothing = reqwest::Client::new().post(&completions).json(&chat("scripted", None));
    let refused = nothing.send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_subjects_requests_per_minute_are_spent_whichever_route_it_uses() {
    let server = start().await;
    let limits = ChatLimits { requests_per_minute: Some(2), ..ChatLimits::default() };
    // A fixed window: should the minute turn during a round, its counts start again, so the
    // round is tried again with another subject (it cannot turn twice in a few seconds).
    for round in 0..2 {
        let minute = now() / 60;
        let subject = format!("bob-{round}");
        let bob = token(&subject, limits.clone());
        let completions =
            post(&format!("{}/v1/chat/completions", server.url), &bob, &chat("scripted", None))
                .await;
        assert_eq!(completions.status(), StatusCode::OK);
        assert_eq!(message(&server.url, &bob).await.status(), StatusCode::OK);
        let generations = format!("{}/api/generations", server.url);
        let refused = post(&generations, &bob, &chat("scripted", None)).await;
        let anthropic = message(&server.url, &bob).await;
        if now() / 60 != minute {
            continue;
        }
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.headers().contains_key("retry-after"));
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
        let said = body["error"]["message"].as_str().unwrap();
        assert!(said.contains(&format!("end user {subject}")), "{body}");
        assert_eq!(anthropic.status(), StatusCode::TOO_MANY_REQUESTS);
        let body: Value = anthropic.json().await.unwrap();
        assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
        // Another subject has limits of its own.
        let carol = token(&format!("carol-{round}"), limits);
        assert_eq!(message(&server.url, &carol).await.status(), StatusCode::OK);
        return;
    }
    panic!("the minute turned during both rounds");
}

#[tokio::test]
async fn a_subjects_tokens_are_counted_in_the_usage_and_limit_it() {
    let server = start().await;
    let limits = ChatLimits { tokens_per_minute: Some(1), ..ChatLimits::default() };
    let dave = token("dave", limits);
    let completions = format!("{}/v1/chat/completions", server.url);
    let answered = post(&completions, &dave, &chat("scripted", Some(4))).await;
    assert_eq!(answered.status(), StatusCode::OK);
    let minute = now() / 60;
    let used =
        usage_when(&server.url, ADMIN, Who::Subject("dave"), |u| u["completion_tokens"] != 0).await;
    assert_eq!((used["requests"].as_u64(), used["completion_tokens"].as_u64()), (Some(1), Some(4)));
    assert_eq!(used["id"], "sub:dave", "{used}");
    let refused = post(&completions, &dave, &chat("scripted", None)).await;
    if now() / 60 == minute {
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let body: Value = refused.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains("tokens per minute"));
    }
    let metrics = reqwest::get(format!("{}/metrics", server.url)).await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains(r#"sluice_key_requests_total{key="end-user-tokens"}"#), "{metrics}");
    assert!(!metrics.contains("dave"), "no label per subject: {metrics}");
}

#[tokio::test]
async fn forged_expired_early_and_other_audience_tokens_are_refused_saying_which() {
    let server = start().await;
    let completions = format!("{}/v1/chat/completions", server.url);
    let sign = |claims: Value, secret: &[u8]| {
        let key = jsonwebtoken::EncodingKey::from_secret(secret);
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    let good = serde_json::to_value(grant("eve", ChatLimits::default())).unwrap();
    let with = |name: &str, value: Value| {
        let mut claims = good.clone();
        claims[name] = value;
        sign(claims, SECRET)
    };
    let mut bare = good.clone();
    bare.as_object_mut().unwrap().remove("sluice");
    let cases = [
        (sign(good.clone(), b"not-the-secret"), "signature does not verify"),
        (with("exp", json!(now() - 120)), "expired"),
        (with("nbf", json!(now() + 3600)), "not valid yet"),
        (with("aud", json!("another-app")), "audience (aud) is not this server"),
        (sign(bare, SECRET), "not an end-user token"),
    ];
    for (token, why) in &cases {
        let refused = post(&completions, token, &chat("scripted", None)).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{why}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_token", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(why), "{why}: {body}");
        // Anthropic's shape on /v1/messages.
        let refused = message(&server.url, token).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{why}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(
            (&body["type"], &body["error"]["type"]),
            (&json!("error"), &json!("authentication_error"))
        );
        assert!(body["error"]["message"].as_str().unwrap().contains(why), "{why}: {body}");
    }
    let good = sign(good, SECRET);
    assert_eq!(post(&completions, &good, &chat("scripted", None)).await.status(), StatusCode::OK);
}
