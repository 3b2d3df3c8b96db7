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

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

use url::Url;

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

/// Why a selector is not a valid URI template. Offsets are byte offsets into the selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    /// A `{` without its `}`.
    #[error("unclosed '{{' at byte {offset}: an expression must end with '}}'")]
    UnclosedExpression {
        /// Where the `{` is.
        offset: usize,
    },
    /// A `}` outside any expression.
    #[error("unmatched '}}' at byte {offset}")]
    UnmatchedClosingBrace {
        /// Where the `}` is.
        offset: usize,
    },
    /// An expression with no variable, such as `{}` or `{+}`.
    #[error("empty expression at byte {offset}: an expression needs at least one variable")]
    EmptyExpression {
        /// Where the expression's `{` is.
        offset: usize,
    },
    /// An operator RFC 6570 reserves for future use: `=`, `,`, `!`, `@` or `|`.
    #[error("operator '{operator}' at byte {offset} is reserved by RFC 6570")]
    ReservedOperator {
        /// The operator.
        operator: char,
        /// Where it is.
        offset: usize,
    },
    /// A variable name that is empty or malformed.
    #[error(
        "invalid variable name at byte {offset}: a name is letters, digits, '_' and %XX, \
         with single dots between them"
    )]
    InvalidVariableName {
        /// Where the name goes wrong.
        offset: usize,
    },
    /// A prefix modifier whose length is missing or not in 1..=9999.
    #[error("invalid prefix modifier at byte {offset}: ':' must be followed by 1 to 9999")]
    InvalidPrefix {
        /// Where the `:` is.
        offset: usize,
    },
    /// A character that cannot appear at this place in an expression.
    #[error("unexpected {found:?} at byte {offset} in an expression (expected ',' or '}}')")]
    UnexpectedCharacter {
        /// The character.
        found: char,
        /// Where it is.
        offset: usize,
    },
    /// Not a valid URL pattern.
    #[error("invalid URL pattern: {reason}")]
    InvalidUrlPattern {
        /// What the URL Pattern parser found wrong.
        reason: String,
    },
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

// ---------------------------------------------------------------------------------------------
// Parsing: text -> parts.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Expression(Expression),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Expression {
    operator: Operator,
    variables: Vec<VarSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct VarSpec {
    name: String,
    modifier: Modifier,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Modifier {
    None,
    Prefix(u16),
    Explode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Simple,
    Reserved,
    Fragment,
    Label,
    Path,
    Parameter,
    Query,
    Continuation,
}

impl Operator {
    /// What precedes the first defined variable's item.
    fn first(self) -> &'static str {
        match self {
            Operator::Simple | Operator::Reserved => "",
            Operator::Fragment => "#",
            Operator::Label => ".",
            Operator::Path => "/",
            Operator::Parameter => ";",
            Operator::Query => "?",
            Operator::Continuation => "&",
        }
    }

    /// What precedes the other items, and separates the members of an exploded value.
    fn separator(self) -> char {
        match self {
            Operator::Simple | Operator::Reserved | Operator::Fragment => ',',
            Operator::Label => '.',
            Operator::Path => '/',
            Operator::Parameter => ';',
            Operator::Query | Operator::Continuation => '&',
        }
    }

    /// Whether items are `name=value`.
    fn named(self) -> bool {
        matches!(self, Operator::Parameter | Operator::Query | Operator::Continuation)
    }

    /// Whether an empty named value is written `name=` (`?`, `&`) rather than `name` (`;`).
    fn empty_keeps_equals(self) -> bool {
        matches!(self, Operator::Query | Operator::Continuation)
    }

    fn class(self) -> Class {
        match self {
            Operator::Reserved | Operator::Fragment => Class::UnreservedReserved,
            _ => Class::Unreserved,
        }
    }
}

fn is_hex(byte: Option<&u8>) -> bool {
    byte.is_some_and(u8::is_ascii_hexdigit)
}

/// The character starting at byte `at` of `text` (a char boundary).
fn char_at(text: &str, at: usize) -> char {
    text[at..].chars().next().unwrap_or('\u{FFFD}')
}

fn parse_template(text: &str) -> Result<Vec<Part>, SelectorError> {
    let bytes = text.as_bytes();
    let mut parts = Vec::new();
    let mut literal_start = 0;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'{' => {
                if literal_start < at {
                    parts.push(Part::Literal(text[literal_start..at].to_owned()));
                }
                let (expression, end) = parse_expression(text, at)?;
                parts.push(Part::Expression(expression));
                at = end;
                literal_start = end;
            }
            b'}' => return Err(SelectorError::UnmatchedClosingBrace { offset: at }),
            _ => at += 1,
        }
    }
    if literal_start < bytes.len() {
        parts.push(Part::Literal(text[literal_start..].to_owned()));
    }
    Ok(parts)
}

/// Parses the expression whose `{` is at `open`; returns it and the offset after its `}`.
fn parse_expression(text: &str, open: usize) -> Result<(Expression, usize), SelectorError> {
    let bytes = text.as_bytes();
    let unclosed = SelectorError::UnclosedExpression { offset: open };
    let mut at = open + 1;
    let operator = match bytes.get(at) {
        None => return Err(unclosed),
        Some(&byte @ (b'=' | b',' | b'!' | b'@' | b'|')) => {
            return Err(SelectorError::ReservedOperator { operator: byte.into(), offset: at });
        }
        Some(b'+') => Operator::Reserved,
        Some(b'#') => Operator::Fragment,
        Some(b'.') => Operator::Label,
        Some(b'/') => Operator::Path,
        Some(b';') => Operator::Parameter,
        Some(b'?') => Operator::Query,
        Some(b'&') => Operator::Continuation,
        Some(_) => Operator::Simple,
    };
    if operator != Operator::Simple {
        at += 1;
    }
    match bytes.get(at) {
        None => return Err(unclosed),
        Some(b'}') => return Err(SelectorError::EmptyExpression { offset: open }),
        Some(_) => {}
    }
    let mut variables = Vec::new();
    loop {
        let name_start = at;
        loop {
            match bytes.get(at) {
                Some(byte) if byte.is_ascii_alphanumeric() || *byte == b'_' => at += 1,
                Some(b'%') => {
                    if !(is_hex(bytes.get(at + 1)) && is_hex(bytes.get(at + 2))) {
                        return Err(SelectorError::InvalidVariableName { offset: at });
                    }
                    at += 3;
                }
                Some(b'.') => {
                    if at == name_start || bytes[at - 1] == b'.' {
                        return Err(SelectorError::InvalidVariableName { offset: at });
                    }
                    at += 1;
                }
                _ => break,
            }
        }
        if at == name_start {
            return Err(match bytes.get(at) {
                None => unclosed,
                Some(_) => SelectorError::InvalidVariableName { offset: at },
            });
        }
        if bytes[at - 1] == b'.' {
            return Err(SelectorError::InvalidVariableName { offset: at - 1 });
        }
        let name = text[name_start..at].to_owned();
        let modifier = match bytes.get(at) {
            Some(b':') => {
                let colon = at;
                at += 1;
                while bytes.get(at).is_some_and(u8::is_ascii_digit) {
                    at += 1;
                }
                let digits = &text[colon + 1..at];
                match digits.parse::<u16>() {
                    Ok(n @ 1..=9999) if !digits.starts_with('0') => Modifier::Prefix(n),
                    _ => return Err(SelectorError::InvalidPrefix { offset: colon }),
                }
            }
            Some(b'*') => {
                at += 1;
                Modifier::Explode
            }
            _ => Modifier::None,
        };
        variables.push(VarSpec { name, modifier });
        match bytes.get(at) {
            Some(b',') => at += 1,
            Some(b'}') => return Ok((Expression { operator, variables }, at + 1)),
            None => return Err(unclosed),
            Some(_) => {
                return Err(SelectorError::UnexpectedCharacter {
                    found: char_at(text, at),
                    offset: at,
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Value characters.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Unreserved,
    UnreservedReserved,
}

impl Class {
    fn allows_ascii(self, byte: u8) -> bool {
        let unreserved = byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~');
        unreserved
            || (self == Class::UnreservedReserved
                && matches!(
                    byte,
                    b':' | b'/'
                        | b'?'
                        | b'#'
                        | b'['
                        | b']'
                        | b'@'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                ))
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The byte encoded by the `%XX` triplet at `at`, if there is one.
fn triplet(bytes: &[u8], at: usize) -> Option<u8> {
    if bytes.get(at) != Some(&b'%') {
        return None;
    }
    let high = hex_value(*bytes.get(at + 1)?)?;
    let low = hex_value(*bytes.get(at + 2)?)?;
    Some(high << 4 | low)
}

/// Where one value character of `class` starting at `at` (a char boundary of `text`) can end.
///
/// The first end is that of one character written as itself or one `%XX` triplet. When
/// `whole_sequences` is set (for prefix counting) and the triplet starts a percent-encoded
/// UTF-8 sequence, the end of the whole sequence is the second. Ends are at most 12 bytes on.
fn value_char_ends(
    text: &str,
    at: usize,
    class: Class,
    whole_sequences: bool,
) -> [Option<usize>; 2] {
    let bytes = text.as_bytes();
    let Some(&byte) = bytes.get(at) else {
        return [None, None];
    };
    if byte == b'%' {
        let Some(lead) = triplet(bytes, at) else {
            return [None, None];
        };
        let mut sequence = None;
        if whole_sequences {
            let continuations = match lead {
                0xC2..=0xDF => 1,
                0xE0..=0xEF => 2,
                0xF0..=0xF4 => 3,
                _ => 0,
            };
            let complete = continuations > 0
                && (1..=continuations).all(|k| {
                    triplet(bytes, at + 3 * k).is_some_and(|b| (0x80..=0xBF).contains(&b))
                });
            if complete {
                sequence = Some(at + 3 * (continuations + 1));
            }
        }
        [Some(at + 3), sequence]
    } else if byte.is_ascii() {
        [class.allows_ascii(byte).then_some(at + 1), None]
    } else {
        [Some(at + char_at(text, at).len_utf8()), None]
    }
}

/// Bytes one step of the automaton can consume at most, plus one: the size of the ring of
/// offsets the matcher keeps.
const WINDOW: usize = 16;
// The longest step is a percent-encoded 4-byte UTF-8 sequence: 12 bytes.
const _: () = assert!(4 * 3 < WINDOW);

// ---------------------------------------------------------------------------------------------
// The automaton.

type StateId = u32;

#[derive(Debug, Clone, Copy)]
enum Step {
    /// One literal character.
    Char(char),
    /// One value character. With a limit, the step counts the characters of a prefix-limited
    /// value and is allowed only while fewer than `limit` were used; without, it resets the
    /// count.
    Value { class: Class, limit: Option<u16> },
}

#[derive(Debug, Clone, Copy)]
struct Move {
    step: Step,
    to: StateId,
}

#[derive(Debug, Clone, Default)]
struct State {
    /// Empty moves; they reset the count of value characters.
    empty: Vec<StateId>,
    moves: Vec<Move>,
}

/// A compiled template: the literal text before its first expression and after its last one,
/// checked first, and an automaton for what lies between.
#[derive(Debug, Clone)]
struct Template {
    head: String,
    tail: String,
    states: Vec<State>,
    start: StateId,
    accept: StateId,
    /// Variables in all its expressions: what the automaton's size grows with.
    variables: usize,
}

/// How much work a match did: (state, offset) visits and moves tried.
#[derive(Debug, Default)]
struct Work {
    steps: u64,
}

/// No count at this (state, offset): the state is not live there.
const ABSENT: u16 = u16::MAX;

impl Template {
    fn compile(parts: &[Part]) -> Template {
        let mut parts = parts;
        let mut head = String::new();
        let mut tail = String::new();
        if let [Part::Literal(text), rest @ ..] = parts {
            head.clone_from(text);
            parts = rest;
        }
        if let [rest @ .., Part::Literal(text)] = parts {
            tail.clone_from(text);
            parts = rest;
        }
        let mut builder = Builder { states: Vec::new() };
        let start = builder.state();
        let mut at = start;
        for part in parts {
            at = match part {
                Part::Literal(text) => builder.text(at, text),
                Part::Expression(expression) => builder.expression(at, expression),
            };
        }
        let variables = parts
            .iter()
            .map(|part| match part {
                Part::Expression(expression) => expression.variables.len(),
                Part::Literal(_) => 0,
            })
            .sum();
        Template { head, tail, states: builder.states, start, accept: at, variables }
    }

    fn matches(&self, topic: &str, work: &mut Work) -> bool {
        if topic.len() < self.head.len() + self.tail.len()
            || !topic.starts_with(&self.head)
            || !topic.ends_with(&self.tail)
        {
            return false;
        }
        self.run(&topic[self.head.len()..topic.len() - self.tail.len()], work)
    }

    /// Runs the automaton over all of `text`: a breadth-first simulation over byte offsets.
    fn run(&self, text: &str, work: &mut Work) -> bool {
        let mut frontier = Frontier::new(self.states.len());
        frontier.add(0, self.start, 0);
        for offset in 0..=text.len() {
            if frontier.live[offset % WINDOW].is_empty() {
                if frontier.pending == 0 {
                    return false;
                }
                continue;
            }
            let mut states = frontier.close(offset, &self.states, work);
            if offset == text.len() {
                return frontier.count(offset, self.accept) != ABSENT;
            }
            for &state in &states {
                let count = frontier.take(offset, state);
                for step in &self.states[state as usize].moves {
                    work.steps += 1;
                    match step.step {
                        Step::Char(c) => {
                            let mut buffer = [0; 4];
                            let encoded = c.encode_utf8(&mut buffer).as_bytes();
                            if text.as_bytes()[offset..].starts_with(encoded) {
                                frontier.add(offset + encoded.len(), step.to, 0);
                            }
                        }
                        Step::Value { class, limit } => {
                            let count = match limit {
                                None => 0,
                                Some(limit) if count < limit => count + 1,
                                Some(_) => continue,
                            };
                            let ends = value_char_ends(text, offset, class, limit.is_some());
                            for end in ends.into_iter().flatten() {
                                frontier.add(end, step.to, count);
                            }
                        }
                    }
                }
            }
            states.clear();
            frontier.live[offset % WINDOW] = states;
        }
        false
    }

    #[cfg(any(test, feature = "testing"))]
    fn edges(&self) -> usize {
        self.states.iter().map(|s| s.empty.len() + s.moves.len()).sum()
    }
}

/// The live states at the next `WINDOW` byte offsets, a ring indexed by offset % `WINDOW`.
///
/// `counts[slot * states + state]` is, for a live state, the fewest value characters used so
/// far by the prefix-limited value it is in (0 outside one), else `ABSENT`. Fewer is never
/// worse, so keeping the least is exact.
#[derive(Debug)]
struct Frontier {
    states: usize,
    counts: Vec<u16>,
    live: [Vec<StateId>; WINDOW],
    /// Live (state, offset) pairs in the whole ring.
    pending: usize,
}

impl Frontier {
    fn new(states: usize) -> Frontier {
        Frontier {
            states,
            counts: vec![ABSENT; WINDOW * states],
            live: Default::default(),
            pending: 0,
        }
    }

    fn cell(&self, offset: usize, state: StateId) -> usize {
        offset % WINDOW * self.states + state as usize
    }

    fn count(&self, offset: usize, state: StateId) -> u16 {
        self.counts[self.cell(offset, state)]
    }

    /// Makes `state` live at `offset` with `count`, or lowers its count.
    fn add(&mut self, offset: usize, state: StateId, count: u16) {
        let cell = self.cell(offset, state);
        if self.counts[cell] == ABSENT {
            self.live[offset % WINDOW].push(state);
            self.pending += 1;
        }
        self.counts[cell] = self.counts[cell].min(count);
    }

    /// Removes `state` from `offset`, returning its count.
    fn take(&mut self, offset: usize, state: StateId) -> u16 {
        let cell = self.cell(offset, state);
        self.pending -= 1;
        std::mem::replace(&mut self.counts[cell], ABSENT)
    }

    /// Closes the states live at `offset` over empty moves (which reset the count) and takes
    /// their list out of the ring.
    fn close(&mut self, offset: usize, graph: &[State], work: &mut Work) -> Vec<StateId> {
        let mut states = std::mem::take(&mut self.live[offset % WINDOW]);
        let mut next = 0;
        while next < states.len() {
            let state = states[next];
            next += 1;
            for &to in &graph[state as usize].empty {
                work.steps += 1;
                let cell = self.cell(offset, to);
                if self.counts[cell] == ABSENT {
                    states.push(to);
                    self.pending += 1;
                }
                self.counts[cell] = 0;
            }
        }
        states
    }
}

struct Builder {
    states: Vec<State>,
}

impl Builder {
    fn state(&mut self) -> StateId {
        self.states.push(State::default());
        StateId::try_from(self.states.len() - 1).expect("a template has fewer than 2^32 states")
    }

    fn empty(&mut self, from: StateId, to: StateId) {
        self.states[from as usize].empty.push(to);
    }

    fn step(&mut self, from: StateId, step: Step, to: StateId) {
        self.states[from as usize].moves.push(Move { step, to });
    }

    /// A chain matching `text` from `from`; returns its end.
    fn text(&mut self, from: StateId, text: &str) -> StateId {
        let mut at = from;
        for c in text.chars() {
            let next = self.state();
            self.step(at, Step::Char(c), next);
            at = next;
        }
        at
    }

    /// A chain matching `text` from `from` to `to`.
    fn text_to(&mut self, from: StateId, text: &str, to: StateId) {
        let end = self.text(from, text);
        self.empty(end, to);
    }

    /// A state looping on value characters: reached from `from` by an empty move, or (when
    /// `non_empty`) by one value character.
    fn run(&mut self, from: StateId, class: Class, limit: Option<u16>, non_empty: bool) -> StateId {
        let run = self.state();
        let step = Step::Value { class, limit };
        if non_empty {
            self.step(from, step, run);
        } else {
            self.empty(from, run);
        }
        self.step(run, step, run);
        run
    }

    /// The whole expression from `from`; returns its end.
    ///
    /// States `none` (no item yet) and `some` (at least one item) before each variable; the
    /// variable is either skipped or its item is entered after `first` (from `none`) or
    /// `separator` (from `some`). Linear in the number of variables.
    fn expression(&mut self, from: StateId, expression: &Expression) -> StateId {
        let operator = expression.operator;
        let mut none = from;
        let mut some: Option<StateId> = None;
        for variable in &expression.variables {
            let entry = self.state();
            self.text_to(none, operator.first(), entry);
            if let Some(some) = some {
                let mut buffer = [0; 4];
                self.text_to(some, operator.separator().encode_utf8(&mut buffer), entry);
            }
            let item_end = self.item(entry, operator, variable);
            let next_none = self.state();
            self.empty(none, next_none);
            let next_some = self.state();
            self.empty(item_end, next_some);
            if let Some(some) = some {
                self.empty(some, next_some);
            }
            none = next_none;
            some = Some(next_some);
        }
        let end = self.state();
        self.empty(none, end);
        if let Some(some) = some {
            self.empty(some, end);
        }
        end
    }

    /// One defined variable's item from `entry` (after `first` or the separator); returns its
    /// end.
    fn item(&mut self, entry: StateId, operator: Operator, variable: &VarSpec) -> StateId {
        let class = operator.class();
        let separator = Step::Char(operator.separator());
        let limit = match variable.modifier {
            Modifier::Prefix(n) => Some(n),
            Modifier::None | Modifier::Explode => None,
        };
        match (operator.named(), variable.modifier) {
            (false, Modifier::None | Modifier::Prefix(_)) => self.run(entry, class, limit, false),
            (false, Modifier::Explode) => {
                let end = self.state();
                // A list: members (possibly empty) joined by the separator.
                let list = self.run(entry, class, None, false);
                self.step(list, separator, list);
                self.empty(list, end);
                // A map: `key=value` pairs with non-empty keys.
                let pair = self.state();
                self.empty(entry, pair);
                let key = self.run(pair, class, None, true);
                let value = self.state();
                self.step(key, Step::Char('='), value);
                self.step(value, Step::Value { class, limit: None }, value);
                self.step(value, separator, pair);
                self.empty(value, end);
                end
            }
            (true, Modifier::None | Modifier::Prefix(_)) => {
                let name = self.text(entry, &variable.name);
                self.named_value(name, operator, limit)
            }
            (true, Modifier::Explode) => {
                let key = self.run(entry, class, None, true);
                let end = self.named_value(key, operator, None);
                self.step(end, separator, entry);
                end
            }
        }
    }

    /// After a name or key at `name`: `=value`, or for an empty value `name=` (`?`, `&`) or
    /// `name` alone (`;`). Returns the end.
    fn named_value(&mut self, name: StateId, operator: Operator, limit: Option<u16>) -> StateId {
        let class = operator.class();
        let equals = self.state();
        self.step(name, Step::Char('='), equals);
        if operator.empty_keeps_equals() {
            self.step(equals, Step::Value { class, limit }, equals);
            equals
        } else {
            let end = self.state();
            self.empty(name, end);
            let value = self.run(equals, class, limit, true);
            self.empty(value, end);
            end
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

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
    fn parse_structure() {
        let parts = parse_template("/a{+b:5,c*}{?d}x").unwrap();
        assert_eq!(
            parts,
            vec![
                Part::Literal("/a".into()),
                Part::Expression(Expression {
                    operator: Operator::Reserved,
                    variables: vec![
                        VarSpec { name: "b".into(), modifier: Modifier::Prefix(5) },
                        VarSpec { name: "c".into(), modifier: Modifier::Explode },
                    ],
                }),
                Part::Expression(Expression {
                    operator: Operator::Query,
                    variables: vec![VarSpec { name: "d".into(), modifier: Modifier::None }],
                }),
                Part::Literal("x".into()),
            ]
        );
        for (op, operator) in [
            ("", Operator::Simple),
            ("+", Operator::Reserved),
            ("#", Operator::Fragment),
            (".", Operator::Label),
            ("/", Operator::Path),
            (";", Operator::Parameter),
            ("?", Operator::Query),
            ("&", Operator::Continuation),
        ] {
            let parts = parse_template(&format!("{{{op}a_1.b%2F,C:9999}}")).unwrap();
            let [Part::Expression(e)] = &parts[..] else { panic!("{parts:?}") };
            assert_eq!(e.operator, operator);
            assert_eq!(e.variables[0].name, "a_1.b%2F");
            assert_eq!(e.variables[1].modifier, Modifier::Prefix(9999));
        }
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

    #[test]
    fn value_characters() {
        let ends = |text: &str, class, whole| value_char_ends(text, 0, class, whole);
        let u = Class::Unreserved;
        let r = Class::UnreservedReserved;
        assert_eq!(ends("a", u, false), [Some(1), None]);
        assert_eq!(ends("/", u, false), [None, None]);
        assert_eq!(ends("/", r, false), [Some(1), None]);
        assert_eq!(ends(" ", r, false), [None, None]);
        assert_eq!(ends("é", u, false), [Some(2), None]);
        assert_eq!(ends("🦀", u, false), [Some(4), None]);
        assert_eq!(ends("%", u, false), [None, None]);
        assert_eq!(ends("%4", u, false), [None, None]);
        assert_eq!(ends("%41", u, true), [Some(3), None]);
        assert_eq!(ends("%C3%A9", u, true), [Some(3), Some(6)]);
        assert_eq!(ends("%C3%A9", u, false), [Some(3), None]);
        assert_eq!(ends("%c3%a9", u, true), [Some(3), Some(6)]);
        assert_eq!(ends("%C3%41", u, true), [Some(3), None]);
        assert_eq!(ends("%E2%82%AC", u, true), [Some(3), Some(9)]);
        assert_eq!(ends("%E2%82", u, true), [Some(3), None]);
        assert_eq!(ends("%F0%9F%A6%80", u, true), [Some(3), Some(12)]);
        for byte in 0..=0x7F_u8 {
            let unreserved = byte.is_ascii_alphanumeric() || b"-._~".contains(&byte);
            let reserved = b":/?#[]@!$&'()*+,;=".contains(&byte);
            assert_eq!(u.allows_ascii(byte), unreserved, "{byte}");
            assert_eq!(r.allows_ascii(byte), unreserved || reserved, "{byte}");
        }
    }

    // -----------------------------------------------------------------------------------------
    // No exponential blow-up: work is bounded by (topic length + 1) × automaton edges.

    fn work(template: &str, topic: &str) -> (bool, u64, u64) {
        let Kind::Template(t) = selector(template).kind else { panic!("{template:?}") };
        let mut work = Work::default();
        let matched = t.matches(topic, &mut work);
        let bound = (topic.len() as u64 + 1) * t.edges() as u64;
        assert!(work.steps <= bound, "{template:?}: {} steps > {bound}", work.steps);
        (matched, work.steps, bound)
    }

    #[test]
    fn pathological_templates_cost_linear_work() {
        let many_simple: String = (0..40).map(|i| format!("{{v{i}}}")).collect();
        let many_in_one =
            format!("{{{}}}", (0..40).map(|i| format!("v{i}")).collect::<Vec<_>>().join(","));
        let many_explode =
            format!("{{/{}}}", (0..20).map(|i| format!("v{i}*")).collect::<Vec<_>>().join(","));
        let many_prefix: String = (0..20).map(|i| format!("{{v{i}:9999}}")).collect();
        let cases = [
            (many_simple.clone(), format!("{}!", "a".repeat(5_000))),
            (many_in_one, format!("{}!", "a,".repeat(2_500))),
            (many_explode, format!("{}!", "/a".repeat(2_500))),
            (many_prefix, format!("{}!", "%C3%A9".repeat(1_000))),
            ("{+a}{+b}{+c}{#d}{+e}{+f}".to_owned(), format!("{} ", "a/".repeat(2_500))),
            ("{;a*}{;b*}{;c*}{?d*}{&e*}".to_owned(), format!("{}!", ";a=b".repeat(1_250))),
            (format!("{many_simple}x"), "a".repeat(5_000)),
        ];
        for (template, topic) in cases {
            let (matched, steps, _) = work(&template, &topic);
            assert!(!matched, "{template:?}");
            // At most a few million steps, where a backtracking matcher could try 40^5000 splits.
            assert!(steps < 5_000_000, "{template:?}: {steps} steps");
        }
        // And the matching counterparts.
        let (matched, steps, _) = work(&many_simple, &"a".repeat(5_000));
        assert!(matched);
        assert!(steps < 5_000_000);
    }

    #[test]
    fn typical_selectors_cost_little() {
        // The literal head and tail are compared before the automaton runs.
        let (matched, steps, _) =
            work("https://example.com/books/{id}", "https://example.org/books/1");
        assert!(!matched);
        assert_eq!(steps, 0);
        let (matched, steps, _) =
            work("https://example.com/books/{id}", "https://example.com/books/12345");
        assert!(matched);
        assert!(steps < 40, "{steps}");
    }

    // -----------------------------------------------------------------------------------------
    // A second, independent and deliberately naive matcher (exponential, sets of end offsets,
    // written straight from the rules in the module docs), compared with the automaton on
    // random small templates and topics.

    fn naive(parts: &[Part], topic: &str) -> bool {
        let mut ends = BTreeSet::from([0]);
        for part in parts {
            ends = ends.into_iter().flat_map(|at| naive_part(part, topic, at)).collect();
        }
        ends.contains(&topic.len())
    }

    fn after(topic: &str, at: usize, text: &str) -> Option<usize> {
        topic[at..].starts_with(text).then_some(at + text.len())
    }

    fn naive_part(part: &Part, topic: &str, at: usize) -> BTreeSet<usize> {
        let expression = match part {
            Part::Literal(text) => return after(topic, at, text).into_iter().collect(),
            Part::Expression(expression) => expression,
        };
        let op = expression.operator;
        let vars = &expression.variables;
        let mut out = BTreeSet::from([at]);
        for mask in 1..(1_u32 << vars.len()) {
            let mut ends = BTreeSet::from([at]);
            let defined = vars.iter().enumerate().filter(|(i, _)| mask >> i & 1 == 1);
            for (n, (_, var)) in defined.enumerate() {
                let lead = if n == 0 { op.first().to_owned() } else { op.separator().to_string() };
                ends = ends
                    .into_iter()
                    .filter_map(|e| after(topic, e, &lead))
                    .flat_map(|e| naive_item(op, var, topic, e))
                    .collect();
            }
            out.extend(ends);
        }
        out
    }

    /// Ends of runs of value characters from `at`, of at most `limit` characters.
    fn runs(topic: &str, at: usize, class: Class, limit: Option<u16>) -> BTreeSet<usize> {
        let mut out = BTreeSet::from([at]);
        let mut frontier = BTreeSet::from([at]);
        let mut used = 0;
        while !frontier.is_empty() && limit.is_none_or(|l| used < l) {
            used += 1;
            frontier = frontier
                .into_iter()
                .flat_map(|e| value_char_ends(topic, e, class, limit.is_some()))
                .flatten()
                .collect();
            out.extend(frontier.iter().copied());
        }
        out
    }

    fn non_empty_runs(topic: &str, at: usize, class: Class) -> BTreeSet<usize> {
        let mut out = runs(topic, at, class, None);
        out.remove(&at);
        out
    }

    /// `one` from `at`, then any number of (separator, `one`).
    fn repeated(
        topic: &str,
        at: usize,
        separator: char,
        one: &dyn Fn(usize) -> BTreeSet<usize>,
    ) -> BTreeSet<usize> {
        let mut out = one(at);
        let mut frontier: Vec<usize> = out.iter().copied().collect();
        while let Some(e) = frontier.pop() {
            if let Some(e) = after(topic, e, &separator.to_string()) {
                for end in one(e) {
                    if out.insert(end) {
                        frontier.push(end);
                    }
                }
            }
        }
        out
    }

    fn naive_named_value(
        op: Operator,
        topic: &str,
        at: usize,
        limit: Option<u16>,
    ) -> BTreeSet<usize> {
        let class = op.class();
        let values = after(topic, at, "=").map(|e| runs(topic, e, class, limit));
        if op.empty_keeps_equals() {
            values.unwrap_or_default()
        } else {
            let mut out = BTreeSet::from([at]);
            out.extend(values.unwrap_or_default().into_iter().filter(|&e| e > at + 1));
            out
        }
    }

    fn naive_item(op: Operator, var: &VarSpec, topic: &str, at: usize) -> BTreeSet<usize> {
        let class = op.class();
        let separator = op.separator();
        let limit = match var.modifier {
            Modifier::Prefix(n) => Some(n),
            _ => None,
        };
        match (op.named(), var.modifier) {
            (false, Modifier::Explode) => {
                let list = repeated(topic, at, separator, &|e| runs(topic, e, class, None));
                let pair = |e| -> BTreeSet<usize> {
                    non_empty_runs(topic, e, class)
                        .into_iter()
                        .filter_map(|k| after(topic, k, "="))
                        .flat_map(|v| runs(topic, v, class, None))
                        .collect()
                };
                let map = repeated(topic, at, separator, &pair);
                list.union(&map).copied().collect()
            }
            (false, _) => runs(topic, at, class, limit),
            (true, Modifier::Explode) => {
                let pair = |e| -> BTreeSet<usize> {
                    non_empty_runs(topic, e, class)
                        .into_iter()
                        .flat_map(|k| naive_named_value(op, topic, k, None))
                        .collect()
                };
                repeated(topic, at, separator, &pair)
            }
            (true, _) => match after(topic, at, &var.name) {
                Some(e) => naive_named_value(op, topic, e, limit),
                None => BTreeSet::new(),
            },
        }
    }

    /// xorshift64*: a tiny deterministic generator, so the comparison needs no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    fn random_template(rng: &mut Rng) -> String {
        let mut text = String::new();
        for _ in 0..1 + rng.below(3) {
            if rng.below(3) == 0 {
                text.push_str(rng.pick(&["a", "/", "x.", "é", "b/", "=", ","]));
                continue;
            }
            text.push('{');
            text.push_str(rng.pick(&["", "+", "#", ".", "/", ";", "?", "&"]));
            for i in 0..1 + rng.below(3) {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(rng.pick(&["x", "y", "ab", "x.y"]));
                text.push_str(rng.pick(&["", "", "*", "*", ":1", ":2", ":3"]));
            }
            text.push('}');
        }
        text
    }

    fn random_topic(rng: &mut Rng) -> String {
        const TOKENS: &[&str] = &[
            "a",
            "b",
            "x",
            "y",
            "ab",
            "x.y",
            "é",
            "%41",
            "%C3%A9",
            "%c3",
            "%E2%82%AC",
            "%",
            "/",
            ".",
            ",",
            ";",
            "=",
            "?",
            "&",
            "#",
            "-",
            "x=",
            "y=",
            "ab=",
            " ",
            "{x}",
        ];
        (0..rng.below(9)).map(|_| rng.pick(TOKENS)).collect()
    }

    #[test]
    fn automaton_agrees_with_naive_matcher() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut total, mut positive) = (0, 0);
        for _ in 0..1_500 {
            let template = random_template(&mut rng);
            let parts = parse_template(&template).unwrap();
            let s = selector(&template);
            for _ in 0..50 {
                let topic = random_topic(&mut rng);
                let expected = topic == template || naive(&parts, &topic);
                assert_eq!(s.matches(&topic), expected, "{template:?} against {topic:?}");
                total += 1;
                positive += usize::from(expected);
            }
        }
        // Enough of both outcomes for the comparison to mean something.
        assert!(positive * 20 > total && positive * 2 < total, "{positive} of {total}");
    }
}
