//! Property tests: what the encoder writes, the decoder reads back exactly, however the bytes
//! are split; and arbitrary bytes never break the decoder's invariants.

use bytes::BytesMut;
use proptest::prelude::*;
use sluice_sse::testing::{check_decoder, decode_chunks};
use sluice_sse::{Event, MessageEvent};

/// Any text without CR or LF (for event types), optionally without NUL too (for ids).
fn single_line(allow_nul: bool) -> impl Strategy<Value = String> {
    any::<String>().prop_map(move |s| {
        s.chars().filter(|&c| c != '\r' && c != '\n' && (allow_nul || c != '\0')).collect()
    })
}

/// Text that is heavy in line ends of every kind, so that every splitting rule is exercised.
fn data() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            any::<String>(),
            Just("\r".to_owned()),
            Just("\n".to_owned()),
            Just("\r\n".to_owned()),
            Just(" ".to_owned()),
            Just(":".to_owned()),
        ],
        0..8,
    )
    .prop_map(|parts| parts.concat())
}

#[derive(Debug, Clone)]
struct Spec {
    data: String,
    event: Option<String>,
    id: Option<String>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (data(), prop::option::of(single_line(true)), prop::option::of(single_line(false)))
        .prop_map(|(data, event, id)| Spec { data, event, id })
}

/// The events a browser would dispatch for `specs`: data with every line end as LF, an
/// absent or empty type as `message`, the id carried over from earlier events when absent.
fn expected(specs: &[Spec]) -> Vec<MessageEvent> {
    let mut last_id = String::new();
    specs
        .iter()
        .map(|spec| {
            if let Some(id) = &spec.id {
                last_id.clone_from(id);
            }
            let event_type = match spec.event.as_deref() {
                None | Some("") => "message".to_owned(),
                Some(other) => other.to_owned(),
            };
            MessageEvent {
                event_type: event_type.into(),
                data: spec.data.replace("\r\n", "\n").replace('\r', "\n"),
                last_event_id: last_id.clone(),
            }
        })
        .collect()
}

fn encode(specs: &[Spec]) -> BytesMut {
    let mut wire = BytesMut::new();
    for spec in specs {
        let mut event = Event::new(spec.data.as_str());
        if let Some(ty) = &spec.event {
            event = event.with_event(ty.as_str()).unwrap();
        }
        if let Some(id) = &spec.id {
            event = event.with_id(id.as_str()).unwrap();
        }
        event.encode(&mut wire);
    }
    wire
}

proptest! {
    #[test]
    fn encode_then_decode_is_the_identity(
        specs in prop::collection::vec(spec(), 0..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
    ) {
        let wire = encode(&specs);
        let mut offsets: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        offsets.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for end in offsets.into_iter().chain([wire.len()]) {
            chunks.push(&wire[start..end]);
            start = end;
        }
        prop_assert_eq!(decode_chunks(chunks).events, expected(&specs));
    }

    #[test]
    fn arbitrary_bytes_keep_the_decoder_invariants(input in prop::collection::vec(
        prop_oneof![any::<u8>(), Just(b'\r'), Just(b'\n'), Just(b':'), Just(b' ')], 0..256)) {
        check_decoder(&input);
    }

    #[test]
    fn a_refused_value_is_exactly_one_with_a_line_break(id in any::<String>()) {
        let refused = Event::new("").with_id(id.as_str()).is_err();
        prop_assert_eq!(refused, id.contains(['\r', '\n', '\0']));
    }
}
