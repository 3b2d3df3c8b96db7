//! Property tests for topic selectors: a URI template matches every expansion of itself.
//!
//! Random templates are expanded with random variable values by a small reference expander
//! written from RFC 6570 (section 3 and appendix A), with the one restriction the selector
//! documents: a variable without `*` holds a string (lists and maps only through `*`).

use proptest::prelude::*;
use sluice_hub::selector::Selector;

#[derive(Debug, Clone, Copy)]
enum Op {
    Simple,
    Reserved,
    Fragment,
    Label,
    Path,
    Parameter,
    Query,
    Continuation,
}

impl Op {
    const ALL: [Op; 8] = [
        Op::Simple,
        Op::Reserved,
        Op::Fragment,
        Op::Label,
        Op::Path,
        Op::Parameter,
        Op::Query,
        Op::Continuation,
    ];

    /// (symbol, first, separator, named, ifemp, allow reserved), as in RFC 6570 appendix A.
    fn spec(self) -> (&'static str, &'static str, &'static str, bool, &'static str, bool) {
        match self {
            Op::Simple => ("", "", ",", false, "", false),
            Op::Reserved => ("+", "", ",", false, "", true),
            Op::Fragment => ("#", "#", ",", false, "", true),
            Op::Label => (".", ".", ".", false, "", false),
            Op::Path => ("/", "/", "/", false, "", false),
            Op::Parameter => (";", ";", ";", true, "", false),
            Op::Query => ("?", "?", "&", true, "=", false),
            Op::Continuation => ("&", "&", "&", true, "=", false),
        }
    }
}

#[derive(Debug, Clone)]
enum Modifier {
    None,
    Prefix(usize),
    Explode,
}

#[derive(Debug, Clone)]
enum Value {
    Undefined,
    Text(String),
    List(Vec<String>),
    Map(Vec<(String, String)>),
}

#[derive(Debug, Clone)]
struct Var {
    name: &'static str,
    modifier: Modifier,
    value: Value,
}

#[derive(Debug, Clone)]
enum Piece {
    Literal(&'static str),
    Expression(Op, Vec<Var>),
}

/// Characters of raw values: unreserved, reserved, neither, `%` with and without hex digits,
/// and non-ASCII ones of every UTF-8 length.
const VALUE_PIECES: &[&str] = &[
    "a", "Z", "0", "-", ".", "_", "~", " ", "/", "?", "#", "[", "]", "@", "!", "$", "&", "'", "(",
    ")", "*", "+", ",", ";", "=", "%", "%41", "%e9", "é", "€", "🦀", "\"", "{", "|", "\\",
];

fn raw_value() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(VALUE_PIECES), 0..6).prop_map(|p| p.concat())
}

fn var() -> impl Strategy<Value = Var> {
    let name = prop::sample::select(&["x", "y", "ab", "x.y", "v_1", "%41"][..]);
    let modifier = prop_oneof![
        2 => Just(Modifier::None),
        1 => (1_usize..5).prop_map(Modifier::Prefix),
        2 => Just(Modifier::Explode),
    ];
    (name, modifier).prop_flat_map(|(name, modifier)| {
        let text = prop_oneof![
            1 => Just(Value::Undefined),
            3 => raw_value().prop_map(Value::Text),
        ];
        let value = match modifier {
            Modifier::None | Modifier::Prefix(_) => text.boxed(),
            Modifier::Explode => prop_oneof![
                2 => text,
                1 => prop::collection::vec(raw_value(), 1..4).prop_map(Value::List),
                1 => prop::collection::vec(
                    (raw_value().prop_filter("keys are not empty", |k| !k.is_empty()), raw_value()),
                    1..4,
                )
                .prop_map(Value::Map),
            ]
            .boxed(),
        };
        value.prop_map(move |value| Var { name, modifier: modifier.clone(), value })
    })
}

fn piece() -> impl Strategy<Value = Piece> {
    let literal = prop::sample::select(
        &["/", "a", "books", "é", "-", ".", "x=1", "?", "#", ",", "%20", " "][..],
    );
    prop_oneof![
        1 => literal.prop_map(Piece::Literal),
        2 => (prop::sample::select(&Op::ALL[..]), prop::collection::vec(var(), 1..4))
            .prop_map(|(op, vars)| Piece::Expression(op, vars)),
    ]
}

fn render(pieces: &[Piece]) -> String {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Literal(text) => out.push_str(text),
            Piece::Expression(op, vars) => {
                out.push('{');
                out.push_str(op.spec().0);
                for (i, var) in vars.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(var.name);
                    match var.modifier {
                        Modifier::None => {}
                        Modifier::Prefix(n) => out.push_str(&format!(":{n}")),
                        Modifier::Explode => out.push('*'),
                    }
                }
                out.push('}');
            }
        }
    }
    out
}

/// Encodes a value: unreserved characters (and reserved ones, and existing `%XX` triplets,
/// when allowed) as themselves, non-ASCII ones as themselves when `iri` (an IRI) or
/// percent-encoded, everything else percent-encoded.
fn encode(value: &str, reserved: bool, iri: bool) -> String {
    let mut out = String::new();
    let chars: Vec<char> = value.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let triplet = c == '%'
            && chars.get(i + 1).is_some_and(char::is_ascii_hexdigit)
            && chars.get(i + 2).is_some_and(char::is_ascii_hexdigit);
        if c.is_ascii_alphanumeric()
            || "-._~".contains(c)
            || (reserved && (":/?#[]@!$&'()*+,;=".contains(c) || triplet))
            || (iri && !c.is_ascii())
        {
            out.push(c);
        } else {
            for byte in c.to_string().bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    out
}

fn expand(pieces: &[Piece], iri: bool) -> String {
    let mut out = String::new();
    for piece in pieces {
        let (op, vars) = match piece {
            Piece::Literal(text) => {
                out.push_str(text);
                continue;
            }
            Piece::Expression(op, vars) => (op, vars),
        };
        let (_, first, separator, named, ifemp, reserved) = op.spec();
        let enc = |value: &str| encode(value, reserved, iri);
        // `name` then `=value`, or `ifemp` for an empty value.
        let named_item = |name: &str, value: &str| {
            if value.is_empty() {
                format!("{name}{ifemp}")
            } else {
                format!("{name}={}", enc(value))
            }
        };
        let mut items = Vec::new();
        for var in vars {
            let item = match &var.value {
                Value::Undefined => continue,
                Value::Text(text) => {
                    let text: String = match var.modifier {
                        Modifier::Prefix(n) => text.chars().take(n).collect(),
                        Modifier::None | Modifier::Explode => text.clone(),
                    };
                    if named { named_item(var.name, &text) } else { enc(&text) }
                }
                Value::List(list) => {
                    let members: Vec<String> = if named {
                        list.iter().map(|m| named_item(var.name, m)).collect()
                    } else {
                        list.iter().map(|m| enc(m)).collect()
                    };
                    members.join(separator)
                }
                Value::Map(map) => {
                    let pairs: Vec<String> = if named {
                        map.iter().map(|(k, v)| named_item(&enc(k), v)).collect()
                    } else {
                        map.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect()
                    };
                    pairs.join(separator)
                }
            };
            items.push(item);
        }
        if !items.is_empty() {
            out.push_str(first);
            out.push_str(&items.join(separator));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn a_template_matches_its_expansions(
        pieces in prop::collection::vec(piece(), 1..5),
        iri in any::<bool>(),
    ) {
        let template = render(&pieces);
        let selector = Selector::parse(&template).unwrap();
        let topic = expand(&pieces, iri);
        prop_assert!(selector.matches(&topic), "{template:?} should match {topic:?}");
    }

    #[test]
    fn a_character_no_template_produces_is_never_matched(
        pieces in prop::collection::vec(piece(), 1..5),
        at in any::<prop::sample::Index>(),
    ) {
        let template = render(&pieces);
        let selector = Selector::parse(&template).unwrap();
        let mut topic = expand(&pieces, true);
        let chars = topic.chars().count();
        let at = topic.char_indices().map(|(i, _)| i).nth(at.index(chars + 1)).unwrap_or(topic.len());
        topic.insert(at, '\u{7}');
        prop_assert!(!selector.matches(&topic), "{template:?} should not match {topic:?}");
    }

    #[test]
    fn text_without_a_brace_is_an_exact_topic(text in "[^{]*", suffix in ".") {
        let selector = Selector::parse(&text).unwrap();
        prop_assert_eq!(selector.exact(), Some(text.as_str()).filter(|t| *t != "*"));
        prop_assert!(selector.matches(&text));
        if text != "*" {
            let longer = format!("{text}{suffix}");
            prop_assert!(!selector.matches(&longer));
        }
    }

    #[test]
    fn parsing_and_matching_never_panic(
        text in prop::collection::vec(
            prop::sample::select(&["{", "}", "x", "é", ",", ":", "*", "1", "0", ".", "%", "%4", "+", "?", ";", "/", "#", " "][..]),
            0..12,
        ).prop_map(|p| p.concat()),
        topic in "\\PC{0,20}",
    ) {
        if let Ok(selector) = Selector::parse(&text) {
            prop_assert!(selector.matches(&text));
            let _ = selector.matches(&topic);
            prop_assert_eq!(selector.as_str(), text.as_str());
        }
    }
}
