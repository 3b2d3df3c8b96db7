//! Arbitrary bytes through the SSE decoder: decoding must not depend on how the bytes are
//! split into chunks, and re-encoding what was decoded must decode to the same events.
//! `crates/sse/tests/fuzz_corpus.rs` replays the corpus through the same check.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_sse::testing::check_decoder(data));
