// diskfault.test.mjs - the store's disk full, then read-only (issue 6):
// the gateway refuses the paid calls it cannot record (fail closed: the
// provider is never called), says so in /readyz and the log, keeps
// replaying what it holds (reads still work), and serves again by itself
// once the disk takes writes. The disk is the LD_PRELOAD shim
// tests/fault/fbfault.c: while its flag file exists, writes to regular
// files fail with the errno the file names.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startEnv, pico, chatBody, request, waitFor, cliRun, REPO } from './harness.mjs';

const CHAT = '/openai/v1/chat/completions';
const SHIM = process.env.FUSEBOX_FAULT_SO || join(REPO, 'build', 'fbfault.so');

describe('store disk full or read-only', () => {
  let env, key, flag;

  before(async () => {
    assert.ok(existsSync(SHIM), `the fault shim ${SHIM} is missing (make build/fbfault.so)`);
    // A temp path of our own (the env's dir does not exist yet).
    flag = join(REPO, 'build', `fault-flag-${process.pid}`);
    rmSync(flag, { force: true });
    env = await startEnv({
      budgets: { tenants: { acme: { budget: '10', jobs: { disk: '1' } } } },
      gwEnv: {
        LD_PRELOAD: SHIM,
        FB_FAULT_FLAG: flag,
        // An ASan build wants its runtime first; the shim only wraps libc.
        ASAN_OPTIONS: `${process.env.ASAN_OPTIONS || ''}:verify_asan_link_order=0`,
      },
    });
    key = await env.createKey({ tenant: 'acme', job: 'disk' });
  });

  afterEach(() => env?.checkNow());
  after(async () => {
    if (flag) rmSync(flag, { force: true });
    if (env) await env.close();
  });

  const ready = async () => (await request('GET', `${env.gwUrl}/readyz`)).status;

  async function faultRound(errno, logText) {
    const tag = errno.toLowerCase();
    const bought = await env.post(CHAT, chatBody({ content: `${tag} before` }), { key });
    assert.equal(bought.status, 200, bought.text);
    assert.equal(await ready(), 200);
    const before = await env.billingStable();

    writeFileSync(flag, errno);
    const stderrAt = env.gatewayStderr().length;

    // A new paid call: refused before the provider is called.
    const refused = await env.post(CHAT, chatBody({ content: `${tag} during` }), { key });
    assert.equal(refused.status, 503, `want 503 while the disk fails, got ${refused.status}: ${refused.text}`);
    assert.equal(refused.json?.error?.type, 'store_unavailable', refused.text);
    // Twice: the second goes the slow way (straight to the store) and is refused too.
    const again = await env.post(CHAT, chatBody({ content: `${tag} during 2` }), { key });
    assert.equal(again.status, 503, again.text);
    const during = await env.billingStable();
    assert.equal(during.requests, before.requests, 'the provider was called while the ledger could not record it');
    assert.equal(during.billed_pico, before.billed_pico);

    // What is kept still replays, free.
    const replay = await env.post(CHAT, chatBody({ content: `${tag} before` }), { key });
    assert.equal(replay.status, 200, replay.text);
    assert.equal(replay.headers['x-fusebox-replayed'], 'true');
    assert.equal(replay.text, bought.text, 'the replay differs from the bought answer');
    assert.equal(pico(replay.headers['x-fusebox-cost-usd']), 0n);

    // /readyz says so; /healthz does not (the process is alive).
    await waitFor(async () => (await ready()) === 503, { timeoutMs: 5000, message: '/readyz 503 while the disk fails' });
    const r = await request('GET', `${env.gwUrl}/readyz`);
    assert.equal(r.json?.status, 'store_unavailable', r.text);
    // A request that only reads the store (an unknown key: 401) commits
    // fine on a full disk; it must not turn /readyz green.
    const stranger = await env.post(CHAT, chatBody({ content: `${tag} who` }), { key: `fbk_${'0'.repeat(40)}` });
    assert.equal(stranger.status, 401, stranger.text);
    assert.equal(await ready(), 503, 'a read turned /readyz green while the disk fails');
    assert.equal(await env.healthz(), 200);
    const log = env.gatewayStderr().slice(stderrAt);
    assert.ok(log.includes(logText), `the log does not name the cause (${logText}):\n${log}`);
    assert.match(log, /store: write failed: .*; refusing paid calls/);
    assert.equal(log.match(/store: write failed/g).length, 1, `one line for the failure, not one per call:\n${log}`);

    // The disk takes writes again: ready without any request, then paid calls pass.
    rmSync(flag);
    await waitFor(async () => (await ready()) === 200, { timeoutMs: 5000, message: '/readyz 200 once the disk is back' });
    assert.match(env.gatewayStderr().slice(stderrAt), /writable again/);
    const after = await env.post(CHAT, chatBody({ content: `${tag} during` }), { key });
    assert.equal(after.status, 200, `after recovery: ${after.status} ${after.text}`);
    assert.notEqual(after.headers['x-fusebox-replayed'], 'true', 'the refused call cannot have been kept');
    const billed = await env.billingStable();
    assert.equal(billed.requests, before.requests + 1);
  }

  it('disk full (ENOSPC): fail closed, replays go on, recovers by itself', async () => {
    await faultRound('ENOSPC', 'No space left on device');
  });

  it('read-only store (EROFS): the same', async () => {
    await faultRound('EROFS', 'Read-only file system');
  });

  it('after both: the ledger verifies and matches the provider bill', async () => {
    await env.stop();
    const v = await cliRun(env, ['ledger', 'verify']);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    await env.restart();
    const s = await env.settled();
    const row = s.scopes.find((x) => x.scope === 'job:disk');
    const bill = await env.billingStable();
    assert.equal(BigInt(row.spent_pico), BigInt(bill.billed_pico),
      `recorded ${row.spent_pico}, billed ${bill.billed_pico}`);
  });
});
