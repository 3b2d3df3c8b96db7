#!/usr/bin/env bash
# Fuzzes every target in fuzz/ for FUZZ_SECONDS seconds each (default 60), or only the
# targets named as arguments: `scripts/fuzz.sh selector token`.
#
# Each target's corpus is fuzz/corpus/<target>: libFuzzer starts from it and adds every input
# that reaches new code. Each crate replays its targets' corpora in `cargo test`, so a grown
# corpus can be minimised (`cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz cmin <target> -s none`)
# and committed. A crash leaves its input in fuzz/artifacts/<target>/.
#
# At the end it prints, per target, the executions run and the corpus size, for RELIABILITY.md.
#
# Runs on the stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its unstable flags,
# and `-s none` builds without a sanitizer (the crates forbid unsafe code, so AddressSanitizer
# would find nothing that a panic does not already report). Inputs are capped at 64 KiB and
# each run at 2 GiB of memory, so an input that makes a parser allocate without bound is a
# reported crash, not a stalled machine.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${FUZZ_SECONDS:-60}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cd "$root/fuzz"
targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
fi
python3 seeds.py >/dev/null
RUSTC_BOOTSTRAP=1 cargo fuzz build -s none

summary=()
failed=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    log="$(mktemp)"
    echo "fuzz: $target for ${seconds}s" >&2
    # A crash must not end the loop (set -e with pipefail would): record it and fuzz the rest.
    status=0
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -s none -- \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
        2>&1 | tee "$log" | { grep --line-buffered -E '#[0-9]+.*(pulse|NEW|DONE)' || true; } \
        | tail -n 3 >&2 || status=$?
    execs="$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')"
    corpus="$(find "corpus/$target" -type f | wc -l)"
    line="$target: $execs executions in ${seconds}s, corpus of $corpus inputs"
    if ((status != 0)); then
        failed+=("$target")
        line="$target: $execs executions, corpus of $corpus inputs"
        # The panic's location and message (the line after it), or libFuzzer's own error.
        line+=", then CRASHED (exit $status): $(grep -m 1 -A 1 -E 'panicked at|==[0-9]+== ERROR' "$log" | tr '\n' ' ')"
        line+="input in $(grep -oE 'Test unit written to [^ ]+' "$log" | head -n 1 | cut -d' ' -f5)"
    fi
    summary+=("$line")
    rm -f "$log"
done
printf '%s\n' "${summary[@]}"
if ((${#failed[@]} > 0)); then
    echo "fuzz: crashed: ${failed[*]}" >&2
    exit 1
fi
