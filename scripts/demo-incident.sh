#!/bin/sh
# make demo-incident: the incident, run three ways against the fake provider.
#
# A nightly job (examples/incident/job.sh) makes 20 paid chat calls, then
# fails at its last step: its SQLite write needs a column whose migration
# has not run. A naive queue (naive-queue.sh) reruns it on failure, 21 runs
# in all. The job runs
#   (a) bare: straight to the provider;
#   (b) through the fusebox gateway: reruns are answered by replay, free;
#   (c) under `fusebox run --serve --preflight ./preflight.sh`: the preflight
#       sees the missing migration before any paid call, every time;
# and the fake provider's bill for each is printed side by side.
set -eu
bin=${1:-build/fusebox}
case "$bin" in /*) ;; *) bin=$(pwd)/$bin ;; esac
ex=$(cd "$(dirname "$0")/../examples/incident" && pwd)
dir=$(mktemp -d /tmp/fusebox-incident.XXXXXX)
fake_pid="" gw_pid="" child=""
cleanup() {
    [ -n "$child" ] && kill "$child" 2>/dev/null || true
    [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null || true
    [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

. "$(dirname "$0")/lib.sh"

# Run a command in the background and wait for it, so that a signal to this
# script is handled at once (the EXIT trap then stops it too).
run_bg() {
    "$@" &
    child=$!
    rc=0
    wait "$child" || rc=$?
    child=""
    return $rc
}

# The job's settings, whatever the caller's environment holds.
export N=20 RUNS=21 DELAY=0 MODEL=gpt-4o
unset OPENAI_BASE_URL ANTHROPIC_BASE_URL ANTHROPIC_API_KEY FUSEBOX_CONFIG \
    FUSEBOX_URL FUSEBOX_KEY FUSEBOX_JOB FUSEBOX_ATTEMPT 2>/dev/null || true

"$bin" fake-provider --listen 127.0.0.1:0 >"$dir/fake.out" 2>"$dir/fake.out.err" &
fake_pid=$!
fake=$(wait_addr "$dir/fake.out" "the fake provider")

# A fusebox config (its own store) for ways (b) and (c).
config() {
    mkdir -p "$dir/$1"
    cat >"$dir/$1/fusebox.yaml" <<YAML
listen: 127.0.0.1:0
data_dir: ./data
providers:
  openai: {kind: openai, base_url: http://$fake, api_key_env: OPENAI_API_KEY}
budgets:
  global: 100/day
  tenants:
    finance:
      budget: 50/day
      jobs:
        nightly-report: {budget: 5/day}
YAML
}

# A fresh database as production has it: the migration has not run.
fresh_db() {
    sqlite3 "$dir/$1.db" <"$ex/schema.sql"
}

# Way $1's bill: the fake's billed calls and dollars, then reset the meter.
bill() {
    b=$(curl -s "http://$fake/_fake/billing")
    echo "$b" | sed -n 's/.*"calls":\([0-9]*\).*/\1/p' >"$dir/$1.calls"
    echo "$b" | sed -n 's/.*"billed_usd":"\([^"]*\)".*/\1/p' >"$dir/$1.usd"
    curl -s -X POST "http://$fake/_fake/reset" >/dev/null
}

# The runs the naive queue made and their exit statuses ("21 x exit 1").
runs() {
    sed -n 's/^naive-queue: run [0-9]*\/[0-9]* exited \([0-9]*\).*/\1/p' "$dir/$1.log" |
        sort -n | uniq -c | awk '{ printf "%s%d x exit %d", (NR > 1 ? ", " : ""), $1, $2 }'
}

echo "fusebox demo-incident"
echo "  fake provider  http://$fake   (bills like OpenAI, from real prices)"
echo "  the job        examples/incident/job.sh: $N calls to $MODEL, then one"
echo "                 INSERT INTO reports(day, summary) into SQLite, whose"
echo "                 migration (migrate.sql) has not run"
echo "  the queue      examples/incident/naive-queue.sh: reruns on failure, $RUNS runs at most"
echo

cd "$ex"

# (a) Bare: the job holds the provider key and calls the provider.
fresh_db a
echo "(a) bare: the job calls the provider directly"
run_bg env DB="$dir/a.db" OPENAI_BASE_URL="http://$fake/v1" \
    OPENAI_API_KEY=sk-fake-openai ./naive-queue.sh ./job.sh >"$dir/a.log" 2>&1 || true
echo "    every run: $(grep -m1 'no column named' "$dir/a.log" || echo '?')"
echo "    the queue: $(runs a)"
bill a

# (b) Through the gateway: one job key; the gateway holds the provider key.
config b
fresh_db b
OPENAI_API_KEY=sk-fake-openai "$bin" serve --config "$dir/b/fusebox.yaml" \
    >"$dir/gw.out" 2>"$dir/gw.out.err" &
gw_pid=$!
gw=$(wait_addr "$dir/gw.out" "the gateway")
key=$("$bin" key create --config "$dir/b/fusebox.yaml" --tenant finance \
    --job nightly-report 2>/dev/null | tail -n 1)
echo "(b) through the gateway: OPENAI_BASE_URL=http://$gw/openai/v1, a job key"
run_bg env DB="$dir/b.db" OPENAI_BASE_URL="http://$gw/openai/v1" \
    OPENAI_API_KEY="$key" ./naive-queue.sh ./job.sh >"$dir/b.log" 2>&1 || true
echo "    run 2 on:  $(grep -m1 'replayed by fusebox' "$dir/b.log" | sed 's/;.*//' || echo '?')"
echo "    the queue: $(runs b)"
# Stop the gateway (it drains) so the ledger is complete for fusebox spend.
kill "$gw_pid" 2>/dev/null || true
wait "$gw_pid" 2>/dev/null || true
gw_pid=""
bill b

# (c) Under fusebox run, with the preflight; no daemon: --serve embeds one.
config c
fresh_db c
echo "(c) fusebox run --serve --preflight ./preflight.sh -- ./job.sh"
run_bg env DB="$dir/c.db" OPENAI_API_KEY=sk-fake-openai \
    ./naive-queue.sh "$bin" run --config "$dir/c/fusebox.yaml" \
    --tenant finance --job nightly-report --serve \
    --preflight ./preflight.sh -- ./job.sh >"$dir/c.log" 2>&1 || true
echo "    the queue: $(runs c)"
echo "    what fusebox run said the first time:"
sed -n '1,/^naive-queue: run/p' "$dir/c.log" | sed '$d' | sed 's/^/      /'
if [ "$(grep -c '^naive-queue: run' "$dir/c.log")" -gt 1 ]; then
    echo "    ... and the last time:"
    sed -n '/^naive-queue: run [0-9]*\/[0-9]* exited .*again$/h; /^naive-queue: run/!H; ${x;p;}' "$dir/c.log" |
        sed '1d' | sed 's/^/      /'
fi
bill c

echo
echo "The bills, from the fake provider's meter ($RUNS runs of the job each way):"
printf '  %-44s %14s %12s\n' "" "billed calls" "billed USD"
printf '  %-44s %14s %12s\n' "(a) bare" "$(cat "$dir/a.calls")" "$(cat "$dir/a.usd")"
printf '  %-44s %14s %12s\n' "(b) through the gateway (replay)" "$(cat "$dir/b.calls")" "$(cat "$dir/b.usd")"
printf '  %-44s %14s %12s\n' "(c) fusebox run with a preflight" "$(cat "$dir/c.calls")" "$(cat "$dir/c.usd")"
echo
echo "What fusebox spend says for (b):"
"$bin" spend --config "$dir/b/fusebox.yaml" --job nightly-report | sed 's/^/  /'
echo "and for (c):"
"$bin" spend --config "$dir/c/fusebox.yaml" --job nightly-report | sed 's/^/  /'
echo
echo "(b) pays for the answers once: the 20 reruns replay them, and still fail."
echo "(c) pays for nothing: the preflight finds the missing migration before the"
echo "first call, and fusebox run exits 78, which tells a queue not to retry."
echo

# The fix is the migration, not a retry: the preflight passes, so the same
# fusebox run starts the job (a failed preflight does not block reruns).
sqlite3 "$dir/c.db" <"$ex/migrate.sql"
rc=0
run_bg env DB="$dir/c.db" OPENAI_API_KEY=sk-fake-openai "$bin" run --config "$dir/c/fusebox.yaml" \
    --tenant finance --job nightly-report --serve --preflight ./preflight.sh \
    -- ./job.sh >"$dir/fix.log" 2>&1 || rc=$?
bill fix
echo "The fix: sqlite3 reports.db < migrate.sql;"
echo "then the same fusebox run exits $rc, the provider bills $(cat "$dir/fix.calls") calls (\$$(cat "$dir/fix.usd")),"
echo "and reports holds $(sqlite3 "$dir/c.db" 'SELECT count(*) FROM reports') rows. See examples/incident/README.md."
