#!/bin/sh
# Starts one Durable Streams server in the foreground on 127.0.0.1:$SLUICE_BENCH_PORT, with
# its streams under /v1/stream/, for `sluice bench durable --spawn-command`:
#
#   sluice-memory   sluice serve --store memory --open-streams
#   sluice-sqlite   sluice serve --store sqlite:<dir>/sluice.db --open-streams (the streams in
#                   <dir>/sluice-streams.db: SQLite in WAL mode, synchronous=NORMAL)
#   node-memory     the reference server (server.mjs here), in memory
#   node-file       the reference server, file-backed in <dir> (LMDB + a log per stream,
#                   fdatasync on every append)
#
# <dir> is $DURABLE_DATA/<port>, emptied first (DURABLE_DATA defaults to
# ${TMPDIR:-/tmp}/sluice-bench-durable; bench/durable.sh points it at a folder on the disk the
# repository is on and removes it afterwards). The shell is replaced by the server, so the
# benchmark measures and stops that process.
#
#   SLUICE_BENCH_PORT=8090 bench/peers/durable/serve.sh node-file      # Ctrl-C stops it
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
KIND="${1:?which server: sluice-memory, sluice-sqlite, node-memory or node-file}"
PORT="${SLUICE_BENCH_PORT:?set SLUICE_BENCH_PORT}"
SLUICE="${SLUICE:-$HERE/../../../target/release/sluice}"
DIR="${DURABLE_DATA:-${TMPDIR:-/tmp}/sluice-bench-durable}/$PORT"
rm -rf "$DIR"
mkdir -p "$DIR"
# The scripted provider: the streams are measured, not the local model (its load time and
# memory would be in every figure).
SLUICE_ARGS="serve --open-streams --provider scripted --listen 127.0.0.1:$PORT"
case "$KIND" in
    sluice-memory) exec "$SLUICE" $SLUICE_ARGS --store memory ;;
    sluice-sqlite) exec "$SLUICE" $SLUICE_ARGS --store "sqlite:$DIR/sluice.db" ;;
    node-memory) exec node "$HERE/server.mjs" ;;
    node-file) exec node "$HERE/server.mjs" --data-dir "$DIR" ;;
    *) echo "unknown server $KIND" >&2; exit 2 ;;
esac
