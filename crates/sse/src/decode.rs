//! Bytes to events, incrementally, by the WHATWG HTML rules for `text/event-stream`.
//!
//! Feed the [`Decoder`] chunks as they arrive from the network, of any size and split at any
//! byte; it calls you back with each [`MessageEvent`] as soon as the empty line that ends it
//! has arrived. What it does, rule by rule:
//!
//! - One byte order mark at the very start of a stream is skipped, even split over chunks.
//! - A line ends at CRLF, LF or a lone CR. A CR that ends one chunk ends its line at once (an
//!   event ended by a lone CR is dispatched without waiting), and an LF that starts the next
//!   chunk is then the second half of that CRLF, not an empty line.
//! - Text is UTF-8. A character split across chunks is put back together; invalid bytes
//!   become U+FFFD, exactly as a browser's decoder replaces them.
//! - `name: value` with one leading space stripped; a line with no colon is a field name with
//!   an empty value; a line starting with a colon is a comment.
//! - `data` appends, `event` sets the type, `id` sets the last event id (an empty value
//!   clears it, a value with U+0000 is ignored), `retry` sets the reconnection time when it is
//!   ASCII digits only. Other fields are ignored.
//! - The last event id is not reset by a dispatch: later events without an `id` carry it.
//! - An event with no data is not dispatched; an event the stream ends before terminating is
//!   discarded.
//!
//! Work is linear in the input: each byte is scanned once for a line end, whatever the line
//! length or chunking, and a line that fits in one chunk is never copied before parsing. An
//! event larger than the configured maximum (its data plus the whole line being read, field
//! name included) is an error instead of unbounded memory, and which events are too large does
//! not depend on the chunking either.

use std::borrow::Cow;

/// The largest event a [`Decoder::new`] accepts: 16 MiB of data plus the line being read.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 16 * 1024 * 1024;

const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// An event as an `EventSource` dispatches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageEvent {
    /// The event type: `message` unless the stream named another with `event:`.
    pub event_type: Cow<'static, str>,
    /// The `data:` lines joined with LF.
    pub data: String,
    /// The last event id in force when the event was dispatched (empty when none).
    pub last_event_id: String,
}

/// Why a stream cannot be decoded further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// An event (its data plus its unfinished line) grew past the configured maximum.
    #[error("an event exceeds the maximum size of {limit} bytes")]
    EventTooLarge {
        /// The configured maximum, in bytes.
        limit: usize,
    },
}

/// The incremental `text/event-stream` parser. See the [module docs](self) for the rules.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Bytes of a line whose end has not arrived yet.
    line: Vec<u8>,
    /// The `data:` lines of the event being read, joined with LF.
    data: String,
    /// Whether the event being read has had a `data:` line (`data` may still be empty).
    has_data: bool,
    event_type: String,
    /// The id the stream set most recently, not yet committed by an empty line.
    id_buffer: String,
    /// Whether `id_buffer` may differ from `last_event_id`, so that a dispatch need not
    /// compare them.
    id_changed: bool,
    /// The id committed by the last empty line: what a reconnection sends.
    last_event_id: String,
    retry: Option<u64>,
    /// The previous chunk ended with CR: an LF first in the next one belongs to it.
    skip_lf: bool,
    /// How many bytes of a leading BOM have been matched, while that is still undecided.
    bom_matched: Option<u8>,
    max_event_size: usize,
    /// Set when an event was too large; sticky until [`Decoder::reset`].
    failed: Option<DecodeError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder for a new stream, accepting events up to [`DEFAULT_MAX_EVENT_SIZE`].
    pub fn new() -> Self {
        Decoder {
            line: Vec::new(),
            data: String::new(),
            has_data: false,
            event_type: String::new(),
            id_buffer: String::new(),
            id_changed: false,
            last_event_id: String::new(),
            retry: None,
            skip_lf: false,
            bom_matched: Some(0),
            max_event_size: DEFAULT_MAX_EVENT_SIZE,
            failed: None,
        }
    }

    /// Sets the largest event, in bytes of data plus the line being read (all of its bytes, the
    /// field name included), that is accepted.
    pub fn with_max_event_size(mut self, limit: usize) -> Self {
        self.max_event_size = limit;
        self
    }

    /// Starts from a known last event id, as a client resuming a stream does.
    pub fn with_last_event_id(mut self, id: impl Into<String>) -> Self {
        self.last_event_id = id.into();
        self.id_buffer.clone_from(&self.last_event_id);
        self.id_changed = false;
        self
    }

    /// The last event id in force: the one set by the stream as of its last empty line, which
    /// is what a client sends as `Last-Event-ID` when it reconnects.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The reconnection time in milliseconds the stream asked for with `retry:`, if any.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Ends the current stream and prepares for the next one (a reconnection).
    ///
    /// The event being read is discarded, as the spec says of an unterminated event (an `id`
    /// it set included), and a leading BOM will be skipped again. The last event id and the
    /// reconnection time are kept, as browsers keep them across reconnections. A sticky error
    /// is cleared.
    pub fn reset(&mut self) {
        self.id_buffer.clone_from(&self.last_event_id);
        self.id_changed = false;
        self.line.clear();
        self.data.clear();
        self.has_data = false;
        self.event_type.clear();
        self.skip_lf = false;
        self.bom_matched = Some(0);
        self.failed = None;
    }

    /// Decodes `chunk`, calling `on_event` for each event it completes, in order.
    ///
    /// After an error, events completed earlier in the chunk have been delivered, and every
    /// further call returns the same error until [`Decoder::reset`].
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut on_event: impl FnMut(MessageEvent),
    ) -> Result<(), DecodeError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.feed_inner(chunk, &mut on_event);
        if let Err(error) = &result {
            self.line = Vec::new();
            self.data = String::new();
            self.has_data = false;
            self.event_type.clear();
            self.failed = Some(error.clone());
        }
        result
    }

    fn feed_inner(
        &mut self,
        chunk: &[u8],
        on_event: &mut impl FnMut(MessageEvent),
    ) -> Result<(), DecodeError> {
        let mut input = self.skip_bom(chunk);
        if input.is_empty() {
            return Ok(());
        }
        if std::mem::take(&mut self.skip_lf) && input[0] == b'\n' {
            input = &input[1..];
        }
        while let Some(end) = memchr::memchr2(b'\r', b'\n', input) {
            let next = if input[end] == b'\n' {
                end + 1
            } else if end + 1 == input.len() {
                self.skip_lf = true;
                end + 1
            } else if input[end + 1] == b'\n' {
                end + 2
            } else {
                end + 1
            };
            // Every line is measured whole, before it is parsed, so that whether an event is
            // too large never depends on where the chunks were cut.
            self.check_size(end)?;
            if self.line.is_empty() {
                self.process_line(&input[..end], on_event);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&input[..end]);
                self.process_line(&line, on_event);
                line.clear();
                self.line = line;
            }
            input = &input[next..];
        }
        if !input.is_empty() {
            self.check_size(input.len())?;
            self.line.extend_from_slice(input);
        }
        Ok(())
    }

    /// Returns the part of `chunk` after a leading BOM (or after the part of one that this
    /// chunk completes). A BOM prefix that turns out not to be one is kept as line bytes.
    fn skip_bom<'c>(&mut self, mut chunk: &'c [u8]) -> &'c [u8] {
        while let (Some(matched), Some(&byte)) = (self.bom_matched, chunk.first()) {
            let matched = usize::from(matched);
            if byte == BOM[matched] {
                chunk = &chunk[1..];
                self.bom_matched = (matched + 1 < BOM.len()).then_some(matched as u8 + 1);
            } else {
                self.line.extend_from_slice(&BOM[..matched]);
                self.bom_matched = None;
            }
        }
        chunk
    }

    fn check_size(&self, more: usize) -> Result<(), DecodeError> {
        if self.line.len() + self.data.len() + more > self.max_event_size {
            Err(DecodeError::EventTooLarge { limit: self.max_event_size })
        } else {
            Ok(())
        }
    }

    fn process_line(&mut self, line: &[u8], on_event: &mut impl FnMut(MessageEvent)) {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(0) => return,
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            // The data grows by at most the length of the line, which `feed_inner` measured.
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.has_data = true;
                push_utf8(&mut self.data, value);
            }
            b"event" => {
                self.event_type.clear();
                push_utf8(&mut self.event_type, value);
            }
            b"id" if !value.contains(&0) => {
                self.id_buffer.clear();
                push_utf8(&mut self.id_buffer, value);
                self.id_changed = true;
            }
            b"retry" => {
                if let Some(millis) = parse_digits(value) {
                    self.retry = Some(millis);
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(MessageEvent)) {
        if std::mem::take(&mut self.id_changed) {
            self.last_event_id.clone_from(&self.id_buffer);
        }
        if !std::mem::take(&mut self.has_data) {
            self.event_type.clear();
            return;
        }
        let event_type = if self.event_type.is_empty() {
            Cow::Borrowed("message")
        } else {
            Cow::Owned(std::mem::take(&mut self.event_type))
        };
        on_event(MessageEvent {
            event_type,
            data: std::mem::take(&mut self.data),
            last_event_id: self.last_event_id.clone(),
        });
    }
}

/// Appends `bytes` decoded as UTF-8, each invalid sequence replaced by U+FFFD.
///
/// Lines are split on ASCII bytes, which never occur inside a multi-byte character and always
/// end an invalid one, so decoding line by line gives what decoding the whole stream gives.
///
/// Valid input, the common case, is checked with SIMD instructions and copied once.
fn push_utf8(out: &mut String, bytes: &[u8]) {
    match simdutf8::basic::from_utf8(bytes) {
        Ok(text) => out.push_str(text),
        Err(_) => out.push_str(&String::from_utf8_lossy(bytes)),
    }
}

/// A `retry` value: ASCII digits only, at least one, fitting in a `u64`; otherwise `None`.
fn parse_digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &byte| {
        let digit = byte.checked_sub(b'0').filter(|d| *d <= 9)?;
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}
