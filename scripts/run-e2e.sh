#!/bin/sh
# Black-box tests: the real binary behind the official OpenAI and Anthropic
# SDKs, run by Node's built-in test runner (node >= 20), which ends with its
# summary ("ℹ pass N", "ℹ fail N"). Exits non-zero when a test fails.
#   FUSEBOX_BIN       the binary under test (default: build/fusebox)
#   FUSEBOX_VALGRIND  1: run the daemon under valgrind
#   E2E_FILES         test files to run (default: all tests/e2e/*.test.mjs)
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

FUSEBOX_BIN=${FUSEBOX_BIN:-build/fusebox}
case $FUSEBOX_BIN in
/*) ;;
*) FUSEBOX_BIN=$root/$FUSEBOX_BIN ;;
esac
export FUSEBOX_BIN
if [ ! -x "$FUSEBOX_BIN" ]; then
    echo "run-e2e: $FUSEBOX_BIN is not an executable; run make first" >&2
    exit 2
fi
command -v node >/dev/null 2>&1 || { echo "run-e2e: node is not installed" >&2; exit 2; }
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
    echo "run-e2e: node >= 20 is needed (the SDKs and node:test), found $(node --version)" >&2
    exit 2
fi

# Install the SDKs from the lock file when node_modules is missing or
# older than package-lock.json.
e2e=tests/e2e
if [ ! -d "$e2e/node_modules" ] ||
    [ -n "$(find "$e2e/package-lock.json" -newer "$e2e/node_modules")" ]; then
    (cd "$e2e" && npm ci --no-audit --no-fund)
    touch "$e2e/node_modules"
fi

# One file at a time (the machine has 2 cores; the crash and timeout tests
# want the CPU they expect), and a bound on every test so a hang fails.
timeout_ms=120000
if [ "${FUSEBOX_VALGRIND:-}" = 1 ]; then
    timeout_ms=1200000
fi
# shellcheck disable=SC2086
exec node --test --test-reporter=spec --test-concurrency=1 \
    --test-timeout=$timeout_ms ${E2E_FILES:-$e2e/*.test.mjs}
