//! Value characters: which characters an expression's value may hold (per operator class),
//! and where one of them, written as itself or percent-encoded, ends in a topic.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
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
pub(super) fn value_char_ends(
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

/// The character starting at byte `at` of `text` (a char boundary).
pub(super) fn char_at(text: &str, at: usize) -> char {
    text[at..].chars().next().unwrap_or('\u{FFFD}')
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
