#!/bin/bash
# bench/callgrind.sh - instructions per forwarded and per replayed call,
# counted by valgrind's callgrind (the same binary and inputs give the same
# count whatever else the machine is doing), checked against the ceilings
# in bench/callgrind.limits. make callgrind-check runs it; so does .ci/run.
#
# fusebox serve runs under callgrind in front of its own fake provider
# (native). curl sends, one at a time on one kept-alive connection:
#   warm-up  50 unique calls (caches, connections, first pages)
#   forward  N unique calls, each forwarded and paid   -> counts zeroed before,
#   replay   the same N again, each answered from the  -> dumped after each
#            kept result
# Every thread counts: the ledger thread's SQLite work is part of a call.
#
#   bench/callgrind.sh [path/to/fusebox]     env: CALLGRIND_CALLS (200)
# Exit 1 when a count passes its ceiling. Writes bench/results/callgrind.json.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../build/fusebox}
n=${CALLGRIND_CALLS:-200}
limits=$here/callgrind.limits
die() { echo "callgrind: $*" >&2; exit 1; }
[ -x "$bin" ] || die "no fusebox binary at $bin (run make first)"
for t in valgrind callgrind_control curl; do
    command -v $t >/dev/null 2>&1 || die "$t is missing (apt-get install valgrind curl)"
done

dir=$(mktemp -d /tmp/fusebox-callgrind.XXXXXX)
fake_pid="" gw_pid=""
cleanup() {
    rc=$?
    for p in $gw_pid $fake_pid; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $gw_pid $fake_pid; do wait "$p" 2>/dev/null || true; done
    rm -rf "$dir"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

listening() { # listening LOG: the address a fusebox process printed
    local i=0 a=""
    while [ $i -lt 300 ]; do
        a=$(sed -n 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$1" | head -1)
        [ -n "$a" ] && { echo "$a"; return 0; }
        i=$((i + 1)); sleep 0.1
    done
    cat "$1" >&2
    return 1
}

"$bin" fake-provider --listen 127.0.0.1:0 >"$dir/fake.log" 2>&1 &
fake_pid=$!
fake=$(listening "$dir/fake.log") || die "the fake provider did not start"
cat >"$dir/fusebox.yaml" <<EOF
listen: 127.0.0.1:0
data_dir: $dir/data
providers:
  openai: {kind: openai, base_url: http://$fake, api_key_env: OPENAI_API_KEY}
budgets:
  global: 1000000
  tenants:
    bench: {budget: 1000000, jobs: {load: {budget: 1000000}}}
log_level: warn
replay: {enabled: true}
EOF
key=$("$bin" key create --config "$dir/fusebox.yaml" --tenant bench --job load 2>/dev/null | tail -1)
case "$key" in fbk_*) ;; *) die "fusebox key create failed" ;; esac
OPENAI_API_KEY=sk-fake-openai valgrind --tool=callgrind \
    --callgrind-out-file="$dir/cg.out" "$bin" serve --config "$dir/fusebox.yaml" \
    >"$dir/gw.log" 2>&1 &
gw_pid=$!
gw=$(listening "$dir/gw.log") || die "fusebox did not start under callgrind"

# A curl config of COUNT calls with bodies of ~1 KB, numbered from 1.
pad=$(printf 'Summarise this ledger line for the monthly report, keeping amounts and dates exact. %.0s' 1 2 3 4 5 6 7 8 9 10)
calls() { # calls TAG COUNT
    local i
    for i in $(seq "$2"); do
        [ "$i" -gt 1 ] && echo next
        printf 'url = "http://%s/openai/v1/chat/completions"\n' "$gw"
        printf 'header = "Content-Type: application/json"\nheader = "Authorization: Bearer %s"\n' "$key"
        printf 'data = "{\\"model\\":\\"gpt-4o-mini\\",\\"max_tokens\\":200,\\"messages\\":[{\\"role\\":\\"user\\",\\"content\\":\\"%s %s %s\\"}]}"\n' "$1" "$i" "$pad"
        printf 'output = "/dev/null"\nwrite-out = "%%{http_code} %%header{x-fusebox-replayed}\\n"\n'
    done
}
run() { # run TAG COUNT WANT: every answer must be "200 WANT"
    calls "$1" "$2" >"$dir/$1.curl"
    curl -s -K "$dir/$1.curl" >"$dir/$1.got" || die "curl failed ($1)"
    local bad
    bad=$(grep -cv "^200 $3\$" "$dir/$1.got" || true)
    [ "$bad" = 0 ] || { sort "$dir/$1.got" | uniq -c >&2; die "$1: $bad answers were not '200 $3'"; }
}
total() { # total FILE: the instructions a dump counted
    sed -n 's/^summary: //p' "$1"
}

run warm 50 ""
callgrind_control -z "$gw_pid" >/dev/null 2>&1
run fwd "$n" ""
callgrind_control -d fwd "$gw_pid" >/dev/null 2>&1
sed 's/\\"content\\":\\"fwd /\\"content\\":\\"fwd /' "$dir/fwd.curl" >"$dir/replay.curl"
curl -s -K "$dir/replay.curl" >"$dir/replay.got" || die "curl failed (replay)"
bad=$(grep -cv '^200 true$' "$dir/replay.got" || true)
[ "$bad" = 0 ] || { sort "$dir/replay.got" | uniq -c >&2; die "replay: $bad answers were not replays"; }
callgrind_control -d replay "$gw_pid" >/dev/null 2>&1
kill -TERM "$gw_pid"
wait "$gw_pid" || true
gw_pid=""

f=$(ls "$dir"/cg.out.* | sort | sed -n 1p)
r=$(ls "$dir"/cg.out.* | sort | sed -n 2p)
[ -n "$f" ] && [ -n "$r" ] || die "callgrind wrote no dumps"
fwd=$(($(total "$f") / n))
rep=$(($(total "$r") / n))
fwd_max=$(sed -n 's/^forward_max *= *//p' "$limits")
rep_max=$(sed -n 's/^replay_max *= *//p' "$limits")
[ -n "$fwd_max" ] && [ -n "$rep_max" ] || die "no ceilings in $limits"

mkdir -p "$here/results"
printf '{"calls": %d, "forward_instructions_per_call": %d, "forward_max": %d, "replay_instructions_per_call": %d, "replay_max": %d}\n' \
    "$n" "$fwd" "$fwd_max" "$rep" "$rep_max" >"$here/results/callgrind.json"
status=0
check() { # check NAME VALUE MAX
    if [ "$2" -gt "$3" ]; then
        echo "callgrind: $1: $2 instructions per call, above the ceiling of $3 (bench/callgrind.limits)" >&2
        status=1
    else
        echo "callgrind: $1: $2 instructions per call (ceiling $3)"
    fi
}
check forward "$fwd" "$fwd_max"
check replay "$rep" "$rep_max"
exit $status
