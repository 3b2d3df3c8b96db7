//! Providers against local upstreams that speak the real wire formats, badly chunked on
//! purpose; the router's retries and fallover; cancellation by dropping the stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use sluice_llm::{
    AnswerRecord, Anthropic, AnthropicConfig, Attempts, ChatRequest, Delta, DeltaStream,
    FinishReason, Message, Observer, OpenAi, OpenAiConfig, Provider, ProviderError, Role, Router,
    Script, Scripted, Usage,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TEXT: &str = "Hello 世界! 🎉 Ünïcödé — “quotes” and 中文字符 across splits.";

fn request(model: &str) -> ChatRequest {
    ChatRequest {
        model: model.to_owned(),
        messages: vec![Message::new(Role::System, "be brief"), Message::new(Role::User, "hi")],
        ..ChatRequest::default()
    }
}

/// Everything an answer produced, joined: text, tool calls by index, usage, finish.
#[derive(Debug, Default, PartialEq)]
struct Answer {
    text: String,
    tools: Vec<(Option<String>, Option<String>, String)>,
    usage: Option<Usage>,
    finish: Option<FinishReason>,
    error: Option<ProviderError>,
}

async fn collect(mut stream: DeltaStream) -> Answer {
    let mut answer = Answer::default();
    while let Some(item) = stream.next().await {
        match item {
            Ok(Delta::Text(t)) => answer.text.push_str(&t),
            Ok(Delta::ToolCall { index, id, name, arguments }) => {
                let index = index as usize;
                if answer.tools.len() <= index {
                    answer.tools.resize(index + 1, (None, None, String::new()));
                }
                let call = &mut answer.tools[index];
                call.0 = call.0.take().or(id);
                call.1 = call.1.take().or(name);
                call.2.push_str(&arguments);
            }
            Ok(Delta::Usage(u)) => answer.usage = Some(u),
            Ok(Delta::Finish(f)) => answer.finish = Some(f),
            Err(e) => answer.error = Some(e),
        }
    }
    answer
}

/// A raw HTTP upstream that answers every request with `body` as an event stream, written
/// in pieces cut at pseudo-random byte positions (inside JSON, inside UTF-8 characters),
/// each piece flushed on its own. Returns its base URL.
async fn choppy_upstream(status: u16, content_type: &'static str, body: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut seed = 7u64;
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let body = body.clone();
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let mut rng = seed;
            tokio::spawn(async move {
                let mut request = vec![0u8; 65536];
                let _ = socket.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n"
                );
                socket.write_all(head.as_bytes()).await.unwrap();
                let bytes = body.as_bytes();
                let mut at = 0;
                while at < bytes.len() {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let step = 1 + (rng >> 33) as usize % 7;
                    let end = (at + step).min(bytes.len());
                    if socket.write_all(&bytes[at..end]).await.is_err() {
                        return;
                    }
                    socket.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    at = end;
                }
            });
        }
    });
    url
}

fn openai_body(text: &str, tool_calls_same_index: bool) -> String {
    let mut events = Vec::new();
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            "usage": null,
        })
    };
    events.push(chunk(serde_json::json!({"role": "assistant", "content": ""}), None));
    for piece in sluice_llm::scripted::word_tokens(text) {
        events.push(chunk(serde_json::json!({"content": piece}), None));
    }
    if tool_calls_same_index {
        for (id, name, args) in
            [("call_a", "lookup", r#"{"q":"#), ("call_b", "weather", r#"{"city":"#)]
        {
            events.push(chunk(
                serde_json::json!({"tool_calls": [{"index": 0, "id": id, "type": "function",
                    "function": {"name": name, "arguments": args}}]}),
                None,
            ));
            events.push(chunk(
                serde_json::json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"x\"}"}}]}),
                None,
            ));
        }
    }
    let finish = if tool_calls_same_index { "tool_calls" } else { "stop" };
    events.push(chunk(serde_json::json!({}), Some(finish)));
    events.push(serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
        "created": 1, "model": "m", "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 21, "total_tokens": 30}}));
    let mut body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    body.push_str(": a comment, ignored\n\ndata: [DONE]\n\n");
    body
}

fn openai(base_url: String) -> OpenAi {
    OpenAi::new(OpenAiConfig {
        name: "upstream".into(),
        base_url,
        api_key: Some("sk-test".into()),
        timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
    })
}

#[tokio::test]
async fn openai_text_split_inside_json_and_characters_arrives_exact() {
    let url = choppy_upstream(200, "text/event-stream", openai_body(TEXT, false)).await;
    let answer = collect(openai(url).stream(request("m")).await.unwrap()).await;
    assert_eq!(answer.text, TEXT);
    assert_eq!(answer.usage, Some(Usage::new(9, 21)));
    assert_eq!(answer.finish, Some(FinishReason::Stop));
    assert_eq!(answer.error, None);
}

#[tokio::test]
async fn parallel_tool_calls_on_one_index_stay_apart() {
    let url = choppy_upstream(200, "text/event-stream", openai_body("", true)).await;
    let answer = collect(openai(url).stream(request("m")).await.unwrap()).await;
    assert_eq!(
        answer.tools,
        [
            (Some("call_a".into()), Some("lookup".into()), r#"{"q":"x"}"#.to_owned()),
            (Some("call_b".into()), Some("weather".into()), r#"{"city":"x"}"#.to_owned()),
        ]
    );
    assert_eq!(answer.finish, Some(FinishReason::ToolCalls));
}

#[tokio::test]
async fn openai_errors_before_the_stream_map_to_provider_errors() {
    let body = r#"{"error":{"message":"bad key","type":"invalid_request_error"}}"#.to_owned();
    let url = choppy_upstream(401, "application/json", body).await;
    match openai(url).stream(request("m")).await {
        Err(ProviderError::Unauthorized(message)) => assert_eq!(message, "bad key"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let url = choppy_upstream(503, "application/json", "overloaded".into()).await;
    let error = openai(url).stream(request("m")).await.err().unwrap();
    assert!(error.is_retryable(), "{error}");
}

#[tokio::test]
async fn an_error_chunk_mid_stream_is_an_error() {
    let body = format!(
        "data: {}\n\ndata: {}\n\n",
        r#"{"choices":[{"index":0,"delta":{"content":"partial"}}]}"#,
        r#"{"error":{"message":"model crashed","type":"server_error"}}"#
    );
    let url = choppy_upstream(200, "text/event-stream", body).await;
    let answer = collect(openai(url).stream(request("m")).await.unwrap()).await;
    assert_eq!(answer.text, "partial");
    assert!(
        matches!(answer.error, Some(ProviderError::Upstream { ref message, .. }) if message == "model crashed")
    );
}

#[tokio::test]
async fn odd_values_in_a_chunk_are_passed_over_and_escapes_read() {
    let chunks = [
        r#"{"choices":[{"index":0,"delta":null,"finish_reason":null}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":7},"finish_reason":3}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":{"parts":["x"]},"extra":[1,{"a":2}]}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":[true,null]},"finish_reason":false}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":"say \"h\u00e9\"\n"}}],"x":{"y":[]}}"#,
        r#"{"choices":null,"usage":{"prompt_tokens":2,"completion_tokens":"many"}}"#,
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#,
    ];
    let mut body: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    body.push_str("data: [DONE]\n\n");
    let url = choppy_upstream(200, "text/event-stream", body).await;
    let answer = collect(openai(url).stream(request("m")).await.unwrap()).await;
    assert_eq!(answer.error, None);
    assert_eq!(answer.text, "say \"h\u{e9}\"\n");
    assert_eq!(answer.usage, Some(Usage::new(2, 0)));
    assert_eq!(answer.finish, Some(FinishReason::Length));
}

fn anthropic_body(text: &str) -> String {
    let mut events = vec![
        (
            "message_start",
            serde_json::json!({"type": "message_start", "message": {"id": "msg_1",
            "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            serde_json::json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        ("ping", serde_json::json!({"type": "ping"})),
    ];
    for piece in sluice_llm::scripted::word_tokens(text) {
        events.push((
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta",
            "index": 0, "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    events.extend([
        ("content_block_stop", serde_json::json!({"type": "content_block_stop", "index": 0})),
        (
            "content_block_start",
            serde_json::json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}}),
        ),
        (
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "{\"q\": "}}),
        ),
        (
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "\"世界\"}"}}),
        ),
        ("content_block_stop", serde_json::json!({"type": "content_block_stop", "index": 1})),
        (
            "message_delta",
            serde_json::json!({"type": "message_delta",
            "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 33}}),
        ),
        ("message_stop", serde_json::json!({"type": "message_stop"})),
    ]);
    events.iter().map(|(name, data)| format!("event: {name}\ndata: {data}\n\n")).collect()
}

#[tokio::test]
async fn anthropic_events_translate_into_the_same_deltas() {
    let url = choppy_upstream(200, "text/event-stream", anthropic_body(TEXT)).await;
    let provider = Anthropic::new(AnthropicConfig {
        name: "claude".into(),
        base_url: url,
        api_key: Some("key".into()),
        timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
    });
    let answer = collect(provider.stream(request("claude-x")).await.unwrap()).await;
    assert_eq!(answer.text, TEXT);
    assert_eq!(
        answer.tools,
        [(Some("toolu_1".into()), Some("lookup".into()), r#"{"q": "世界"}"#.into())]
    );
    assert_eq!(answer.usage, Some(Usage::new(12, 33)));
    assert_eq!(answer.finish, Some(FinishReason::ToolCalls));

    let overloaded = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let url = choppy_upstream(200, "text/event-stream", overloaded.into()).await;
    let provider = Anthropic::new(AnthropicConfig {
        name: "claude".into(),
        base_url: url,
        api_key: None,
        timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
    });
    let answer = collect(provider.stream(request("claude-x")).await.unwrap()).await;
    assert!(matches!(answer.error, Some(ProviderError::Upstream { status: 529, .. })));
}

fn scripted(text: &str, fail_after: Option<usize>) -> Arc<Scripted> {
    Arc::new(Scripted::new(
        "scripted",
        Script {
            text: text.into(),
            tokens_per_second: 0.0,
            time_to_first_token: Duration::ZERO,
            fail_after,
            tool_calls: Vec::new(),
        },
    ))
}

fn quick() -> Attempts {
    Attempts {
        retries: 1,
        backoff: Duration::from_millis(1),
        first_token_timeout: Duration::from_secs(30),
        gap_timeout: Duration::from_secs(30),
    }
}

#[tokio::test]
async fn the_router_falls_over_before_the_first_token_only() {
    let failing = scripted("never shown", Some(0));
    let working = scripted("from the second provider", None);
    let mut router = Router::new();
    router.add(failing.clone(), vec!["m".into()], quick());
    router.add(working.clone(), vec!["m".into()], quick());
    let answer = collect(router.stream(request("m")).await.unwrap()).await;
    assert_eq!(answer.text, "from the second provider");
    assert_eq!(answer.error, None);
    assert_eq!(failing.stats().started(), 2, "one retry on the first provider, then fallover");

    // After the first token an error is the answer's error: no replay elsewhere.
    let mut router = Router::new();
    router.add(scripted("one two three", Some(2)), vec!["late".into()], quick());
    router.add(scripted("other", None), vec!["late".into()], quick());
    let answer = collect(router.stream(request("late")).await.unwrap()).await;
    assert_eq!(answer.text, "one two");
    assert!(answer.error.is_some());

    assert!(matches!(
        router.stream(request("nope")).await.err(),
        Some(ProviderError::UnknownModel(_))
    ));
    let models = router.models();
    assert_eq!(models, [("late".to_owned(), "scripted".to_owned())]);
}

#[tokio::test]
async fn the_router_tells_its_observer_how_each_answer_ended() {
    let records = Arc::new(std::sync::Mutex::new(Vec::<AnswerRecord>::new()));
    let mut router = Router::new();
    let seen = Arc::clone(&records);
    router.observe(Observer::new(move |record| seen.lock().unwrap().push(record.clone())));
    router.add(scripted("zero", Some(0)), vec!["m".into()], quick());
    router.add(scripted("one two three", None), vec!["m".into()], quick());
    router.add(scripted("one two three", Some(1)), vec!["fails".into()], quick());
    let taken = || std::mem::take(&mut *records.lock().unwrap());

    // Served by the second provider after the first failed: one record, the second's.
    let answer =
        collect(router.stream(ChatRequest { max_tokens: Some(9), ..request("m") }).await.unwrap())
            .await;
    let [record] = taken().try_into().unwrap();
    assert_eq!(record.provider, "scripted");
    assert_eq!(record.system, "sluice.scripted");
    assert_eq!((record.model.as_str(), record.max_tokens), ("m", Some(9)));
    assert_eq!(record.usage, answer.usage);
    assert!(record.usage.is_some_and(|u| u.completion_tokens > 0));
    assert_eq!(record.finish_reason, Some(FinishReason::Stop));
    assert_eq!(record.deltas, 3);
    assert!(record.time_to_first_token.is_some_and(|t| t <= record.duration));
    assert!(!record.cancelled && record.error.is_none());

    // The reader leaves after the first token: cancelled, with what it had.
    let mut stream = router.stream(request("m")).await.unwrap();
    while !matches!(stream.next().await, Some(Ok(Delta::Text(_)))) {}
    assert!(taken().is_empty(), "nothing is told before the answer is over");
    drop(stream);
    let [record] = taken().try_into().unwrap();
    assert!(record.cancelled);
    assert_eq!((record.deltas, record.usage, record.finish_reason), (1, None, None));

    // A reader that stops at the finish, before the stream's end, cancelled nothing.
    let mut stream = router.stream(request("m")).await.unwrap();
    while !matches!(stream.next().await, Some(Ok(Delta::Finish(_)))) {}
    drop(stream);
    let [record] = taken().try_into().unwrap();
    assert!(!record.cancelled);
    assert_eq!(record.finish_reason, Some(FinishReason::Stop));

    // An error after the first token ends the answer with it.
    let answer = collect(router.stream(request("fails")).await.unwrap()).await;
    let [record] = taken().try_into().unwrap();
    assert_eq!(record.error, answer.error);
    assert!(record.error.is_some() && !record.cancelled);

    // No provider for the model: told at once, with the error.
    assert!(router.stream(request("nope")).await.is_err());
    assert!(taken().is_empty(), "an unknown model is refused before any answer starts");
}

#[tokio::test]
async fn a_slow_first_token_falls_over_by_timeout() {
    let slow = Arc::new(Scripted::new(
        "slow",
        Script { time_to_first_token: Duration::from_secs(3600), ..Script::default() },
    ));
    let mut router = Router::new();
    router.add(
        slow.clone(),
        vec!["m".into()],
        Attempts {
            retries: 0,
            backoff: Duration::ZERO,
            first_token_timeout: Duration::from_millis(50),
            gap_timeout: Duration::from_secs(30),
        },
    );
    router.add(scripted("fast", None), vec!["m".into()], quick());
    let answer = collect(router.stream(request("m")).await.unwrap()).await;
    assert_eq!(answer.text, "fast");
    assert_eq!(slow.stats().cancelled(), 1, "the slow attempt was dropped, not left running");
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_answer() {
    let provider = Arc::new(Scripted::new(
        "scripted",
        Script { text: "a b c d e f g h".into(), tokens_per_second: 1000.0, ..Script::default() },
    ));
    let mut stream = provider.stream(request("m")).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first, Delta::Text("a".into()));
    drop(stream);
    let stats = provider.stats();
    assert_eq!((stats.cancelled(), stats.finished()), (1, 0));
    let tokens_at_drop = stats.tokens();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(stats.tokens(), tokens_at_drop, "nothing is generated after the drop");
}

/// What a faulty upstream does after its response head.
#[derive(Clone, Copy)]
enum Fault {
    /// Sends nothing, ever.
    HangsBeforeTheFirstToken,
    /// Sends one chunk, then nothing, holding the connection open.
    StallsMidStream,
    /// Sends one chunk, then resets the connection.
    Resets,
    /// Sends a line that is not JSON.
    Garbage,
    /// Sends one 10 MB line.
    HugeLine,
}

/// An OpenAI-compatible upstream with `fault`. Returns its URL and a receiver that yields
/// once the server sees the client close the connection (the upstream request released).
async fn faulty_upstream(fault: Fault) -> (String, tokio::sync::oneshot::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let (released, released_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = vec![0u8; 65536];
        let _ = socket.read(&mut request).await;
        let head =
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
        socket.write_all(head.as_bytes()).await.unwrap();
        let first =
            r#"data: {"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#;
        match fault {
            Fault::HangsBeforeTheFirstToken => {}
            Fault::StallsMidStream => {
                socket.write_all(format!("{first}\n\n").as_bytes()).await.unwrap();
            }
            Fault::Resets => {
                socket.write_all(format!("{first}\n\n").as_bytes()).await.unwrap();
                socket.set_zero_linger().unwrap();
                drop(socket);
                return;
            }
            Fault::Garbage => socket.write_all(b"data: {not json at all\n\n").await.unwrap(),
            Fault::HugeLine => {
                let line = format!("data: {}\n\n", "x".repeat(10 * 1024 * 1024));
                let _ = socket.write_all(line.as_bytes()).await;
            }
        }
        // Wait for the client to go away: a read of 0 bytes (or an error) is its close.
        let mut rest = [0u8; 1024];
        loop {
            match socket.read(&mut rest).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = released.send(());
    });
    (url, released_rx)
}

fn impatient() -> Attempts {
    Attempts {
        retries: 0,
        backoff: Duration::ZERO,
        first_token_timeout: Duration::from_millis(300),
        gap_timeout: Duration::from_millis(300),
    }
}

/// Issue 10, finding 3: an upstream that hangs, stalls, resets, sends garbage or a 10 MB
/// line ends the answer with an error, and the upstream connection is released.
#[tokio::test]
async fn faulty_upstreams_end_the_answer_with_an_error_and_are_released() {
    for fault in [
        Fault::HangsBeforeTheFirstToken,
        Fault::StallsMidStream,
        Fault::Resets,
        Fault::Garbage,
        Fault::HugeLine,
    ] {
        let (url, released) = faulty_upstream(fault).await;
        let mut router = Router::new();
        router.add(Arc::new(openai(url)), vec!["m".into()], impatient());
        let outcome = tokio::time::timeout(Duration::from_secs(20), async {
            match router.stream(request("m")).await {
                Ok(stream) => collect(stream).await.error,
                Err(error) => Some(error),
            }
        })
        .await
        .expect("the answer ends within a bounded time");
        let error = outcome.expect("the answer ends with an error");
        match fault {
            Fault::HangsBeforeTheFirstToken | Fault::StallsMidStream => {
                assert!(matches!(error, ProviderError::Timeout(_)), "{error:?}");
            }
            Fault::Resets => assert!(matches!(error, ProviderError::Network(_)), "{error:?}"),
            Fault::Garbage | Fault::HugeLine => {}
        }
        if !matches!(fault, Fault::Resets) {
            tokio::time::timeout(Duration::from_secs(20), released)
                .await
                .expect("the upstream connection is closed")
                .unwrap();
        }
    }
}

/// An OpenAI-compatible upstream that answers each request on a connection with a chunked
/// event stream of `text`, keeping the connection open for `per_connection` requests and then
/// closing it without a word (as a server whose keep-alive ran out does). Returns its URL and
/// the count of connections it accepted.
async fn keep_alive_upstream(per_connection: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for _ in 0..per_connection {
                    let head_end = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                        let mut piece = [0u8; 4096];
                        match socket.read(&mut piece).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&piece[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|line| line.strip_prefix("content-length: "))
                        .map_or(0, |length| length.trim().parse().unwrap());
                    while buf.len() < head_end + length {
                        let mut piece = [0u8; 4096];
                        match socket.read(&mut piece).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&piece[..n]),
                        }
                    }
                    buf.drain(..head_end + length);
                    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                                Transfer-Encoding: chunked\r\n\r\n";
                    socket.write_all(head.as_bytes()).await.unwrap();
                    // One chunk per event, and one event cut across two chunks.
                    let body = openai_body(TEXT, false);
                    let (first, second) = body.split_at(body.len() / 2);
                    for piece in [first, second] {
                        let chunk = format!("{:x}\r\n{piece}\r\n", piece.len());
                        socket.write_all(chunk.as_bytes()).await.unwrap();
                    }
                    socket.write_all(b"0\r\n\r\n").await.unwrap();
                }
            });
        }
    });
    (url, accepted)
}

/// The plain HTTP/1.1 client reads chunked answers, reuses a kept-alive connection for the
/// next answer, and replaces a pooled connection the upstream has closed meanwhile.
#[tokio::test]
async fn upstream_connections_are_kept_alive_and_a_closed_one_is_replaced() {
    for (per_connection, connections) in [(usize::MAX, 1), (1, 3)] {
        let (url, accepted) = keep_alive_upstream(per_connection).await;
        let provider = openai(url);
        for _ in 0..3 {
            let answer = collect(provider.stream(request("m")).await.unwrap()).await;
            assert_eq!(answer.text, TEXT);
            assert_eq!(answer.finish, Some(FinishReason::Stop), "{answer:?}");
            // Let a closing upstream's close arrive before the next request, or not.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), connections, "{per_connection} per connection");
    }
}
