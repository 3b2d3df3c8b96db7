//! Mercure draft-08 URL Pattern matchers (`match_urlpattern=`): the WHATWG URL Pattern
//! standard, compiled by the `urlpattern` crate onto the `regex` crate.
//!
//! Both the pattern and the topic may be relative: each resolves against the hub's URL (the
//! base given at compile time), so `/.well-known/mercure/subscriptions/*` matches the
//! subscription events the hub publishes under that relative path. A topic that is not a URL
//! reference matches no pattern. Case is significant except in the host, which URL parsing
//! lowercases; the standard's `ignoreCase` option is never set.
//!
//! Matching runs the pattern's regular expressions, and the `regex` crate guarantees time
//! linear in the topic's length for any pattern (no backtracking), which is what the
//! specification asks of a hub that accepts regexp groups such as `:id(\\d+)` from anyone.

use url::Url;
use urlpattern::{UrlPattern, UrlPatternInit, UrlPatternMatchInput, UrlPatternOptions};

/// A compiled URL pattern and the base its relative topics resolve against.
pub(crate) struct UrlPatternMatcher {
    pattern: UrlPattern,
    base: Url,
}

impl std::fmt::Debug for UrlPatternMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlPatternMatcher").field("base", &self.base.as_str()).finish()
    }
}

impl UrlPatternMatcher {
    /// Compiles `pattern`, resolving it against `base` when it is relative. The error is the
    /// parser's own description (it names the character where parsing failed).
    pub(crate) fn compile(pattern: &str, base: &Url) -> Result<Self, String> {
        let init =
            UrlPatternInit::parse_constructor_string::<regex::Regex>(pattern, Some(base.clone()))
                .map_err(|e| e.to_string())?;
        let options = UrlPatternOptions { ignore_case: false, ..Default::default() };
        let pattern = UrlPattern::parse(init, options).map_err(|e| e.to_string())?;
        Ok(UrlPatternMatcher { pattern, base: base.clone() })
    }

    /// Whether `topic`, resolved against the base, matches.
    pub(crate) fn matches(&self, topic: &str) -> bool {
        let Ok(url) = self.base.join(topic) else { return false };
        self.pattern.test(UrlPatternMatchInput::Url(url)).unwrap_or(false)
    }

    /// The base URL relative topics and the pattern resolve against.
    pub(crate) fn base(&self) -> &Url {
        &self.base
    }
}
