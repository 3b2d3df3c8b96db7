#!/bin/sh
# Starts nginx + Nchan in the foreground on 127.0.0.1:$SLUICE_BENCH_PORT, configured from
# nchan.conf.template (one worker), in a scratch directory of its own. `sluice bench hub
# --spawn-command` runs it: the shell is replaced by nginx's master, whose process group holds
# the worker, so both are measured and stopped together.
#
#   SLUICE_BENCH_PORT=8090 bench/peers/nchan.sh      # by hand; Ctrl-C stops it
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
PORT="${SLUICE_BENCH_PORT:?set SLUICE_BENCH_PORT}"
W="${NCHAN_WORKDIR:-${TMPDIR:-/tmp}/sluice-nchan-$PORT}"
rm -rf "$W"
mkdir -p "$W/logs" "$W/tmp"
sed -e "s|@WORKDIR@|$W|g" -e "s|@PORT@|$PORT|g" "$HERE/nchan.conf.template" > "$W/nginx.conf"
exec /usr/sbin/nginx -p "$W" -c "$W/nginx.conf" -g 'daemon off;'
