//! Events to bytes.
//!
//! An [`Event`] can only be built from values the wire can carry: an `id` or event type with a
//! line break in it is refused with an [`EncodeError`] when it is set, so a value relayed from
//! a publisher can never add a field or a whole forged event to somebody's stream. `data` may
//! contain any line ends (CR, LF, CRLF); each line becomes one `data:` line, and the decoder
//! joins them with LF.
//!
//! Every field is written as `name: value` with one space, even when the value is empty: the
//! decoder strips exactly one leading space, so a value that itself starts with a space
//! survives the trip.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};

/// Why a value cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The value of `field` contains a CR or LF, which would end the field early.
    #[error("the {field} of an event must not contain a line break (CR or LF)")]
    LineBreak {
        /// `"id"` or `"event"`.
        field: &'static str,
    },
    /// An `id` containing U+0000 is ignored by every conforming client; an event type with
    /// it names no listener anyone could have meant.
    #[error("the {field} of an event must not contain U+0000")]
    Nul {
        /// `"id"` or `"event"`.
        field: &'static str,
    },
}

/// One event to send: `data`, and optionally an event type, an id and a reconnection time.
///
/// Fields are borrowed or owned ([`Cow`]), so encoding a value that lives elsewhere allocates
/// nothing beyond the output buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    data: Cow<'a, str>,
    event: Option<Cow<'a, str>>,
    id: Option<Cow<'a, str>>,
    retry: Option<u64>,
}

impl<'a> Event<'a> {
    /// An event carrying `data` (any text, any line ends), of the default type `message`.
    pub fn new(data: impl Into<Cow<'a, str>>) -> Self {
        Event { data: data.into(), event: None, id: None, retry: None }
    }

    /// Sets the event type (`event:`), refusing a value with a line break or U+0000.
    pub fn with_event(mut self, event: impl Into<Cow<'a, str>>) -> Result<Self, EncodeError> {
        let event = event.into();
        if has_line_break(&event) {
            return Err(EncodeError::LineBreak { field: "event" });
        }
        if event.as_bytes().contains(&0) {
            return Err(EncodeError::Nul { field: "event" });
        }
        self.event = Some(event);
        Ok(self)
    }

    /// Sets the event id (`id:`), refusing a value with a line break or U+0000.
    ///
    /// An empty id is allowed: it tells the client to forget its last event id.
    pub fn with_id(mut self, id: impl Into<Cow<'a, str>>) -> Result<Self, EncodeError> {
        let id = id.into();
        if has_line_break(&id) {
            return Err(EncodeError::LineBreak { field: "id" });
        }
        if id.as_bytes().contains(&0) {
            return Err(EncodeError::Nul { field: "id" });
        }
        self.id = Some(id);
        Ok(self)
    }

    /// Sets the client's reconnection time in milliseconds (`retry:`).
    pub fn with_retry(mut self, millis: u64) -> Self {
        self.retry = Some(millis);
        self
    }

    /// The event's data.
    pub fn data(&self) -> &str {
        &self.data
    }

    /// The event type, if one was set.
    pub fn event(&self) -> Option<&str> {
        self.event.as_deref()
    }

    /// The event id, if one was set.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The reconnection time in milliseconds, if one was set.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// The number of bytes [`Event::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        let field = |name: &str, value: &Option<Cow<'_, str>>| {
            value.as_ref().map_or(0, |v| name.len() + 2 + v.len() + 1)
        };
        let retry = self.retry.map_or(0, |r| "retry: \n".len() + decimal_len(r));
        let data: usize =
            DataLines::new(&self.data).map(|line| "data: \n".len() + line.len()).sum();
        field("event", &self.event) + field("id", &self.id) + retry + data + 1
    }

    /// Appends the event, terminated by an empty line, to `buf`.
    ///
    /// The buffer grows once, by [`Event::encoded_len`].
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(self.encoded_len());
        if let Some(event) = &self.event {
            put_field(buf, b"event", event);
        }
        if let Some(id) = &self.id {
            put_field(buf, b"id", id);
        }
        if let Some(retry) = self.retry {
            put_retry(buf, retry);
        }
        for line in DataLines::new(&self.data) {
            put_field(buf, b"data", line);
        }
        buf.put_u8(b'\n');
    }
}

/// Appends a comment (`: text`), which clients ignore; servers send them as keep-alives.
///
/// Text with line breaks becomes one comment line per line.
pub fn encode_comment(text: &str, buf: &mut BytesMut) {
    for line in DataLines::new(text) {
        buf.reserve(line.len() + 3);
        buf.put_u8(b':');
        if !line.is_empty() {
            buf.put_u8(b' ');
            buf.put_slice(line.as_bytes());
        }
        buf.put_u8(b'\n');
    }
}

/// Appends a lone `retry:` field and an empty line: sets the client's reconnection time
/// without dispatching an event.
pub fn encode_retry(millis: u64, buf: &mut BytesMut) {
    put_retry(buf, millis);
    buf.put_u8(b'\n');
}

fn put_field(buf: &mut BytesMut, name: &[u8], value: &str) {
    buf.put_slice(name);
    buf.put_slice(b": ");
    buf.put_slice(value.as_bytes());
    buf.put_u8(b'\n');
}

fn put_retry(buf: &mut BytesMut, millis: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = millis;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    buf.put_slice(b"retry: ");
    buf.put_slice(&digits[start..]);
    buf.put_u8(b'\n');
}

fn decimal_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

fn has_line_break(s: &str) -> bool {
    memchr::memchr2(b'\r', b'\n', s.as_bytes()).is_some()
}

/// The lines of a text split on CR, LF and CRLF, as the decoder will see them. An empty text
/// is one empty line; a trailing line end yields a trailing empty line.
struct DataLines<'a> {
    rest: Option<&'a str>,
}

impl<'a> DataLines<'a> {
    fn new(text: &'a str) -> Self {
        DataLines { rest: Some(text) }
    }
}

impl<'a> Iterator for DataLines<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match memchr::memchr2(b'\r', b'\n', rest.as_bytes()) {
            None => {
                self.rest = None;
                Some(rest)
            }
            Some(end) => {
                let crlf =
                    rest.as_bytes()[end] == b'\r' && rest.as_bytes().get(end + 1) == Some(&b'\n');
                let next = end + if crlf { 2 } else { 1 };
                self.rest = Some(&rest[next..]);
                Some(&rest[..end])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(event: &Event<'_>) -> String {
        let mut buf = BytesMut::new();
        event.encode(&mut buf);
        assert_eq!(buf.len(), event.encoded_len(), "encoded_len must be exact");
        String::from_utf8(buf.to_vec()).unwrap()
    }

    #[test]
    fn writes_every_field_once_with_one_space() {
        let event =
            Event::new("hello").with_event("note").unwrap().with_id("42").unwrap().with_retry(1500);
        assert_eq!(encoded(&event), "event: note\nid: 42\nretry: 1500\ndata: hello\n\n");
    }

    #[test]
    fn splits_data_on_every_kind_of_line_end() {
        let event = Event::new("a\rb\nc\r\nd\n\re");
        assert_eq!(encoded(&event), "data: a\ndata: b\ndata: c\ndata: d\ndata: \ndata: e\n\n");
    }

    #[test]
    fn keeps_empty_and_space_led_values() {
        assert_eq!(encoded(&Event::new("")), "data: \n\n");
        assert_eq!(encoded(&Event::new(" x\n")), "data:  x\ndata: \n\n");
        assert_eq!(encoded(&Event::new("x").with_id("").unwrap()), "id: \ndata: x\n\n");
    }

    #[test]
    fn refuses_values_that_would_inject_fields() {
        for bad in ["a\nb", "a\rb", "a\r\nb", "\n"] {
            assert_eq!(Event::new("").with_id(bad), Err(EncodeError::LineBreak { field: "id" }));
            assert_eq!(
                Event::new("").with_event(bad),
                Err(EncodeError::LineBreak { field: "event" })
            );
        }
        assert_eq!(Event::new("").with_id("a\0b"), Err(EncodeError::Nul { field: "id" }));
        assert_eq!(Event::new("").with_event("a\0b"), Err(EncodeError::Nul { field: "event" }));
    }

    #[test]
    fn comments_and_lone_retry() {
        let mut buf = BytesMut::new();
        encode_comment("keep-alive", &mut buf);
        encode_comment("", &mut buf);
        encode_comment("two\nlines", &mut buf);
        encode_retry(0, &mut buf);
        encode_retry(u64::MAX, &mut buf);
        assert_eq!(
            &buf[..],
            b": keep-alive\n:\n: two\n: lines\nretry: 0\n\nretry: 18446744073709551615\n\n"
        );
    }
}
