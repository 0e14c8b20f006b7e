// metrics.test.mjs - GET /metrics on the admin surface (issue 7): the
// admin token is required (and never logged), the text parses with a
// Prometheus text-format parser from npm, and its numbers agree with the
// ledger (`fusebox spend --json`) and with what the calls did.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { startEnv, pico, chatBody, request, cliRun, waitFor, spendRowWhen } from './harness.mjs';

const CHAT = '/openai/v1/chat/completions';

describe('/metrics', () => {
  let env, key;

  before(async () => {
    env = await startEnv({
      admin: true,
      budgets: { tenants: { acme: { budget: '10/day', jobs: { main: '1', tight: '0.000001' } } } },
    });
    key = await env.createKey({ tenant: 'acme', job: 'main' });
  });

  afterEach(() => env?.checkNow());
  after(async () => {
    if (env) await env.close();
  });

  const scrape = async (headers = { authorization: `Bearer ${env.adminToken}` }) =>
    request('GET', `${env.adminUrl}/metrics`, { headers });

  /** family name -> [{labels, value | buckets, count, sum}] */
  async function families() {
    const r = await scrape();
    assert.equal(r.status, 200, r.text);
    assert.match(r.headers['content-type'], /^text\/plain; version=0\.0\.4/);
    const parsed = parsePrometheusTextFormat(r.text);
    return Object.fromEntries(parsed.map((f) => [f.name, f]));
  }

  function value(fams, name, labels) {
    const f = fams[name];
    assert.ok(f, `no family ${name}`);
    const m = f.metrics.find((x) => Object.entries(labels).every(([k, v]) => x.labels?.[k] === v));
    assert.ok(m, `${name}${JSON.stringify(labels)} missing: ${JSON.stringify(f.metrics)}`);
    return m.value;
  }

  it('the admin surface is on loopback and refuses requests without the admin token', async () => {
    assert.match(env.adminUrl, /^http:\/\/127\.0\.0\.1:\d+$/);
    for (const headers of [{}, { authorization: 'Bearer wrong' }, { authorization: `Bearer ${env.adminToken}x` },
      { authorization: env.adminToken }, { cookie: 'fusebox_admin=nope' }]) {
      const r = await scrape(headers);
      assert.equal(r.status, 401, `${JSON.stringify(headers)}: ${r.status} ${r.text}`);
      assert.match(r.headers['www-authenticate'] || '', /^Bearer/);
      assert.ok(!r.text.includes('fusebox_'), 'a refused scrape must show no metric');
    }
    const c = await scrape({ cookie: `theme=dark; fusebox_admin=${env.adminToken}` });
    assert.equal(c.status, 200, 'the dashboard cookie is a token too');
    const other = await request('GET', `${env.adminUrl}/nothing`, { headers: { authorization: `Bearer ${env.adminToken}` } });
    assert.equal(other.status, 404);
    // The gateway's own port does not serve the admin surface.
    const front = await request('GET', `${env.gwUrl}/metrics`, { headers: { authorization: `Bearer ${env.adminToken}` } });
    assert.notEqual(front.status, 200);
  });

  it('counts paid, replayed and blocked calls as the ledger does; parses as Prometheus text', async () => {
    const costs = [];
    for (let i = 0; i < 3; i++) {
      const r = await env.post(CHAT, chatBody({ content: `metrics ${i}` }), { key });
      assert.equal(r.status, 200, r.text);
      costs.push(pico(r.headers['x-fusebox-cost-usd']));
    }
    const again = await env.post(CHAT, chatBody({ content: 'metrics 0' }), { key });
    assert.equal(again.headers['x-fusebox-replayed'], 'true');
    const tight = await env.createKey({ tenant: 'acme', job: 'tight' });
    const blocked = await env.post(CHAT, chatBody({ content: 'too dear' }), { key: tight });
    assert.equal(blocked.status, 402, blocked.text);

    const row = await spendRowWhen(env, 'job:main', (x) => x.replayed_calls === 1);
    const fams = await families();
    const main = { tenant: 'acme', job: 'main' };
    assert.equal(Number(value(fams, 'fusebox_forwarded_calls_total', main)), 3);
    assert.equal(Number(value(fams, 'fusebox_paid_calls_total', main)), row.paid_calls);
    assert.equal(Number(value(fams, 'fusebox_replayed_calls_total', main)), row.replayed_calls);
    // Money: exact decimal text, equal to the ledger's.
    const spent = costs.reduce((a, b) => a + b, 0n);
    assert.equal(pico(value(fams, 'fusebox_spent_usd_total', main)), spent);
    assert.equal(pico(row.spent_usd), spent);
    assert.equal(pico(value(fams, 'fusebox_saved_usd_total', main)), costs[0]);
    assert.equal(pico(value(fams, 'fusebox_saved_usd_total', main)), pico(row.saved_usd));
    assert.equal(Number(value(fams, 'fusebox_blocked_calls_total',
      { tenant: 'acme', job: 'tight', reason: 'budget_exceeded' })), 1);

    // Budgets: limit, spent in the period, what remains.
    const job = { scope: 'job:acme/main', period: 'total' };
    assert.equal(pico(value(fams, 'fusebox_budget_limit_usd', job)), pico('1'));
    assert.equal(pico(value(fams, 'fusebox_budget_spent_usd', job)), spent);
    assert.equal(pico(value(fams, 'fusebox_budget_remaining_usd', job)), pico('1') - spent);
    assert.equal(pico(value(fams, 'fusebox_budget_reserved_usd', job)), 0n);
    assert.equal(pico(value(fams, 'fusebox_budget_spent_usd', { scope: 'tenant:acme', period: 'day' })), spent);

    // Latency histograms: one observation per call, cumulative buckets.
    assert.equal(fams.fusebox_forward_duration_seconds.type, 'HISTOGRAM');
    const [fwd] = fams.fusebox_forward_duration_seconds.metrics;
    const [rep] = fams.fusebox_replay_duration_seconds.metrics;
    assert.equal(Number(fwd.count), 3);
    assert.equal(Number(rep.count), 1);
    const les = Object.keys(fwd.buckets);
    assert.ok(les.length >= 10 && les.includes('+Inf'), JSON.stringify(fwd.buckets));
    let prev = 0;
    for (const le of les) {
      assert.ok(Number(fwd.buckets[le]) >= prev, 'buckets must be cumulative');
      prev = Number(fwd.buckets[le]);
    }
    assert.equal(Number(fwd.buckets['+Inf']), 3);
    assert.ok(Number(fwd.sum) > 0);

    assert.equal(Number(value(fams, 'fusebox_store_up', {})), 1);
    assert.equal(fams.fusebox_paid_calls_total.type, 'COUNTER');
    assert.equal(fams.fusebox_budget_limit_usd.type, 'GAUGE');
  });

  it('a trip shows as fusebox_tripped with its reason, and goes with a reset', async () => {
    const t = await cliRun(env, ['trip', '--tenant', 'acme', '--job', 'main', '--reason', 'metrics test']);
    assert.equal(t.code, 0, t.stderr);
    await waitFor(async () => {
      const f = await families();
      return f.fusebox_tripped?.metrics.some((m) => m.labels.scope === 'job:acme/main' &&
        m.labels.reason.includes('metrics test') && Number(m.value) === 1);
    }, { timeoutMs: 5000, message: 'fusebox_tripped for job:acme/main' });
    const r = await cliRun(env, ['reset', '--tenant', 'acme', '--job', 'main']);
    assert.equal(r.code, 0, r.stderr);
    await waitFor(async () => {
      const f = await families();
      return !(f.fusebox_tripped?.metrics || []).some((m) => m.labels.scope === 'job:acme/main');
    }, { timeoutMs: 5000, message: 'the trip gone from /metrics' });
  });

  it('never logs the admin token', async () => {
    const log = env.gatewayStderr();
    assert.ok(log.includes('admin: refused'), 'refusals are logged');
    assert.ok(!log.includes(env.adminToken), 'the admin token is in the log');
  });
});
