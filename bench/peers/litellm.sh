#!/bin/sh
# Starts the LiteLLM proxy (installed by `install.sh litellm`) in the foreground on
# 127.0.0.1:$SLUICE_BENCH_PORT, one worker, relaying the model "scripted" to the OpenAI base
# URL in $SLUICE_BENCH_UPSTREAM, configured from litellm.yaml.template. `sluice bench gateway
# --peer-command` runs it; clients send `Authorization: Bearer sk-sluice-bench-local`.
#
#   SLUICE_BENCH_PORT=4000 SLUICE_BENCH_UPSTREAM=http://127.0.0.1:8081/v1 bench/peers/litellm.sh
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
PORT="${SLUICE_BENCH_PORT:?set SLUICE_BENCH_PORT}"
UPSTREAM="${SLUICE_BENCH_UPSTREAM:?set SLUICE_BENCH_UPSTREAM}"
VENV="${LITELLM_VENV:-$HERE/.venv-litellm}"
CONFIG="${TMPDIR:-/tmp}/sluice-litellm-$PORT.yaml"
sed -e "s|@API_BASE@|$UPSTREAM|g" "$HERE/litellm.yaml.template" > "$CONFIG"
# No cost map fetched from the network, no docs or admin UI, errors only in the log.
export LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR NO_DOCS=True DISABLE_ADMIN_UI=True
# Its banner and logs go to a file beside the config, out of the benchmark's progress lines.
exec "$VENV/bin/litellm" --config "$CONFIG" --host 127.0.0.1 --port "$PORT" --num_workers 1 \
    > "${CONFIG%.yaml}.log" 2>&1
