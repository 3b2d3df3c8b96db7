//! Arbitrary GGUF headers through the local model's header reader (metadata, tokenizer,
//! chat template): an error, never a panic or an unbounded allocation.
//! The crate's corpus test replays `fuzz/corpus/gguf_header` through the same check.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_llm::testing::check_gguf_header(data));
