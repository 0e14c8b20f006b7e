// alerts.test.mjs - alerts before the invoice (issue 7), on a test clock
// (FUSEBOX_CLOCK_FILE) and rounds run on demand (POST /alerts/run on the
// admin surface). Every rule: budget thresholds, the spend-rate anomaly
// (with the minimum that keeps tiny jobs quiet), rerun storms (runs a day
// and one request bought again and again), a tripped fuse, and the
// breaker that trips a job by itself. Delivery to two webhooks (fusebox's
// JSON and Slack's), a command and the log, each alert once; the outbox
// survives a restart; retries stop at alerts.max_attempts when the
// receiver fails or is down.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash } from 'node:crypto';
import { readFileSync, existsSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEnv, chatBody, cliRun, run, request, waitFor, closedPort, ROLLUP_SEED } from './harness.mjs';

const CHAT = '/openai/v1/chat/completions';
const HOUR = 3600000;
const DAY = 24 * HOUR;
const USD = 1000000000000n;
// 2026-11-20 12:30 UTC: the days before it are the baseline.
const T0 = Date.UTC(2026, 10, 20, 12, 30);

/** How the outbox names a webhook: by a hash, never its URL (often a
 *  credential, like Slack's). */
const hookId = (url) => `webhook:${createHash('sha256').update(url).digest('hex').slice(0, 16)}`;

/** A webhook receiver: records every request; /json fails while failJson. */
async function receiver() {
  const r = { got: [], failJson: false };
  r.server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      const fail = req.url === '/json' && r.failJson;
      r.got.push({ path: req.url, body, status: fail ? 500 : 200, json: (() => { try { return JSON.parse(body); } catch { return null; } })() });
      res.writeHead(fail ? 500 : 200).end();
    });
  });
  await new Promise((ok) => r.server.listen(0, '127.0.0.1', ok));
  r.url = `http://127.0.0.1:${r.server.address().port}`;
  return r;
}

describe('alerts', () => {
  let env, rx, outFile, hotKey, downUrl;

  /** SQL rows for one job: [ts, cost USD as a decimal string] each. */
  function rows(tenant, job, list, { idBase, fp = null, state = 1 } = {}) {
    return list.map(([ts, usd], i) => {
      const [w, f = ''] = usd.split('.');
      const pico = BigInt(w) * USD + BigInt((f + '000000000000').slice(0, 12));
      return `(${idBase + i},${ts},'${tenant}','${job}','k_${job}','openai','gpt-4o-mini','/v1/chat/completions',` +
        `200,${pico},${pico},${state},'seeded',${fp ? env.blob(fp) : 'NULL'},0,0,0)`;
    });
  }

  before(async () => {
    rx = await receiver();
    const down = await closedPort();
    downUrl = `http://127.0.0.1:${down}/down`;
    outFile = join(tmpdir(), `fusebox-alerts-${process.pid}.jsonl`);
    rmSync(outFile, { force: true });
    env = await startEnv({
      admin: true,
      clock: T0,
      budgets: { tenants: { acme: { jobs: { capped: '10', rate: null, tiny: null, hot: null, storm: null } } } },
      extraYaml: `alerts:
  every_seconds: 3600
  budget_percent: [50, 80, 100]
  spend_rate: {factor: 3, min_usd: 2}
  rerun: {runs_per_day: 3, forwards_per_fingerprint: 2}
  jobs:
    acme/hot: {breaker: {window_minutes: 10, factor: 4, min_usd: 1}}
    acme/tiny: {spend_rate: {factor: 3, min_usd: 100}}
  webhooks:
    - {url: "${rx.url}/json", format: json}
    - {url: "${rx.url}/slack", format: slack}
    - {url: "http://127.0.0.1:${down}/down"}
  command: [sh, -c, "cat >> '${outFile}'; echo >> '${outFile}'"]
  max_attempts: 3
`,
    });
    await env.stop();
    hotKey = await env.createKey({ tenant: 'acme', job: 'hot' });

    // The ledger, relative to T0.
    const v = [];
    // capped: 8.5 of its 10 USD (85%).
    v.push(...rows('acme', 'capped', [[T0 - 3 * DAY, '5.0'], [T0 - 2 * HOUR, '3.5']], { idBase: 5000000 }));
    // rate: 1 USD in this hour on each of the 7 days before, 5 USD now.
    const base = [];
    for (let d = 1; d <= 7; d++) base.push([T0 - d * DAY - 30 * 60000, '1.0']);
    v.push(...rows('acme', 'rate', [...base, [T0 - 20 * 60000, '5.0']], { idBase: 5000100 }));
    // tiny: 5 USD now against nothing, but its minimum is 100 USD.
    v.push(...rows('acme', 'tiny', [[T0 - 10 * 60000, '5.0']], { idBase: 5000200 }));
    // hot: 0.1 USD in the same 10 minutes of each day before, 3 USD now.
    const hot = [];
    for (let d = 1; d <= 7; d++) hot.push([T0 - d * DAY - 5 * 60000, '0.1']);
    v.push(...rows('acme', 'hot', [...hot, [T0 - 4 * 60000, '3.0']], { idBase: 5000300 }));
    // storm: one request bought 3 times today (more than 2).
    const fp = 'ab'.repeat(32);
    v.push(...rows('acme', 'storm', [[T0 - 3 * HOUR, '0.01'], [T0 - 2 * HOUR, '0.01'], [T0 - HOUR, '0.01']],
      { idBase: 5000400, fp }));
    const runs = [1, 2, 3, 4].map((i) =>
      `('job:acme/storm', ${env.blob('cd'.repeat(32))}, ${T0 - i * HOUR}, ${T0 - i * HOUR + 1000}, 'failed_deterministic', 1, 1, 0)`);
    const seeded = await env.sql('BEGIN;INSERT INTO ledger(id,ts_ms,tenant,job,key_id,provider,model,path,' +
      `status,reserved,cost,state,outcome,fp,attempt,retry,saved) VALUES ${v.join(',')};` +
      ROLLUP_SEED('id>=5000000') +
      `INSERT INTO runs(scope,identity,started_ms,ended_ms,outcome,exit_code,attempts,cleared) VALUES ${runs.join(',')};COMMIT;`);
    assert.equal(seeded.code, 0, seeded.stderr);
    await env.restart();
  });

  afterEach(() => env?.checkNow());
  after(async () => {
    if (env) await env.close();
    if (rx) await new Promise((r) => rx.server.close(r));
    if (outFile) rmSync(outFile, { force: true });
  });

  async function round() {
    const r = await request('POST', `${env.adminUrl}/alerts/run`, { headers: { authorization: `Bearer ${env.adminToken}` } });
    assert.equal(r.status, 200, r.text);
    return r.json;
  }

  const has = (raised, prefix) => raised.some((d) => d.startsWith(prefix));
  const outbox = async (where) => {
    const o = await env.sql(`SELECT dest, attempts, state FROM alert_outbox WHERE ${where}`);
    assert.equal(o.code, 0, o.stderr);
    return o.stdout.trim().split('\n').filter(Boolean).map((l) => {
      const [dest, attempts, state] = l.split('|');
      return { dest, attempts: Number(attempts), state: Number(state) };
    });
  };

  it('every rule fires once, with its reason; tiny jobs stay quiet', async () => {
    const s = await round();
    const raised = s.raised;
    // 85% passes 50 and 80 in one round: one alert (80), 50 kept quiet.
    assert.ok(has(raised, 'budget:job:acme/capped:0:80'), JSON.stringify(raised));
    assert.ok(!has(raised, 'budget:job:acme/capped:0:50'), 'one page, not two');
    assert.ok(!has(raised, 'budget:job:acme/capped:0:100'), '85% is not 100%');
    assert.ok(has(raised, 'rate:job:acme/rate:'), JSON.stringify(raised));
    assert.ok(!has(raised, 'rate:job:acme/tiny:'), 'below its minimum: no page');
    assert.ok(has(raised, 'rerun:job:acme/storm:'), JSON.stringify(raised));
    assert.ok(has(raised, `fingerprint:job:acme/storm:${'ab'.repeat(8)}:`), JSON.stringify(raised));
    assert.ok(has(raised, 'breaker:job:acme/hot:'), JSON.stringify(raised));
    assert.ok(has(raised, 'trip:job:acme/hot:'), 'the breaker trip is itself reported');
    // The same clock, the same facts: nothing new.
    const again = await round();
    assert.deepEqual(again.raised, []);

    // Delivered once to each destination that works.
    const json = rx.got.filter((g) => g.path === '/json');
    const slack = rx.got.filter((g) => g.path === '/slack');
    assert.equal(json.length, raised.length, `json webhook got ${json.length} for ${raised.length}`);
    assert.equal(slack.length, raised.length);
    for (const g of json) {
      assert.ok(raised.includes(g.json.dedup), g.body);
      assert.equal(typeof g.json.message, 'string');
      assert.equal(g.json.ts_ms, T0);
    }
    const rate = json.find((g) => g.json.alert === 'spend_rate' && g.json.scope === 'job:acme/rate');
    assert.equal(rate.json.details.last_hour_usd, '5.0');
    assert.equal(rate.json.details.baseline_usd, '1.0');
    assert.ok(slack.every((g) => typeof g.json.text === 'string' && g.json.text.startsWith('fusebox: ')));
    const lines = readFileSync(outFile, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
    assert.equal(lines.length, raised.length, 'the command ran once per alert');
    const log = env.gatewayStderr();
    assert.match(log, /alert: job:acme\/capped has spent 80% of its budget in total: 8\.5 of 10\.0 USD/);
  });

  it('the breaker tripped the job: the gateway refuses its calls', async () => {
    const r = await waitFor(async () => {
      const x = await env.post(CHAT, chatBody({ content: 'hot again' }), { key: hotKey });
      return x.status === 429 ? x : null;
    }, { timeoutMs: 5000, message: 'acme/hot refused' });
    assert.equal(r.json.error.type, 'fuse_tripped');
    assert.match(r.json.error.message, /breaker/);

    // A person resets it; five minutes on, the spike is still in the
    // breaker's window, but the breaker fires once a day: no new trip,
    // no new page.
    const reset = await cliRun(env, ['reset', '--tenant', 'acme', '--job', 'hot']);
    assert.equal(reset.code, 0, reset.stderr);
    env.setClock(T0 + 5 * 60000);
    const s = await round();
    assert.ok(!has(s.raised, 'breaker:') && !has(s.raised, 'trip:job:acme/hot'), JSON.stringify(s));
    await waitFor(async () => (await env.post(CHAT, chatBody({ content: 'hot after reset' }), { key: hotKey })).status === 200,
      { timeoutMs: 5000, message: 'acme/hot served after the reset' });
    env.setClock(T0);
  });

  it('a fuse tripped by hand is reported', async () => {
    const t = await cliRun(env, ['trip', '--tenant', 'acme', '--job', 'tiny', '--reason', 'alerts test']);
    assert.equal(t.code, 0, t.stderr);
    const s = await round();
    assert.ok(has(s.raised, 'trip:job:acme/tiny:'), JSON.stringify(s));
  });

  it('the outbox survives a restart: a failed delivery is made after it, once', async () => {
    rx.failJson = true;
    const t = await cliRun(env, ['trip', '--tenant', 'acme', '--job', 'rate', '--reason', 'outbox test']);
    assert.equal(t.code, 0, t.stderr);
    const s = await round();
    const dedup = s.raised.find((d) => d.startsWith('trip:job:acme/rate:'));
    assert.ok(dedup, JSON.stringify(s));
    assert.ok(s.retrying >= 1);
    const attempts = () => rx.got.filter((g) => g.path === '/json' && g.json?.dedup === dedup);
    assert.equal(attempts().length, 1);
    assert.equal(attempts()[0].status, 500);

    await env.stop();
    rx.failJson = false;
    env.setClock(T0 + 5000); // past the first backoff (2 s)
    await env.restart();
    await round();
    const seen = attempts();
    assert.equal(seen.length, 2, 'delivered after the restart');
    assert.equal(seen[1].status, 200);
    env.setClock(T0 + 60000);
    await round();
    assert.equal(attempts().length, 2, 'and only once');
    const rowsNow = await outbox(`dedup='${dedup}' AND dest='${hookId(`${rx.url}/json`)}'`);
    assert.deepEqual(rowsNow, [{ dest: hookId(`${rx.url}/json`), attempts: 2, state: 1 }]);
  });

  it('retries stop at max_attempts when the receiver fails or is down', async () => {
    rx.failJson = true;
    const t = await cliRun(env, ['trip', '--tenant', 'acme', '--job', 'capped', '--reason', 'retry test']);
    assert.equal(t.code, 0, t.stderr);
    let now = T0 + 120000;
    env.setClock(now);
    const s = await round();
    const dedup = s.raised.find((d) => d.startsWith('trip:job:acme/capped:'));
    assert.ok(dedup, JSON.stringify(s));
    // Ten more rounds, each past any backoff.
    for (let i = 0; i < 10; i++) {
      now += 10 * 60000;
      env.setClock(now);
      await round();
    }
    const tries = rx.got.filter((g) => g.path === '/json' && g.json?.dedup === dedup);
    assert.equal(tries.length, 3, `the failing receiver saw ${tries.length} attempts`);
    assert.ok(tries.every((g) => g.status === 500));
    const [failing] = await outbox(`dedup='${dedup}' AND dest='${hookId(`${rx.url}/json`)}'`);
    assert.deepEqual(failing, { dest: hookId(`${rx.url}/json`), attempts: 3, state: 2 });
    // The receiver that is down: every alert's row gave up after 3.
    const down = await outbox(`dest='${hookId(downUrl)}'`);
    assert.ok(down.length >= 10, `${down.length} rows`);
    assert.ok(down.every((x) => x.attempts === 3 && x.state === 2), JSON.stringify(down));
    const log = env.gatewayStderr();
    assert.match(log, new RegExp(`to webhook ${rx.url.replace(/\./g, '\\.')}: gave up after 3 attempts`));
    // A webhook's path is its secret: not in the log, not in the store.
    assert.ok(!log.includes(`${rx.url}/json`) && !log.includes('/down'), 'a webhook URL is in the log');
    const dump = await env.dump();
    assert.equal(dump.code, 0, dump.stderr);
    assert.match(dump.stdout, /alert_outbox/, 'the dump holds the outbox');
    assert.ok(!dump.stdout.includes(`${rx.url}/json`) && !dump.stdout.includes(downUrl), 'a webhook URL is in the store');
    rx.failJson = false;
  });

  it('a config with a bad alerts section is refused with a reason', async () => {
    const bad = join(env.dir, 'bad.yaml');
    for (const [yaml, why] of [
      ['alerts: {spend_rate: {factor: 0.5}}', /factor is at least 1/],
      ['alerts: {budget_percent: 80}', /sequence/],
      ['alerts: {jobs: {"a/b/c": {}}}', /TENANT or TENANT\/JOB/],
      ['alerts: {webhooks: [{url: "ftp://x"}]}', /http/],
      ['alerts: {breaker: {window_minutes: 10}}', /needs a factor/],
      ['alerts: {max_attempts: 0}', /integer in 1\.\.20/],
    ]) {
      writeFileSync(bad, `data_dir: ${JSON.stringify(join(env.dir, 'baddata'))}\n${yaml}\n`);
      const r = await run(['spend', '--config', bad]);
      assert.notEqual(r.code, 0, yaml);
      assert.match(r.stderr, why, `${yaml}: ${r.stderr}`);
      assert.ok(!existsSync(join(env.dir, 'baddata')), 'a refused config changed nothing');
    }
  });
});
