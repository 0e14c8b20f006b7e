#!/bin/sh
# Run a command beside a throw-away PostgreSQL server (scripts/pg.sh),
# named to it by FUSEBOX_TEST_PG; the server is stopped and removed after.
# Without Debian's postgresql package the command runs without it and the
# PostgreSQL tests say they were skipped.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d "${TMPDIR:-/tmp}/fusebox-pg.XXXXXX")
trap '"$root/scripts/pg.sh" stop "$dir"' EXIT INT TERM
if url=$("$root/scripts/pg.sh" start "$dir"); then
    export FUSEBOX_TEST_PG="$url"
else
    echo "with-pg: no PostgreSQL server; its tests are skipped" >&2
fi
"$@"
