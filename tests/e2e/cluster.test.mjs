// cluster.test.mjs - three fusebox nodes on one PostgreSQL store (issue 9).
// One job budget shared by 200 concurrent clients spread over the nodes:
// the provider never bills past the ceiling and at least 95% of it is
// usable; the same with one node killed -9 mid-run (its slices come back
// once the others reap it, and nothing it acknowledged is lost). A result
// bought through node A is replayed by node B at no cost, and a trip set
// on one node stops calls on the others within a second.
//
// Needs FUSEBOX_TEST_PG (make test starts a throw-away server with
// scripts/pg.sh); skipped without it.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  startEnv, request, chatBody, pico, usd, waitFor, run, PG_URL, pgDatabase, pgSql, REPO,
} from './harness.mjs';

const CEILING = 10n ** 10n; // $0.01 in picodollars
const CLIENTS = 200;
const PER_CLIENT = 60; // requests at most, per client: the run is bounded
const GIVE_UP_402 = 15; // consecutive 402s before a client stops

async function cluster(t) {
  const db = `fbcl_${randomBytes(6).toString('hex')}`;
  const store = await pgDatabase(db);
  const budgets = { tenants: { acme: { jobs: { main: usd(CEILING) } } } };
  const a = await startEnv({ t, store, budgets });
  // B and C call A's fake provider: one billing counter for the cluster
  const providers = { openai: { kind: 'openai', base_url: a.fakeUrl, api_key_env: 'OPENAI_API_KEY' } };
  const b = await startEnv({ t, store, budgets, providers, admin: true });
  const c = await startEnv({ t, store, budgets, providers });
  t.after(() => pgSql(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`).catch(() => {}));
  const key = await a.createKey({ tenant: 'acme', job: 'main' });
  return { nodes: [a, b, c], key, a, b, c, db };
}

/** 200 clients, each sending distinct calls to the live nodes in turn
 *  until the budget answers 402 GIVE_UP_402 times in a row. */
async function load({ nodes, key }, { dead = new Set(), onProgress } = {}) {
  const counts = { ok: 0, s402: 0, refused: 0, other: 0 };
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  async function client(i) {
    let streak = 0;
    for (let n = 0; n < PER_CLIENT && streak < GIVE_UP_402; n++) {
      const live = nodes.filter((e) => !dead.has(e));
      const node = live[(i + n) % live.length];
      let r;
      try {
        r = await request('POST', `${node.gwUrl}/openai/v1/chat/completions`, {
          headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
          body: chatBody({ content: `client ${i} call ${n}`, maxTokens: 8 }),
          timeoutMs: 30000,
        });
      } catch {
        counts.refused++; // a node killed under it: go on with the others
        continue;
      }
      if (r.status === 200) {
        counts.ok++;
        streak = 0;
        if (onProgress) await onProgress(counts);
      } else if (r.status === 402) {
        counts.s402++;
        streak++;
        await sleep(100);
      } else {
        counts.other++;
        await sleep(50);
      }
    }
  }
  await Promise.all(Array.from({ length: CLIENTS }, (_, i) => client(i)));
  return { counts };
}

/** Spend of job:main over the whole store (any node's CLI reads it). */
async function jobSpend(env) {
  const row = await env.scope('job:main');
  return { spent: pico(row.spent_usd), inFlight: pico(row.in_flight_usd ?? '0') };
}

/** Neither the provider's bill nor the ledger passes the ceiling. */
function withinCeiling(t, counts, bill, spent) {
  t.diagnostic(`calls ${JSON.stringify(counts)}; billed ${bill.billed_pico} pico, ` +
    `ledger ${spent} pico, ceiling ${CEILING} (${Number(spent * 10000n / CEILING) / 100}% used)`);
  assert.ok(BigInt(bill.billed_pico) <= CEILING, `billed ${bill.billed_pico} > ceiling ${CEILING}`);
  assert.ok(spent <= CEILING, `ledger spent ${spent} > ceiling`);
}

async function verify(env) {
  const r = await run(['ledger', 'verify', '--config', env.configPath]);
  assert.equal(r.code, 0, `ledger verify failed:\n${r.stdout}${r.stderr}`);
}

describe('a cluster of three nodes on PostgreSQL', { skip: !PG_URL && 'FUSEBOX_TEST_PG is not set' }, () => {
  it('200 clients on three nodes: billed <= ceiling, >= 95% of it usable', async (t) => {
    const cl = await cluster(t);
    const { counts } = await load(cl);
    const bill = await cl.a.billingStable(20000);
    const { spent } = await jobSpend(cl.a);
    withinCeiling(t, counts, bill, spent);
    assert.equal(BigInt(bill.billed_pico), spent, 'the ledger holds what the provider billed');
    assert.ok(spent * 100n >= CEILING * 95n, `only ${spent} of ${CEILING} usable`);
    assert.equal(counts.other, 0, 'no call failed otherwise');
    assert.ok(counts.ok > 0 && counts.s402 > 0);
    // node B's dashboard shows the job's budget over every node, not the
    // part of it B spent
    const d = await request('GET', `${cl.b.adminUrl}/dashboard`,
      { headers: { authorization: `Bearer ${cl.b.adminToken}` } });
    assert.equal(d.status, 200);
    const m = /data-scope="job:acme\/main" data-field="period_spent_usd" data-usd="([0-9.]+)"/.exec(d.text);
    assert.ok(m, 'the dashboard shows the job budget');
    assert.equal(pico(m[1]), spent, 'the dashboard shows the cluster\'s spend');
    await verify(cl.a);
  });

  it('the same with one node killed -9 mid-run: nothing acknowledged lost, its slices come back', async (t) => {
    const cl = await cluster(t);
    let killed = false;
    const dead = new Set();
    const { counts } = await load(cl, {
      dead,
      onProgress: async (c) => {
        if (killed || c.ok < 300) return;
        killed = true;
        await cl.c.kill9(); // with calls in flight on it
        dead.add(cl.c);
      },
    });
    assert.ok(killed, 'the node was killed under load');
    // Its calls in flight are charged in full once a node reaps it (lease
    // 1.5 s in tests): nothing stays in flight.
    await waitFor(async () => (await jobSpend(cl.a)).inFlight === 0n,
      { timeoutMs: 20000, intervalMs: 200, message: 'the dead node reaped' });
    const bill = await cl.a.billingStable(20000);
    const { spent } = await jobSpend(cl.a);
    withinCeiling(t, counts, bill, spent);
    // the killed node's calls in flight are charged at their worst case:
    // the ledger never holds less than the bill
    assert.ok(spent >= BigInt(bill.billed_pico), `ledger ${spent} < billed ${bill.billed_pico}`);
    const paid = (await cl.a.scope('job:main')).paid_calls;
    assert.ok(paid >= counts.ok, `${counts.ok} answered 200, only ${paid} paid rows`);
    assert.ok(spent * 100n >= CEILING * 95n, `only ${spent} of ${CEILING} usable`);
    await verify(cl.a);
  });

  it('replay across nodes: attempt 1 through A, attempt 2 through B and C pays nothing', async (t) => {
    const cl = await cluster(t);
    const k1 = await cl.a.createKey({ tenant: 'acme', job: 'main', attempt: 1 });
    const k2 = await cl.a.createKey({ tenant: 'acme', job: 'main', attempt: 2 });
    const bodies = [0, 1, 2].map((i) => chatBody({ content: `nightly step ${i}`, maxTokens: 8 }));
    const send = (node, key, body) => request('POST', `${node.gwUrl}/openai/v1/chat/completions`, {
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body,
    });
    const first = [];
    for (const b of bodies) {
      const r = await send(cl.a, k1, b);
      assert.equal(r.status, 200, r.text);
      first.push(r.text);
    }
    const b0 = await cl.a.billingStable();
    for (const [node, i] of [[cl.b, 0], [cl.c, 1], [cl.b, 2]]) {
      const r = await send(node, k2, bodies[i]);
      assert.equal(r.status, 200, r.text);
      assert.equal(r.text, first[i], 'the same answer, from the shared store');
      assert.equal(r.headers['x-fusebox-replayed'], 'true');
    }
    const b1 = await cl.a.billingStable();
    assert.equal(b1.requests, b0.requests, 'no paid call for work already bought');
    assert.equal(b1.billed_pico, b0.billed_pico);
  });

  it('a trip set through one node stops the others within a second', async (t) => {
    const cl = await cluster(t);
    const key = cl.key;
    const body = chatBody({ content: 'before the trip', maxTokens: 8 });
    const post = (node, b) => request('POST', `${node.gwUrl}/openai/v1/chat/completions`, {
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: b,
    });
    assert.equal((await post(cl.b, body)).status, 200);
    const r = await run(['trip', '--config', cl.a.configPath, '--job', 'main', '--tenant', 'acme']);
    assert.equal(r.code, 0, r.stderr);
    const t0 = Date.now();
    let n = 0;
    const lag = {};
    for (const node of [cl.b, cl.c]) {
      await waitFor(async () => (await post(node, chatBody({ content: `after ${n++}`, maxTokens: 8 }))).status === 429,
        { timeoutMs: 5000, intervalMs: 25, message: 'the trip on another node' });
      lag[node === cl.b ? 'b' : 'c'] = Date.now() - t0;
    }
    t.diagnostic(`trip seen by node B after ${lag.b} ms, by node C after ${lag.c} ms`);
    const rs = await run(['reset', '--config', cl.a.configPath, '--job', 'main', '--tenant', 'acme']);
    assert.equal(rs.code, 0, rs.stderr);
    await waitFor(async () => (await post(cl.c, chatBody({ content: `reset ${n++}`, maxTokens: 8 }))).status === 200,
      { timeoutMs: 5000, intervalMs: 25, message: 'the reset on another node' });
  });

  it('single flight across nodes: 12 identical calls spread over three nodes make one upstream call', async (t) => {
    const cl = await cluster(t);
    const key = await cl.a.createKey({ tenant: 'acme', job: 'main' });
    const body = chatBody({ content: 'Twelve at once, three nodes.', maxTokens: 8 });
    const b0 = await cl.a.billingStable();
    // the one that reaches the provider is held there for 500 ms
    const rs = await Promise.all(Array.from({ length: 12 }, (_, i) => request('POST',
      `${cl.nodes[i % 3].gwUrl}/openai/v1/chat/completions`, {
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json',
          'x-fake-fault': 'delay_ms=500' },
        body,
      })));
    for (const r of rs) assert.equal(r.status, 200, `${r.status}: ${r.text}`);
    const b1 = await cl.a.billingStable();
    assert.equal(b1.requests - b0.requests, 1, `${b1.requests - b0.requests} upstream calls`);
    assert.equal(new Set(rs.map((r) => r.text)).size, 1, 'every caller got the same body');
    assert.equal(rs.filter((r) => r.headers['x-fusebox-replayed'] === 'true').length, 11);
  });

  it('an Idempotency-Key in flight on one node is 409 on another; then it replays everywhere', async (t) => {
    const cl = await cluster(t);
    const key = await cl.a.createKey({ tenant: 'acme', job: 'main' });
    const body = chatBody({ content: 'Charge the card once.', maxTokens: 8 });
    const post = (node, extra = {}) => request('POST', `${node.gwUrl}/openai/v1/chat/completions`, {
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json',
        'idempotency-key': 'op-cluster-1', ...extra },
      body,
    });
    const slow = post(cl.a, { 'x-fake-fault': 'delay_ms=1500' });
    await waitFor(async () => (await cl.a.billing()).pending > 0, { message: 'the first call at the provider' });
    const busy = await post(cl.b);
    assert.equal(busy.status, 409, busy.text);
    assert.equal(busy.json.error.type, 'idempotency_key_in_flight');
    const first = await slow;
    assert.equal(first.status, 200, first.text);
    for (const node of [cl.b, cl.c]) {
      const r = await post(node);
      assert.equal(r.status, 200, r.text);
      assert.equal(r.text, first.text);
      assert.equal(r.headers['x-fusebox-replayed'], 'true');
    }
    const other = await request('POST', `${cl.c.gwUrl}/openai/v1/chat/completions`, {
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json',
        'idempotency-key': 'op-cluster-1' },
      body: chatBody({ content: 'Another request, same key.', maxTokens: 8 }),
    });
    assert.equal(other.status, 422, other.text);
  });

  it('a node paused past its lease is reaped, then joins again under a new number', async (t) => {
    const cl = await cluster(t);
    const post = (node, i) => request('POST', `${node.gwUrl}/openai/v1/chat/completions`, {
      headers: { authorization: `Bearer ${cl.key}`, 'content-type': 'application/json' },
      body: chatBody({ content: `pause ${i}`, maxTokens: 8 }),
    });
    assert.equal((await post(cl.b, 0)).status, 200);
    const nodes0 = (await pgSql('SELECT id FROM nodes ORDER BY id', cl.db)).split('\n');
    assert.equal(nodes0.length, 3);
    cl.b.gw.child.kill('SIGSTOP'); // a long pause: no heartbeat
    try {
      // the others reap it after the lease (1.5 s in tests)
      await waitFor(async () => (await pgSql('SELECT COUNT(*) FROM nodes', cl.db)) === '2',
        { timeoutMs: 15000, intervalMs: 100, message: 'the paused node reaped' });
      assert.equal((await post(cl.a, 1)).status, 200, 'the others keep serving');
    } finally {
      cl.b.gw.child.kill('SIGCONT');
    }
    let i = 2;
    await waitFor(async () => (await post(cl.b, i++)).status === 200,
      { timeoutMs: 15000, intervalMs: 100, message: 'the paused node serving again' });
    const m = /node (\d+) joined again as node (\d+)/.exec(cl.b.gw.stderr);
    assert.ok(m, `no rejoin in the log:\n${cl.b.gw.stderr}`);
    const nodes1 = (await pgSql('SELECT id FROM nodes ORDER BY id', cl.db)).split('\n');
    assert.equal(nodes1.length, 3);
    assert.ok(nodes0.includes(m[1]) && !nodes1.includes(m[1]), 'the old number is gone');
    assert.ok(nodes1.includes(m[2]) && !nodes0.includes(m[2]), 'the new number is registered');
    await verify(cl.a);
  });
});

// The database itself goes away for a while (a restart, a failover): the
// nodes refuse paid calls meanwhile (nothing is bought that cannot be
// recorded), kept results cannot be read either, and once it is back the
// nodes serve again by themselves (reaping one another if the outage was
// longer than the lease, and joining again).
describe('the shared store restarting', { skip: !PG_URL && 'FUSEBOX_TEST_PG is not set' }, () => {
  it('paid calls get 503 while PostgreSQL is down; both nodes serve again when it is back', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'fusebox-pg-outage-'));
    const pg = (cmd) => execFileSync(join(REPO, 'scripts/pg.sh'), [cmd, dir], { encoding: 'utf8', timeout: 120000 }).trim();
    const url = pg('start');
    t.after(() => { try { pg('stop'); } catch { /* gone */ } });
    const budgets = { tenants: { acme: { jobs: { main: usd(CEILING) } } } };
    const a = await startEnv({ t, store: url, budgets, admin: true });
    const providers = { openai: { kind: 'openai', base_url: a.fakeUrl, api_key_env: 'OPENAI_API_KEY' } };
    const b = await startEnv({ t, store: url, budgets, providers });
    const key = await a.createKey({ tenant: 'acme', job: 'main' });
    let n = 0;
    const post = (node) => request('POST', `${node.gwUrl}/openai/v1/chat/completions`, {
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: chatBody({ content: `outage ${n++}`, maxTokens: 8 }), timeoutMs: 30000,
    });
    assert.equal((await post(a)).status, 200);
    assert.equal((await post(b)).status, 200);
    const before = await a.billingStable();
    pg('down');
    for (const node of [a, b]) {
      await waitFor(async () => (await post(node)).status === 503,
        { timeoutMs: 15000, intervalMs: 100, message: 'a 503 while the store is down' });
    }
    const during = await a.billingStable();
    assert.equal(during.requests, before.requests, 'a call reached the provider with no store to record it');
    await new Promise((r) => setTimeout(r, 2500)); // longer than the lease (1.5 s)
    pg('up');
    for (const node of [a, b]) {
      await waitFor(async () => (await post(node)).status === 200,
        { timeoutMs: 30000, intervalMs: 200, message: 'serving again after the store came back' });
    }
    await waitFor(async () => (await jobSpend(a)).inFlight === 0n,
      { timeoutMs: 20000, intervalMs: 200, message: 'nothing left in flight' });
    // every connection of a node comes back, the readers' too (the
    // dashboard reads on a connection of its own)
    await waitFor(async () => (await request('GET', `${a.adminUrl}/dashboard`,
      { headers: { authorization: `Bearer ${a.adminToken}` } })).status === 200,
    { timeoutMs: 15000, intervalMs: 200, message: 'the dashboard back' });
    const bill = await a.billingStable();
    const { spent } = await jobSpend(a);
    assert.ok(spent >= BigInt(bill.billed_pico), `ledger ${spent} < billed ${bill.billed_pico}`);
    await verify(a);
  });
});
