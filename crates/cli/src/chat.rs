//! `sluice chat PROMPT`: ask a model through a Sluice gateway (or any OpenAI-compatible
//! server) and print the answer as it streams, then how fast it came.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sluice_client::{EventSource, Item};

/// Ask a model and print the answer as it streams, then time to first token and tokens/s.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// What to ask.
    prompt: String,
    /// The server's base URL.
    #[arg(long, env = "SLUICE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The model [default: the server's first].
    #[arg(long)]
    model: Option<String>,
    /// A system prompt.
    #[arg(long)]
    system: Option<String>,
    /// Sampling temperature.
    #[arg(long)]
    temperature: Option<f32>,
    /// The most tokens to generate.
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Seed for reproducible sampling.
    #[arg(long)]
    seed: Option<u64>,
    /// API key (`Authorization: Bearer`).
    #[arg(long, env = "SLUICE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

async fn first_model(args: &Args) -> anyhow::Result<String> {
    let mut request = reqwest::Client::new().get(format!("{}/v1/models", args.url));
    if let Some(key) = &args.api_key {
        request = request.bearer_auth(key);
    }
    let models: Value = request.send().await.context("listing models")?.json().await?;
    models["data"][0]["id"].as_str().map(str::to_owned).context("the server lists no model")
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let model = match &args.model {
        Some(model) => model.clone(),
        None => first_model(&args).await?,
    };
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": args.prompt}));
    let mut body = json!({"model": model, "messages": messages, "stream": true,
                          "stream_options": {"include_usage": true}});
    for (key, value) in [
        ("temperature", args.temperature.map(|t| json!(t))),
        ("max_tokens", args.max_tokens.map(|t| json!(t))),
        ("seed", args.seed.map(|s| json!(s))),
    ] {
        if let Some(value) = value {
            body[key] = value;
        }
    }
    let mut builder =
        EventSource::post(&format!("{}/v1/chat/completions", args.url), body.to_string())
            .header("Content-Type", "application/json")
            .reconnect(false);
    if let Some(key) = &args.api_key {
        builder = builder.header("Authorization", format!("Bearer {key}"));
    }
    let mut source = builder.build()?;
    let started = Instant::now();
    let (mut first_token, mut chunks, mut usage) = (None, 0u32, None);
    let mut stdout = std::io::stdout().lock();
    while let Some(item) = source.next().await {
        let Item::Message(event) = item.context("the answer stream failed")? else { continue };
        if event.data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&event.data).context("an unreadable chunk")?;
        if let Some(error) = chunk.get("error") {
            bail!("the model failed: {}", error["message"].as_str().unwrap_or("unknown error"));
        }
        if let Some(text) =
            chunk["choices"][0]["delta"]["content"].as_str().filter(|t| !t.is_empty())
        {
            first_token.get_or_insert_with(|| started.elapsed());
            chunks += 1;
            stdout.write_all(text.as_bytes())?;
            stdout.flush()?;
        }
        if let Some(tokens) = chunk["usage"]["completion_tokens"].as_u64() {
            usage = Some(tokens);
        }
    }
    writeln!(stdout)?;
    let total = started.elapsed();
    let tokens = usage.unwrap_or(u64::from(chunks));
    let ttft = first_token.unwrap_or(total);
    let generating = (total - ttft).as_secs_f64();
    let rate = if generating > 0.0 { tokens.saturating_sub(1) as f64 / generating } else { 0.0 };
    eprintln!(
        "{model}: {tokens} tokens, first after {:.0} ms, {rate:.1} tokens/s",
        ttft.as_secs_f64() * 1000.0
    );
    Ok(ExitCode::SUCCESS)
}
