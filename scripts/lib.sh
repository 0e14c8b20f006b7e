# lib.sh - shell helpers the demo scripts share (sourced, not run).

# wait_addr FILE WHAT: print the HOST:PORT of the first "NAME listening on
# HOST:PORT" line in FILE ("fusebox admin listening on" is not one),
# waiting for it (bounded, 10 s); else show FILE and FILE.err and fail.
# FILE may not exist yet: the process has not opened it.
wait_addr() {
    i=0
    while [ $i -lt 200 ]; do
        a=$(sed -n 's/^[a-z-]* listening on //p' "$1" 2>/dev/null | head -n 1)
        [ -n "$a" ] && { echo "$a"; return 0; }
        i=$((i + 1))
        sleep 0.05
    done
    echo "${0##*/}: $2 did not start; its log:" >&2
    cat "$1" "$1.err" >&2 2>/dev/null || true
    return 1
}
