// verify.test.mjs - fusebox ledger verify (issue 6): clean on a store the
// gateway wrote, with the daemon running and after it stopped; after a
// kill -9 it counts the journal bytes still to apply instead of failing;
// a store damaged by hand (negative money, a malformed kept result, a
// cost on a replayed row, a page of garbage) exits 1 and names the check.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { openSync, writeSync, closeSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { startEnv, cliRun, chatBody, sqlite } from './harness.mjs';

const CHAT = '/openai/v1/chat/completions';


async function verifyJson(env) {
  const r = await cliRun(env, ['ledger', 'verify', '--json']);
  let j;
  try { j = JSON.parse(r.stdout); } catch { assert.fail(`verify --json printed ${r.stdout} ${r.stderr}`); }
  const byName = Object.fromEntries(j.checks.map((c) => [c.check, c]));
  return { code: r.code, j, byName };
}

it('ledger verify: clean while serving and stopped, counts the journal after kill -9, fails on damage', async (t) => {
  const env = await startEnv({ t });
  const key = await env.createKey({ tenant: 'acme', job: 'main' });
  for (let i = 0; i < 5; i++) {
    const body = chatBody({ content: `verify ${i}`, extra: i === 4 ? { stream: true } : {} });
    const r = await env.post(CHAT, body, { key });
    assert.equal(r.status, 200, r.text);
  }
  const again = await env.post(CHAT, chatBody({ content: 'verify 0' }), { key });
  assert.equal(again.headers['x-fusebox-replayed'], 'true');

  // While the daemon runs.
  let v = await verifyJson(env);
  assert.equal(v.code, 0, JSON.stringify(v.j));
  assert.equal(v.j.ok, true);
  assert.equal(v.j.failures, 0);
  for (const c of ['integrity_check', 'quick_check', 'negative_money', 'results_wellformed', 'idem_dangling']) {
    assert.equal(v.byName[c]?.status, 'ok', `${c}: ${JSON.stringify(v.byName[c])}`);
  }
  const text = await cliRun(env, ['ledger', 'verify']);
  assert.equal(text.code, 0, text.stdout + text.stderr);
  assert.match(text.stdout, /ledger verify: clean \(\d+ checks passed, 0 warnings\)/);

  // kill -9 right after paid answers: the journal holds records the store
  // may not have yet; verify reports them and passes.
  for (let i = 0; i < 3; i++) {
    assert.equal((await env.post(CHAT, chatBody({ content: `verify late ${i}` }), { key })).status, 200);
  }
  await env.kill9();
  v = await verifyJson(env);
  assert.equal(v.code, 0, JSON.stringify(v.j));
  assert.equal(typeof v.j.journal_pending_bytes, 'number');
  assert.equal(v.byName.journal_pending.count, v.j.journal_pending_bytes);
  // serve applies the journal at start; a clean stop leaves it empty.
  await env.restart();
  await env.stop();
  v = await verifyJson(env);
  assert.equal(v.code, 0, JSON.stringify(v.j));
  assert.equal(v.j.journal_pending_bytes, 0);
  assert.equal(v.byName.in_flight.count, 0);
  assert.ok(v.byName.ledger_rows.count >= 9, JSON.stringify(v.byName.ledger_rows));
  assert.ok(v.byName.kept_results.count >= 8, JSON.stringify(v.byName.kept_results));

  // Damage by hand, one kind at a time, each undone after.
  const db = join(env.dataDir, 'fusebox.db');
  const damage = [
    // cost -> -cost-1 is its own inverse: the undo restores the cost exactly.
    ['negative_money', 'UPDATE ledger SET cost=-cost-1 WHERE id=(SELECT MIN(id) FROM ledger)',
      'UPDATE ledger SET cost=-cost-1 WHERE id=(SELECT MIN(id) FROM ledger)'],
    ['rollup_consistent', 'UPDATE spend_rollup SET cost=cost+1 WHERE hour_ms=(SELECT MIN(hour_ms) FROM spend_rollup)',
      'UPDATE spend_rollup SET cost=cost-1 WHERE hour_ms=(SELECT MIN(hour_ms) FROM spend_rollup)'],
    ['results_wellformed', 'UPDATE results SET status=42 WHERE id=(SELECT MIN(id) FROM results)',
      'UPDATE results SET status=200 WHERE status=42'],
    ['unpaid_rows_cost', 'UPDATE ledger SET cost=7 WHERE id=(SELECT MIN(id) FROM ledger WHERE state=3)',
      'UPDATE ledger SET cost=0 WHERE state=3'],
  ];
  for (const [check, bad, undo] of damage) {
    const s = await sqlite(db, bad);
    assert.equal(s.code, 0, s.stderr);
    const r = await verifyJson(env);
    assert.equal(r.code, 1, `${check}: ${JSON.stringify(r.j)}`);
    assert.equal(r.j.ok, false);
    assert.equal(r.byName[check].status, 'fail', JSON.stringify(r.byName[check]));
    const tx = await cliRun(env, ['ledger', 'verify']);
    assert.equal(tx.code, 1);
    assert.match(tx.stdout, new RegExp(`FAIL\\s+${check}`));
    assert.match(tx.stdout, /ledger verify: FAILED/);
    assert.equal((await sqlite(db, undo)).code, 0);
    assert.equal((await verifyJson(env)).code, 0, `${check} undone`);
  }

  // Garbage over a page of the database file (not the header): the
  // integrity check (or the open) fails, and verify says so with exit 1.
  await sqlite(db, 'PRAGMA wal_checkpoint(TRUNCATE)');
  const size = statSync(db).size;
  assert.ok(size >= 3 * 4096, `store is ${size} bytes`);
  const fd = openSync(db, 'r+');
  writeSync(fd, Buffer.alloc(4096, 0xa5), 0, 4096, size - 4096);
  closeSync(fd);
  const broken = await cliRun(env, ['ledger', 'verify']);
  assert.equal(broken.code, 1, broken.stdout + broken.stderr);

  // Bad usage: exit 2.
  const usage = await cliRun(env, ['ledger', 'verify', '--no-such-option']);
  assert.equal(usage.code, 2);
});
