//! `sluice token`: mint an HS256 Mercure token, for scripts, tests and the console: a
//! draft-07 JWT (`mercure` claim) by default, a draft-08 access token with `--access`, an
//! end-user token for the chat routes with `--chat`.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_server::{
    AccessGrant, ChatClaim, ChatGrant, ChatLimits, DEFAULT_ISSUER, Grant, MatchType, TopicMatcher,
    mint_access_hs256, mint_chat_hs256, mint_hs256,
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
    #[arg(long, conflicts_with = "chat")]
    access: bool,
    /// Mint an end-user token for the chat routes (the server's --chat-audience as `aud`,
    /// --subject as `sub`, the limits below in a `sluice.chat` claim).
    #[arg(long)]
    chat: bool,
    /// End-user tokens: the audience, the server's --chat-audience.
    #[arg(long, value_name = "AUDIENCE", requires = "chat")]
    chat_audience: Option<String>,
    /// End-user tokens: a model the end user may use (comma-separated or repeated) [default:
    /// every model].
    #[arg(long = "models", value_name = "MODEL", value_delimiter = ',', requires = "chat")]
    models: Vec<String>,
    /// End-user tokens: the most tokens one answer may generate.
    #[arg(long, value_name = "N", requires = "chat")]
    max_tokens: Option<u32>,
    /// End-user tokens: requests per minute.
    #[arg(long = "rpm", value_name = "N", requires = "chat")]
    requests_per_minute: Option<u64>,
    /// End-user tokens: tokens (prompt and completion) per minute.
    #[arg(long = "tpm", value_name = "N", requires = "chat")]
    tokens_per_minute: Option<u64>,
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
    /// Access and end-user tokens: the subject (`sub`).
    #[arg(long, value_name = "SUBJECT", default_value = "sluice-token")]
    subject: String,
    /// Seconds until the token expires [default: never for draft-07 tokens, an hour for
    /// access and end-user tokens, which must expire].
    #[arg(long, visible_alias = "ttl", value_name = "SECONDS")]
    expires_in: Option<u64>,
}

pub(crate) fn run(args: Args) -> ExitCode {
    let expiry = |seconds: u64| {
        (SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
            + Duration::from_secs(seconds))
        .as_secs()
    };
    let token = if args.chat {
        let chat = ChatLimits {
            models: args.models,
            max_tokens: args.max_tokens,
            requests_per_minute: args.requests_per_minute,
            tokens_per_minute: args.tokens_per_minute,
        };
        let grant = ChatGrant {
            subject: args.subject,
            audience: args.chat_audience.unwrap_or_else(|| "sluice-chat".to_owned()),
            exp: expiry(args.expires_in.unwrap_or(3600)),
            sluice: ChatClaim { chat },
        };
        mint_chat_hs256(args.secret.as_bytes(), &grant)
    } else if args.access {
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
