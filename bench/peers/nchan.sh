#!/bin/sh
# Starts nginx + Nchan (nchan.conf.template, one worker) in the foreground on
# 127.0.0.1:$SLUICE_BENCH_PORT. `sluice bench hub --spawn-command` runs it.
#
#   SLUICE_BENCH_PORT=8090 bench/peers/nchan.sh      # by hand; Ctrl-C stops it
exec "$(dirname "$0")/nginx.sh" nchan.conf.template
