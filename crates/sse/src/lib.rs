//! The Server-Sent Events wire format, and nothing else: no sockets, no runtime.
//!
//! ```
//! use bytes::BytesMut;
//! use sluice_sse::{Decoder, Event};
//!
//! // Encoding refuses what would inject fields: an id cannot carry a line break.
//! assert!(Event::new("x").with_id("1\ndata: forged").is_err());
//!
//! let mut wire = BytesMut::new();
//! Event::new("first line\r\nsecond line")
//!     .with_event("greeting")?
//!     .with_id("7")?
//!     .encode(&mut wire);
//! assert_eq!(&wire[..], b"event: greeting\nid: 7\ndata: first line\ndata: second line\n\n");
//!
//! // Decoding takes chunks split anywhere, even inside a CRLF or a UTF-8 character.
//! let mut decoder = Decoder::new();
//! let mut events = Vec::new();
//! for chunk in wire.chunks(3) {
//!     decoder.feed(chunk, |event| events.push(event))?;
//! }
//! assert_eq!(events[0].event_type, "greeting");
//! assert_eq!(events[0].data, "first line\nsecond line");
//! assert_eq!(events[0].last_event_id, "7");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The encoder writes what the decoder reads back exactly (a property test checks the round
//! trip for arbitrary events), and the decoder follows the WHATWG HTML parsing rules, which is
//! what browsers' `EventSource` does. See the [`decode`] module for the details that matter
//! on hostile or unusual input.

pub mod decode;
pub mod encode;
#[cfg(feature = "stream")]
pub mod stream;
#[cfg(feature = "testing")]
pub mod testing;

pub use decode::{DecodeError, Decoder, MessageEvent};
pub use encode::{EncodeError, Event, encode_comment, encode_retry};
#[cfg(feature = "stream")]
pub use stream::{EventStream, StreamError};
