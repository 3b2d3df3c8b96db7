//! Replays every input of the fuzz corpus (`fuzz/corpus/decoder`, grown by `make fuzz`)
//! through the same invariant checks as the fuzz target, so a plain `cargo test` keeps
//! everything the fuzzer ever found covered.

use std::path::Path;

use sluice_sse::testing::check_decoder;

#[test]
fn every_fuzz_corpus_input_passes_the_decoder_checks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/decoder");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("cannot read the corpus at {}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "the fuzz corpus at {} is empty", dir.display());
    for path in &entries {
        let input = std::fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(|| check_decoder(&input));
        assert!(outcome.is_ok(), "corpus input {} fails the decoder checks", path.display());
    }
}
