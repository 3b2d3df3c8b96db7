#!/bin/sh
# Starts nginx as a plain unbuffered reverse proxy (relay.conf.template, one worker) in the
# foreground on 127.0.0.1:$SLUICE_BENCH_PORT, relaying to the upstream whose OpenAI base URL
# is in $SLUICE_BENCH_UPSTREAM. `sluice bench gateway --relay-command` runs it: the floor of
# what a gateway adds (one loopback HTTP hop that does nothing with the bytes).
#
#   SLUICE_BENCH_PORT=4001 SLUICE_BENCH_UPSTREAM=http://127.0.0.1:8081/v1 bench/peers/relay.sh
set -eu
UPSTREAM="${SLUICE_BENCH_UPSTREAM:?set SLUICE_BENCH_UPSTREAM}"
# http://host:port/v1 → host:port (nginx passes the request's own path on).
AUTHORITY="${UPSTREAM#*://}"
exec "$(dirname "$0")/nginx.sh" relay.conf.template "UPSTREAM=${AUTHORITY%%/*}"
