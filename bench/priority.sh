# Sourced by the benchmark scripts, after they cd to the repository, as `. bench/priority.sh "$@"`.
#
# With PRIORITY set (root only), the script re-runs itself in a session of its own whose
# scheduling group gets that nice value, so that other sessions' processes on the machine's two
# cores yield to the benchmark. Linux's autogroups make a plain `nice` useless for this: it only
# ranks processes within one session.
if [ -n "${PRIORITY:-}" ] && [ -z "${BENCH_PRIORITY_SESSION:-}" ]; then
    BENCH_PRIORITY_SESSION=1 exec setsid --wait "$0" "$@"
fi
if [ -n "${PRIORITY:-}" ]; then
    echo "$PRIORITY" > /proc/self/autogroup
    echo "scheduling group: $(cat /proc/self/autogroup)" >&2
fi
