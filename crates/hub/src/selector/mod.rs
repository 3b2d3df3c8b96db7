//! Mercure topic selectors: `*`, exact topics and RFC 6570 URI templates (draft-07's
//! `topic=`), and draft-08's matchers: exact (`match=`) and URL patterns
//! (`match_urlpattern=`, see [`Selector::url_pattern`]).
//!
//! ```
//! use sluice_hub::selector::Selector;
//!
//! let books = Selector::parse("https://example.com/books/{id}")?;
//! assert!(books.matches("https://example.com/books/1"));
//! assert!(!books.matches("https://example.com/books/1/reviews"));
//! assert!(!books.matches("https://example.com/authors/1"));
//! // A template also matches a topic equal to its own text, as in Mercure.
//! assert!(books.matches("https://example.com/books/{id}"));
//!
//! let deep = Selector::parse("https://example.com/{+path}")?;
//! assert!(deep.matches("https://example.com/books/1/reviews?page=2"));
//!
//! let exact = Selector::parse("https://example.com/books/1")?;
//! assert_eq!(exact.exact(), Some("https://example.com/books/1"));
//! assert!(Selector::parse("*")?.is_any());
//! # Ok::<(), sluice_hub::selector::SelectorError>(())
//! ```
//!
//! # Kinds of selector
//!
//! - `*` matches every topic.
//! - Text without `{` is an exact topic: it matches that topic only, byte for byte. Any
//!   text is a valid exact topic (even one with `}` or spaces), so [`Selector::exact`] lets a
//!   caller index exact selectors in a `HashMap`.
//! - Text with `{` is an RFC 6570 URI template and must parse as one (else
//!   [`SelectorError`]). It matches a topic equal to its own text (Mercure compares
//!   `topic == selector` first) and every topic the template could expand to, as described
//!   below. Levels 1 to 4 are supported: the operators none, `+`, `#`, `.`, `/`, `;`, `?`,
//!   `&`, several variables per expression, and the modifiers `*` (explode) and `:N` (prefix).
//!
//! # Matching rules
//!
//! Literal text between expressions is compared byte for byte: no case folding, no
//! percent-decoding, and characters RFC 6570 does not allow in literals (a space, `"`, …)
//! are accepted and compared like any other.
//!
//! Values are runs of *value characters*; which characters depend on the operator:
//!
//! - **unreserved**: `A-Z a-z 0-9 - . _ ~`, any non-ASCII character (topics are IRIs), and
//!   percent-encoded triplets `%XX` (hex digits in either case);
//! - **unreserved + reserved** (operators `+` and `#`): the above and
//!   `: / ? # [ ] @ ! $ & ' ( ) * + , ; =`.
//!
//! Nothing else (a space, a `%` not followed by two hex digits, `{`, `|`, …) can come from an
//! expression. Every variable of an expression may be undefined, and undefined variables
//! produce nothing, so any expression may match the empty string. The defined ones produce
//! *items*; the first item is preceded by the operator's *first* string and the others by its
//! *separator*:
//!
//! | operator | first | separator | named | characters |
//! |----------|-------|-----------|-------|------------|
//! | none     |       | `,`       | no    | unreserved |
//! | `+`      |       | `,`       | no    | + reserved |
//! | `#`      | `#`   | `,`       | no    | + reserved |
//! | `.`      | `.`   | `.`       | no    | unreserved |
//! | `/`      | `/`   | `/`       | no    | unreserved |
//! | `;`      | `;`   | `;`       | yes   | unreserved |
//! | `?`      | `?`   | `&`       | yes   | unreserved |
//! | `&`      | `&`   | `&`       | yes   | unreserved |
//!
//! The item of one variable, with `v` any run of value characters (possibly empty) and `sep`
//! the separator:
//!
//! - unnamed, no modifier: `v`. So `{id}` is one run of unreserved characters (no `/`, no
//!   `,`); `{x,y}` is `x`, `y`, or `x,y`; `{+path}` crosses `/`; `{/seg}` is `/` and a
//!   segment; `{.ext}` is `.` and a run (which may itself contain dots).
//! - unnamed, `:N`: `v` of at most N characters.
//! - unnamed, `*`: a list `v sep v sep …` (one or more members), or a map
//!   `k=v sep k=v …` with non-empty keys. So `{/segments*}` matches the empty string (the
//!   variable undefined) or one or more `/segment`.
//! - named, no modifier or `:N`: `name=v`, where `name` is the variable's name as written;
//!   for `;` an empty value is written `name` alone (`;x` or `;x=1`, never `;x=`), for `?`
//!   and `&` it is `name=`. With `:N` the value has at most N characters.
//! - named, `*`: one or more `k=v` joined by `sep` (same empty-value rule), `k` any non-empty
//!   run: this covers a list (`?tag=a&tag=b`, the key being the name) and a map (`;a=1;b=2`).
//!
//! For example `{?x,y}` matches the empty string, `?x=1`, `?y=2` and `?x=1&y=2`, but not
//! `?y=2&x=1`; `{;params*}` matches `;a`, `;a=1;b=2`.
//!
//! A prefix `:N` counts characters of the value before encoding, as RFC 6570 does: a
//! character written as itself, one `%XX` triplet, or a percent-encoded UTF-8 sequence
//! (`%C3%A9` for `é`) each count as one.
//!
//! # Deviations from "every possible expansion"
//!
//! - A variable without `*` is taken to hold a string. RFC 6570 also lets it hold a list or
//!   a map, expanded comma-separated (`{id}` with `["1","2"]` gives `1,2`); matching that
//!   would make `/books/{id}` match `/books/1,2`, so lists and maps are only matched through
//!   `*`.
//! - Each occurrence of a variable matches independently: `/{x}/{x}` matches `/a/b`.
//! - Map keys are taken to be non-empty (an empty key would let `{;x*}` match a bare `;`).
//! - With `+` and `#` a `%XX` triplet in a value is kept as it is, and counts as one
//!   character for `:N` (RFC 6570 counts the three characters of the raw value).
//! - Hex digits in `%XX` may be upper or lower case, although an expansion writes upper case;
//!   a percent-encoded UTF-8 sequence is recognised by its lead and continuation bytes only.
//!
//! # Cost
//!
//! Parsing compiles the template once into a small nondeterministic automaton whose size is
//! linear in the template's length (a prefix `:N` costs a counter, not N states). Matching
//! first checks the literal text before the first and after the last expression, then runs
//! the automaton over the rest of the topic, keeping for each byte offset the set of live
//! states (with, for a prefix-limited value, the fewest characters used so far). Each state
//! is visited at most once per offset, so matching takes O(topic length × automaton edges)
//! time, never exponential, and O(automaton states) memory.

mod automaton;
mod chars;
mod error;
mod template;

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

use url::Url;

use self::automaton::{Template, Work};
pub use self::error::SelectorError;
use self::template::parse_template;
use crate::url_pattern::UrlPatternMatcher;

/// A compiled topic selector: `*`, an exact topic, an RFC 6570 URI template, or a URL
/// pattern.
///
/// Two selectors are equal when they are of the same kind with the same source text (and, for
/// URL patterns, the same base). See the [module documentation](self) for the matching rules.
#[derive(Clone)]
pub struct Selector {
    source: Box<str>,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Any,
    Exact,
    Template(Template),
    UrlPattern(Arc<UrlPatternMatcher>),
}

impl Kind {
    /// Tells the kinds apart for equality and hashing.
    fn tag(&self) -> (u8, Option<&str>) {
        match self {
            Kind::Any => (0, None),
            Kind::Exact => (1, None),
            Kind::Template(_) => (2, None),
            Kind::UrlPattern(matcher) => (3, Some(matcher.base().as_str())),
        }
    }
}

impl Selector {
    /// Parses and compiles a selector; templates are compiled once, here.
    ///
    /// `*` is the wildcard, text without `{` an exact topic (always valid), anything else a
    /// URI template, which must be valid.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let kind = if text == "*" {
            Kind::Any
        } else if !text.contains('{') {
            Kind::Exact
        } else {
            Kind::Template(Template::compile(&parse_template(text)?))
        };
        Ok(Selector { source: text.into(), kind })
    }

    /// A draft-08 exact matcher (`match=`, `match_exact=`, or a token's topic without
    /// `match_type`): `*` is the wildcard, any other text a topic compared byte for byte,
    /// braces included (draft-08 has no URI templates).
    pub fn exact_match(text: &str) -> Selector {
        let kind = if text == "*" { Kind::Any } else { Kind::Exact };
        Selector { source: text.into(), kind }
    }

    /// A draft-08 URL pattern matcher (`match_urlpattern=`): `*` is the wildcard, any other
    /// text a WHATWG URL pattern. A relative pattern, and a relative topic when matching,
    /// resolve against `base`, the hub's URL.
    ///
    /// ```
    /// use sluice_hub::selector::Selector;
    ///
    /// let hub = "https://hub.example/.well-known/mercure".parse()?;
    /// let books = Selector::url_pattern("https://example.com/books/:id", &hub)?;
    /// assert!(books.matches("https://example.com/books/1"));
    /// assert!(books.matches("https://EXAMPLE.com/books/1?page=2"));
    /// assert!(!books.matches("https://example.com/books/1/reviews"));
    /// assert!(!books.matches("https://example.com/Books/1"));
    ///
    /// let events = Selector::url_pattern("/.well-known/mercure/subscriptions/*", &hub)?;
    /// assert!(events.matches("/.well-known/mercure/subscriptions/exact/a/b"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn url_pattern(text: &str, base: &Url) -> Result<Selector, SelectorError> {
        let kind = if text == "*" {
            Kind::Any
        } else {
            let matcher = UrlPatternMatcher::compile(text, base)
                .map_err(|reason| SelectorError::InvalidUrlPattern { reason })?;
            Kind::UrlPattern(Arc::new(matcher))
        };
        Ok(Selector { source: text.into(), kind })
    }

    /// Whether `topic` is selected: always for `*`; when equal to the selector's text; for a
    /// template, when the template could expand to `topic`; for a URL pattern, when the
    /// pattern matches the topic as a URL.
    pub fn matches(&self, topic: &str) -> bool {
        match &self.kind {
            Kind::Any => true,
            Kind::Exact => topic == &*self.source,
            Kind::Template(template) => {
                topic == &*self.source || template.matches(topic, &mut Work::default())
            }
            Kind::UrlPattern(matcher) => matcher.matches(topic),
        }
    }

    /// Whether `topic` is selected, with the work the match did and the most it may do: the
    /// number of automaton moves tried, and (topic length + 1) × automaton edges. The fuzz
    /// target checks the one never exceeds the other, which is what makes matching linear.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn matches_with_cost(&self, topic: &str) -> (bool, u64, u64) {
        match &self.kind {
            Kind::Template(template) if topic != &*self.source => {
                let mut work = Work::default();
                let matched = template.matches(topic, &mut work);
                let bound = (topic.len() as u64 + 1) * template.edges() as u64;
                (matched, work.steps, bound)
            }
            _ => (self.matches(topic), 0, 0),
        }
    }

    /// The selector's source text.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The topic, when the selector is an exact topic (neither `*` nor a template).
    pub fn exact(&self) -> Option<&str> {
        match self.kind {
            Kind::Exact => Some(&self.source),
            Kind::Any | Kind::Template(_) | Kind::UrlPattern(_) => None,
        }
    }

    /// How many variables the template's expressions hold (0 for `*` and exact topics).
    /// Matching costs O(topic length × variables): a hub bounds both.
    pub fn variables(&self) -> usize {
        match &self.kind {
            Kind::Template(template) => template.variables,
            Kind::Any | Kind::Exact | Kind::UrlPattern(_) => 0,
        }
    }

    /// Whether this is `*`, which matches every topic.
    pub fn is_any(&self) -> bool {
        matches!(self.kind, Kind::Any)
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Selector").field(&self.source).finish()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl PartialEq for Selector {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.kind.tag() == other.kind.tag()
    }
}

impl Eq for Selector {}

impl Hash for Selector {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.source.hash(state);
        self.kind.tag().hash(state);
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Selector::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(text: &str) -> Selector {
        Selector::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    #[track_caller]
    fn check(template: &str, yes: &[&str], no: &[&str]) {
        let s = selector(template);
        for topic in yes {
            assert!(s.matches(topic), "{template:?} should match {topic:?}");
        }
        for topic in no {
            assert!(!s.matches(topic), "{template:?} should not match {topic:?}");
        }
    }

    fn parse_error(text: &str) -> SelectorError {
        match Selector::parse(text) {
            Ok(s) => panic!("{text:?} should not parse, got {s:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn any_exact_and_template_kinds() {
        let any = selector("*");
        assert!(any.is_any());
        assert_eq!(any.exact(), None);
        assert_eq!(any.as_str(), "*");
        assert!(any.matches("https://example.com/books/1"));
        assert!(any.matches(""));
        assert!(any.matches("*"));

        let exact = selector("https://example.com/books/1");
        assert!(!exact.is_any());
        assert_eq!(exact.exact(), Some("https://example.com/books/1"));
        assert!(exact.matches("https://example.com/books/1"));
        assert!(!exact.matches("https://example.com/books/12"));
        assert!(!exact.matches("https://example.com/books/"));
        assert!(!exact.matches("HTTPS://example.com/books/1"));

        let template = selector("https://example.com/books/{id}");
        assert!(!template.is_any());
        assert_eq!(template.exact(), None);
        assert_eq!(template.as_str(), "https://example.com/books/{id}");
    }

    #[test]
    fn any_text_without_a_brace_is_an_exact_topic() {
        for text in ["", "a b", "}", "books/}/1", "%zz", "**", "* ", "é/🦀", "a\"<>\\^`|"] {
            let s = selector(text);
            assert_eq!(s.exact(), Some(text));
            assert!(s.matches(text));
            assert!(!s.matches(&format!("{text}x")));
        }
    }

    #[test]
    fn mercure_examples() {
        check(
            "https://example.com/books/{id}",
            &["https://example.com/books/1", "https://example.com/books/abc-1_2.3~"],
            &[
                "https://example.com/books/1/reviews",
                "https://example.com/authors/1",
                "https://example.com/books/1?x",
                "https://example.com/books/1,2",
                "https://example.com/books/a b",
                "http://example.com/books/1",
            ],
        );
        check(
            "https://example.com/{+path}",
            &[
                "https://example.com/books/1",
                "https://example.com/books/1/reviews/2?sort=asc&page=1#top",
                "https://example.com/",
                "https://example.com/a,b;c=d!$'()*+@[]:",
            ],
            &["https://example.org/books/1", "https://example.com/a b", "https://example.com/{x}"],
        );
        check(
            "/users/{id}{?fields}",
            &["/users/1", "/users/1?fields=name", "/users/1?fields=", "/users/"],
            &["/users/1?other=name", "/users/1?fields", "/users/1?fields=a&b=c", "/users/1/x"],
        );
        check(
            "/files{/segments*}",
            &["/files", "/files/a", "/files/a/b/c", "/files/a//c", "/files/k=v/k2=v2"],
            &["/filesa", "/files/a b", "/files/a?b"],
        );
        check(
            "/files/report{.ext}",
            &["/files/report", "/files/report.pdf", "/files/report.tar.gz", "/files/report."],
            &["/files/reportpdf", "/files/report.p/df", "/files/report/pdf"],
        );
        check(
            "/page{#frag}",
            &["/page", "/page#", "/page#intro", "/page#a/b?c=d,e"],
            &["/page#a b", "/page?x", "/pagex"],
        );
        check(
            "/map{;params*}",
            &["/map", "/map;x", "/map;x=1", "/map;x=1;y=2", "/map;x;y=2;z", "/map;list=a;list=b"],
            &["/map;", "/map;x=", "/map;=1", "/map;x=1;", "/map;x=1&y=2", "/map?x=1"],
        );
    }

    #[test]
    fn a_template_matches_its_own_text() {
        for text in ["https://example.com/books/{id}", "{+x}", "/a/{b}{?c,d*}", "{x} {y}"] {
            assert!(selector(text).matches(text), "{text:?}");
        }
        // Not just any text containing the template.
        assert!(!selector("/a/{b}").matches("/a/{b}/"));
    }

    #[test]
    fn simple_expressions() {
        check("{x}", &["", "a", "AZaz09-._~", "%20", "é"], &["a,b", "/", "%", "a b", "="]);
        check("{x,y}", &["", "a", "a,b", ",b", "a,", ","], &["a,b,c", "a;b"]);
        check("{x,y,z}", &["a,b,c", "a,b", ",,"], &["a,b,c,d"]);
        check("{x*}", &["a", "a,b,c", "a=1,b=2", ""], &["a=1,b", "a=1=2", "a;b"]);
        check("{+x}", &["a/b", "a,b", "=:@", "%2F"], &["a b", "a|b", "{", "100%"]);
        check("{+x,y}", &["a/b,c/d"], &["a b"]);
        check("{#x,y}", &["#a/b,c/d", "", "#"], &["a", "#a b"]);
        check("{.x,y}", &[".a.b", ".a", "", ".a.b.c"], &["a", ".a/b"]);
        check("{/x,y}", &["/a/b", "/a", "", "/"], &["/a/b/c", "a"]);
        check("{/x*,y}", &["/a/b/c", "/a/b/c/d"], &["a/b"]);
    }

    #[test]
    fn named_expressions() {
        check(
            "{?x,y}",
            &["", "?x=1", "?y=2", "?x=1&y=2", "?x=&y=", "?x=a%20b"],
            &["?y=2&x=1", "?x", "?x=1?y=2", "?z=1", "&x=1", "?x=1&y=2&z=3", "?x=1&"],
        );
        check("{&x}", &["", "&x=1", "&x="], &["?x=1", "&x", "&y=1"]);
        check("/search{?q}{&page}", &["/search?q=a&page=2", "/search&page=2"], &["/search?page=2"]);
        check("{;x,y}", &["", ";x", ";x=1", ";y", ";x;y=2", ";x=1;y"], &[";x=", ";y;x", ";x&y"]);
        check("{?list*}", &["?list=a&list=b", "?a=1&b=", "?k="], &["?=1", "?a", "?a=1&"]);
        check("{&list*}", &["&list=a&list=b"], &["?list=a"]);
        check("{?x.y,%41}", &["?x.y=1&%41=2"], &["?x=1", "?A=2"]);
    }

    #[test]
    fn pct_encoded_values() {
        check(
            "/books/{id}",
            &["/books/%20", "/books/a%2Fb", "/books/%c3%a9t%C3%A9", "/books/%41%42"],
            &["/books/%2", "/books/%zz", "/books/%", "/books/a%2", "/books/a%g0"],
        );
        // A literal is compared byte for byte, not decoded.
        check("/a%20b/{x}", &["/a%20b/1"], &["/a b/1", "/a%20B/1"]);
    }

    #[test]
    fn non_ascii_topics() {
        check(
            "https://example.com/livres/{id}",
            &[
                "https://example.com/livres/élan",
                "https://example.com/livres/書籍",
                "https://example.com/livres/🦀",
            ],
            &["https://example.com/livres/é/lan"],
        );
        check("/主题/{x}/{+rest}", &["/主题/数据/a/b", "/主题/é/"], &["/主/数据/a", "/主题/数据"]);
        check("/tags{?tag*}", &["/tags?tag=café&tag=thé"], &["/tags?tag=café&thé"]);
        let exact = selector("/topics/naïve");
        assert!(exact.matches("/topics/naïve"));
        assert!(!exact.matches("/topics/naive"));
    }

    #[test]
    fn prefix_modifiers() {
        check(
            "{x:3}",
            &["", "a", "abc", "%41bc", "éa", "%C3%A9ab", "%F0%9F%A6%80ab"],
            &["abcd", "a/b"],
        );
        check("{x:1}", &["é", "%C3%A9", "%E2%82%AC", "%41", "%FF"], &["ab", "%C3%A9a", "%41%41"]);
        check("{x:2,y}", &["ab,cdef", "ab", ",c"], &["abc,d"]);
        check("{;x:2}", &[";x", ";x=a", ";x=ab"], &[";x=", ";x=abc"]);
        check("{?q:2}", &["?q=", "?q=ab"], &["?q=abc"]);
        check("{+x:3}", &["a/b", "/%2F/"], &["a/bc"]);
        check("{/x:2}{/y}", &["/ab/cde", "/ab"], &["/abc/d"]);
        // Two prefix-limited values in a row: the first may take fewer characters.
        check("{x:2}{y:2}", &["abcd", "a", ""], &["abcde"]);
        check("{x:9999}", &[&"a".repeat(9999)], &[&"a".repeat(10_000)]);
    }

    #[test]
    fn literal_head_and_tail() {
        check(
            "https://example.com/{a}/x/{b}.json",
            &["https://example.com/1/x/2.json", "https://example.com//x/.json"],
            &[
                "https://example.com/1/x/2.jso",
                "https://example.com/1/y/2.json",
                "https://example.com/1.json",
            ],
        );
        check("a{x}a", &["aa", "aba"], &["a"]);
        check("{x}", &[""], &[" "]);
    }

    #[test]
    fn parse_errors() {
        use SelectorError::*;
        let cases: &[(&str, SelectorError)] = &[
            ("/books/{id", UnclosedExpression { offset: 7 }),
            ("{", UnclosedExpression { offset: 0 }),
            ("{+", UnclosedExpression { offset: 0 }),
            ("{a,", UnclosedExpression { offset: 0 }),
            ("{a:12", UnclosedExpression { offset: 0 }),
            ("{a*", UnclosedExpression { offset: 0 }),
            ("{a}{b", UnclosedExpression { offset: 3 }),
            ("{a}}", UnmatchedClosingBrace { offset: 3 }),
            ("}{a}", UnmatchedClosingBrace { offset: 0 }),
            ("/x/{}", EmptyExpression { offset: 3 }),
            ("{+}", EmptyExpression { offset: 0 }),
            ("{?}", EmptyExpression { offset: 0 }),
            ("{=a}", ReservedOperator { operator: '=', offset: 1 }),
            ("{,a}", ReservedOperator { operator: ',', offset: 1 }),
            ("{!a}", ReservedOperator { operator: '!', offset: 1 }),
            ("{@a}", ReservedOperator { operator: '@', offset: 1 }),
            ("a{|a}", ReservedOperator { operator: '|', offset: 2 }),
            ("{a,}", InvalidVariableName { offset: 3 }),
            ("{a,,b}", InvalidVariableName { offset: 3 }),
            ("{-a}", InvalidVariableName { offset: 1 }),
            ("{+.a}", InvalidVariableName { offset: 2 }),
            ("{a..b}", InvalidVariableName { offset: 3 }),
            ("{a.}", InvalidVariableName { offset: 2 }),
            ("{a.:3}", InvalidVariableName { offset: 2 }),
            ("{%4}", InvalidVariableName { offset: 1 }),
            ("{a%zz}", InvalidVariableName { offset: 2 }),
            ("{ a}", InvalidVariableName { offset: 1 }),
            ("{{a}}", InvalidVariableName { offset: 1 }),
            ("{é}", InvalidVariableName { offset: 1 }),
            ("{a:}", InvalidPrefix { offset: 2 }),
            ("{a:0}", InvalidPrefix { offset: 2 }),
            ("{a:01}", InvalidPrefix { offset: 2 }),
            ("{a:10000}", InvalidPrefix { offset: 2 }),
            ("{a:99999999999}", InvalidPrefix { offset: 2 }),
            ("{a:*}", InvalidPrefix { offset: 2 }),
            ("{a:-1}", InvalidPrefix { offset: 2 }),
            ("{a b}", UnexpectedCharacter { found: ' ', offset: 2 }),
            ("{a*:3}", UnexpectedCharacter { found: ':', offset: 3 }),
            ("{a:3*}", UnexpectedCharacter { found: '*', offset: 4 }),
            ("{a:3x}", UnexpectedCharacter { found: 'x', offset: 4 }),
            ("{a**}", UnexpectedCharacter { found: '*', offset: 3 }),
            ("{aé}", UnexpectedCharacter { found: 'é', offset: 2 }),
            ("{a{b}}", UnexpectedCharacter { found: '{', offset: 2 }),
        ];
        for (text, expected) in cases {
            assert_eq!(&parse_error(text), expected, "{text:?}");
        }
    }

    #[test]
    fn error_messages_say_what_and_where() {
        let messages = [
            ("/books/{id", "unclosed '{' at byte 7: an expression must end with '}'"),
            ("{a}}", "unmatched '}' at byte 3"),
            ("{}", "empty expression at byte 0: an expression needs at least one variable"),
            ("{=a}", "operator '=' at byte 1 is reserved by RFC 6570"),
            (
                "{a..b}",
                "invalid variable name at byte 3: a name is letters, digits, '_' and %XX, with single dots between them",
            ),
            ("{a:0}", "invalid prefix modifier at byte 2: ':' must be followed by 1 to 9999"),
            ("{a b}", "unexpected ' ' at byte 2 in an expression (expected ',' or '}')"),
        ];
        for (text, message) in messages {
            assert_eq!(parse_error(text).to_string(), message);
        }
    }

    #[test]
    fn equality_hash_display_and_from_str() {
        use std::collections::HashSet;
        let a = selector("/a/{b}");
        let b: Selector = "/a/{b}".parse().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, selector("/a/{c}"));
        assert_eq!(HashSet::from([a.clone(), b]).len(), 1);
        assert_eq!(a.to_string(), "/a/{b}");
        assert_eq!(format!("{a:?}"), r#"Selector("/a/{b}")"#);
        assert!("{".parse::<Selector>().is_err());
    }
}
