#!/bin/sh
# Install the Debian packages fusebox builds and tests with, when missing.
# As root it runs apt-get; otherwise it prints the exact command to run.
#   --test  also what only the tests need (Chromium, PostgreSQL)
set -eu
pkgs="build-essential pkg-config libevent-dev libcurl4-openssl-dev libsqlite3-dev
libjansson-dev libyaml-dev libssl-dev libcmocka-dev libpcre2-dev libpq-dev sqlite3 git curl openssl nodejs npm"
if [ "${1:-}" = --test ]; then
    # Chromium for the dashboard; a PostgreSQL server (and psql) for the
    # store's tests on PostgreSQL and the cluster test
    pkgs="$pkgs chromium postgresql"
fi
missing=""
for p in $pkgs; do
    case "$p" in
    nodejs) command -v node >/dev/null 2>&1 && continue ;;
    npm) command -v npm >/dev/null 2>&1 && continue ;;
    chromium) command -v chromium >/dev/null 2>&1 && continue ;;
    esac
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "fusebox: installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
    echo "fusebox: missing Debian packages. Run:" >&2
    echo "  sudo apt-get install -y$missing" >&2
    exit 1
fi
