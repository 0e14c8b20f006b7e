#!/bin/sh
# naive-queue.sh - a queue that retries blindly: it runs COMMAND and, while
# it fails, runs it again, RUNS times at most in all (default 21: the first
# run and 20 retries). It never looks at why the command failed.
#   naive-queue.sh COMMAND [ARGS...]
#   RUNS   runs at most, the first included (default 21)
#   DELAY  seconds to wait between runs (default 0)
# Prints one line per run on stderr; exits with the last run's status.
RUNS=${RUNS:-21}
DELAY=${DELAY:-0}
if [ $# -eq 0 ]; then
    echo "usage: naive-queue.sh COMMAND [ARGS...]" >&2
    exit 64
fi
run=1
while :; do
    "$@"
    rc=$?
    if [ $rc -eq 0 ]; then
        echo "naive-queue: run $run/$RUNS exited 0: done" >&2
        exit 0
    fi
    if [ $run -ge "$RUNS" ]; then
        echo "naive-queue: run $run/$RUNS exited $rc: giving up" >&2
        exit $rc
    fi
    echo "naive-queue: run $run/$RUNS exited $rc: running it again" >&2
    run=$((run + 1))
    [ "$DELAY" != 0 ] && sleep "$DELAY"
done
