//! What a store keeps about a stream besides its records: its settings and its writers' state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::offset::Offset;

/// A stream's settings and state, stored as one value that every write replaces whole (under
/// a version check, so that concurrent writers on any node serialise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Distinguishes this stream from an earlier one at the same path (ETags name it).
    pub id: u64,
    /// The content type it was created with, as given.
    pub content_type: String,
    /// When it expires, if ever.
    pub expiry: Expiry,
    /// The position after its last record.
    pub tail: Offset,
    /// Set once it is closed: no more appends.
    pub closed: Option<Closer>,
    /// Idempotent producers' state, by producer id.
    pub producers: BTreeMap<String, ProducerState>,
    /// The highest `Stream-Seq` a writer gave.
    pub writer_seq: Option<String>,
    /// The stream it was forked from and where, if it is a fork.
    pub forked_from: Option<ForkOf>,
    /// How many live forks were made from it: deleting it while any remain only hides it.
    pub forks: u64,
    /// Deleted while forks remained: hidden (410), its path not reusable, kept for them.
    pub deleted: bool,
    /// When it was made, in milliseconds since the Unix epoch.
    pub created_ms: u64,
}

impl Meta {
    /// Whether the stream holds JSON messages (the protocol's JSON mode).
    pub fn is_json(&self) -> bool {
        is_json(&self.content_type)
    }

    /// Whether it has expired at `now_ms`, last read or written at `accessed_ms`.
    pub fn expired(&self, now_ms: u64, accessed_ms: u64) -> bool {
        match self.expiry {
            Expiry::Never => false,
            Expiry::Ttl(secs) => now_ms >= accessed_ms.saturating_add(secs.saturating_mul(1000)),
            Expiry::At { ms, .. } => now_ms as i128 >= ms as i128,
        }
    }
}

/// When a stream expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expiry {
    /// It lives until deleted.
    Never,
    /// This many seconds after its last read or write (`Stream-TTL`).
    Ttl(u64),
    /// At this instant (`Stream-Expires-At`), kept as given to be echoed back.
    At {
        /// As the client wrote it.
        text: String,
        /// Milliseconds since the Unix epoch.
        ms: i64,
    },
}

/// Where a fork branched off its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkOf {
    /// The source stream's path.
    pub source: String,
    /// The offset in the source it inherits up to.
    pub offset: Offset,
    /// The messages (JSON) or bytes past `offset` it inherits too.
    pub sub_offset: u64,
}

/// Who closed a stream: an idempotent producer's stamp makes its retry a success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closer {
    /// The producer and its epoch and sequence number, when one closed it.
    pub producer: Option<(String, u64, u64)>,
}

/// An idempotent producer's place: the epoch it is in and the last batch accepted in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerState {
    /// Its current epoch.
    pub epoch: u64,
    /// The last sequence number accepted in that epoch.
    pub seq: u64,
}

/// The media type without parameters, lower-cased: what two content types are compared by.
pub fn essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Whether a content type is the protocol's JSON mode.
pub fn is_json(content_type: &str) -> bool {
    essence(content_type) == "application/json"
}

/// Parses an RFC 3339 timestamp to milliseconds since the Unix epoch.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        part.iter().all(u8::is_ascii_digit).then(|| std::str::from_utf8(part).ok()?.parse().ok())?
    };
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
        || !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let len = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return None;
        }
        let first3: String = fraction[..len].chars().chain("000".chars()).take(3).collect();
        millis = first3.parse::<i64>().ok()?;
        rest = &fraction[len..];
    }
    let offset_minutes = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
            let m = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            if ![h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()) || h > 23 || m > 59 {
                return None;
            }
            if *sign == b'+' { h * 60 + m } else { -(h * 60 + m) }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-10-09T00:00:00.250Z"), Some(1_728_432_000_250));
        assert_eq!(parse_rfc3339("2024-10-09T02:00:00+02:00"), Some(1_728_432_000_000));
        assert_eq!(parse_rfc3339("2000-02-29T12:00:00-01:30"), Some(951_831_000_000));
        for bad in [
            "",
            "2024-10-09",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-10-09T00:00:00",
            "not-a-date",
            "2024-10-09T00:00:00.Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn content_types_compare_by_essence() {
        assert_eq!(essence("Application/JSON; charset=utf-8"), "application/json");
        assert!(is_json("application/json;charset=UTF-8"));
        assert!(!is_json("application/ndjson"));
    }
}
