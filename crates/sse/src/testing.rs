//! Invariants of the decoder on arbitrary input, shared by the fuzz target (`make fuzz`) and
//! the test that replays the fuzz corpus, so both check the same thing.

use bytes::BytesMut;

use crate::{DecodeError, Decoder, EncodeError, Event, MessageEvent};

/// Everything a decoder produced from one input: the events, then its final state.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The events dispatched, in order.
    pub events: Vec<MessageEvent>,
    /// The last event id in force at the end.
    pub last_event_id: String,
    /// The reconnection time at the end.
    pub retry: Option<u64>,
}

/// Decodes `chunks` in order with a fresh decoder, then ends the stream.
pub fn decode_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Decoded {
    let mut decoder = Decoder::new();
    let mut events = Vec::new();
    for chunk in chunks {
        decoder
            .feed(chunk, |event| events.push(event))
            .expect("test inputs stay below the size limit");
    }
    decoder.reset();
    Decoded { events, last_event_id: decoder.last_event_id().to_owned(), retry: decoder.retry() }
}

/// Decodes `chunks` in order with a decoder limited to events of `limit` bytes, stopping at
/// the first error: the events delivered until then, and that error.
pub fn decode_chunks_limited<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    limit: usize,
) -> (Vec<MessageEvent>, Option<DecodeError>) {
    let mut decoder = Decoder::new().with_max_event_size(limit);
    let mut events = Vec::new();
    for chunk in chunks {
        if let Err(error) = decoder.feed(chunk, |event| events.push(event)) {
            return (events, Some(error));
        }
    }
    (events, None)
}

/// Size limits small enough for short inputs to cross them, so that the size check is held to
/// the same rules as the rest: what it rejects must not depend on the chunking either.
const SMALL_LIMITS: [usize; 3] = [8, 24, 64];

/// Panics unless decoding `input` is independent of how it is split into chunks (with the
/// default size limit, and with small ones that it may exceed), and unless re-encoding the
/// decoded events decodes to the same events.
pub fn check_decoder(input: &[u8]) {
    let splits = [input.len() / 3, input.len() / 2, input.len().saturating_sub(1)];
    let whole = decode_chunks([input]);
    let byte_by_byte = decode_chunks(input.chunks(1));
    assert_eq!(whole, byte_by_byte, "byte-by-byte decoding differs");
    for split in splits {
        let (head, tail) = input.split_at(split);
        assert_eq!(whole, decode_chunks([head, tail]), "split at {split} differs");
    }

    for limit in SMALL_LIMITS {
        let limited = decode_chunks_limited([input], limit);
        for event in &limited.0 {
            assert!(event.data.len() <= limit, "an event over the limit of {limit} got through");
        }
        let byte_by_byte = decode_chunks_limited(input.chunks(1), limit);
        assert_eq!(limited, byte_by_byte, "limit {limit}: byte-by-byte decoding differs");
        for split in splits {
            let (head, tail) = input.split_at(split);
            let two = decode_chunks_limited([head, tail], limit);
            assert_eq!(limited, two, "limit {limit}: split at {split} differs");
        }
    }

    // Re-encoded, the events decode the same. A decoder takes a NUL in an event type (the
    // WHATWG algorithm keeps it), but the encoder refuses to write one: such events are left
    // out, and the refusal checked.
    let mut wire = BytesMut::new();
    let mut encodable = Vec::new();
    for event in &whole.events {
        let typed = Event::new(event.data.as_str()).with_event(event.event_type.as_ref());
        if event.event_type.contains('\0') {
            assert_eq!(typed.err(), Some(EncodeError::Nul { field: "event" }));
            continue;
        }
        typed
            .expect("a decoded event type has no line break")
            .with_id(event.last_event_id.as_str())
            .expect("a decoded id has no line break or NUL")
            .encode(&mut wire);
        encodable.push(event.clone());
    }
    let again = decode_chunks([&wire[..]]);
    assert_eq!(encodable, again.events, "re-encoded events decode differently");
}

/// Runs `check` on every file of the fuzz corpus `fuzz/corpus/{target}` (at the repository's
/// root) and returns how many there were, panicking with the name of the first file that fails.
/// Each crate's corpus test calls it, so a plain `cargo test` keeps covered everything a fuzzer
/// ever found.
pub fn replay_corpus(target: &str, check: impl Fn(&[u8]) + std::panic::RefUnwindSafe) -> usize {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("cannot read the corpus at {}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    for path in &files {
        let input = std::fs::read(path).unwrap();
        if std::panic::catch_unwind(|| check(&input)).is_err() {
            panic!("corpus input {} fails the checks of {target}", path.display());
        }
    }
    files.len()
}
