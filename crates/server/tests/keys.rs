//! API keys as records over real HTTP: limits refused with OpenAI's (or Anthropic's) 429 and
//! Retry-After, models a key was not granted, tokens spent when an answer ends or is
//! stopped, and the admin API that makes, lists and revokes keys and shows usage.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice_hub::{HubConfig, KeyLimits};
use sluice_llm::Script;
use sluice_server::Config;
use sluice_server::keys::KeySpec;

mod common;

use common::usage::{Who, usage_when};

const ADMIN: &str = "admin-secret";

async fn start(keys: Vec<KeySpec>, tokens_per_second: f64) -> common::Running {
    let script = Script {
        text: "token ".repeat(200),
        tokens_per_second,
        time_to_first_token: Duration::ZERO,
        ..Script::default()
    };
    let config = Config {
        models: common::scripted_models(script),
        keys: keys.iter().map(|k| k.record().unwrap()).collect(),
        admin_key: Some(ADMIN.into()),
        ..Config::default()
    };
    common::serve(config, HubConfig::default()).await
}

fn key(name: &str, limits: KeyLimits) -> KeySpec {
    KeySpec { name: name.into(), key: Some(format!("sk-{name}")), key_sha256: None, limits }
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream})
}

async fn post(url: &str, key: &str, body: &Value) -> reqwest::Response {
    let client = reqwest::Client::new();
    client.post(url).bearer_auth(key).json(body).send().await.unwrap()
}

/// A POST with the key as Anthropic's SDKs send it (`x-api-key`).
async fn post_anthropic(url: &str, key: &str, body: &Value) -> reqwest::Response {
    let client = reqwest::Client::new();
    client.post(url).header("x-api-key", key).json(body).send().await.unwrap()
}

async fn admin(method: reqwest::Method, url: &str, body: Option<Value>) -> reqwest::Response {
    let request = reqwest::Client::new().request(method, url).bearer_auth(ADMIN);
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_key_past_its_requests_per_minute_gets_429_with_retry_after() {
    let limits = KeyLimits { requests_per_minute: Some(2), ..KeyLimits::default() };
    let server = start(vec![key("team", limits)], 0.0).await;
    let completions = format!("{}/v1/chat/completions", server.url);
    for _ in 0..2 {
        let response = post(&completions, "sk-team", &chat("scripted", false)).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let refused = post(&completions, "sk-team", &chat("scripted", false)).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "until the next minute: {retry}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("requests per minute"));

    // Anthropic's shape on /v1/messages, from the same count.
    let message = json!({"model": "scripted", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}]});
    let refused = post_anthropic(&format!("{}/v1/messages", server.url), "sk-team", &message).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
}

#[tokio::test]
async fn a_model_not_granted_is_403_and_an_unknown_one_404() {
    let limits = KeyLimits { models: vec!["scripted".into()], ..KeyLimits::default() };
    let server = start(vec![key("narrow", limits)], 0.0).await;
    let completions = format!("{}/v1/chat/completions", server.url);
    let granted = post(&completions, "sk-narrow", &chat("scripted", false)).await;
    assert_eq!(granted.status(), StatusCode::OK);
    for path in ["/v1/chat/completions", "/api/generations"] {
        let refused =
            post(&format!("{}{path}", server.url), "sk-narrow", &chat("other", true)).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{path}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "model_not_allowed", "{body}");
    }
    // Counting a message's tokens is held to the grant too, in Anthropic's shape.
    let count = json!({"model": "other", "messages": [{"role": "user", "content": "hi"}]});
    let refused =
        post_anthropic(&format!("{}/v1/messages/count_tokens", server.url), "sk-narrow", &count)
            .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("`other`"), "{body}");
    let unknown = post(&completions, "sk-narrow", &chat("nope", false)).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let no_key = post(&completions, "sk-wrong", &chat("scripted", false)).await;
    assert_eq!(no_key.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_budget_counts_the_tokens_of_an_answer_once_it_ends() {
    let limits = KeyLimits { token_budget: Some(1), ..KeyLimits::default() };
    let server = start(vec![key("spender", limits)], 0.0).await;
    let completions = format!("{}/v1/chat/completions", server.url);

    let whole = post(&completions, "sk-spender", &chat("scripted", false)).await;
    assert_eq!(whole.status(), StatusCode::OK);
    let used =
        usage_when(&server.url, ADMIN, Who::Key("spender"), |u| u["completion_tokens"] != 0).await;
    assert_eq!(used["requests"], 1);
    assert!(used["prompt_tokens"].as_u64().unwrap() > 0, "{used}");
    let refused = post(&completions, "sk-spender", &chat("scripted", false)).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("token budget"), "{body}");
}

#[tokio::test]
async fn a_stopped_answer_counts_its_tokens_until_the_stop_and_as_cancelled() {
    // 200 tokens at 10 a second: the answer is stopped long before its end.
    let server = start(vec![key("free", KeyLimits::default())], 10.0).await;
    let completions = format!("{}/v1/chat/completions", server.url);
    let streamed = post(&completions, "sk-free", &chat("scripted", true)).await;
    let mut source = sluice_sse::EventStream::new(streamed.bytes_stream());
    let mut pieces = 0;
    while pieces < 2 {
        let event = source.next().await.unwrap().unwrap();
        let chunk: Value = serde_json::from_str(&event.data).unwrap();
        let text = chunk["choices"][0]["delta"]["content"].as_str();
        pieces += usize::from(text.is_some_and(|text| !text.is_empty()));
    }
    drop(source);
    let used = usage_when(&server.url, ADMIN, Who::Key("free"), |u| u["cancelled"] == 1).await;
    let completion = used["completion_tokens"].as_u64().unwrap();
    assert!(completion >= 2, "the tokens read before the stop count: {used}");
    assert_eq!(used["cancelled_tokens"], used["prompt_tokens"].as_u64().unwrap() + completion);
}

#[tokio::test]
async fn keys_made_through_the_admin_api_work_until_revoked() {
    let server = start(vec![key("configured", KeyLimits::default())], 0.0).await;
    let keys = format!("{}/admin/keys", server.url);
    let anonymous = reqwest::Client::new().get(&keys).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let created = admin(
        reqwest::Method::POST,
        &keys,
        Some(json!({"name": "made", "requests_per_minute": 100, "models": ["scripted"]})),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    let secret = created["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with(created["prefix"].as_str().unwrap()), "{created}");

    let taken = admin(reqwest::Method::POST, &keys, Some(json!({"name": "configured"}))).await;
    assert_eq!(taken.status(), StatusCode::CONFLICT);
    let taken = admin(reqwest::Method::POST, &keys, Some(json!({"name": "made"}))).await;
    assert_eq!(taken.status(), StatusCode::CONFLICT);
    let bad = admin(reqwest::Method::POST, &keys, Some(json!({"name": "x", "rpm": 1}))).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let bad: Value = bad.json().await.unwrap();
    assert_eq!(bad["error"]["code"], "invalid_json", "{bad}");

    let listed = admin(reqwest::Method::GET, &keys, None).await.text().await.unwrap();
    assert!(!listed.contains(&secret) && !listed.contains("hash"), "no secret listed: {listed}");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let names: Vec<_> = listed["keys"].as_array().unwrap().iter().map(|k| &k["name"]).collect();
    assert_eq!(names, ["configured", "made"]);

    let completions = format!("{}/v1/chat/completions", server.url);
    let answered = post(&completions, &secret, &chat("scripted", false)).await;
    assert_eq!(answered.status(), StatusCode::OK);
    let metrics = reqwest::get(format!("{}/metrics", server.url)).await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains(r#"sluice_key_requests_total{key="made"}"#), "{metrics}");

    let revoked = admin(reqwest::Method::DELETE, &format!("{keys}/made"), None).await;
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let refused = post(&completions, &secret, &chat("scripted", false)).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let again = admin(reqwest::Method::DELETE, &format!("{keys}/made"), None).await;
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    let configured = admin(reqwest::Method::DELETE, &format!("{keys}/configured"), None).await;
    assert_eq!(configured.status(), StatusCode::CONFLICT);

    // A count written as a whole-number float is a count, as JSON Schema's integer has it.
    let float = json!({"name": "whole.number-1", "token_budget": 5.0, "expires_in": 60.0});
    let made = admin(reqwest::Method::POST, &keys, Some(float)).await;
    assert_eq!(made.status(), StatusCode::CREATED);
    let made: Value = made.json().await.unwrap();
    assert_eq!(made["token_budget"], 5, "{made}");
    // A name goes into URLs and metric labels as it is: letters, digits, `.`, `_`, `-`.
    let spaced = admin(reqwest::Method::POST, &keys, Some(json!({"name": "a b"}))).await;
    assert_eq!(spaced.status(), StatusCode::BAD_REQUEST);
    let spaced: Value = spaced.json().await.unwrap();
    assert_eq!(spaced["error"]["param"], "name", "{spaced}");
}

#[tokio::test]
async fn without_an_admin_key_the_admin_api_asks_for_credentials_then_says_it_is_off() {
    let server = common::serve(Config::default(), HubConfig::default()).await;
    let keys = format!("{}/admin/keys", server.url);
    let anonymous = reqwest::get(&keys).await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let presented = reqwest::Client::new().get(&keys).bearer_auth("guess").send().await.unwrap();
    assert_eq!(presented.status(), StatusCode::NOT_FOUND);
    let body: Value = presented.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("--admin-key"), "{body}");
}
