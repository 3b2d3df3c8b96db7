#!/usr/bin/env bash
# Sluice's Durable Streams (/v1/stream/) beside the protocol's Node reference server (npm
# @durable-streams/server, bench/peers/durable), in one run on this machine, with the same load
# generator (`sluice bench durable`; BENCHMARKS.md, "Durable Streams: Sluice beside the
# reference server"). Four servers, each started afresh for every part, pinned to CPU 0 with the
# load generator on CPU 1:
#
#   sluice-memory   sluice serve --store memory --open-streams
#   sluice-sqlite   sluice serve --store sqlite:... --open-streams
#   node-memory     the reference server in memory (its default)
#   node-file       the reference server file-backed (LMDB + a log per stream, fdatasync)
#
# and three parts, each run on all four servers before the next (so that the machine's drift
# falls between parts, not between servers):
#
#   appends   1 and 16 writers appending 100-byte JSON messages to one stream as fast as they
#             are answered, without and with idempotent producer headers: appends/s;
#   live      1,000 SSE readers of one stream (offset=now), one writer at 10 and 100
#             messages/s: append → receipt p50/p99/max and the share delivered;
#   idle      1,000 and 5,000 idle SSE readers: the server's RSS per reader.
#
# Results: $OUT/<part>-<server>.{json,md}; then bench/plot_durable.py prints the tables of
# ratios ($OUT/summary.md) and draws bench/durable.svg. The reference server is installed first
# (bench/peers/install.sh durable: npm ci, seconds). About 10 minutes.
#
#   bench/durable.sh                        # everything (builds first unless NO_BUILD=1)
#   PRIORITY=-15 NO_BUILD=1 bench/durable.sh   # on a busy machine (see bench/priority.sh)
#   PARTS=appends SERVERS="sluice-memory node-memory" bench/durable.sh
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/priority.sh "$@"

OUT=${OUT:-bench/results/durable}
SLUICE=${SLUICE:-target/release/sluice}
SERVERS=${SERVERS:-sluice-memory sluice-sqlite node-memory node-file}
PARTS=${PARTS:-appends live idle}
WRITERS=${WRITERS:-1,16}
APPEND_SECONDS=${APPEND_SECONDS:-10}
READERS=${READERS:-1000}
RATES=${RATES:-10,100}
STEP=${STEP:-10}
IDLE=${IDLE:-1000,5000}

command -v taskset >/dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release --locked -p sluice
fi
bench/peers/install.sh durable
mkdir -p "$OUT"
# The servers' files (SQLite, the reference server's LMDB and logs) on the repository's disk,
# not a tmpfs, so that both sides' syncs cost what they cost; removed at the end.
export DURABLE_DATA=${DURABLE_DATA:-$PWD/target/bench-durable-data}
export SLUICE=$(realpath "$SLUICE")
trap 'rm -rf "$DURABLE_DATA"' EXIT
started=$SECONDS
phase() { echo "=== [$(( (SECONDS - started) / 60 ))m$(( (SECONDS - started) % 60 ))s] $*" >&2; }
{
    echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' (modified)')"
    echo "load average before: $(cat /proc/loadavg)"
} | tee "$OUT/loadavg.txt" >&2

for part in $PARTS; do
    for server in $SERVERS; do
        phase "$part: $server"
        "$SLUICE" bench durable --spawn-command "exec bench/peers/durable/serve.sh $server" \
            --parts "$part" --writers "$WRITERS" --append-seconds "$APPEND_SECONDS" \
            --readers "$READERS" --rate "$RATES" --duration "$STEP" --idle "$IDLE" \
            --json "$OUT/$part-$server.json" | tee "$OUT/$part-$server.md"
    done
done

phase "done"
echo "load average after: $(cat /proc/loadavg)" | tee -a "$OUT/loadavg.txt" >&2
python3 bench/plot_durable.py --dir "$OUT" --svg bench/durable.svg | tee "$OUT/summary.md"
