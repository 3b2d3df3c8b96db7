//! Offsets: where a reader stands in a stream.
//!
//! The protocol wants offsets opaque to clients, unique, strictly increasing and sortable as
//! strings. Sluice's is `{records}_{bytes}`, both zero-padded to 16 digits: how many records
//! (one per append, or one per message in JSON mode) and how many bytes lie before the
//! position. Both only grow, so string order is stream order, and the record count alone
//! says where to resume: reading "after offset `o`" is reading the records numbered above
//! `o.records`. The byte count makes each offset say how much data precedes it, which a fork
//! with a sub-offset needs (it can end partway into a record).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A position in a stream: the records and bytes before it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Offset {
    /// Records before the position.
    pub records: u64,
    /// Bytes (of record data) before the position.
    pub bytes: u64,
}

/// Digits in each half of an offset; `u64::MAX` has 20, but no stream holds 10^16 records or
/// bytes, and a fixed width is what keeps string order equal to stream order.
const WIDTH: usize = 16;

impl Offset {
    /// The start of every stream.
    pub const START: Offset = Offset { records: 0, bytes: 0 };

    /// Parses an offset this server minted; `None` for anything else.
    pub fn parse(text: &str) -> Option<Offset> {
        let (records, bytes) = text.split_once('_')?;
        let half = |s: &str| {
            (s.len() == WIDTH && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        Some(Offset { records: half(records)?, bytes: half(bytes)? })
    }

    /// The offset after one more record of `len` bytes.
    pub fn after(self, len: usize) -> Offset {
        Offset { records: self.records + 1, bytes: self.bytes + len as u64 }
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:0w$}_{:0w$}", self.records, self.bytes, w = WIDTH)
    }
}

/// Where a read starts, as a client names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// `-1` or no offset: the stream's beginning.
    Start,
    /// `now`: the tail, skipping everything already in the stream.
    Now,
    /// An offset the server minted.
    At(Offset),
}

impl ReadFrom {
    /// Parses the `offset` query parameter (absent means the start); `None` when malformed.
    pub fn parse(text: Option<&str>) -> Option<ReadFrom> {
        match text {
            None | Some("-1") => Some(ReadFrom::Start),
            Some("now") => Some(ReadFrom::Now),
            Some(other) => Offset::parse(other).map(ReadFrom::At),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sentinels_and_malformed_offsets() {
        assert_eq!(ReadFrom::parse(None), Some(ReadFrom::Start));
        assert_eq!(ReadFrom::parse(Some("-1")), Some(ReadFrom::Start));
        assert_eq!(ReadFrom::parse(Some("now")), Some(ReadFrom::Now));
        for bad in ["", "abc", "1_2", "-2", "0000000000000001_000000000000000x", "_"] {
            assert_eq!(ReadFrom::parse(Some(bad)), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn string_order_is_stream_order(a in 0u64..10u64.pow(15), b in 0u64..10u64.pow(15),
                                        c in 0u64..10u64.pow(15), d in 0u64..10u64.pow(15)) {
            let x = Offset { records: a, bytes: b };
            let y = Offset { records: c, bytes: d };
            prop_assert_eq!(Offset::parse(&x.to_string()), Some(x));
            prop_assert_eq!(x.cmp(&y), x.to_string().cmp(&y.to_string()));
        }
    }
}
