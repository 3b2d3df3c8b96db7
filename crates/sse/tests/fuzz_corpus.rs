//! Replays every input of the fuzz corpus (`fuzz/corpus/decoder`, grown by `make fuzz`)
//! through the same invariant checks as the fuzz target, so a plain `cargo test` keeps
//! everything the fuzzer ever found covered.

use sluice_sse::testing::{check_decoder, replay_corpus};

#[test]
fn every_fuzz_corpus_input_passes_the_decoder_checks() {
    assert!(replay_corpus("decoder", check_decoder) > 0, "the decoder corpus is empty");
}
