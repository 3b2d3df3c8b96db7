//! `sluice keys`: the admin API's keys from the command line (create, list, revoke), and
//! what each key used.

use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Make, list and revoke API keys on a running server (its admin API).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The server's URL, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "SLUICE_URL", global = true, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The server's admin key (`sluice serve --admin-key`).
    #[arg(long, env = "SLUICE_ADMIN_KEY", hide_env_values = true, global = true)]
    admin_key: Option<String>,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Make a key; prints it once, with its record, as JSON.
    Create {
        /// Its name, in usage and metrics.
        name: String,
        /// A model it may use (repeat; none: every model).
        #[arg(long = "model")]
        models: Vec<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u64>,
        /// Tokens (prompt and completion) per minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// Tokens per budget period.
        #[arg(long)]
        budget: Option<u64>,
        /// The budget's period: day or month.
        #[arg(long, default_value = "month")]
        period: String,
    },
    /// List the keys (never a key itself).
    List,
    /// Revoke a key made with `create`, by name.
    Revoke {
        /// Its name.
        name: String,
    },
    /// What every key used.
    Usage,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(admin_key) = args.admin_key else { bail!("--admin-key is required") };
    let base = args.url.trim_end_matches('/');
    let client = reqwest::Client::new();
    let request = match args.action {
        Action::Create { name, models, rpm, tpm, budget, period } => {
            let body = json!({"name": name, "models": models, "requests_per_minute": rpm,
                "tokens_per_minute": tpm, "token_budget": budget, "budget_period": period});
            let json = reqwest::header::HeaderValue::from_static("application/json");
            let post = client.post(format!("{base}/admin/keys")).body(body.to_string());
            post.header(reqwest::header::CONTENT_TYPE, json)
        }
        Action::List => client.get(format!("{base}/admin/keys")),
        Action::Revoke { name } => client.delete(format!("{base}/admin/keys/{name}")),
        Action::Usage => client.get(format!("{base}/admin/usage")),
    };
    let response = request.bearer_auth(admin_key).send().await.context("reaching the server")?;
    let status = response.status();
    let text = response.text().await.context("reading the answer")?;
    if !status.is_success() {
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        bail!("{status}: {message}");
    }
    if !text.is_empty() {
        let value: Value = serde_json::from_str(&text).context("the answer is not JSON")?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(ExitCode::SUCCESS)
}
