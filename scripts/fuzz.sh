#!/usr/bin/env bash
# Fuzzes the SSE decoder (target `decoder` in fuzz/) for FUZZ_SECONDS seconds (default 60).
#
# The corpus is fuzz/corpus/decoder: libFuzzer starts from it and adds every input that
# reaches new code to it. crates/sse/tests/fuzz_corpus.rs replays it in `cargo test`, so a
# grown corpus can be minimised (`cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz cmin decoder -s none`)
# and committed. A crash leaves its input in fuzz/artifacts/decoder/.
#
# Runs on the stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its unstable flags,
# and `-s none` builds without a sanitizer (the crate forbids unsafe code, so AddressSanitizer
# would find nothing that a panic does not already report).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cd "$root/fuzz"
mkdir -p corpus/decoder
RUSTC_BOOTSTRAP=1 cargo fuzz run decoder -s none -- -max_total_time="${FUZZ_SECONDS:-60}"
