//! `sluice publish`: post one update to a Mercure hub and print the id it was given.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, bail};

/// Publish an update to a hub; prints the id the hub assigned.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The hub URL, e.g. http://127.0.0.1:8080/.well-known/mercure.
    #[arg(long, env = "SLUICE_HUB_URL")]
    hub: String,
    /// Topic of the update (repeat for alternate topics; the first is canonical).
    #[arg(long = "topic", required = true)]
    topics: Vec<String>,
    /// The data; read from stdin when absent.
    #[arg(long)]
    data: Option<String>,
    /// The update id (the hub makes one when absent).
    #[arg(long)]
    id: Option<String>,
    /// The SSE event type.
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// The SSE retry, in milliseconds.
    #[arg(long, value_name = "MS")]
    retry: Option<u64>,
    /// Only subscribers allowed by their token receive it.
    #[arg(long)]
    private: bool,
    /// A publisher JWT (see `sluice token`).
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let data = match args.data {
        Some(data) => data,
        None => {
            let mut data = String::new();
            std::io::stdin().read_to_string(&mut data).context("reading the data from stdin")?;
            data
        }
    };
    let mut form: Vec<(&str, String)> = args.topics.iter().map(|t| ("topic", t.clone())).collect();
    form.push(("data", data));
    if let Some(id) = args.id {
        form.push(("id", id));
    }
    if let Some(event_type) = args.event_type {
        form.push(("type", event_type));
    }
    if let Some(retry) = args.retry {
        form.push(("retry", retry.to_string()));
    }
    if args.private {
        form.push(("private", "on".to_owned()));
    }
    let mut request = reqwest::Client::new().post(&args.hub).form(&form);
    if let Some(token) = args.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.with_context(|| format!("posting to {}", args.hub))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("the hub answered {status}: {body}");
    }
    println!("{body}");
    Ok(ExitCode::SUCCESS)
}
