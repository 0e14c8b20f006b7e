#!/bin/bash
# bench/run.sh - make bench: fusebox side by side with nginx, in one run, on
# loopback (issue 5, groundwork). Four measurements, each with wrk
# (16 connections, 2 threads, ~1 KB POST bodies, --latency):
#   direct         wrk -> nginx upstream (static OpenAI-shaped JSON, ~1 KB)
#   nginx-proxy    wrk -> nginx proxy_pass (keepalive upstream) -> upstream
#   fusebox-fwd    wrk -> fusebox serve -> upstream (every body unique: paid)
#   fusebox-replay wrk -> fusebox serve (identical bodies: kept result)
# Writes bench/results/latest.md and latest.json.
#
#   bench/run.sh [path/to/fusebox]
#   env: BENCH_DURATION (s, default 8), BENCH_WARMUP (s, default 2),
#        BENCH_CONNECTIONS (16), BENCH_THREADS (2)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../build/fusebox}
dur=${BENCH_DURATION:-8}
warm=${BENCH_WARMUP:-2}
conns=${BENCH_CONNECTIONS:-16}
threads=${BENCH_THREADS:-2}
out=$here/results

die() { echo "bench: $*" >&2; exit 1; }
[ -x "$bin" ] || die "no fusebox binary at $bin (run make first)"

# --- tools: nginx (nginx-light or nginx) and wrk, from Debian ------------
nginx_bin=$(command -v nginx || true)
[ -z "$nginx_bin" ] && [ -x /usr/sbin/nginx ] && nginx_bin=/usr/sbin/nginx
missing=""
[ -z "$nginx_bin" ] && missing="$missing nginx-light"
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
        nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
    else
        echo "bench: missing Debian packages. Run:" >&2
        echo "  sudo apt-get install -y$missing" >&2
        exit 1
    fi
fi

# --- processes and temp dir, always cleaned up ----------------------------
dir=$(mktemp -d /tmp/fusebox-bench.XXXXXX)
chmod 755 "$dir" # nginx workers may run as nobody
nginx_pid="" gw_pid=""
cleanup() {
    rc=$?
    trap - EXIT INT TERM
    for p in $gw_pid $nginx_pid; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $gw_pid $nginx_pid; do
        i=0
        while kill -0 "$p" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$dir"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
        return
    fi
    while :; do
        p=$((20000 + RANDOM % 40000))
        [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ] && { echo $p; return; }
    done
}

wait_port() { # wait_port PORT WHAT LOG
    i=0
    while [ $i -lt 100 ]; do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        i=$((i + 1)); sleep 0.05
    done
    echo "bench: $2 did not start; its log:" >&2
    cat "$3" >&2 2>/dev/null || true
    exit 1
}

# --- the upstream: a static OpenAI-shaped answer of ~1 KB ----------------
filler="Ledger line reconciled against the bank statement; totals match and no further action is needed for this period."
content="$filler $filler $filler $filler $filler $filler"
answer='{"id":"chatcmpl-bench0001","object":"chat.completion","created":1764300000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"'"$content"'","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":260,"completion_tokens":160,"total_tokens":420,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_bench"}'

up_port=$(free_port)
px_port=$(free_port)
while [ "$px_port" = "$up_port" ]; do px_port=$(free_port); done
mkdir -p "$dir/nginx/logs" "$dir/nginx/tmp"
cat >"$dir/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes auto;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/nginx/tmp/body;
    proxy_temp_path $dir/nginx/tmp/proxy;
    fastcgi_temp_path $dir/nginx/tmp/fastcgi;
    uwsgi_temp_path $dir/nginx/tmp/uwsgi;
    scgi_temp_path $dir/nginx/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
    client_body_buffer_size 64k;
    upstream bench_upstream {
        server 127.0.0.1:$up_port;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server { # the upstream
        listen 127.0.0.1:$up_port;
        location / {
            default_type application/json;
            return 200 '$answer';
        }
    }
    server { # the reverse proxy
        listen 127.0.0.1:$px_port;
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
"$nginx_bin" -t -q -p "$dir/nginx" -e "$dir/nginx/logs/error.log" -c "$dir/nginx/nginx.conf" \
    || die "nginx rejected the bench config"
"$nginx_bin" -p "$dir/nginx" -e "$dir/nginx/logs/error.log" -c "$dir/nginx/nginx.conf" \
    >"$dir/nginx/logs/stdout" 2>&1 &
nginx_pid=$!
wait_port "$up_port" "nginx (upstream)" "$dir/nginx/logs/error.log"
wait_port "$px_port" "nginx (proxy)" "$dir/nginx/logs/error.log"

# --- fusebox: budgets far above what the run can spend, replay on --------
cat >"$dir/fusebox.yaml" <<EOF
listen: 127.0.0.1:0
data_dir: ./data
providers:
  openai: {kind: openai, base_url: http://127.0.0.1:$up_port, api_key_env: OPENAI_API_KEY}
budgets:
  global: 1000000
  tenants:
    bench:
      budget: 1000000
      jobs:
        load: {budget: 1000000}
log_level: warn
replay:
  enabled: true
EOF
OPENAI_API_KEY=sk-bench-upstream "$bin" serve --config "$dir/fusebox.yaml" \
    >"$dir/gw.log" 2>&1 &
gw_pid=$!
i=0
gw=""
while [ $i -lt 100 ]; do
    gw=$(sed -n 's/.*listening on //p' "$dir/gw.log" | head -1)
    [ -n "$gw" ] && break
    kill -0 "$gw_pid" 2>/dev/null || break
    i=$((i + 1)); sleep 0.05
done
[ -n "$gw" ] || { cat "$dir/gw.log" >&2; die "fusebox did not start"; }
key=$("$bin" key create --config "$dir/fusebox.yaml" --tenant bench --job load 2>/dev/null | tail -1)
case "$key" in fbk_*) ;; *) die "fusebox key create failed" ;; esac

# --- wrk Lua scripts: POST, ~1 KB body, unique (counter) or fixed ---------
nonce=$$-$(date +%s)
pad=$(printf 'Summarise this ledger line for the monthly report, keeping amounts and dates exact. %.0s' 1 2 3 4 5 6 7 8 9 10)
mklua() { # mklua FILE PATH KEY UNIQUE(0|1)
    cat >"$1" <<EOF
local path = "$2"
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer $3"}
local unique = $4
local pre = '{"model":"gpt-4o-mini","max_tokens":200,"temperature":0,"messages":[{"role":"system","content":"You are a careful bookkeeper."},{"role":"user","content":"'
local post = ' $pad"}]}'
local n = 0
tid = 0 -- a global: setup() sets it in each thread's own Lua state
run = ""
local counter = 0
function setup(thread)
    n = n + 1
    thread:set("tid", n)
end
function init(args)
    run = args[1] or "" -- the warm-up and the measured run must not share bodies
end
local fixed = pre .. "request fixed" .. post
function request()
    if unique == 0 then
        return wrk.format("POST", path, headers, fixed)
    end
    counter = counter + 1
    return wrk.format("POST", path, headers, pre .. "request $nonce-" .. run .. "-" .. tid .. "-" .. counter .. post)
end
EOF
}
mklua "$dir/direct.lua" /v1/chat/completions sk-bench-direct 1
mklua "$dir/fwd.lua" /openai/v1/chat/completions "$key" 1
mklua "$dir/replay.lua" /openai/v1/chat/completions "$key" 0

# The replay path's one warm-up request, kept before the run.
fixed_body=$(sed -n "s/^local pre = '\(.*\)'\$/\1/p" "$dir/replay.lua")"request fixed"$(sed -n "s/^local post = '\(.*\)'\$/\1/p" "$dir/replay.lua")
st=$(curl -s -o "$dir/warm.out" -w '%{http_code}' "http://$gw/openai/v1/chat/completions" \
    -H 'Content-Type: application/json' -H "Authorization: Bearer $key" --data-binary "$fixed_body") || st=000
[ "$st" = 200 ] || { cat "$dir/warm.out" "$dir/gw.log" >&2; die "warm-up request through fusebox got $st"; }
st=$(curl -s -D - -o /dev/null "http://$gw/openai/v1/chat/completions" \
    -H 'Content-Type: application/json' -H "Authorization: Bearer $key" --data-binary "$fixed_body" |
    tr -d '\r' | sed -n 's/^x-fusebox-replayed: //Ip')
[ "$st" = true ] || die "the repeated warm-up request was not replayed (x-fusebox-replayed: '$st')"
req_bytes=${#fixed_body}
resp_bytes=${#answer}

# --- measurements ---------------------------------------------------------
to_us() { # 1.23ms -> 1230
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") m = 1; else if (u == "ms") m = 1000; else if (u == "s") m = 1000000;
        else if (u == "m") m = 60000000; else m = 1
        printf "%.0f", n * m }'
}
names=() warmtotal=() rps=() p50=() p99=() non2xx=() sockerr=() total=()
measure() { # measure NAME URL LUA FUSEBOX(0|1)
    echo "bench: $1: warm-up ${warm}s, then ${dur}s" >&2
    wrk -t"$threads" -c"$conns" -d"${warm}s" -s "$3" "$2" -- warm >"$dir/$1.warm" 2>&1 || true
    wrk -t"$threads" -c"$conns" -d"${dur}s" --latency -s "$3" "$2" -- main >"$dir/$1.out" 2>&1 \
        || { cat "$dir/$1.out" >&2; die "wrk failed for $1"; }
    local f=$dir/$1.out
    local r l50 l99 bad se tot
    r=$(awk '/^Requests\/sec:/ {print $2}' "$f")
    l50=$(to_us "$(awk '$1 == "50%" {print $2}' "$f")")
    l99=$(to_us "$(awk '$1 == "99%" {print $2}' "$f")")
    bad=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$f"); bad=${bad:-0}
    bw=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$dir/$1.warm"); bw=${bw:-0}
    se=$(awk '/Socket errors:/ {s = 0; for (i = 3; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i; print s}' "$f"); se=${se:-0}
    tot=$(awk '/requests in/ {print $1}' "$f")
    wtot=$(awk '/requests in/ {print $1}' "$dir/$1.warm"); wtot=${wtot:-0}
    [ -n "$r" ] && [ -n "$l50" ] && [ -n "$l99" ] || { cat "$f" >&2; die "could not parse wrk output for $1"; }
    if [ "$4" = 1 ] && [ $((bad + bw)) -gt 0 ]; then
        cat "$f" >&2
        echo "bench: $1: $bad non-2xx answers (warm-up: $bw); the gateway log:" >&2
        cat "$dir/gw.log" >&2
        die "fusebox refused or failed requests in $1"
    fi
    [ "$bad" -gt 0 ] && echo "bench: warning: $1: $bad non-2xx answers" >&2
    names+=("$1"); rps+=("$r"); p50+=("$l50"); p99+=("$l99"); non2xx+=("$bad"); sockerr+=("$se"); total+=("$tot"); warmtotal+=("$wtot")
}
measure direct "http://127.0.0.1:$up_port" "$dir/direct.lua" 0
measure nginx-proxy "http://127.0.0.1:$px_port" "$dir/direct.lua" 0
measure fusebox-forward "http://$gw" "$dir/fwd.lua" 1
measure fusebox-replay "http://$gw" "$dir/replay.lua" 1

# The ledger agrees: forwarded calls were paid, replays were not.
spend=$("$bin" spend --config "$dir/fusebox.yaml" --json 2>/dev/null || true)
paid=$(printf '%s' "$spend" | tr -d ' \n' | sed -n 's/.*"scope":"job:load"[^}]*"paid_calls":\([0-9]*\).*/\1/p')
replayed=$(printf '%s' "$spend" | tr -d ' \n' | sed -n 's/.*"scope":"job:load"[^}]*"replayed_calls":\([0-9]*\).*/\1/p')
[ -n "$paid" ] && [ -n "$replayed" ] || { echo "$spend" >&2; die "could not read fusebox spend"; }
# wrk counts the answers it got; a few calls cut off by its stop may be paid too.
fwd_sent=$((total[2] + warmtotal[2] + 1))
rep_sent=$((total[3] + warmtotal[3] + 1))
if [ "$paid" -lt "$fwd_sent" ] || [ "$paid" -gt $((fwd_sent + 2 * conns)) ]; then
    die "forward path: fusebox paid $paid calls, wrk got $fwd_sent answers (bodies not unique?)"
fi
[ "$replayed" -ge "$rep_sent" ] || die "replay path: fusebox replayed $replayed calls, wrk got $rep_sent answers"

# --- results ----------------------------------------------------------------
mkdir -p "$out"
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
machine="$(nproc) CPUs, ${cpu:-unknown CPU}, Linux $(uname -r)"
when=$(date -u +%Y-%m-%dT%H:%M:%SZ)
rev=$(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo unknown)
nginx_ver=$("$nginx_bin" -v 2>&1 | sed 's/.*version: //')
wrk_ver=$( (wrk -v 2>&1 || true) | awk 'NR == 1 {print $2}')

describe() {
    case "$1" in
    direct) echo "wrk -> nginx upstream (static JSON)" ;;
    nginx-proxy) echo "wrk -> nginx proxy_pass (keepalive) -> upstream" ;;
    fusebox-forward) echo "wrk -> fusebox -> upstream, unique bodies (each forwarded and paid)" ;;
    fusebox-replay) echo "wrk -> fusebox, identical bodies (answered from the kept result)" ;;
    esac
}
fmt_ms() { awk -v u="$1" 'BEGIN { printf "%.3f", u / 1000 }'; }
fmt_add() { awk -v u="$1" 'BEGIN { printf "%+.3f", u / 1000 }'; }

md=$out/latest.md.tmp
js=$out/latest.json.tmp
{
    echo "# fusebox bench: $when"
    echo
    echo "Machine: $machine"
    echo
    echo "fusebox $rev, nginx $nginx_ver, wrk $wrk_ver; wrk -t$threads -c$conns -d${dur}s --latency (after ${warm}s warm-up), loopback;"
    echo "POST bodies of $req_bytes bytes, answers of $resp_bytes bytes (OpenAI-shaped, with usage)."
    echo
    echo "| path | requests/s | p50 ms | p99 ms | added p50 ms | added p99 ms | requests | non-2xx |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for i in "${!names[@]}"; do
        if [ "$i" = 0 ]; then a50="-" a99="-"; else
            a50=$(fmt_add $((p50[i] - p50[0]))); a99=$(fmt_add $((p99[i] - p99[0]))); fi
        printf '| %s | %.0f | %s | %s | %s | %s | %s | %s |\n' "${names[i]}" "${rps[i]}" \
            "$(fmt_ms "${p50[i]}")" "$(fmt_ms "${p99[i]}")" "$a50" "$a99" "${total[i]}" "${non2xx[i]}"
    done
    echo
    awk -v f="${rps[2]}" -v r="${rps[3]}" -v n="${rps[1]}" 'BEGIN {
        printf "Throughput ratios: fusebox-forward / nginx-proxy = %.2f, fusebox-replay / nginx-proxy = %.2f\n", f / n, r / n }'
    echo
    echo "Ledger check (fusebox spend): $paid calls paid (wrk got $fwd_sent forwarded answers, warm-ups included), $replayed replayed."
    echo
    echo "Added latency is the path's percentile minus direct's. Paths:"
    for i in "${!names[@]}"; do echo "- **${names[i]}**: $(describe "${names[i]}")"; done
} >"$md"

{
    echo "{"
    echo "  \"when\": \"$when\","
    echo "  \"machine\": {\"nproc\": $(nproc), \"cpu\": \"${cpu//\"/}\", \"kernel\": \"$(uname -r)\"},"
    echo "  \"versions\": {\"fusebox\": \"$rev\", \"nginx\": \"$nginx_ver\", \"wrk\": \"$wrk_ver\"},"
    echo "  \"wrk\": {\"threads\": $threads, \"connections\": $conns, \"duration_s\": $dur, \"warmup_s\": $warm},"
    echo "  \"request_bytes\": $req_bytes, \"response_bytes\": $resp_bytes,"
    echo "  \"results\": ["
    for i in "${!names[@]}"; do
        if [ "$i" = 0 ]; then a50=null a99=null; else a50=$((p50[i] - p50[0])); a99=$((p99[i] - p99[0])); fi
        sep=","; [ "$i" = $((${#names[@]} - 1)) ] && sep=""
        printf '    {"path": "%s", "requests_per_s": %s, "p50_us": %s, "p99_us": %s, "added_p50_us": %s, "added_p99_us": %s, "requests": %s, "non_2xx": %s, "socket_errors": %s}%s\n' \
            "${names[i]}" "${rps[i]}" "${p50[i]}" "${p99[i]}" "$a50" "$a99" "${total[i]}" "${non2xx[i]}" "${sockerr[i]}" "$sep"
    done
    echo "  ],"
    awk -v f="${rps[2]}" -v r="${rps[3]}" -v n="${rps[1]}" 'BEGIN {
        printf "  \"ratios\": {\"fusebox_forward_over_nginx_proxy_rps\": %.4f, \"fusebox_replay_over_nginx_proxy_rps\": %.4f},\n", f / n, r / n }'
    if [ -n "$spend" ] && printf '%s' "$spend" | head -c1 | grep -q '[[{]'; then
        echo "  \"fusebox_spend\": $spend"
    else
        echo "  \"fusebox_spend\": null"
    fi
    echo "}"
} >"$js"
mv "$md" "$out/latest.md"
mv "$js" "$out/latest.json"
if command -v jq >/dev/null 2>&1; then jq -e . "$out/latest.json" >/dev/null || die "latest.json is not valid JSON"; fi
echo
cat "$out/latest.md"
echo
echo "bench: wrote $out/latest.md and $out/latest.json"
