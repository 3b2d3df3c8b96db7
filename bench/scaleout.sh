#!/usr/bin/env bash
# The scale-out figures in BENCHMARKS.md ("Hub across nodes"):
#   1. NODES nodes (default 3) on one Redis, PER_NODE subscribers each (default 15,000: 45,000
#      connections in all, each process under its 20,000 open files), updates published to the
#      first node at rising rates: deliveries/s, publish→receive latency, the nodes' CPU and
#      memory per subscriber, and Redis's CPU;
#   2. the same load per node on one node with the embedded store (SQLite), for comparison.
# The nodes and Redis run on CPU 0, the load generator on CPU 1 (two cores in all: the nodes
# share one). Results go to $OUT as JSON and Markdown; Redis's and SQLite's data go to a
# temporary directory, removed at the end.
#
#   bench/scaleout.sh                         # about 4 minutes
#   PER_NODE=5000 RATES=1,5 bench/scaleout.sh # smaller
#   PRIORITY=-15 bench/scaleout.sh            # on a busy machine (see bench/hub.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/priority.sh "$@"

OUT=${OUT:-target/bench-scaleout}
SLUICE=${SLUICE:-target/release/sluice}
NODES=${NODES:-3}
PER_NODE=${PER_NODE:-15000}
RATES=${RATES:-1,2,5}
STEP=${STEP:-10}
SECRET=scaleout-$$
command -v redis-server >/dev/null || { echo "redis-server is needed (scripts/setup.sh)" >&2; exit 1; }
[ -n "${NO_BUILD:-}" ] || cargo build --release --locked -p sluice
mkdir -p "$OUT"
DATA=$(mktemp -d -t sluice-scaleout-XXXXXX)
mkdir -p "$DATA/redis"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.05; done; echo "nothing on port $1" >&2; exit 1; }
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap 'cleanup; rm -rf "$DATA"' EXIT

redis_port=$(free_port)
taskset -c 0 redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$DATA/redis" \
    --appendonly yes --appendfsync always --save '' >/dev/null &
redis_pid=$!; pids+=("$redis_pid"); wait_port "$redis_port"

urls=(); node_pids=()
for n in $(seq "$NODES"); do
    port=$(free_port)
    RUST_LOG=warn taskset -c 0 "$SLUICE" serve --listen "127.0.0.1:$port" \
        --store "redis://127.0.0.1:$redis_port" --jwt-secret "$SECRET" --anonymous \
        --provider scripted --max-connections 19000 &
    node_pids+=($!); pids+=($!); wait_port "$port"
    urls+=("http://127.0.0.1:$port/.well-known/mercure")
done
also=()
for n in $(seq 1 $((NODES - 1))); do
    also+=(--also-url "${urls[$n]}" --also-pid "${node_pids[$n]}")
done
echo "scale-out: $NODES nodes × $PER_NODE subscribers on Redis (port $redis_port)" >&2
"$SLUICE" bench hub --url "${urls[0]}" --server-pid "${node_pids[0]}" "${also[@]}" \
    --watch-pid "$redis_pid" --jwt-secret "$SECRET" --subscribers $((NODES * PER_NODE)) \
    --processes $((NODES * 2)) --rate "$RATES" --duration "$STEP" \
    --loadgen-cpus 1 --json "$OUT/cluster.json" | tee "$OUT/cluster.md"
cleanup; pids=()

echo "baseline: one node (SQLite) × $PER_NODE subscribers" >&2
port=$(free_port)
RUST_LOG=warn taskset -c 0 "$SLUICE" serve --listen "127.0.0.1:$port" \
    --store "sqlite:$DATA/one.db" --jwt-secret "$SECRET" --anonymous --provider scripted &
one=$!; pids+=("$one"); wait_port "$port"
"$SLUICE" bench hub --url "http://127.0.0.1:$port/.well-known/mercure" --server-pid "$one" \
    --jwt-secret "$SECRET" --subscribers "$PER_NODE" --processes 2 --rate "$RATES" \
    --duration "$STEP" --loadgen-cpus 1 --json "$OUT/one.json" | tee "$OUT/one.md"
