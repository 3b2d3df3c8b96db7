#!/usr/bin/env bash
# Runs the Mercure project's own conformance suite (the `conformance-tests/` folder of
# https://github.com/dunglas/mercure, draft-08) unchanged against `sluice serve`, in Debian's
# Chromium. The suite is not part of this repository (it is AGPL-licensed and lives with the
# reference hub): point MERCURE_CONFORMANCE_DIR at a checkout of that folder.
#
#   git clone --depth 1 https://github.com/dunglas/mercure /tmp/mercure
#   MERCURE_CONFORMANCE_DIR=/tmp/mercure/conformance-tests make conformance
#
# The suite signs its tokens with the reference hub's development key, for the issuer
# https://localhost and the audience https://localhost/.well-known/mercure; the hub is started
# with those. It runs twice: whole, then its private-update cases alone on a fresh hub (the
# suite reuses an update id between a public case and its private twin, and Sluice refuses a
# publisher id it already holds with 409, so on one hub the private twins would pass for that
# reason rather than because anonymous subscribers are not sent private updates).
set -euo pipefail

suite=${MERCURE_CONFORMANCE_DIR:?set MERCURE_CONFORMANCE_DIR to a checkout of dunglas/mercure conformance-tests/}
here=$(cd "$(dirname "$0")" && pwd)
sluice=${SLUICE_BIN:-$here/../../target/debug/sluice}
key='!ChangeThisMercureHubJWTSecretKey!'

(cd "$suite" && npm ci --no-audit --no-fund --loglevel=error)
# The suite resolves @playwright/test from its own folder, so its configuration sits there.
cp "$here/playwright.config.mjs" "$suite/sluice.config.mjs"

hub_pid=
stop_hub() { if [[ -n $hub_pid ]]; then kill "$hub_pid" 2>/dev/null || true; wait "$hub_pid" 2>/dev/null || true; fi; hub_pid=; }
trap stop_hub EXIT

run() {
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$sluice" serve --listen "127.0.0.1:$port" --store memory --anonymous \
    --jwt-secret "$key" --jwt-issuer https://localhost \
    --jwt-audience https://localhost/.well-known/mercure &
  hub_pid=$!
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  (cd "$suite" && CUSTOM_ID=1 BASE_URL="http://127.0.0.1:$port/.well-known/mercure" \
    MERCURE_CONFORMANCE_DIR="$suite" npx playwright test -c sluice.config.mjs "$@")
  stop_hub
}

echo "== the whole suite"
run
echo "== its private-update cases on a fresh hub"
run -g private
