//! How fast the local model is: load time, time to first token, and tokens per second for a
//! greedy answer of about 100 tokens.
//!
//! ```text
//! scripts/fetch-model.sh
//! cargo run --release -p sluice-llm --example local_speed [-- MODEL.gguf [RUNS]]
//! CANDLE_NUM_THREADS=1 cargo run --release -p sluice-llm --example local_speed
//! ```
//!
//! Each run asks the same question (greedy, `max_tokens` 100) and reports: time to first
//! token (from `stream()` to the first text delta: template, tokenizing, the prompt's forward
//! pass and one sampled token), decode speed (tokens after the first, over the time after the
//! first), and overall speed; the first run's answer is printed too, so that a change to the
//! model's code can be checked to leave the greedy text alone. The median of the runs is
//! printed last.

use std::time::Instant;

use futures_util::StreamExt;
use sluice_llm::{ChatRequest, Delta, LocalConfig, LocalModel, Message, Provider, Role};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| sluice_llm::local::DEFAULT_MODEL_PATH.to_owned());
    let runs: usize = args.next().map_or(Ok(5), |n| n.parse())?;

    let threads = std::env::var("CANDLE_NUM_THREADS")
        .or_else(|_| std::env::var("RAYON_NUM_THREADS"))
        .unwrap_or_else(|_| "default".into());
    println!("model: {path}  candle threads: {threads}  load avg: {}", load_average());
    let config = LocalConfig::new(&path);
    let started = Instant::now();
    let model = LocalModel::load(config)?;
    println!(
        "load: {:.3} s (LocalModel::load measured {:.3} s)",
        started.elapsed().as_secs_f64(),
        model.load_time().as_secs_f64()
    );

    let request = ChatRequest {
        messages: vec![Message::new(
            Role::User,
            "Explain in a few paragraphs how a bicycle works, for a child.",
        )],
        temperature: Some(0.0),
        max_tokens: Some(100),
        ..ChatRequest::default()
    };

    let mut ttfts = Vec::new();
    let mut decode_rates = Vec::new();
    let mut overall_rates = Vec::new();
    for run in 1..=runs {
        let start = Instant::now();
        let mut stream = model.stream(request.clone()).await?;
        let mut first = None;
        let mut completion = 0;
        let mut prompt = 0;
        let mut answer = String::new();
        while let Some(delta) = stream.next().await {
            match delta? {
                Delta::Text(text) => {
                    first.get_or_insert_with(|| start.elapsed());
                    answer.push_str(&text);
                }
                Delta::Usage(usage) => {
                    completion = usage.completion_tokens;
                    prompt = usage.prompt_tokens;
                }
                _ => {}
            }
        }
        let total = start.elapsed();
        let first = first.ok_or("no text was generated")?;
        let decode = f64::from(completion.saturating_sub(1)) / (total - first).as_secs_f64();
        let overall = f64::from(completion) / total.as_secs_f64();
        println!(
            "run {run}: prompt {prompt} tokens, answer {completion} tokens, first token {:.1} ms, \
             decode {decode:.1} tokens/s, overall {overall:.1} tokens/s, total {:.2} s",
            first.as_secs_f64() * 1000.0,
            total.as_secs_f64()
        );
        if run == 1 {
            println!("answer: {answer:?}");
        }
        ttfts.push(first.as_secs_f64() * 1000.0);
        decode_rates.push(decode);
        overall_rates.push(overall);
    }
    println!(
        "median of {runs}: first token {:.1} ms, decode {:.1} tokens/s, overall {:.1} tokens/s",
        median(&mut ttfts),
        median(&mut decode_rates),
        median(&mut overall_rates)
    );
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
