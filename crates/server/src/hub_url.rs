//! The hub's own URL: where it is served, and the URL that relative topics resolve against
//! and that draft-08 access tokens name as their audience. Its own module since the hub's
//! routes, Durable Streams and answers need it, and token checking (`auth`) must not depend on
//! the server's settings that hold it.

use axum::http::{HeaderMap, Uri, header};
use url::Url;

use crate::config::Config;

/// Where the hub is served: its URL is the audience of draft-08 access tokens.
pub const HUB_PATH: &str = "/.well-known/mercure";

/// The hub's URL: the configured one (`--hub-url`), else the one the request was sent to
/// (`https` when the server speaks TLS). Relative URL patterns and topics resolve against it,
/// and access tokens must name it as their audience unless one is configured.
pub(crate) fn hub_url(config: &Config, headers: &HeaderMap, uri: &Uri) -> Url {
    if let Some(url) = &config.hub_url {
        return url.clone();
    }
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    Url::parse(&format!("{scheme}://{host}{HUB_PATH}"))
        .unwrap_or_else(|_| Url::parse(&format!("{scheme}://localhost{HUB_PATH}")).expect("valid"))
}
