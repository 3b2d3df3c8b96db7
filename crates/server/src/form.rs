//! `application/x-www-form-urlencoded`, strictly: a name or value whose bytes are not UTF-8
//! once percent-decoded is refused (400), instead of being changed into U+FFFD. A hub relays
//! publishers' data to subscribers; it must never alter it silently.

use std::borrow::Cow;

use percent_encoding::percent_decode;

use crate::error::ApiError;

/// The `name=value` pairs of `input`, in order, with `+` read as a space and `%XX` decoded
/// (a `%` not followed by two hex digits stays as it is, as in the WHATWG algorithm).
pub(crate) fn parse(input: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    input
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &pair[..0]),
            };
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

fn decode(raw: &[u8]) -> Result<String, ApiError> {
    let spaced: Cow<'_, [u8]> = if raw.contains(&b'+') {
        Cow::Owned(raw.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect())
    } else {
        Cow::Borrowed(raw)
    };
    percent_decode(&spaced).decode_utf8().map(Cow::into_owned).map_err(|_| {
        ApiError::bad_request("invalid_utf8", "a form field is not valid UTF-8 once decoded")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_the_whatwg_algorithm() {
        let pairs = parse(b"topic=%2Fa%2Fb&data=x+y%20z&private&&id=%zz&t=%C3%A9").unwrap();
        let pairs: Vec<(&str, &str)> =
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [("topic", "/a/b"), ("data", "x y z"), ("private", ""), ("id", "%zz"), ("t", "é")]
        );
    }

    #[test]
    fn invalid_utf8_is_refused_not_replaced() {
        assert_eq!(parse(b"data=%FF%FE").unwrap_err().status(), 400);
        assert_eq!(parse(b"topic=/a&data=%C3").unwrap_err().status(), 400);
        assert_eq!(parse(b"d\xffta=1").unwrap_err().status(), 400);
    }
}
