#!/bin/sh
# job.sh - the nightly report, as a busy team writes it: N paid chat calls,
# one per ledger row, then one write of all the answers into SQLite.
#
# The new code writes reports.summary, but the migration that adds that
# column (migrate.sql) has not run. So every run pays for all N calls and
# then fails at its very last step with SQLite's own error:
#     table reports has no column named summary
#
#   OPENAI_BASE_URL  e.g. https://api.openai.com/v1, or fusebox's /openai/v1
#   OPENAI_API_KEY   the provider key, or a fusebox key
#   N                calls to make (default 20)
#   DB               the SQLite database (default ./reports.db; create it
#                    with: sqlite3 reports.db < schema.sql)
#   MODEL            default gpt-4o
# Needs curl and the sqlite3 CLI. Exits 0 when the report is written, 1
# on any failure (the reason is on stderr).
set -u
N=${N:-20}
DB=${DB:-./reports.db}
MODEL=${MODEL:-gpt-4o}
: "${OPENAI_BASE_URL:?job: set OPENAI_BASE_URL}"
: "${OPENAI_API_KEY:?job: set OPENAI_API_KEY}"

if [ ! -f "$DB" ]; then
    echo "job: no database at $DB (create it: sqlite3 $DB < schema.sql)" >&2
    exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/job.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

day=$(date -u +%Y-%m-%d)
replayed=0
echo "BEGIN;" >"$tmp/report.sql"

i=1
while [ "$i" -le "$N" ]; do
    body='{"model":"'$MODEL'","max_tokens":200,"messages":[{"role":"user","content":"Summarise ledger row '$i'"}]}'
    code=$(curl -sS --max-time 120 -o "$tmp/answer" -D "$tmp/headers" \
        -w '%{http_code}' "$OPENAI_BASE_URL/chat/completions" \
        -H "Authorization: Bearer $OPENAI_API_KEY" \
        -H 'Content-Type: application/json' -d "$body")
    rc=$?
    if [ $rc -ne 0 ]; then
        # curl said why on stderr (connection refused, timed out, ...).
        echo "job: call $i/$N: could not reach $OPENAI_BASE_URL (curl exit $rc)" >&2
        exit 1
    fi
    if [ "$code" != 200 ]; then
        msg=$(sed -n 's/.*"message": *"\([^"]*\)".*/\1/p' "$tmp/answer")
        kind=$(sed -n 's/.*"type": *"\([^"]*\)".*/\1/p' "$tmp/answer")
        echo "job: call $i/$N failed: HTTP Error $code (${kind:-error}): ${msg:-$(head -c 300 "$tmp/answer")}" >&2
        exit 1
    fi
    # The answer's text, still JSON-escaped; '' escapes ' for SQL.
    summary=$(sed -n 's/.*"content": *"\([^"\\]*\(\\.[^"\\]*\)*\)".*/\1/p' "$tmp/answer" |
        sed "s/'/''/g")
    if tr -d '\r' <"$tmp/headers" | grep -qi '^x-fusebox-replayed: *true'; then
        replayed=$((replayed + 1))
    fi
    echo "INSERT INTO reports(day, summary) VALUES ('$day', '$summary');" >>"$tmp/report.sql"
    i=$((i + 1))
done
echo "COMMIT;" >>"$tmp/report.sql"

if [ "$replayed" -gt 0 ]; then
    echo "job: $N answers ($replayed of them replayed by fusebox at no cost); writing the report to $DB"
else
    echo "job: $N answers; writing the report to $DB"
fi
# One transaction: the report is written whole or not at all.
if ! sqlite3 -bail "$DB" <"$tmp/report.sql"; then
    echo "job: could not write the report to $DB" >&2
    exit 1
fi
echo "job: report for $day written ($N rows)"
