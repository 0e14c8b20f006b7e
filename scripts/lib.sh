# lib.sh - shell helpers the demo scripts share (sourced, not run).

# wait_addr FILE WHAT: print the HOST:PORT of the first "... listening on
# HOST:PORT" line in FILE, waiting for it (bounded, 5 s); else show FILE
# and FILE.err and fail.
wait_addr() {
    i=0
    while [ $i -lt 100 ]; do
        a=$(sed -n 's/.*listening on //p' "$1")
        [ -n "$a" ] && { echo "$a"; return 0; }
        i=$((i + 1))
        sleep 0.05
    done
    echo "${0##*/}: $2 did not start; its log:" >&2
    cat "$1" "$1.err" >&2 2>/dev/null || true
    return 1
}
