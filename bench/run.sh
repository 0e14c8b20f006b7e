#!/bin/bash
# bench/run.sh - make bench: installs the Debian tools the bench needs when
# missing (nginx-light or nginx, wrk; apt-get as root, otherwise it prints the
# command), then runs the suite, bench/bench.mjs: fusebox side by side with
# nginx and Portkey, in one run, on loopback (issue 5). See bench/README.md.
#
#   bench/run.sh [path/to/fusebox [path/to/loadgen]]
#   env: BENCH_DURATION (s, 5), BENCH_LATENCY_DURATION (4), BENCH_STREAM_DURATION (3),
#        BENCH_WARMUP (1), BENCH_CONNECTIONS (16), BENCH_THREADS (2),
#        BENCH_CONCURRENCIES (1,16,64), BENCH_RATES (1000,5000),
#        BENCH_OPEN_CONNECTIONS (32), BENCH_PORTKEY (1; 0 leaves Portkey out, and says so)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../build/fusebox}
loadgen=${2:-$here/../build/loadgen}

die() { echo "bench: $*" >&2; exit 1; }
[ -x "$bin" ] || die "no fusebox binary at $bin (run make first)"
[ -x "$loadgen" ] || die "no loadgen at $loadgen (make bench builds it)"

# --- tools: nginx (nginx-light or nginx) and wrk, from Debian; node and npm
# come with make deps
missing=""
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx-light"
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "bench: installing:$missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        if ! apt-get install -y -qq --no-install-recommends $missing >/dev/null; then
            # nginx-light is gone from newer Debian releases: fall back to nginx.
            apt-get install -y -qq --no-install-recommends \
                $(echo "$missing" | sed 's/nginx-light/nginx/') >/dev/null
        fi
    else
        echo "bench: missing Debian packages. Run:" >&2
        echo "  sudo apt-get install -y$missing" >&2
        exit 1
    fi
fi
command -v node >/dev/null 2>&1 || die "node is missing (make deps installs it)"
command -v npm >/dev/null 2>&1 || die "npm is missing (make deps installs it)"

exec node "$here/bench.mjs" "$bin" "$loadgen"
