#!/usr/bin/env bash
# The hub scenarios recorded in BENCHMARKS.md ("Hub (sluice serve)"):
#   1. 10,000 subscribers on one topic at rising publish rates;
#   2. the server's RSS per idle subscriber at 1,000, 5,000 and 18,000 connections.
# Each run starts its own `sluice serve --store memory` pinned to CPU 0, with the load
# generator (coordinator and worker processes) pinned to CPU 1. Results go to $OUT as JSON
# and Markdown; bench/plot_hub.py draws bench/hub.svg from them.
#
#   bench/hub.sh                      # everything (about 3 minutes)
#   RATES=10,50 STEP=5 bench/hub.sh   # a shorter sweep
#   PRIORITY=-15 bench/hub.sh         # on a busy machine (see below)
#
# Wait for a quiet machine first (1-minute load average well under 1): two cores are shared
# by the server and the load generator, and anything else running skews both. Where that
# cannot be had (a shared build machine), PRIORITY=-15 runs everything in a session of its
# own whose scheduling group gets that nice value (root only), so that other sessions'
# processes on the two cores yield to the benchmark. Linux's autogroups make a plain `nice`
# useless for this: it only ranks processes within one session.
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/priority.sh "$@"

OUT=${OUT:-target/bench-hub}
SVG=${SVG:-bench/hub.svg}
SLUICE=${SLUICE:-target/release/sluice}
RATES=${RATES:-1,5,10,20,30,40,50}
STEP=${STEP:-10}
SUBSCRIBERS=${SUBSCRIBERS:-10000}
IDLE=${IDLE:-1000 5000 18000}
MESSAGE_SIZE=${MESSAGE_SIZE:-100}

command -v taskset >/dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release --locked -p sluice
fi
mkdir -p "$OUT"
echo "load average before: $(cat /proc/loadavg)" >&2

"$SLUICE" bench hub --spawn-server --subscribers "$SUBSCRIBERS" --rate "$RATES" \
    --duration "$STEP" --message-size "$MESSAGE_SIZE" --json "$OUT/rates.json" \
    | tee "$OUT/rates.md"

for n in $IDLE; do
    "$SLUICE" bench hub --spawn-server --subscribers "$n" --rate 0 --duration 2 --settle 3 \
        --json "$OUT/idle-$n.json" | tee "$OUT/idle-$n.md"
done

echo "load average after: $(cat /proc/loadavg)" >&2
python3 bench/plot_hub.py --dir "$OUT" --svg "$SVG"
