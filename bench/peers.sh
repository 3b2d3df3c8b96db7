#!/usr/bin/env bash
# Sluice side by side with the peers users would pick, in one run on this machine, with the same
# load generator (BENCHMARKS.md, "Side by side with the peers"):
#   hub      Sluice (--store memory), Nchan 1.3.6 (one nginx worker) and the floor hub (`sluice
#            bench floor-hub`: one write per delivery and nothing else, for what the kernel and
#            the load generator cost alone), each pinned to CPU 0 with the load generator on
#            CPU 1: 10,000 subscribers on one topic (a connect storm with Last-Event-ID, then
#            rising publish rates until p99 passes 1 s), 10,000 topics of one subscriber each,
#            and idle memory at 1,000 / 5,000 / 18,000 subscribers;
#   gateway  straight to a scripted upstream (time to first token 0), through Sluice, through
#            the LiteLLM proxy and through nginx as a plain unbuffered relay (the floor of what
#            one more HTTP hop adds), at 1, 100 and 1,000 concurrent streams;
#   capacity the same four paths at fixed request rates rising from 25/s (open loop, whole
#            and streamed answers of 20 tokens) until what a gateway adds at p99 passes 1 ms:
#            requests/s on one core;
#   model    the built-in model and llama.cpp's llama-server on the same GGUF file, same chat,
#            greedy, 1 and 2 threads;
#   transports  Sluice's memory per idle subscriber over HTTP/1.1, HTTP/1.1 over TLS and HTTP/2
#            (one and 100 streams a connection): bench/idle_transports.mjs.
# The peers are installed first by bench/peers/install.sh (apt, a venv, a llama.cpp build:
# about 10 minutes the first time, seconds after). Results: $OUT/*.json and *.md, then
# bench/plot_peers.py draws bench/peers.svg and prints the tables of ratios.
#
#   bench/peers.sh                    # everything, about 25 minutes (make bench-peers)
#   ONLY=hub bench/peers.sh           # one part: hub, gateway, capacity, model or transports
#   PRIORITY=-15 bench/peers.sh       # on a busy machine (see bench/hub.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/priority.sh "$@"

OUT=${OUT:-bench/results/peers}
SLUICE=${SLUICE:-target/release/sluice}
ONLY=${ONLY:-hub gateway capacity model transports}
CAPACITY_RATES=${CAPACITY_RATES:-25,50,100,250,500,1000,2000,3000,4000,5000,6000,8000,10000}
STEP=${STEP:-10}
RATES=${RATES:-1,10,30,50,100,200,400}
TOPIC_RATES=${TOPIC_RATES:-100,1000,3000}
IDLE=${IDLE:-1000 5000 18000}
STREAMS=${STREAMS:-1 100 1000}

command -v taskset >/dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release --locked -p sluice
fi
# Only what the parts asked for: nginx (the Nchan hub and the relay), LiteLLM, llama.cpp.
peers=()
[[ " $ONLY " == *" hub "* || " $ONLY " == *" gateway "* || " $ONLY " == *" capacity "* ]] && peers+=(nchan)
[[ " $ONLY " == *" gateway "* || " $ONLY " == *" capacity "* ]] && peers+=(litellm)
if [[ " $ONLY " == *" model "* ]]; then
    scripts/fetch-model.sh
    peers+=(llama)
fi
if [ ${#peers[@]} -gt 0 ]; then bench/peers/install.sh "${peers[@]}"; fi
mkdir -p "$OUT"
started=$SECONDS
phase() { echo "=== [$(( (SECONDS - started) / 60 ))m$(( (SECONDS - started) % 60 ))s] $*" >&2; }
echo "load average before: $(cat /proc/loadavg)" | tee "$OUT/loadavg.txt" >&2

hub() {  # hub NAME ARGS...: one `sluice bench hub` run, results in $OUT/hub-NAME.{json,md}
    local name=$1; shift
    phase "hub: $name"
    "$SLUICE" bench hub "$@" --json "$OUT/hub-$name.json" | tee "$OUT/hub-$name.md"
}

if [[ " $ONLY " == *" hub "* ]]; then
    for peer in sluice nchan floor; do
        case $peer in
            sluice) target=(--spawn-server); storm=(--storm 10) ;;
            nchan) target=(--spawn-command "exec bench/peers/nchan.sh" --protocol nchan)
                   storm=(--storm 10) ;;
            # The floor hub keeps no history, so it has no storm to replay.
            floor) target=(--spawn-command "exec $SLUICE bench floor-hub --listen 127.0.0.1:\$SLUICE_BENCH_PORT"
                           --protocol nchan); storm=() ;;
        esac
        hub "fanout-$peer" "${target[@]}" --subscribers 10000 "${storm[@]}" --rate "$RATES" \
            --duration "$STEP" --stop-at-p99 1000
        hub "topics-$peer" "${target[@]}" --subscribers 10000 --topics 10000 \
            --rate "$TOPIC_RATES" --duration "$STEP" --stop-at-p99 1000
        for n in $IDLE; do
            hub "idle-$n-$peer" "${target[@]}" --subscribers "$n" --rate 0 --duration 2 --settle 3
        done
    done
fi

if [[ " $ONLY " == *" gateway "* ]]; then
    for k in $STREAMS; do
        # Enough answers for a stable p99 of the time to first token (>= 300 per path) and of
        # the gaps (>= 15,000). With many streams, their first answers start spread over one
        # answer's time (--ramp-ms), so each opens while the others run, as users arrive, and
        # every stream is open at once from then on.
        # Sluice's protocols share its gateway process and are read in turns (--turns), each a
        # share of the rounds a turn in a rotated order, so that none gains by going first;
        # at 100 streams two rounds a turn, so that every stream stays open through a turn.
        case $k in
            1) rounds=300; tokens=50; tps=1000; ramp=0; turns=10 ;;
            100) rounds=10; tokens=50; tps=100; ramp=500; turns=5 ;;
            *) rounds=2; tokens=20; tps=10; ramp=2000; turns=1 ;;  # 10,000 chunks/s in all: the
                                                       # upstream and the load generator share a core
        esac
        phase "gateway: $k streams × $rounds answers"
        "$SLUICE" bench gateway --streams "$k" --rounds "$rounds" --tokens "$tokens" \
            --tokens-per-second "$tps" --ttft-ms 0 --cancels 20 --ramp-ms "$ramp" \
            --surfaces responses,messages,ui --turns "$turns" \
            --peer-command "exec bench/peers/litellm.sh" --peer-name litellm \
            --peer-ready-path /health/liveliness --peer-token sk-sluice-bench-local \
            --relay-command "exec bench/peers/relay.sh" \
            --json "$OUT/gateway-$k.json" | tee "$OUT/gateway-$k.md"
    done
fi

if [[ " $ONLY " == *" capacity "* ]]; then
    phase "capacity: whole and streamed answers at $CAPACITY_RATES requests/s"
    "$SLUICE" bench gateway --rates "$CAPACITY_RATES" --step-seconds 10 --tokens 20 \
        --peer-command "exec bench/peers/litellm.sh" --peer-name litellm \
        --peer-ready-path /health/liveliness --peer-token sk-sluice-bench-local \
        --relay-command "exec bench/peers/relay.sh" \
        --json "$OUT/capacity.json" | tee "$OUT/capacity.md"
fi

if [[ " $ONLY " == *" model "* ]]; then
    phase "model: sluice and llama.cpp"
    python3 bench/peers/model.py --sluice "$SLUICE" --threads 1,2 --runs 5 \
        --json "$OUT/model.json" | tee "$OUT/model.md"
fi

if [[ " $ONLY " == *" transports "* ]]; then
    phase "transports: memory per idle subscriber, by transport"
    node bench/idle_transports.mjs --sluice "$SLUICE" --json "$OUT/transports.json" \
        | tee "$OUT/transports.md"
fi

phase "done"
echo "load average after: $(cat /proc/loadavg)" | tee -a "$OUT/loadavg.txt" >&2
python3 bench/plot_peers.py --dir "$OUT" --svg bench/peers.svg | tee "$OUT/summary.md"
