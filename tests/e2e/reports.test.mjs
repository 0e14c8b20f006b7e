// reports.test.mjs - fusebox spend --by tenant|job|model|key|hour|day
// (issue 7). A ledger seeded over three days (paid, blocked, replayed and
// in-flight rows, straight into SQLite) plus live calls; every report is
// checked against sums computed here from the raw ledger rows, also with
// --since/--until that cut hours in the middle (the rollup covers whole
// hours, the edges come from the ledger). JSON, CSV and the text chart;
// bad options exit 2 and print nothing on stdout.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startEnv, chatBody, cliRun, pico, seedLedgerSql } from './harness.mjs';

const CHAT = '/openai/v1/chat/completions';
const HOUR = 3600000;
const DAY = 24 * HOUR;

describe('fusebox spend --by', () => {
  let env, now, raw;

  before(async () => {
    env = await startEnv({
      budgets: { tenants: { acme: { jobs: { etl: null, chat: null } }, beta: { jobs: { x: null } } } },
    });
    const key = await env.createKey({ tenant: 'acme', job: 'etl' });

    await env.stop();

    // 1,500 rows over the last three days, ids far above the daemon's.
    now = Date.now();
    const ins = await env.sql(seedLedgerSql({
      count: 1500, now,
      scopes: [['acme', 'etl', 'k_etl1'], ['acme', 'chat', 'k_chat1'], ['acme', 'chat', 'k_chat2'], ['beta', 'x', 'k_x1']],
      models: ['gpt-4o-mini', 'gpt-4o', 'claude-3-5-haiku-latest'],
    }));
    assert.equal(ins.code, 0, ins.stderr);
    await env.restart();
    for (let i = 0; i < 3; i++) {
      const r = await env.post(CHAT, chatBody({ content: `report ${i}` }), { key });
      assert.equal(r.status, 200, r.text);
    }
    await env.settled();
    await env.stop(); // the journal applied: the store is complete
    const out = await env.sql("SELECT ts_ms,tenant,job,key_id,COALESCE(model,''),state,reserved,cost,saved FROM ledger");
    assert.equal(out.code, 0, out.stderr);
    raw = out.stdout.trim().split('\n').map((l) => {
      const [ts, tenant, job, key, model, state, reserved, cost, saved] = l.split('|');
      return { ts: Number(ts), tenant, job, key, model, state: Number(state), reserved: BigInt(reserved), cost: BigInt(cost), saved: BigInt(saved) };
    });
    assert.ok(raw.length >= 1503, `${raw.length} rows`);
    assert.ok(raw.every((x) => x.state !== 0), 'the restart settled the rows in flight');
  });

  afterEach(() => env?.checkNow());
  after(async () => {
    if (env) await env.close();
  });

  const groupOf = {
    tenant: (x) => x.tenant,
    job: (x) => `${x.tenant}/${x.job}`,
    model: (x) => x.model,
    key: (x) => x.key,
    hour: (x) => x.ts - (x.ts % HOUR),
    day: (x) => x.ts - (x.ts % DAY),
  };

  /** The report computed here from the raw rows: group -> sums. */
  function expected(by, since = 0, until = Infinity) {
    const m = new Map();
    for (const x of raw) {
      if (x.ts < since || x.ts >= until) continue;
      const g = String(groupOf[by](x));
      const e = m.get(g) || { spent: 0n, paid: 0, blocked: 0, replayed: 0, calls: 0, saved: 0n };
      e.spent += x.state === 0 ? x.reserved : x.cost;
      e.paid += x.state === 1 && x.cost > 0n ? 1 : 0;
      e.blocked += x.state === 2 ? 1 : 0;
      e.replayed += x.state === 3 ? 1 : 0;
      e.calls += 1;
      e.saved += x.state === 3 ? x.saved : 0n;
      m.set(g, e);
    }
    return m;
  }

  async function report(args) {
    const r = await cliRun(env, ['spend', ...args]);
    assert.equal(r.code, 0, `spend ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  }

  function check(by, json, exp) {
    const timed = by === 'hour' || by === 'day';
    const seen = new Set();
    for (const row of json.rows) {
      const g = timed ? String(row.bucket_ms) : row.group;
      const e = exp.get(g) || { spent: 0n, paid: 0, blocked: 0, replayed: 0, calls: 0, saved: 0n };
      if (!exp.has(g)) assert.ok(timed && row.calls === 0, `unexpected group ${g}: ${JSON.stringify(row)}`);
      assert.equal(BigInt(row.spent_pico), e.spent, `${by} ${g} spent`);
      assert.equal(row.paid_calls, e.paid, `${by} ${g} paid`);
      assert.equal(row.blocked_calls, e.blocked, `${by} ${g} blocked`);
      assert.equal(row.replayed_calls, e.replayed, `${by} ${g} replayed`);
      assert.equal(row.calls, e.calls, `${by} ${g} calls`);
      assert.equal(BigInt(row.saved_pico), e.saved, `${by} ${g} saved`);
      seen.add(g);
    }
    for (const g of exp.keys()) assert.ok(seen.has(g), `${by}: group ${g} missing`);
    const total = [...exp.values()].reduce((a, e) => a + e.spent, 0n);
    assert.equal(BigInt(json.total.spent_pico), total, `${by} total`);
  }

  for (const by of ['tenant', 'job', 'model', 'key', 'hour', 'day']) {
    it(`--by ${by} matches the ledger rows, whole and cut mid-hour`, async () => {
      check(by, JSON.parse(await report(['--by', by, '--json'])), expected(by));
      const since = now - 50 * HOUR - 17 * 60000 - 123;
      const until = now - 5 * HOUR - 41 * 60000;
      const iso = (t) => new Date(t - (t % 1000)).toISOString().replace('.000Z', 'Z');
      const s = Math.floor(since / 1000) * 1000, u = Math.floor(until / 1000) * 1000;
      const cut = JSON.parse(await report(['--by', by, '--json', '--since', iso(s), '--until', iso(u)]));
      check(by, cut, expected(by, s, u));
      if (by === 'hour') {
        // Every hour between since and until is a row, spent or not.
        const hours = Math.floor((u - 1) / HOUR) - Math.floor(s / HOUR) + 1;
        assert.equal(cut.rows.length, hours);
      }
    });
  }

  it('the totals agree with fusebox spend per tenant', async () => {
    const byTenant = JSON.parse(await report(['--by', 'tenant', '--json']));
    const plain = JSON.parse(await report(['--json']));
    for (const row of byTenant.rows) {
      const s = plain.scopes.find((x) => x.scope === `tenant:${row.group}`);
      assert.equal(BigInt(row.spent_pico), BigInt(s.spent_pico), row.group);
      assert.equal(row.replayed_calls, s.replayed_calls);
    }
  });

  it('filters by tenant, job and key', async () => {
    const j = JSON.parse(await report(['--by', 'key', '--json', '--tenant', 'acme', '--job', 'chat']));
    assert.deepEqual(j.rows.map((r) => r.group).sort(), ['k_chat1', 'k_chat2']);
    const k = JSON.parse(await report(['--by', 'model', '--json', '--key', 'k_x1']));
    const exp = new Map();
    for (const x of raw) if (x.key === 'k_x1') exp.set(x.model, (exp.get(x.model) || 0n) + x.cost);
    for (const r of k.rows) assert.equal(BigInt(r.spent_pico), exp.get(r.group));
  });

  it('--csv is RFC 4180 with the same numbers as --json', async () => {
    const csv = await report(['--by', 'job', '--csv']);
    const json = JSON.parse(await report(['--by', 'job', '--json']));
    const lines = csv.split('\r\n').filter(Boolean);
    assert.equal(lines[0], 'job,spent_usd,in_flight_usd,paid_calls,blocked_calls,replayed_calls,calls,saved_usd');
    assert.equal(lines.length - 1, json.rows.length);
    for (let i = 0; i < json.rows.length; i++) {
      const f = lines[i + 1].split(',');
      assert.equal(f[0], json.rows[i].group);
      assert.equal(pico(f[1]), BigInt(json.rows[i].spent_pico));
      assert.equal(Number(f[3]), json.rows[i].paid_calls);
    }
  });

  it('the text report draws bars and a spend line over time', async () => {
    const t = await report(['--by', 'day']);
    const lines = t.trim().split('\n');
    assert.match(lines[0], /^DAY \(UTC\)\s+SPENT_USD/);
    assert.ok(lines.some((l) => /^\d{4}-\d\d-\d\d\s.*█/.test(l)), t);
    assert.ok(lines.some((l) => l.startsWith('TOTAL')), t);
    assert.match(lines[lines.length - 1], /^spend over time: [▁▂▃▄▅▆▇█]{3,}$/);
  });

  it('the rollup agrees with the ledger rows, recovered ones included (ledger verify)', async () => {
    const r = await cliRun(env, ['ledger', 'verify', '--json']);
    const j = JSON.parse(r.stdout);
    const c = j.checks.find((x) => x.check === 'rollup_consistent');
    assert.equal(c?.status, 'ok', JSON.stringify(c));
    assert.equal(r.code, 0, r.stdout);
  });

  it('bad options: exit 2, a reason, nothing on stdout', async () => {
    for (const args of [['--by', 'week'], ['--csv'], ['--by', 'day', '--json', '--csv'],
      ['--by', 'day', '--since', '2026-11-28', '--until', '2026-11-27'], ['--by', 'day', '--since', 'yesterday'],
      ['--by', 'day', 'extra']]) {
      const r = await cliRun(env, ['spend', ...args]);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.code} ${r.stdout}`);
      assert.equal(r.stdout, '');
      assert.match(r.stderr, /fusebox spend: /);
    }
  });
});
