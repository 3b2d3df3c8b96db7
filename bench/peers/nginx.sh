#!/bin/sh
# Runs nginx in the foreground on 127.0.0.1:$SLUICE_BENCH_PORT from a configuration template
# in this directory, in a scratch directory of its own: the shell is replaced by nginx's master,
# whose process group holds the worker, so the benchmark measures and stops both together.
# The template's @WORKDIR@ and @PORT@ are filled in, and @NAME@ for every NAME=VALUE given.
#
#   SLUICE_BENCH_PORT=8090 bench/peers/nginx.sh nchan.conf.template     # Ctrl-C stops it
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
TEMPLATE="${1:?which template}"
shift
PORT="${SLUICE_BENCH_PORT:?set SLUICE_BENCH_PORT}"
W="${NGINX_WORKDIR:-${TMPDIR:-/tmp}/sluice-${TEMPLATE%%.*}-$PORT}"
rm -rf "$W"
mkdir -p "$W/logs" "$W/tmp"
set -- -e "s|@WORKDIR@|$W|g" -e "s|@PORT@|$PORT|g" \
    $(for pair in "$@"; do printf '%s ' -e "s|@${pair%%=*}@|${pair#*=}|g"; done)
sed "$@" "$HERE/$TEMPLATE" > "$W/nginx.conf"
exec /usr/sbin/nginx -p "$W" -c "$W/nginx.conf" -g 'daemon off;'
