#!/bin/sh
# A throw-away PostgreSQL cluster for the tests: Debian's server binaries,
# initdb into DIR as an unprivileged user (postgres when run as root), on
# a free loopback port, fsync off (the cluster dies with the test run).
#   scripts/pg.sh start DIR   prints the URL (postgres://...) on stdout
#   scripts/pg.sh stop DIR    stops the server and removes DIR
#   scripts/pg.sh down DIR    stops the server (an outage), keeping DIR
#   scripts/pg.sh up DIR      starts it again on the same port
set -eu
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$bin" ] && [ -x "$bin/initdb" ] || {
    echo "pg.sh: no PostgreSQL server (apt-get install postgresql)" >&2; exit 3; }
as() {
    # (from /: the postgres user may not enter the caller's directory)
    if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}
case "$cmd" in
start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as "$bin/initdb" -D "$dir/data" -A trust -U postgres --no-sync >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2; exit 1; }
    # A port nobody listens on: try a few from a spread derived from the
    # pid (the server refuses to start on a taken one).
    base=$(( 20000 + ($$ * 7919) % 30000 ))
    for i in 0 1 2 3 4 5 6 7 8 9 10 11; do
        port=$(( base + i * 97 ))
        if as "$bin/pg_ctl" -D "$dir/data" -w -t 60 -l "$dir/server.log" -o \
            "-p $port -k $dir -c listen_addresses=127.0.0.1 -F -c max_connections=200 -c shared_buffers=64MB" \
            start >/dev/null 2>&1; then
            echo "$port" >"$dir/port"
            echo "postgres://postgres@127.0.0.1:$port/postgres"
            exit 0
        fi
    done
    echo "pg.sh: the server did not start:" >&2
    tail -n 20 "$dir/server.log" >&2
    exit 1
    ;;
stop)
    [ -d "$dir/data" ] && as "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
down)
    as "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
    ;;
up)
    port=$(cat "$dir/port")
    as "$bin/pg_ctl" -D "$dir/data" -w -t 60 -l "$dir/server.log" -o \
        "-p $port -k $dir -c listen_addresses=127.0.0.1 -F -c max_connections=200 -c shared_buffers=64MB" \
        start >/dev/null
    ;;
*) echo "usage: $0 start|stop|down|up DIR" >&2; exit 2 ;;
esac
