#!/usr/bin/env bash
# `make soak`'s load with a heap profile of the server: heaptrack (Debian's package) is
# preloaded into `sluice serve` only (not into the load generator), its records interpreted
# and compressed as they come, and the server stopped with SIGTERM at the end so that the last
# of them is written. RELIABILITY.md ("Soak") reads the result.
#
#   bench/soak-heap.sh [SECONDS] [NAME]            # default: 3600 s, "soak-hour"
#   SLUICE_REPLAY_WINDOW_MIB=0 bench/soak-heap.sh 3600 soak-hour-window-off
#
# Writes bench/results/NAME.json (RSS and open files every 10 s, as `make soak`),
# bench/results/NAME.heaptrack.zst (open it with heaptrack_print or heaptrack_gui; not
# committed: it is large) and
# bench/results/NAME.heap.txt (heaptrack_print's summary: peak heap, what was still held at
# the end and where it was allocated) and bench/results/NAME.heap-series.json (the heap in use,
# the most in each 10 s: [[seconds, bytes], ...], which bench/plot_soak.py --heap draws). Builds the release binary first unless NO_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-3600}
NAME=${2:-soak-hour}
OUT=bench/results
PRELOAD=/usr/lib/heaptrack/libheaptrack_preload.so
INTERPRET=/usr/lib/heaptrack/libexec/heaptrack_interpret

if [ ! -x "$INTERPRET" ] || ! command -v zstd >/dev/null; then
    echo "soak-heap: installing heaptrack and zstd (Debian)" >&2
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get install -y -qq heaptrack zstd >/dev/null
fi
[ -n "${NO_BUILD:-}" ] || cargo build --release --locked -p sluice
mkdir -p "$OUT"
pipe=$(mktemp -u "${TMPDIR:-/tmp}/sluice-heaptrack.XXXXXX")
mkfifo "$pipe"
trap 'rm -f "$pipe"' EXIT
"$INTERPRET" <"$pipe" | zstd -q -c >"$OUT/$NAME.heaptrack.zst" &
interpreter=$!
target/release/sluice bench soak --duration "$DURATION" --json "$OUT/$NAME.json" \
    --server-env "LD_PRELOAD=$PRELOAD" --server-env "DUMP_HEAPTRACK_OUTPUT=$pipe"
wait "$interpreter"
heaptrack_print --file "$OUT/$NAME.heaptrack.zst" --print-leaks 1 --print-peaks 1 \
    --print-allocators 0 --print-temporary 0 --peak-limit 10 >"$OUT/$NAME.heap.txt"
# The heap in use over time, the most in each 10 s, from heaptrack's massif-format output.
massif=$(mktemp)
heaptrack_print --file "$OUT/$NAME.heaptrack.zst" -p 0 -a 0 -T 0 -l 0 -M "$massif" >/dev/null
python3 - "$massif" "$OUT/$NAME.heap-series.json" <<'PY'
import json, sys
most, t = {}, 0.0
for line in open(sys.argv[1]):
    if line.startswith("time="):
        t = float(line[5:])
    elif line.startswith("mem_heap_B="):
        bucket = int(t // 10) * 10
        most[bucket] = max(most.get(bucket, 0), int(line[11:]))
json.dump(sorted(most.items()), open(sys.argv[2], "w"))
PY
rm -f "$massif"
grep -E "^(peak heap memory consumption|peak RSS|total memory leaked)" "$OUT/$NAME.heap.txt" >&2 || true
echo "soak-heap: $OUT/$NAME.{json,heaptrack.zst,heap.txt,heap-series.json}" >&2
