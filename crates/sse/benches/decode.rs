//! Decoding throughput of sluice-sse next to two other Rust SSE parsers, on the same bytes cut
//! into the same chunks, in the same run: `cargo bench -p sluice-sse --bench decode`.
//!
//! Implementations:
//! - `sluice_feed`: [`sluice_sse::Decoder::feed`], the callback API.
//! - `sluice_stream`: [`sluice_sse::EventStream`] over a stream of `Bytes` chunks.
//! - `eventsource_stream`: `eventsource_stream::Eventsource::eventsource()` over the same stream.
//! - `sse_stream`: `sse_stream::SseStream::from_bytes_stream` over the same stream (the
//!   non-deprecated name of `from_byte_stream`).
//!
//! Every implementation consumes every event and passes its data to `black_box`. Before any
//! timing, each one is run once and must report the same number of events and the same number
//! of data bytes as the input was built with, so that no implementation is measured doing less.
//!
//! Scenarios:
//! - `llm`: 10,000 small chat-completion-chunk events, in 1,400-byte chunks (a TCP segment's
//!   worth, falling at arbitrary places in the events).
//! - `multiline`: 64 events of 256 data lines of about 120 bytes each, in 64 KiB chunks.
//! - `long_line`: one event whose only data line is 64 KiB, 256 KiB or 1 MiB long, fed in 16-byte
//!   chunks. Constant throughput across the sizes is what linear time looks like.
//!   eventsource-stream re-parses its whole buffer on every chunk, so its time grows with the
//!   square of the line length: it is measured at 64 KiB and 256 KiB only (one pass over 1 MiB
//!   takes about 30 s on a 2-core machine, and criterion needs at least ten).
//!
//! The async streams are driven by a poll loop with a no-op waker: `stream::iter` is always
//! ready, so no executor is needed and none is measured.

use std::convert::Infallible;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Bencher, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput};
use eventsource_stream::Eventsource;
use futures_util::stream::{self, Stream};
use sluice_sse::{Decoder, EventStream};
use sse_stream::SseStream;

/// What one decoding pass saw: the number of events and the total length of their data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Tally {
    events: usize,
    data_bytes: usize,
}

impl Tally {
    fn add(&mut self, data: String) {
        self.events += 1;
        self.data_bytes += data.len();
        black_box(data);
    }
}

/// A decoder under test: decodes every chunk in order and tallies the events.
type Implementation = fn(&[Bytes]) -> Tally;

const IMPLEMENTATIONS: &[(&str, Implementation)] = &[
    ("sluice_feed", sluice_feed),
    ("sluice_stream", sluice_stream),
    ("eventsource_stream", eventsource_stream),
    ("sse_stream", sse_stream),
];

fn sluice_feed(chunks: &[Bytes]) -> Tally {
    let mut decoder = Decoder::new();
    let mut tally = Tally::default();
    for chunk in chunks {
        decoder.feed(chunk, |event| tally.add(event.data)).unwrap();
    }
    tally
}

fn sluice_stream(chunks: &[Bytes]) -> Tally {
    let mut tally = Tally::default();
    drain(EventStream::new(byte_stream(chunks)), |event| tally.add(event.unwrap().data));
    tally
}

fn eventsource_stream(chunks: &[Bytes]) -> Tally {
    let mut tally = Tally::default();
    drain(byte_stream(chunks).eventsource(), |event| tally.add(event.unwrap().data));
    tally
}

fn sse_stream(chunks: &[Bytes]) -> Tally {
    let mut tally = Tally::default();
    drain(SseStream::from_bytes_stream(byte_stream(chunks)), |event| {
        tally.add(event.unwrap().data.unwrap_or_default());
    });
    tally
}

/// The chunks as a byte stream, as an HTTP client hands them out (cloning `Bytes` is a
/// reference count, not a copy).
fn byte_stream(chunks: &[Bytes]) -> impl Stream<Item = Result<Bytes, Infallible>> + '_ {
    stream::iter(chunks.iter().cloned().map(Ok))
}

/// Polls `stream` to its end, handing each item to `each`.
fn drain<S: Stream>(stream: S, mut each: impl FnMut(S::Item)) {
    let mut stream = pin!(stream);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match stream.as_mut().poll_next(&mut cx) {
            Poll::Ready(Some(item)) => each(item),
            Poll::Ready(None) => return,
            Poll::Pending => unreachable!("stream::iter is always ready"),
        }
    }
}

/// A deterministic pseudo-random sequence (a 64-bit LCG), so every run sees the same input.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Words of a chat answer, a few of them outside ASCII as real answers are.
const WORDS: &[&str] = &[
    "The",
    " answer",
    " is",
    " that",
    " the",
    " stream",
    " of",
    " tokens",
    " arrives",
    " one",
    " piece",
    " at",
    " a",
    " time",
    ",",
    " and",
    " each",
    " piece",
    " is",
    " sent",
    " as",
    " an",
    " event",
    ".",
    " Servers",
    " flush",
    " every",
    " token",
    " so",
    " users",
    " see",
    " text",
    " appear",
    " naïve",
    " café",
    " über",
    " 日本",
    "語",
    " 🎉",
    "\\n",
    " `code`",
    " \\\"quoted\\\"",
];

/// The bytes of a stream and how they arrive.
struct Input {
    chunks: Vec<Bytes>,
    len: usize,
    expected: Tally,
}

impl Input {
    fn new(wire: Vec<u8>, chunk_size: usize, expected: Tally) -> Self {
        let wire = Bytes::from(wire);
        let chunks = (0..wire.len())
            .step_by(chunk_size)
            .map(|start| wire.slice(start..wire.len().min(start + chunk_size)))
            .collect();
        Input { chunks, len: wire.len(), expected }
    }
}

/// (a) 10,000 OpenAI-style chunk events of one token each, in 1,400-byte chunks.
fn llm_input() -> Input {
    let mut rng = Lcg(1);
    let mut wire = Vec::new();
    let mut expected = Tally::default();
    for _ in 0..10_000 {
        let word = WORDS[rng.below(WORDS.len())];
        let data = format!(
            r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{{"index":0,"delta":{{"content":"{word}"}}}}]}}"#
        );
        wire.extend_from_slice(b"data: ");
        wire.extend_from_slice(data.as_bytes());
        wire.extend_from_slice(b"\n\n");
        expected.events += 1;
        expected.data_bytes += data.len();
    }
    Input::new(wire, 1400, expected)
}

/// (b) 64 events of 256 data lines of about 120 bytes each, in 64 KiB chunks.
fn multiline_input() -> Input {
    let mut rng = Lcg(2);
    let mut wire = Vec::new();
    let mut expected = Tally::default();
    for _ in 0..64 {
        let mut data_bytes = 0;
        for _ in 0..256 {
            let mut line = String::new();
            while line.len() < 114 {
                line.push_str(WORDS[rng.below(WORDS.len())]);
            }
            wire.extend_from_slice(b"data: ");
            wire.extend_from_slice(line.as_bytes());
            wire.push(b'\n');
            data_bytes += line.len() + 1;
        }
        wire.push(b'\n');
        expected.events += 1;
        // The lines are joined with LF: one fewer than there are lines.
        expected.data_bytes += data_bytes - 1;
    }
    Input::new(wire, 64 * 1024, expected)
}

/// (c) One event whose single data line is `len` bytes, in 16-byte chunks.
fn long_line_input(len: usize) -> Input {
    let mut wire = b"data: ".to_vec();
    wire.extend((0..len).map(|i| b'a' + (i % 26) as u8));
    wire.extend_from_slice(b"\n\n");
    Input::new(wire, 16, Tally { events: 1, data_bytes: len })
}

/// Runs each implementation once, untimed, and stops the run if any disagrees with the input.
fn check(scenario: &str, input: &Input, implementations: &[(&str, Implementation)]) {
    for (name, implementation) in implementations {
        let tally = implementation(&input.chunks);
        assert_eq!(tally, input.expected, "{scenario}: {name} decoded something else");
    }
}

fn bench_all(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    input: &Input,
    parameter: Option<&str>,
    implementations: &[(&str, Implementation)],
) {
    group.throughput(Throughput::Bytes(input.len as u64));
    for &(name, implementation) in implementations {
        let chunks = &input.chunks;
        let run = |b: &mut Bencher<'_>| b.iter(|| implementation(chunks));
        match parameter {
            Some(parameter) => group.bench_function(BenchmarkId::new(name, parameter), run),
            None => group.bench_function(name, run),
        };
    }
}

/// How long each benchmark is measured, after a one-second warm-up: with 50 samples this keeps
/// the whole run near two minutes on two cores.
const SECONDS: Duration = Duration::from_secs(3);

fn llm(c: &mut Criterion) {
    let input = llm_input();
    check("llm", &input, IMPLEMENTATIONS);
    let mut group = c.benchmark_group("llm");
    group.sample_size(50).warm_up_time(Duration::from_secs(1)).measurement_time(SECONDS);
    bench_all(&mut group, &input, None, IMPLEMENTATIONS);
    group.finish();
}

fn multiline(c: &mut Criterion) {
    let input = multiline_input();
    check("multiline", &input, IMPLEMENTATIONS);
    let mut group = c.benchmark_group("multiline");
    group.sample_size(50).warm_up_time(Duration::from_secs(1)).measurement_time(SECONDS);
    bench_all(&mut group, &input, None, IMPLEMENTATIONS);
    group.finish();
}

fn long_line(c: &mut Criterion) {
    let mut group = c.benchmark_group("long_line");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(SECONDS);
    for (label, len) in [("64KiB", 64 << 10), ("256KiB", 256 << 10), ("1MiB", 1 << 20)] {
        let input = long_line_input(len);
        // eventsource-stream is quadratic here: one pass over 1 MiB takes about half a minute.
        let implementations: Vec<_> = IMPLEMENTATIONS
            .iter()
            .copied()
            .filter(|(name, _)| *name != "eventsource_stream" || len <= 256 << 10)
            .collect();
        check("long_line", &input, &implementations);
        for implementation in implementations {
            // Ten single-iteration samples are the least criterion takes: enough for a pass
            // that lasts seconds.
            if implementation.0 == "eventsource_stream" {
                group.sampling_mode(SamplingMode::Flat).sample_size(10);
            } else {
                group.sampling_mode(SamplingMode::Auto).sample_size(50);
            }
            bench_all(&mut group, &input, Some(label), &[implementation]);
        }
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    llm(&mut criterion);
    multiline(&mut criterion);
    long_line(&mut criterion);
    criterion.final_summary();
}
