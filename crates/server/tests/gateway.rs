//! The gateway over real HTTP: OpenAI's wire format, errors, cancellation when the reader
//! leaves, resumable answers, the one-shot EventSource form, and Sluice in front of Sluice.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice_client::{EventSource, Item, MessageEvent};
use sluice_hub::HubConfig;
use sluice_llm::{Attempts, OpenAi, OpenAiConfig, Router, Script, Scripted};
use sluice_server::Config;

const ANSWER: &str = "Streams 中文 and emoji 🎉 arrive whole, token by token.";

mod common;

struct Server {
    url: String,
    scripted: Arc<Scripted>,
    _running: common::Running,
}

fn script(tokens_per_second: f64) -> Script {
    Script {
        text: ANSWER.into(),
        tokens_per_second,
        time_to_first_token: Duration::ZERO,
        ..Script::default()
    }
}

/// Serves `router`; the server stops when the returned handle is dropped.
async fn serve(router: Router, config: Config) -> (String, common::Running) {
    let running =
        common::serve(Config { models: Arc::new(router), ..config }, HubConfig::default()).await;
    (running.url.clone(), running)
}

async fn start_with(script: Script, config: Config) -> Server {
    let scripted = Arc::new(Scripted::new("scripted", script));
    let mut router = Router::new();
    router.add(scripted.clone(), vec!["scripted".into()], Attempts::default());
    let (url, running) = serve(router, config).await;
    Server { url, scripted, _running: running }
}

async fn start(script: Script) -> Server {
    start_with(script, Config::default()).await
}

fn body(stream: bool) -> Value {
    json!({"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "stream": stream,
           "stream_options": {"include_usage": true}})
}

async fn post(url: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new().post(url).json(body).send().await.unwrap()
}

/// Reads an OpenAI stream: the JSON of each `data:` event, and whether `[DONE]` came.
async fn chunks(response: reqwest::Response) -> (Vec<Value>, bool) {
    let mut source = sluice_sse::EventStream::new(response.bytes_stream());
    let (mut out, mut done) = (Vec::new(), false);
    while let Some(event) = source.next().await {
        let event = event.unwrap();
        if event.data == "[DONE]" {
            done = true;
        } else {
            out.push(serde_json::from_str(&event.data).unwrap());
        }
    }
    (out, done)
}

#[tokio::test]
async fn a_streamed_completion_has_openais_shape() {
    let server = start(script(0.0)).await;
    let response = post(&format!("{}/v1/chat/completions", server.url), &body(true)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let (chunks, done) = chunks(response).await;
    assert!(done, "the stream ends with data: [DONE]");
    let first = &chunks[0];
    assert_eq!(first["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    let keys: Vec<&str> = first.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["id", "object", "created", "model", "system_fingerprint", "choices", "usage"]
    );
    for chunk in &chunks {
        assert_eq!(chunk["id"], first["id"]);
        assert_eq!(chunk["created"], first["created"]);
        assert_eq!(chunk["object"], "chat.completion.chunk");
    }
    let text: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, ANSWER);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 10);
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null()));
}

#[tokio::test]
async fn a_whole_completion_and_the_model_list() {
    let server = start(script(0.0)).await;
    let response = post(&format!("{}/v1/chat/completions", server.url), &body(false)).await;
    let completion: Value = response.json().await.unwrap();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["choices"][0]["message"]["content"], ANSWER);
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    assert_eq!(completion["usage"]["total_tokens"], 11);
    let models: Value =
        reqwest::get(format!("{}/v1/models", server.url)).await.unwrap().json().await.unwrap();
    assert_eq!(models["data"][0]["id"], "scripted");
    assert_eq!(models["data"][0]["owned_by"], "scripted");
}

async fn openai_error(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    for key in ["message", "type", "param", "code"] {
        assert!(body["error"].get(key).is_some(), "{key} missing in {body}");
    }
    (status, body)
}

#[tokio::test]
async fn bad_requests_get_openai_errors_before_any_byte() {
    let server = start_with(
        script(0.0),
        Config {
            api_keys: vec!["sk-right".into()],
            requests_per_minute: Some(2),
            ..Config::default()
        },
    )
    .await;
    let url = format!("{}/v1/chat/completions", server.url);
    let client = reqwest::Client::new();
    let no_key = client.post(&url).json(&body(true)).send().await.unwrap();
    assert_eq!(openai_error(no_key).await.0, StatusCode::UNAUTHORIZED);
    let wrong = client.post(&url).bearer_auth("sk-wrong").json(&body(true)).send().await.unwrap();
    assert_eq!(openai_error(wrong).await.0, StatusCode::UNAUTHORIZED);
    let unknown = json!({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]});
    let response = client.post(&url).bearer_auth("sk-right").json(&unknown).send().await.unwrap();
    let (status, error) = openai_error(response).await;
    assert_eq!((status, error["error"]["param"].as_str()), (StatusCode::NOT_FOUND, Some("model")));
    let malformed = client
        .post(&url)
        .bearer_auth("sk-right")
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(openai_error(malformed).await.0, StatusCode::BAD_REQUEST);
    // Refused keys cost nothing; the key's third request within a minute is over its two.
    let limited =
        client.post(&url).bearer_auth("sk-right").json(&body(false)).send().await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream() {
    let server = start(script(20.0)).await;
    let response = post(&format!("{}/v1/chat/completions", server.url), &body(true)).await;
    let mut bytes = response.bytes_stream();
    let mut seen = 0;
    while seen < 2 {
        if let Some(Ok(chunk)) = bytes.next().await {
            seen += chunk.windows(5).filter(|w| w == b"data:").count();
        }
    }
    drop(bytes);
    let stats = server.scripted.stats();
    for _ in 0..500 {
        if stats.cancelled() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((stats.cancelled(), stats.finished()), (1, 0), "the upstream stopped early");
    assert!(stats.tokens() < 10, "it did not run to its end: {} tokens", stats.tokens());
}

#[tokio::test]
async fn keep_alive_comments_flow_while_the_first_token_is_slow() {
    let slow = Script { time_to_first_token: Duration::from_millis(600), ..script(0.0) };
    let server =
        start_with(slow, Config { keep_alive: Duration::from_millis(100), ..Config::default() })
            .await;
    let response = post(&format!("{}/v1/chat/completions", server.url), &body(true)).await;
    let mut bytes = response.bytes_stream();
    let mut received = Vec::new();
    while let Some(chunk) = bytes.next().await {
        received.extend_from_slice(&chunk.unwrap());
        if received.windows(10).any(|w| w == b"\"content\":\"S") {
            break;
        }
    }
    // The role chunk opens the answer at once; comments keep it alive until the first token.
    let text = String::from_utf8_lossy(&received);
    let role_end = text.find("\n\n").unwrap();
    let first_token = text.find("\"content\":\"S").unwrap();
    let between = &text[role_end..first_token];
    assert!(between.matches("\n:\n").count() >= 2, "{text:?}");
}

#[tokio::test]
async fn an_upstream_failure_mid_answer_is_an_error_chunk() {
    let failing = Script { fail_after: Some(3), ..script(0.0) };
    let server = start(failing).await;
    let response = post(&format!("{}/v1/chat/completions", server.url), &body(true)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let (chunks, done) = chunks(response).await;
    assert!(!done);
    let last = chunks.last().unwrap();
    assert_eq!(last["error"]["type"], "server_error");
    assert!(last["error"]["message"].as_str().unwrap().contains("scripted failure"));
}

/// Starts an answer and returns (id, events URL, cancel URL).
async fn generation(server: &Server) -> (String, String, String) {
    let response = post(&format!("{}/api/generations", server.url), &body(false)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    let path = |key: &str| format!("{}{}", server.url, created[key].as_str().unwrap());
    (created["id"].as_str().unwrap().to_owned(), path("events_url"), path("cancel_url"))
}

/// Reads events until `end` (inclusive) or until `limit` events.
async fn read_events(source: &mut EventSource, limit: usize) -> Vec<MessageEvent> {
    let mut events = Vec::new();
    while let Some(item) = source.next().await {
        if let Item::Message(event) = item.unwrap() {
            let end = event.event_type == "end";
            events.push(event);
            if end || events.len() == limit {
                break;
            }
        }
    }
    events
}

fn text_of(events: &[MessageEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event_type == "delta")
        .map(|e| {
            serde_json::from_str::<Value>(&e.data).unwrap()["text"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn an_answer_resumes_exactly_where_it_dropped() {
    let server = start(script(100.0)).await;
    let (id, events_url, _) = generation(&server).await;
    let mut first = EventSource::get(&events_url).reconnect(false).build().unwrap();
    let head = read_events(&mut first, 4).await;
    drop(first);
    let last_id = head.last().unwrap().last_event_id.clone();
    assert!(last_id.starts_with(&format!("#{id}.")), "event ids name the answer: {last_id}");
    let mut again = EventSource::get(&events_url).last_event_id(last_id).build().unwrap();
    let tail = read_events(&mut again, 1000).await;
    let all: Vec<MessageEvent> = head.into_iter().chain(tail).collect();
    assert_eq!(text_of(&all), ANSWER, "the whole text, exactly once");
    let kinds: Vec<&str> = all.iter().rev().take(2).map(|e| e.event_type.as_ref()).collect();
    assert_eq!(kinds, ["end", "usage"]);
    assert_eq!(
        serde_json::from_str::<Value>(&all.last().unwrap().data).unwrap()["finish_reason"],
        "stop"
    );
    assert_eq!(server.scripted.stats().started(), 1, "resuming never re-runs the answer");

    // A late joiner gets everything; a reconnect after `end` is told to stop with 204.
    let mut late = EventSource::get(&events_url).build().unwrap();
    let everything = read_events(&mut late, 1000).await;
    assert_eq!(text_of(&everything), ANSWER);
    let end_id = everything.last().unwrap().last_event_id.clone();
    let after_end = reqwest::Client::new()
        .get(&events_url)
        .header("Last-Event-ID", end_id)
        .send()
        .await
        .unwrap();
    assert_eq!(after_end.status(), StatusCode::NO_CONTENT);
    let forged = events_url.replace("token=", "token=0");
    assert_eq!(reqwest::get(forged).await.unwrap().status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn cancel_stops_the_upstream_and_still_ends_with_usage() {
    let server = start(script(10.0)).await;
    let (_, events_url, cancel_url) = generation(&server).await;
    let mut source = EventSource::get(&events_url).build().unwrap();
    let head = read_events(&mut source, 2).await;
    assert_eq!(head.len(), 2);
    let response = reqwest::Client::new().post(&cancel_url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let rest = read_events(&mut source, 1000).await;
    let end = rest.last().unwrap();
    assert_eq!(end.event_type, "end");
    assert_eq!(serde_json::from_str::<Value>(&end.data).unwrap()["finish_reason"], "cancelled");
    assert_eq!(rest[rest.len() - 2].event_type, "usage");
    assert_eq!(server.scripted.stats().cancelled(), 1);
    let again = reqwest::Client::new().post(&cancel_url).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn an_answer_nobody_reads_is_cancelled_after_the_grace_period() {
    let server = start_with(
        script(5.0),
        Config { generation_grace: Duration::from_millis(300), ..Config::default() },
    )
    .await;
    let (_, events_url, _) = generation(&server).await;
    let stats = server.scripted.stats();
    while stats.cancelled() == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut late = EventSource::get(&events_url).build().unwrap();
    let events = read_events(&mut late, 1000).await;
    let end: Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert_eq!(end["finish_reason"], "cancelled");
}

#[tokio::test]
async fn the_one_shot_form_streams_chunks_and_resumes_the_same_answer() {
    let server = start(script(100.0)).await;
    let url = format!("{}/api/chat/stream?prompt=hello", server.url);
    let mut first = EventSource::get(&url).reconnect(false).build().unwrap();
    let head = read_events(&mut first, 3).await;
    drop(first);
    let last = head.last().unwrap().last_event_id.clone();
    let mut again = EventSource::get(&url).last_event_id(last).build().unwrap();
    let tail = read_events(&mut again, 1000).await;
    let all: Vec<MessageEvent> = head.into_iter().chain(tail).collect();
    let text: String = all
        .iter()
        .filter(|e| e.event_type == "message")
        .map(|e| {
            let chunk: Value = serde_json::from_str(&e.data).unwrap();
            assert_eq!(chunk["object"], "chat.completion.chunk");
            chunk["choices"][0]["delta"]["content"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(text, ANSWER);
    assert_eq!(all.last().unwrap().event_type, "end");
    assert_eq!(server.scripted.stats().started(), 1, "a reconnect never starts a new answer");
    let after_end = reqwest::Client::new()
        .get(&url)
        .header("Last-Event-ID", &all.last().unwrap().last_event_id)
        .send()
        .await
        .unwrap();
    assert_eq!(after_end.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn sluice_in_front_of_sluice() {
    let upstream = start(script(0.0)).await;
    let mut router = Router::new();
    let provider = OpenAi::new(OpenAiConfig {
        name: "inner-sluice".into(),
        base_url: format!("{}/v1", upstream.url),
        api_key: None,
        timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
    });
    router.add(Arc::new(provider), vec!["scripted".into()], Attempts::default());
    let (front, _stop) = serve(router, Config::default()).await;
    let response = post(&format!("{front}/v1/chat/completions"), &body(true)).await;
    let (chunks, done) = chunks(response).await;
    assert!(done);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, ANSWER);
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 10, "usage crosses both");
}

/// An upstream that accepts connections, reads the request and never answers: a model
/// server stuck before its response head.
async fn silent_upstream() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, task)
}

/// The counter `name{labels}` (or `name` alone) in the process's metrics.
fn counter(name: &str) -> f64 {
    let text = sluice_server::prometheus().render();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Issue 16, finding 2: an upstream slow to send its response head held the client with no
/// byte for as long as the provider's own 60 s timeout, ignored the first-token bound, and
/// blocked `POST /api/generations`. Now the stream's head goes out at once, the first-token
/// bound covers the wait for the head, and the wait is counted.
#[tokio::test]
async fn an_upstream_silent_before_its_head_is_bounded_by_the_first_token_timeout() {
    let (upstream, _task) = silent_upstream().await;
    let mut router = Router::new();
    let provider = OpenAi::new(OpenAiConfig {
        name: "silent".into(),
        base_url: upstream,
        api_key: None,
        timeout: Duration::from_secs(3600),
        connect_timeout: Duration::from_secs(10),
    });
    let attempts =
        Attempts { retries: 0, first_token_timeout: Duration::from_secs(1), ..Attempts::default() };
    router.add(Arc::new(provider), vec!["slow".into()], attempts);
    let (url, _stop) = serve(router, Config::default()).await;
    let request = json!({"model": "slow", "messages": [{"role": "user", "content": "hi"}],
        "stream": true});
    let timeouts = counter("sluice_timeouts_total{wait=\"upstream_first_token\"}");

    // The stream opens at once (its head and the role chunk), then says the upstream timed out.
    let started = std::time::Instant::now();
    let response = post(&format!("{url}/v1/chat/completions"), &request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(900), "the head waited for the upstream");
    let (chunks, done) = chunks(response).await;
    assert!(!done);
    let error = &chunks.last().unwrap()["error"];
    assert!(error["message"].as_str().unwrap().contains("timed out"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(30), "the first-token bound held");
    assert!(counter("sluice_timeouts_total{wait=\"upstream_first_token\"}") > timeouts);

    // An answer is created at once; the timeout is its error.
    let started = std::time::Instant::now();
    let created = post(&format!("{url}/api/generations"), &request).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert!(started.elapsed() < Duration::from_millis(900), "201 waited for the upstream");
    let created: Value = created.json().await.unwrap();
    let events_url = format!("{url}{}", created["events_url"].as_str().unwrap());
    let mut source = EventSource::get(&events_url).reconnect(false).build().unwrap();
    let events = read_events(&mut source, 100).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event_type.as_ref()).collect();
    assert_eq!(kinds, ["error", "usage", "end"]);

    // A client that leaves while the upstream has not answered cancels it, counted.
    let cancelled = counter("sluice_upstream_cancelled_total");
    let response = post(&format!("{url}/v1/chat/completions"), &request).await;
    let mut bytes = response.bytes_stream();
    let _role = bytes.next().await;
    drop(bytes);
    for _ in 0..200 {
        if counter("sluice_upstream_cancelled_total") > cancelled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(counter("sluice_upstream_cancelled_total") > cancelled, "the wait was not counted");
}

/// Issue 16, finding 3: a publisher who knows an answer's id published updates with the ids of
/// its next events (`{answer}.3`, `{answer}.usage`, `{answer}.end`), and the answer's own
/// events then failed to store: its readers never got `end`. Answer events now have ids in
/// the hub's own `#` space, which publishers are refused, so the answer ends as it should.
#[tokio::test]
async fn a_publisher_cannot_take_an_answers_next_event_ids() {
    use sluice_server::{Grant, Verifier, mint_hs256};
    const SECRET: &[u8] = b"gateway test secret";
    let config = Config { publisher: Some(Verifier::hs256(SECRET)), ..Config::default() };
    let server = start_with(script(10.0), config).await;
    let (id, events_url, _) = generation(&server).await;
    let token = mint_hs256(SECRET, &Grant { publish: vec!["*".into()], ..Grant::default() });
    let publish = |event_id: String| {
        let (url, token) = (format!("{}/.well-known/mercure", server.url), token.clone());
        async move {
            let form = [("topic", "https://example.com/x"), ("data", "x"), ("id", &event_id)];
            let response =
                reqwest::Client::new().post(url).bearer_auth(token).form(&form).send().await;
            response.unwrap().status()
        }
    };
    for taken in ["3", "4", "usage", "end"] {
        assert_eq!(publish(format!("{id}.{taken}")).await, StatusCode::OK, "not the answer's");
    }
    for reserved in ["3", "end"] {
        let status = publish(format!("#{id}.{reserved}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "the hub's own ids are refused");
    }
    let mut source = EventSource::get(&events_url).reconnect(false).build().unwrap();
    let events = tokio::time::timeout(Duration::from_secs(30), read_events(&mut source, 1000))
        .await
        .expect("the answer ends");
    assert_eq!(text_of(&events), ANSWER);
    assert_eq!(events.last().unwrap().event_type, "end");
}
