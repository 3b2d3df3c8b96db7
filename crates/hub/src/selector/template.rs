//! The RFC 6570 URI-template parser: a selector's text into literal parts and expressions
//! (operator, variables, modifiers), checked against the grammar, before any matching.

use super::chars::{Class, char_at};
use super::error::SelectorError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Part {
    Literal(String),
    Expression(Expression),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Expression {
    pub(super) operator: Operator,
    pub(super) variables: Vec<VarSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct VarSpec {
    pub(super) name: String,
    pub(super) modifier: Modifier,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Modifier {
    None,
    Prefix(u16),
    Explode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Operator {
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
    pub(super) fn first(self) -> &'static str {
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
    pub(super) fn separator(self) -> char {
        match self {
            Operator::Simple | Operator::Reserved | Operator::Fragment => ',',
            Operator::Label => '.',
            Operator::Path => '/',
            Operator::Parameter => ';',
            Operator::Query | Operator::Continuation => '&',
        }
    }

    /// Whether items are `name=value`.
    pub(super) fn named(self) -> bool {
        matches!(self, Operator::Parameter | Operator::Query | Operator::Continuation)
    }

    /// Whether an empty named value is written `name=` (`?`, `&`) rather than `name` (`;`).
    pub(super) fn empty_keeps_equals(self) -> bool {
        matches!(self, Operator::Query | Operator::Continuation)
    }

    pub(super) fn class(self) -> Class {
        match self {
            Operator::Reserved | Operator::Fragment => Class::UnreservedReserved,
            _ => Class::Unreserved,
        }
    }
}

fn is_hex(byte: Option<&u8>) -> bool {
    byte.is_some_and(u8::is_ascii_hexdigit)
}

pub(super) fn parse_template(text: &str) -> Result<Vec<Part>, SelectorError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
