#!/usr/bin/env bash
# What checking the caller costs on the gateway's hot path (BENCHMARKS.md, "Gateway: the cost
# of checking callers"): `sluice bench gateway --callers`, which reads the same scripted
# upstream through an open Sluice gateway, then through one that asks every caller for an API
# key (a `[[keys]]` record with models, requests and tokens per minute and a daily budget,
# charged in the store's ledger) or an end-user token (an HS256 JWT with limits, verified and
# charged per subject), read with each. The time to first token each adds over the open
# gateway's, in the same run, is the checks' cost. The gateway on CPU 0, the upstream and the
# load generator on CPU 1; one run per store (memory, and SQLite, the server's default) and
# per stream count (1 stream × 300 answers at 1,000 tokens/s; 100 streams × 5 answers at 100
# tokens/s, opening over 500 ms). About 4 minutes.
#
#   bench/callers.sh                            # builds first unless NO_BUILD=1
#   PRIORITY=-15 NO_BUILD=1 bench/callers.sh    # on a busy machine (see bench/priority.sh)
#
# Results: $OUT/<streams>-<store>.{json,md}; bench/callers_table.py prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/priority.sh "$@"

OUT=${OUT:-bench/results/callers}
SLUICE=${SLUICE:-target/release/sluice}
STORES=${STORES:-memory sqlite}

if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release --locked -p sluice
fi
mkdir -p "$OUT"
{
    echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' (modified)')"
    echo "load average before: $(cat /proc/loadavg)"
} > "$OUT/run.txt"
common=(--tokens 50 --ttft-ms 0 --cancels 5 --callers --quiet)
for store in $STORES; do
    echo "=== $store: 1 stream × 300 answers" >&2
    "$SLUICE" bench gateway "${common[@]}" --gateway-store "$store" --streams 1 --rounds 300 \
        --tokens-per-second 1000 --json "$OUT/1-$store.json" > "$OUT/1-$store.md"
    echo "=== $store: 100 streams × 5 answers" >&2
    "$SLUICE" bench gateway "${common[@]}" --gateway-store "$store" --streams 100 --rounds 5 \
        --tokens-per-second 100 --ramp-ms 500 --json "$OUT/100-$store.json" > "$OUT/100-$store.md"
done
echo "load average after: $(cat /proc/loadavg)" >> "$OUT/run.txt"
python3 bench/callers_table.py "$OUT" | tee "$OUT/summary.md"
