//! `sluice token`: mint an HS256 Mercure token, for scripts, tests and the console: a
//! draft-07 JWT (`mercure` claim) by default, a draft-08 access token with `--access`.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_server::{
    AccessGrant, DEFAULT_ISSUER, Grant, MatchType, TopicMatcher, mint_access_hs256, mint_hs256,
};

/// Mint a Mercure token (HS256) granting publish and subscribe matchers.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The HS256 key (the hub's --jwt-secret).
    #[arg(long, env = "SLUICE_JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// A topic the bearer may publish to (repeatable): in a draft-07 token a selector (topic,
    /// URI template or *), in an access token an exact topic or *.
    #[arg(long = "publish", value_name = "SELECTOR")]
    publish: Vec<String>,
    /// A topic whose private updates the bearer may receive (repeatable), as --publish.
    #[arg(long = "subscribe", value_name = "SELECTOR")]
    subscribe: Vec<String>,
    /// Access tokens: a URL pattern the bearer may publish to (repeatable).
    #[arg(long = "publish-pattern", value_name = "URLPATTERN", requires = "access")]
    publish_pattern: Vec<String>,
    /// Access tokens: a URL pattern whose private updates the bearer may receive
    /// (repeatable).
    #[arg(long = "subscribe-pattern", value_name = "URLPATTERN", requires = "access")]
    subscribe_pattern: Vec<String>,
    /// Mint a draft-08 OAuth access token (`typ: at+jwt`, `authorization_details`) instead of
    /// a draft-07 one.
    #[arg(long)]
    access: bool,
    /// Access tokens: the issuer (`iss`), one the hub trusts (--jwt-issuer).
    #[arg(long, value_name = "ISSUER", default_value = DEFAULT_ISSUER, requires = "access")]
    issuer: String,
    /// Access tokens: the audience (`aud`), the hub's URL.
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:8080/.well-known/mercure",
        requires = "access"
    )]
    audience: String,
    /// Access tokens: the subject (`sub`).
    #[arg(long, value_name = "SUBJECT", default_value = "sluice-token", requires = "access")]
    subject: String,
    /// Seconds until the token expires [default: never for draft-07 tokens, an hour for
    /// access tokens, which must expire].
    #[arg(long, value_name = "SECONDS")]
    expires_in: Option<u64>,
}

pub(crate) fn run(args: Args) -> ExitCode {
    let expiry = |seconds: u64| {
        (SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
            + Duration::from_secs(seconds))
        .as_secs()
    };
    let token = if args.access {
        let matchers = |exact: Vec<String>, patterns: Vec<String>| {
            let exact =
                exact.into_iter().map(|text| TopicMatcher { match_type: MatchType::Exact, text });
            let patterns = patterns
                .into_iter()
                .map(|text| TopicMatcher { match_type: MatchType::Urlpattern, text });
            exact.chain(patterns).collect()
        };
        let grant = AccessGrant {
            issuer: args.issuer,
            audience: args.audience,
            exp: expiry(args.expires_in.unwrap_or(3600)),
            subject: args.subject,
            publish: matchers(args.publish, args.publish_pattern),
            subscribe: matchers(args.subscribe, args.subscribe_pattern),
            payload: None,
        };
        mint_access_hs256(args.secret.as_bytes(), &grant)
    } else {
        let grant = Grant {
            publish: args.publish,
            subscribe: args.subscribe,
            exp: args.expires_in.map(expiry),
            payload: None,
        };
        mint_hs256(args.secret.as_bytes(), &grant)
    };
    println!("{token}");
    ExitCode::SUCCESS
}
