//! The local model provider, end to end, with the real SmolLM2-135M model.
//!
//! The model file is not in the repository: `scripts/fetch-model.sh` installs it (and
//! `make test` runs that first). These tests fail, rather than skip, when it is missing.

#![cfg(feature = "local")]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sluice_llm::{
    ChatRequest, Delta, FinishReason, LocalConfig, LocalModel, Message, Provider, ProviderError,
    Role, Usage,
};

fn model_path() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_MODEL_PATH") {
        return path.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.join(sluice_llm::local::DEFAULT_MODEL_PATH)
}

fn load(config: impl FnOnce(&mut LocalConfig)) -> LocalModel {
    let path = model_path();
    assert!(
        path.is_file(),
        "the local model is missing at {}: run scripts/fetch-model.sh (make test does) and \
         try again",
        path.display()
    );
    let mut cfg = LocalConfig::new(path);
    config(&mut cfg);
    LocalModel::load(cfg).expect("the model loads")
}

/// One model shared by the tests that only read from it.
fn shared() -> &'static LocalModel {
    static MODEL: OnceLock<LocalModel> = OnceLock::new();
    MODEL.get_or_init(|| load(|_| {}))
}

fn ask(prompt: &str) -> ChatRequest {
    ChatRequest {
        model: "smollm2-135m".into(),
        messages: vec![Message::new(Role::User, prompt)],
        ..ChatRequest::default()
    }
}

/// Everything one answer streamed.
#[derive(Debug)]
struct Answer {
    text: String,
    pieces: Vec<String>,
    usage: Usage,
    finish: FinishReason,
}

async fn run(model: &LocalModel, request: ChatRequest) -> Answer {
    let mut stream = model.stream(request).await.expect("the request is accepted");
    let mut pieces = Vec::new();
    let mut usage = None;
    let mut finish = None;
    while let Some(delta) = stream.next().await {
        assert!(finish.is_none(), "a delta after Finish: {delta:?}");
        match delta.expect("no error") {
            Delta::Text(text) => {
                assert!(usage.is_none(), "text after usage");
                assert!(!text.is_empty(), "an empty text delta");
                pieces.push(text);
            }
            Delta::Usage(u) => usage = Some(u),
            Delta::Finish(reason) => {
                assert!(usage.is_some(), "Finish without Usage before it");
                finish = Some(reason);
            }
            other => panic!("unexpected delta {other:?}"),
        }
    }
    Answer {
        text: pieces.concat(),
        pieces,
        usage: usage.expect("usage"),
        finish: finish.expect("a finish reason"),
    }
}

fn prompt_tokens(model: &LocalModel, request: &ChatRequest) -> u32 {
    let prompt = model.render_prompt(request).unwrap();
    model.tokenize(&prompt).unwrap().len() as u32
}

#[test]
fn the_chat_template_special_tokens_are_ids_1_and_2() {
    let model = shared();
    let prompt = model.render_prompt(&ask("Hi")).unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = model.tokenize(&prompt).unwrap();
    assert_eq!(ids[0], 1, "<|im_start|> is one token, id 1: {ids:?}");
    assert_eq!(ids.iter().filter(|&&id| id == 1).count(), 3, "{ids:?}");
    assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 2, "{ids:?}");
    assert_eq!(model.tokenize("<|im_end|>").unwrap(), [2]);
    // The template's text, special tokens aside, comes back exactly.
    let plain: String = prompt.replace("<|im_start|>", "").replace("<|im_end|>", "");
    assert_eq!(model.detokenize(&ids), plain);
}

/// Ids from an independent conversion of the same file's metadata: the Python
/// `transformers` GGUF tokenizer converter (transformers 5, tokenizers 0.22).
#[test]
fn tokenizer_matches_known_ids() {
    let model = shared();
    let known: &[(&str, &[u32])] = &[
        ("Hello, world!", &[19556, 28, 905, 17]),
        (
            "  leading spaces and\ttabs\n\nnew lines  ",
            &[216, 2899, 5600, 284, 197, 100, 7366, 198, 198, 2241, 3204, 256],
        ),
        (
            "Zürich, 你好, こんにちは, 😀👍🏽, ﷽",
            &[
                74, 7170, 5130, 28, 216, 18645, 250, 48392, 138, 28, 46673, 237, 10391, 237, 41152,
                7365, 111, 7365, 124, 28, 40303, 218, 10813, 235, 231, 10813, 233, 138, 28, 216,
                186, 132, 138,
            ],
        ),
        (
            "fn main() { println!(\"{}\", 12345); }",
            &[
                7853, 1085, 1000, 1662, 1628, 34115, 17, 43331, 1002, 216, 33, 34, 35, 36, 37,
                4258, 4029,
            ],
        ),
        (
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            &[1, 4093, 198, 26843, 2, 198, 1, 520, 9531, 198],
        ),
        ("The year 2024 was great.", &[504, 713, 216, 34, 32, 34, 36, 436, 1109, 30]),
        ("I'm  don't   you'll", &[57, 5248, 216, 1326, 982, 256, 346, 3060]),
    ];
    for (text, ids) in known {
        assert_eq!(model.tokenize(text).unwrap(), *ids, "{text:?}");
    }
}

#[test]
fn tokenizer_round_trips_and_splits_digits() {
    let model = shared();
    for text in [
        "Hello, world!",
        "  leading spaces and\ttabs\n\nnew lines  ",
        "Zürich, 你好, こんにちは, 😀👍🏽, ﷽",
        "fn main() { println!(\"{}\", 12345); }",
    ] {
        let ids = model.tokenize(text).unwrap();
        assert_eq!(model.detokenize(&ids), text, "{ids:?}");
    }
    // SmolLM's pre-tokenizer puts every digit in its own token.
    assert_eq!(model.tokenize("2024").unwrap().len(), 4);
    // Common words are single tokens (GPT-2 style "Ġ" prefix for the space).
    assert_eq!(model.tokenize(" the").unwrap().len(), 1);
    assert_eq!(model.tokenize("Hello world").unwrap().len(), 2);
}

#[tokio::test]
async fn answers_a_short_prompt_the_same_way_twice_with_a_seed() {
    let model = shared();
    let request = ChatRequest {
        temperature: Some(0.8),
        seed: Some(7),
        max_tokens: Some(24),
        ..ask("Name a fruit.")
    };
    let first = run(model, request.clone()).await;
    let second = run(model, request.clone()).await;
    assert!(!first.text.trim().is_empty(), "{first:?}");
    assert_eq!(first.text, second.text);
    assert_eq!(first.usage, second.usage);
    assert_eq!(first.usage.prompt_tokens, prompt_tokens(model, &request));
    assert!(first.usage.completion_tokens >= 1 && first.usage.completion_tokens <= 24);
    assert_eq!(first.usage.total_tokens, first.usage.prompt_tokens + first.usage.completion_tokens);
    if first.finish == FinishReason::Length {
        assert_eq!(first.usage.completion_tokens, 24);
    }
    println!("seeded answer: {:?}", first.text);
}

#[tokio::test]
async fn greedy_is_deterministic_and_sensible() {
    let model = shared();
    let request = ChatRequest {
        temperature: Some(0.0),
        max_tokens: Some(40),
        ..ask("What is the capital of France? Answer in one sentence.")
    };
    let first = run(model, request.clone()).await;
    // A different seed does not matter when greedy.
    let second = run(model, ChatRequest { seed: Some(99), ..request }).await;
    assert_eq!(first.text, second.text);
    assert!(first.text.contains("Paris"), "{:?}", first.text);
    println!("greedy answer: {:?} ({:?})", first.text, first.usage);
}

/// Two and three threads split each product by rows and attention by (token, head); every
/// value is computed by the same code as on one thread, so the answer is the same to the
/// character. (`make test` runs the model on one thread otherwise: this is where the team of
/// threads is tested.)
#[tokio::test]
async fn more_threads_give_the_same_greedy_answer() {
    let request = ChatRequest {
        temperature: Some(0.0),
        max_tokens: Some(30),
        ..ask("Name three colours of the rainbow and say why the sky is blue.")
    };
    let one = run(&load(|c| c.threads = Some(1)), request.clone()).await;
    for threads in [2, 3] {
        let more = run(&load(|c| c.threads = Some(threads)), request.clone()).await;
        assert_eq!(more.text, one.text, "{threads} threads");
        assert_eq!(more.usage, one.usage, "{threads} threads");
    }
    assert!(!one.text.is_empty());
}

#[tokio::test]
async fn a_stop_string_truncates_and_is_not_emitted() {
    let model = shared();
    let request = ChatRequest {
        temperature: Some(0.0),
        max_tokens: Some(40),
        ..ask("Write one sentence about the sea.")
    };
    let full = run(model, request.clone()).await;
    // A stop string from the middle of the greedy answer, likely spanning tokens.
    let chars: Vec<(usize, char)> = full.text.char_indices().collect();
    assert!(chars.len() > 20, "answer too short to cut: {:?}", full.text);
    let from = chars[chars.len() / 2].0;
    let to = chars[chars.len() / 2 + 5].0;
    let stop = full.text[from..to].to_owned();
    let expected = &full.text[..full.text.find(&stop).unwrap()];

    let cut = run(model, ChatRequest { stop: vec![stop.clone()], ..request }).await;
    assert_eq!(cut.text, expected, "stop {stop:?}");
    assert!(!cut.text.contains(&stop));
    assert_eq!(cut.finish, FinishReason::Stop);
    assert!(cut.usage.completion_tokens < full.usage.completion_tokens);
}

#[tokio::test]
async fn max_tokens_ends_with_length_and_exact_usage() {
    let model = shared();
    let request = ChatRequest {
        temperature: Some(0.0),
        max_tokens: Some(5),
        ..ask("Tell me a long story about a lighthouse keeper.")
    };
    let answer = run(model, request.clone()).await;
    assert_eq!(answer.finish, FinishReason::Length);
    let prompt = prompt_tokens(model, &request);
    assert_eq!(answer.usage, Usage::new(prompt, 5));
    assert!(!answer.pieces.is_empty());
}

#[tokio::test]
async fn an_answer_that_ends_by_itself_finishes_with_stop() {
    let model = shared();
    let request = ChatRequest {
        temperature: Some(0.0),
        max_tokens: Some(200),
        ..ask("Reply with just the word: yes")
    };
    let answer = run(model, request).await;
    assert_eq!(answer.finish, FinishReason::Stop, "{answer:?}");
    assert!(answer.usage.completion_tokens < 200);
    // The end-of-turn token is counted but never shown.
    assert!(!answer.text.contains("<|im_end|>"));
}

#[tokio::test]
async fn invalid_requests_are_refused_up_front() {
    let model = shared();
    let zero = ChatRequest { max_tokens: Some(0), ..ask("hi") };
    assert!(matches!(model.stream(zero).await, Err(ProviderError::InvalidRequest(_))));
    let long = ask(&"word ".repeat(model.context_length()));
    assert!(matches!(model.stream(long).await, Err(ProviderError::InvalidRequest(_))));
}

#[tokio::test]
async fn dropping_the_stream_stops_the_worker_within_a_token() {
    let model = load(|_| {});
    let request = ChatRequest {
        temperature: Some(0.0),
        max_tokens: Some(300),
        ..ask("Write a very long story about a dragon who learns to bake bread.")
    };
    let mut stream = model.stream(request).await.unwrap();
    // Wait for the first text, then leave.
    loop {
        match stream.next().await.expect("an answer").unwrap() {
            Delta::Text(_) => break,
            Delta::Finish(reason) => panic!("finished ({reason:?}) before it could be cancelled"),
            _ => {}
        }
    }
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(60);
    while model.stats().cancelled == 0 {
        assert!(Instant::now() < deadline, "the worker did not notice: {:?}", model.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = model.stats();
    assert_eq!(stats.started, 1);
    assert_eq!(stats.cancelled, 1);
    assert!(stats.tokens_after_cancel <= 1, "{stats:?}");
    assert!(stats.tokens_generated < 300, "{stats:?}");

    // The worker is free: the next request runs to its end.
    let next = ChatRequest { temperature: Some(0.0), max_tokens: Some(3), ..ask("Hello!") };
    let answer = run(&model, next).await;
    assert_eq!(answer.usage.completion_tokens, 3);
    let after = model.stats();
    assert_eq!((after.started, after.completed, after.cancelled), (2, 1, 1));
    assert_eq!(after.tokens_generated, stats.tokens_generated + 3);
}

#[tokio::test]
async fn a_full_queue_answers_busy() {
    let model = load(|c| c.queue_capacity = 1);
    let long = || ChatRequest {
        temperature: Some(0.0),
        max_tokens: Some(64),
        ..ask("Write a long poem about the ocean.")
    };
    // The first is taken by the worker (or waits), the second waits: no room for a third,
    // which is refused at once. A generation takes far longer than these three calls.
    let first = model.stream(long()).await.unwrap();
    let second = model.stream(long()).await;
    let third = model.stream(long()).await;
    let refused = match (&second, &third) {
        (Err(e), _) | (Ok(_), Err(e)) => e.clone(),
        _ => panic!("no request was refused"),
    };
    match refused {
        ProviderError::Busy { retry_after, .. } => {
            assert!(retry_after.unwrap() >= Duration::from_secs(1));
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    assert!(model.stats().busy >= 1);
    assert!(refused.is_retryable());
    // Readers that neither read nor leave hold the worker (the delta channel is bounded):
    // leave.
    drop((first, second, third));
    // Once the queue drains, requests are accepted again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match model.stream(ChatRequest { max_tokens: Some(2), ..long() }).await {
            Ok(stream) => {
                let deltas: Vec<_> = stream.collect().await;
                assert!(matches!(deltas.last(), Some(Ok(Delta::Finish(_)))), "{deltas:?}");
                break;
            }
            Err(ProviderError::Busy { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}
