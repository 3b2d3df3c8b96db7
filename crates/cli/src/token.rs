//! `sluice token`: mint an HS256 Mercure JWT, for scripts, tests and the console.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_server::{Grant, mint_hs256};

/// Mint a Mercure JWT (HS256) granting publish and subscribe selectors.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The HS256 key (the hub's --jwt-secret).
    #[arg(long, env = "SLUICE_JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// A topic selector the bearer may publish to (repeatable).
    #[arg(long = "publish", value_name = "SELECTOR")]
    publish: Vec<String>,
    /// A topic selector whose private updates the bearer may receive (repeatable).
    #[arg(long = "subscribe", value_name = "SELECTOR")]
    subscribe: Vec<String>,
    /// Seconds until the token expires [default: never].
    #[arg(long, value_name = "SECONDS")]
    expires_in: Option<u64>,
}

pub(crate) fn run(args: Args) -> ExitCode {
    let exp = args.expires_in.map(|seconds| {
        (SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
            + Duration::from_secs(seconds))
        .as_secs()
    });
    let grant = Grant { publish: args.publish, subscribe: args.subscribe, exp, payload: None };
    println!("{}", mint_hs256(args.secret.as_bytes(), &grant));
    ExitCode::SUCCESS
}
