#!/bin/sh
# make demo: a batch job runs into its budget. Starts the fake paid
# provider and the gateway on the embedded SQLite store, runs a job that
# calls gpt-4o-mini in a loop, and shows the calls that went through, the
# one fusebox refused before it reached the provider, and the bill.
set -eu
bin=${1:-build/fusebox}
dir=$(mktemp -d /tmp/fusebox-demo.XXXXXX)
fake_pid="" gw_pid=""
cleanup() {
    [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null || true
    [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM

. "$(dirname "$0")/lib.sh"

"$bin" fake-provider --listen 127.0.0.1:0 >"$dir/fake.out" 2>"$dir/fake.out.err" &
fake_pid=$!
fake=$(wait_addr "$dir/fake.out" "the fake provider")

cat >"$dir/fusebox.yaml" <<YAML
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
        nightly-report: {budget: 0.005/day}
alerts: {every_seconds: 1}
YAML

# The real provider key lives only in the gateway's environment.
OPENAI_API_KEY=sk-fake-openai "$bin" serve --config "$dir/fusebox.yaml" \
    >"$dir/gw.out" 2>"$dir/gw.out.err" &
gw_pid=$!
gw=$(wait_addr "$dir/gw.out" "the gateway")
key=$("$bin" key create --config "$dir/fusebox.yaml" --tenant finance \
    --job nightly-report 2>/dev/null)

echo "fusebox demo"
echo "  fake provider  http://$fake   (bills like OpenAI, from real prices)"
echo "  gateway        http://$gw/openai/v1   (what OPENAI_BASE_URL points at)"
echo "  job            finance/nightly-report, budget \$0.005 a day"
echo "  each call      gpt-4o-mini, max_tokens 1000: worst case about \$0.0006"
echo
echo "The job calls the model in a loop, as a batch job with a bug would:"
i=1
while [ $i -le 20 ]; do
    body='{"model":"gpt-4o-mini","max_tokens":1000,"messages":[{"role":"user","content":"Summarise ledger line '$i'"}]}'
    resp=$(curl -s -D "$dir/h" -o "$dir/b" -w '%{http_code}' \
        "http://$gw/openai/v1/chat/completions" \
        -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
        -H 'x-fake-completion-tokens: 900' -d "$body")
    cost=$(tr -d '\r' <"$dir/h" | sed -n 's/^x-fusebox-cost-usd: //p')
    if [ "$resp" = 200 ]; then
        printf '  call %2d  %s  paid $%s\n' $i "$resp" "$cost"
    else
        msg=$(sed -n 's/.*"message":"\([^"]*\)".*/\1/p' "$dir/b")
        printf '  call %2d  %s  refused before the provider: %s\n' $i "$resp" "$msg"
        echo
        echo "The job got HTTP $resp with x-should-retry: false, so the OpenAI and"
        echo "Anthropic SDKs do not retry it: the loop is broken by a fuse, not by the bill."
        break
    fi
    i=$((i + 1))
done

echo
billing=$(curl -s "http://$fake/_fake/billing")
calls=$(echo "$billing" | sed -n 's/.*"calls":\([0-9]*\).*/\1/p')
usd=$(echo "$billing" | sed -n 's/.*"billed_usd":"\([^"]*\)".*/\1/p')
echo "The provider billed $calls calls, \$$usd in all. The ledger (fusebox spend):"
"$bin" spend --config "$dir/fusebox.yaml" | sed 's/^/  /'

# The alert rules run every second here (every minute by default).
n=0
while [ $n -lt 50 ] && ! grep -q "alert: job:finance/nightly-report has spent 80%" "$dir/gw.out.err"; do
    sleep 0.1
    n=$((n + 1))
done
echo
echo "Alerts raised while it ran, before any invoice (the log; webhooks and a"
echo "command can get them too):"
sed -n 's/.*warn alert: /  /p' "$dir/gw.out.err"
