//! [`Tail`]: the latest records of a stream, kept for its live readers on this node.
//!
//! Live readers wait at the tail; an append wakes them all, and each would load the stream and
//! read the new records from the log. With a thousand readers that is two thousand log reads
//! per append (on SQLite, two thousand trips through the blocking pool). Instead the first
//! reader to wake fetches what is new once, adds it here, and the others take it from here.
//! Only what lies between the tail's `start` and its end is served from it; a reader further
//! back reads the log as a catch-up read does.

use bytes::Bytes;

use crate::meta::Meta;
use crate::offset::Offset;

/// The most bytes of records a tail keeps (it keeps at least the last record).
const MAX_BYTES: usize = 1 << 20;
/// The most records a tail keeps.
const MAX_RECORDS: usize = 1024;

/// A stream's latest records, and the stream as it was when they were read.
#[derive(Debug)]
pub(crate) struct Tail {
    /// The change count (of the stream's `Watch`, in `waiters`) this was read at.
    pub(crate) changes: u64,
    /// The stream, as loaded then: `meta.tail` is where `records` end.
    pub(crate) meta: Meta,
    /// The offset before `records[0]` (or `meta.tail` when there are none).
    start: Offset,
    records: Vec<Bytes>,
    bytes: usize,
}

impl Tail {
    /// A tail of the stream's last `records` (its last ones, ending at `meta.tail`): where
    /// they start is counted back from there.
    pub(crate) fn latest(changes: u64, meta: Meta, records: Vec<Bytes>) -> Tail {
        let bytes: usize = records.iter().map(Bytes::len).sum();
        let start = Offset {
            records: meta.tail.records - records.len() as u64,
            bytes: meta.tail.bytes - bytes as u64,
        };
        Tail { changes, start, meta, records, bytes }
    }

    /// Whether `meta` continues this tail: the same stream, not behind it.
    pub(crate) fn continued_by(&self, meta: &Meta) -> bool {
        meta.id == self.meta.id && meta.tail.records >= self.meta.tail.records
    }

    /// Adds the records that take the stream to `meta` (read from the log after this tail's
    /// end), dropping the oldest past the bounds.
    pub(crate) fn extend(&mut self, changes: u64, meta: Meta, records: Vec<Bytes>) {
        self.bytes += records.iter().map(Bytes::len).sum::<usize>();
        self.records.extend(records);
        while self.records.len() > 1 && (self.bytes > MAX_BYTES || self.records.len() > MAX_RECORDS)
        {
            let dropped = self.records.remove(0);
            self.bytes -= dropped.len();
            self.start = self.start.after(dropped.len());
        }
        self.changes = changes;
        self.meta = meta;
    }

    /// The records from `from` to the end, if `from` is a record boundary within this tail.
    pub(crate) fn from(&self, from: Offset) -> Option<&[Bytes]> {
        let mut at = self.start;
        for (i, record) in self.records.iter().enumerate() {
            if at == from {
                return Some(&self.records[i..]);
            }
            at = at.after(record.len());
        }
        (at == from).then_some(&[])
    }

    /// The offset after the tail's last record.
    pub(crate) fn end(&self) -> Offset {
        self.meta.tail
    }
}
