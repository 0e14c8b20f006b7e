// replay.test.mjs - never pay twice for a result already bought (issue 3):
// kept results replayed at cost 0, the k-th identical call of an attempt,
// streams replayed through the official SDKs, Idempotency-Key, single
// flight, opting out, kill -9 around a paid answer, retry budgets and the
// trip switch, kept deterministic errors, scopes that never cross, purge.
// Every figure is read back from the fake provider's bill and from
// `fusebox spend`; nothing sleeps to synchronise.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import {
  startEnv, pico, waitFor, chatBody, worstChat, SLOW,
  fakeFaultQueue, fakeFaultsClear, cliRun, replayedHeader, spendRowWhen,
  STORE_PG,
} from './harness.mjs';

const CHAT = '/openai/v1/chat/completions';
const FAKE_ANSWER = /^fake answer #\d+( w\d+)*$/;
const HAIKU = 'claude-haiku-4-5';

const text = (r) => r.json?.choices?.[0]?.message?.content;
const costOf = (r) => pico(r.headers['x-fusebox-cost-usd']);

/** Fake billing deltas around fn: [result, {calls, requests, billed}]. */
async function billedBy(env, fn) {
  const b0 = await env.billing();
  const out = await fn();
  const b1 = await env.billingStable();
  return [out, {
    calls: b1.calls - b0.calls,
    requests: b1.requests - b0.requests,
    billed: BigInt(b1.billed_pico) - BigInt(b0.billed_pico),
  }];
}

function assertPaid(r, what) {
  assert.equal(r.status, 200, `${what}: status ${r.status}: ${r.text}`);
  assert.equal(replayedHeader(r.headers), null, `${what}: answered as a replay`);
  assert.ok(costOf(r) > 0n, `${what}: cost ${r.headers['x-fusebox-cost-usd']}`);
  assert.match(text(r), FAKE_ANSWER);
}

function assertReplay(r, original, what) {
  assert.equal(r.status, original ? original.status : 200, `${what}: status ${r.status}: ${r.text}`);
  assert.equal(replayedHeader(r.headers), 'true', `${what}: not a replay (headers ${JSON.stringify(r.headers)})`);
  assert.equal(costOf(r), 0n, `${what}: a replay must cost 0`);
  if (original) assert.equal(r.text, original.text, `${what}: another body than the kept result`);
}

describe('replay: kept results, attempts, streams, idempotency, single flight, scopes', () => {
  let env;

  before(async () => {
    env = await startEnv({
      budgets: {
        tenants: {
          acme: {
            jobs: {
              k1: null, k0: null, st: null, idem: null, sf: null, det: null,
              x1: null, x2: null, pg: null, pg2: null,
            },
          },
          beta: { jobs: { x3: null } },
        },
      },
    });
  });

  afterEach(() => env?.checkNow());
  after(async () => {
    if (env) await env.close();
  });

  it('the k-th occurrence rule: attempt 2 replays attempt 1\'s three results in order, pays only the 4th', async () => {
    const a1 = await env.createKey({ tenant: 'acme', job: 'k1', attempt: 1 });
    const a2 = await env.createKey({ tenant: 'acme', job: 'k1', attempt: 2 });
    const a3 = await env.createKey({ tenant: 'acme', job: 'k1', attempt: 3 });
    const body = chatBody({ content: 'Roll a die.', maxTokens: 16 });

    const [first, b1] = await billedBy(env, async () => {
      const out = [];
      for (let i = 0; i < 3; i++) out.push(await env.post(CHAT, body, { key: a1 }));
      return out;
    });
    first.forEach((r, i) => assertPaid(r, `attempt 1 call ${i + 1}`));
    assert.equal(new Set(first.map(text)).size, 3, `attempt 1 got ${JSON.stringify(first.map(text))}`);
    assert.equal(b1.calls, 3);

    const [second, b2] = await billedBy(env, async () => {
      const out = [];
      for (let i = 0; i < 4; i++) out.push(await env.post(CHAT, body, { key: a2 }));
      return out;
    });
    for (let i = 0; i < 3; i++) assertReplay(second[i], first[i], `attempt 2 call ${i + 1}`);
    assertPaid(second[3], 'attempt 2 call 4');
    assert.ok(!first.map(text).includes(text(second[3])), 'the 4th call got a kept answer');
    assert.equal(b2.calls, 1, 'attempt 2 should pay for exactly one call');
    assert.equal(b2.requests, 1);
    assert.equal(b2.billed, costOf(second[3]));

    // Attempt 3: all four were bought by earlier attempts, in order.
    const [third, b3] = await billedBy(env, async () => {
      const out = [];
      for (let i = 0; i < 4; i++) out.push(await env.post(CHAT, body, { key: a3 }));
      return out;
    });
    [...first, second[3]].forEach((orig, i) => assertReplay(third[i], orig, `attempt 3 call ${i + 1}`));
    assert.equal(b3.requests, 0);

    const firstCosts = first.reduce((s, r) => s + costOf(r), 0n);
    const row = await spendRowWhen(env, 'job:k1', (x) => x.replayed_calls >= 7);
    assert.equal(row.paid_calls, 4, 'the fake billed 4 calls in all');
    assert.equal(row.replayed_calls, 7);
    assert.equal(BigInt(row.spent_pico), firstCosts + costOf(second[3]));
    assert.equal(BigInt(row.saved_pico), 2n * firstCosts + costOf(second[3]));
  });

  it('without attempt keys an identical request replays the first kept result (key order and blanks do not matter)', async () => {
    const key = await env.createKey({ tenant: 'acme', job: 'k0' });
    const body = chatBody({ content: 'Without attempts.', maxTokens: 16 });
    const sameJson = JSON.stringify(
      { max_tokens: 16, messages: [{ content: 'Without attempts.', role: 'user' }], model: 'gpt-4o-mini' },
      null, 3);
    const [rs, b] = await billedBy(env, async () => [
      await env.post(CHAT, body, { key }),
      await env.post(CHAT, body, { key }),
      await env.post(CHAT, body, { key }),
      await env.post(CHAT, sameJson, { key }),
    ]);
    assertPaid(rs[0], 'first');
    for (let i = 1; i < rs.length; i++) assertReplay(rs[i], rs[0], `call ${i + 1}`);
    assert.equal(b.calls, 1);
    assert.equal(b.requests, 1);
    const row = await spendRowWhen(env, 'job:k0', (x) => x.replayed_calls >= 3);
    assert.equal(row.paid_calls, 1);
    assert.equal(row.replayed_calls, 3);
    assert.equal(BigInt(row.saved_pico), 3n * costOf(rs[0]));
    assert.equal(BigInt(row.spent_pico), b.billed);
  });

  describe('streams replayed through the official SDKs', () => {
    let key, openai, anthropic;
    before(async () => {
      key = await env.createKey({ tenant: 'acme', job: 'st' });
      openai = new OpenAI({ baseURL: `${env.gwUrl}/openai/v1`, apiKey: key, maxRetries: 0 });
      anthropic = new Anthropic({ baseURL: `${env.gwUrl}/anthropic`, apiKey: key, maxRetries: 0 });
    });

    async function openaiStream(params) {
      const { data: stream, response } = await openai.chat.completions.create(params).withResponse();
      const chunks = [];
      for await (const c of stream) chunks.push(c);
      const textOf = chunks.filter((c) => c.choices.length).map((c) => c.choices[0].delta?.content ?? '').join('');
      return { chunks, text: textOf, headers: response.headers, status: response.status };
    }

    for (const includeUsage of [false, true]) {
      it(`openai chat stream ${includeUsage ? 'with' : 'without'} stream_options.include_usage: same text, no extra bill, x-fusebox-replayed`, async () => {
        const params = {
          model: 'gpt-4o-mini',
          messages: [{ role: 'user', content: `Stream me (usage ${includeUsage}).` }],
          max_tokens: 40,
          stream: true,
          ...(includeUsage ? { stream_options: { include_usage: true } } : {}),
        };
        const [orig, b1] = await billedBy(env, () => openaiStream(params));
        assert.equal(orig.status, 200);
        assert.equal(replayedHeader(orig.headers), null);
        assert.match(orig.text, FAKE_ANSWER);
        assert.equal(b1.calls, 1);
        const usageChunks = orig.chunks.filter((c) => c.choices.length === 0);
        assert.equal(usageChunks.length, includeUsage ? 1 : 0, 'usage chunks in the original');

        const [again, b2] = await billedBy(env, () => openaiStream(params));
        assert.equal(again.status, 200);
        assert.equal(replayedHeader(again.headers), 'true', 'the replay lacks x-fusebox-replayed: true');
        assert.equal(again.text, orig.text, 'the replayed stream says something else');
        assert.deepEqual(again.chunks, orig.chunks, 'the replayed chunks differ');
        assert.equal(again.chunks.at(-1 - (includeUsage ? 1 : 0)).choices[0].finish_reason, 'stop');
        assert.equal(b2.requests, 0, 'the replay reached the provider');
        assert.equal(b2.billed, 0n);

        // The replay on the wire: a valid SSE stream ending with [DONE]
        // and the cost comment, 0.
        const raw = await env.post(CHAT, params, { key });
        assert.equal(raw.status, 200);
        assert.match(raw.headers['content-type'], /^text\/event-stream/);
        assert.equal(raw.headers['x-fusebox-replayed'], 'true');
        assert.match(raw.text, /data: \[DONE\]\n\n: x-fusebox-cost-usd 0(\.0*)?\n\n$/);
      });
    }

    it('anthropic messages.stream: same text and message, no extra bill, x-fusebox-replayed', async () => {
      const params = { model: HAIKU, max_tokens: 60, messages: [{ role: 'user', content: 'Stream, Claude, then again.' }] };
      const consume = async () => {
        const stream = anthropic.messages.stream(params);
        let deltas = '';
        stream.on('text', (x) => { deltas += x; });
        const { response } = await stream.withResponse();
        const final = await stream.finalMessage();
        return { deltas, final, headers: response.headers, status: response.status };
      };
      const [orig, b1] = await billedBy(env, consume);
      assert.equal(orig.status, 200);
      assert.equal(replayedHeader(orig.headers), null);
      const origText = orig.final.content.map((c) => c.text).join('');
      assert.match(origText, FAKE_ANSWER);
      assert.equal(orig.deltas, origText);
      assert.equal(b1.calls, 1);

      const [again, b2] = await billedBy(env, consume);
      assert.equal(again.status, 200);
      assert.equal(replayedHeader(again.headers), 'true', 'the replay lacks x-fusebox-replayed: true');
      assert.equal(again.deltas, orig.deltas, 'the replayed stream says something else');
      assert.deepEqual(again.final, orig.final);
      assert.equal(b2.requests, 0, 'the replay reached the provider');
    });
  });

  it('Idempotency-Key: same key and body replays, another body is 422, in flight is 409', async () => {
    const key = await env.createKey({ tenant: 'acme', job: 'idem' });
    const A = chatBody({ content: 'Idempotent A.' });
    const B = chatBody({ content: 'Idempotent B.' });
    const C = chatBody({ content: 'Idempotent C.' });

    const [[r1, r2, r3], b] = await billedBy(env, async () => [
      await env.post(CHAT, A, { key, headers: { 'idempotency-key': 'op-1' } }),
      await env.post(CHAT, A, { key, headers: { 'idempotency-key': 'op-1' } }),
      await env.post(CHAT, B, { key, headers: { 'idempotency-key': 'op-1' } }),
    ]);
    assertPaid(r1, 'first op-1');
    assertReplay(r2, r1, 'op-1 again, same body');
    assert.equal(r3.status, 422, `op-1 with another body: ${r3.status} ${r3.text}`);
    assert.equal(r3.json?.error?.type, 'idempotency_key_reused');
    assert.equal(b.requests, 1, 'only the first op-1 may reach the provider');

    // While the first op-2 is held by the provider, a second op-2 is 409.
    const b0 = await env.billing();
    const slow = env.post(CHAT, C, {
      key, headers: { 'idempotency-key': 'op-2', 'x-fake-fault': `delay_ms=${1500 * SLOW}` },
    });
    await waitFor(async () => (await env.billing()).requests > b0.requests,
      { message: 'the first op-2 to reach the provider' });
    const dup = await env.post(CHAT, C, { key, headers: { 'idempotency-key': 'op-2' } });
    assert.equal(dup.status, 409, `op-2 while in flight: ${dup.status} ${dup.text}`);
    assert.equal(dup.json?.error?.type, 'idempotency_key_in_flight');
    const firstOp2 = await slow;
    assertPaid(firstOp2, 'first op-2');
    const after2 = await env.post(CHAT, C, { key, headers: { 'idempotency-key': 'op-2' } });
    assertReplay(after2, firstOp2, 'op-2 after the first finished');
    const b1 = await env.billingStable();
    assert.equal(b1.requests - b0.requests, 1, 'op-2 reached the provider more than once');
  });

  it('opting out: Cache-Control: no-store and x-fusebox-replay: off forward and pay; the kept result stays', async () => {
    const key = await env.createKey({ tenant: 'acme', job: 'idem' });
    const body = chatBody({ content: 'Opt out of replay.' });
    const [rs, b] = await billedBy(env, async () => [
      await env.post(CHAT, body, { key }),
      await env.post(CHAT, body, { key, headers: { 'cache-control': 'no-store' } }),
      await env.post(CHAT, body, { key, headers: { 'x-fusebox-replay': 'off' } }),
      await env.post(CHAT, body, { key }),
    ]);
    assertPaid(rs[0], 'first');
    assertPaid(rs[1], 'Cache-Control: no-store');
    assertPaid(rs[2], 'x-fusebox-replay: off');
    assert.equal(new Set(rs.slice(0, 3).map(text)).size, 3, 'an opted-out call got a kept answer');
    assertReplay(rs[3], rs[0], 'after the opt-outs');
    assert.equal(b.calls, 3);
    assert.equal(b.billed, costOf(rs[0]) + costOf(rs[1]) + costOf(rs[2]));
  });

  it('single flight: 10 concurrent identical requests make 1 upstream call; all get the same body, 9 are replays', async () => {
    const key = await env.createKey({ tenant: 'acme', job: 'sf' });
    const body = chatBody({ content: 'Ten at once.' });
    // x-fake-fault is not part of the fingerprint: all ten carry it, the
    // one that reaches the provider is held there for 300 ms.
    const [rs, b] = await billedBy(env, () => Promise.all(Array.from({ length: 10 }, () =>
      env.post(CHAT, body, { key, headers: { 'x-fake-fault': `delay_ms=${300 * SLOW}` } }))));
    for (const r of rs) assert.equal(r.status, 200, `${r.status}: ${r.text}`);
    assert.equal(b.requests, 1, `${b.requests} upstream calls`);
    assert.equal(b.calls, 1);
    assert.equal(new Set(rs.map((r) => r.text)).size, 1, 'not every caller got the same body');
    const replays = rs.filter((r) => replayedHeader(r.headers) === 'true');
    const paid = rs.filter((r) => replayedHeader(r.headers) === null);
    assert.equal(replays.length, 9);
    assert.equal(paid.length, 1);
    assert.equal(costOf(paid[0]), b.billed);
    for (const r of replays) assert.equal(costOf(r), 0n);
    const row = await spendRowWhen(env, 'job:sf', (x) => x.replayed_calls >= 9);
    assert.equal(row.paid_calls, 1);
    assert.equal(row.replayed_calls, 9);
    assert.equal(BigInt(row.spent_pico), b.billed);
  });

  it('deterministic errors are kept: a provider 400 is replayed without an upstream call; a 503 is not kept', async () => {
    const key = await env.createKey({ tenant: 'acme', job: 'det' });
    const body = chatBody({ content: 'This one is a bad request.' });
    const [first, b1] = await billedBy(env, () =>
      env.post(CHAT, body, { key, headers: { 'x-fake-fault': 'status=400' } }));
    assert.equal(first.status, 400, first.text);
    assert.equal(first.json?.error?.type, 'invalid_request_error');
    assert.equal(replayedHeader(first.headers), null);
    assert.equal(costOf(first), 0n);
    assert.equal(b1.requests, 1);
    const [again, b2] = await billedBy(env, () => env.post(CHAT, body, { key }));
    assertReplay(again, first, 'the identical request after a 400');
    assert.equal(b2.requests, 0, 'the kept 400 went upstream again');

    // A transient error is not a result: the next identical call is paid.
    const body2 = chatBody({ content: 'This one meets an overloaded provider.' });
    const [[e503, ok], b3] = await billedBy(env, async () => [
      await env.post(CHAT, body2, { key, headers: { 'x-fake-fault': 'status=503' } }),
      await env.post(CHAT, body2, { key }),
    ]);
    assert.equal(e503.status, 503);
    assertPaid(ok, 'after a 503');
    assert.equal(b3.requests, 2);
    assert.equal(b3.calls, 1);
  });

  it('a provider 401 or 403 is not kept: it judges the gateway\'s provider key, not the request', async () => {
    const key = await env.createKey({ tenant: 'acme', job: 'det' });
    for (const code of [401, 403]) {
      const body = chatBody({ content: `Refused by the provider with ${code}.` });
      const [first, b1] = await billedBy(env, () =>
        env.post(CHAT, body, { key, headers: { 'x-fake-fault': `status=${code}` } }));
      assert.equal(first.status, code, first.text);
      assert.equal(b1.requests, 1);
      // Once the key is fixed, the identical request goes upstream and is paid.
      const [again, b2] = await billedBy(env, () => env.post(CHAT, body, { key }));
      assertPaid(again, `after a ${code}`);
      assert.equal(b2.requests, 1, `the ${code} was replayed instead of asking again`);
    }
  });

  it('results never cross jobs, tenants or job-less keys: the same request elsewhere is paid', async () => {
    const keys = {
      x1: await env.createKey({ tenant: 'acme', job: 'x1' }),
      x2: await env.createKey({ tenant: 'acme', job: 'x2' }),
      x3: await env.createKey({ tenant: 'beta', job: 'x3' }),
      none1: await env.createKey({ tenant: 'acme' }),
      none2: await env.createKey({ tenant: 'acme' }),
    };
    const body = chatBody({ content: 'Same request, different owners.' });
    const [firsts, b] = await billedBy(env, async () => {
      const out = {};
      for (const [name, key] of Object.entries(keys)) out[name] = await env.post(CHAT, body, { key });
      return out;
    });
    for (const [name, r] of Object.entries(firsts)) assertPaid(r, name);
    assert.equal(new Set(Object.values(firsts).map(text)).size, 5, 'a result crossed scopes');
    assert.equal(b.calls, 5);
    // Each still replays its own.
    const [agains, b2] = await billedBy(env, async () => {
      const out = {};
      for (const [name, key] of Object.entries(keys)) out[name] = await env.post(CHAT, body, { key });
      return out;
    });
    for (const name of Object.keys(keys)) assertReplay(agains[name], firsts[name], `${name} again`);
    assert.equal(b2.requests, 0);
  });

  it('replays still need a valid key: a revoked key gets 401, not the kept result', async () => {
    const { key, id } = await env.createKeyFull({ tenant: 'acme', job: 'x1' });
    const body = chatBody({ content: 'Kept, then the key is revoked.' });
    const first = await env.post(CHAT, body, { key });
    assertPaid(first, 'first');
    assertReplay(await env.post(CHAT, body, { key }), first, 'before the revocation');
    await env.revokeKey(id);
    const r = await waitFor(async () => {
      const x = await env.post(CHAT, body, { key });
      return x.status === 401 ? x : null;
    }, { timeoutMs: 3000, message: 'the revoked key to be refused' });
    assert.equal(r.json.error.type, 'invalid_api_key');
    assert.equal(replayedHeader(r.headers), null);
  });

  it('a client that leaves mid-stream: the call is read to the end and kept; the rerun replays the whole stream at cost 0', async () => {
    const key = await env.createKey({ tenant: 'acme', job: 'st' });
    const openai = new OpenAI({ baseURL: `${env.gwUrl}/openai/v1`, apiKey: key, maxRetries: 0 });
    const params = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'I leave early.' }], max_tokens: 40, stream: true };
    const paid0 = (await env.scope('job:st')).paid_calls;
    const b0 = await env.billing();
    const s1 = await openai.chat.completions.create(params, { headers: { 'x-fake-fault': 'chunk_delay_ms=10' } });
    let n = 0;
    for await (const _c of s1) if (++n === 2) break;
    const b1 = await env.billingStable();
    assert.equal(b1.calls - b0.calls, 1);
    // The stream is settled (and kept) once the gateway has read it all.
    await spendRowWhen(env, 'job:st', (x) => x.paid_calls >= paid0 + 1);
    const { data: s2, response } = await openai.chat.completions.create(params).withResponse();
    const chunks = [];
    for await (const c of s2) chunks.push(c);
    assert.equal(response.headers.get('x-fusebox-replayed'), 'true', 'the rerun was not a replay');
    const t2 = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
    assert.match(t2, FAKE_ANSWER);
    assert.equal(t2.split(' ').length, 16);
    assert.equal(chunks.at(-1).choices[0].finish_reason, 'stop');
    const b2 = await env.billingStable();
    assert.equal(b2.requests, b1.requests, 'the rerun reached the provider');
  });

  it('attempt keys across a restart: the occurrence count resumes from the ledger', async () => {
    const a1 = await env.createKey({ tenant: 'acme', job: 'k1', attempt: 11 });
    const a2 = await env.createKey({ tenant: 'acme', job: 'k1', attempt: 12 });
    const body = chatBody({ content: 'Count me across a restart.' });
    const bought = [];
    for (let i = 0; i < 3; i++) bought.push(await env.post(CHAT, body, { key: a1 }));
    bought.forEach((r, i) => assertPaid(r, `attempt 11 call ${i + 1}`));
    assertReplay(await env.post(CHAT, body, { key: a2 }), bought[0], 'attempt 12 call 1');
    await env.restart(); // SIGTERM: drained, then the same data_dir
    const [rs, b] = await billedBy(env, async () => [
      await env.post(CHAT, body, { key: a2 }),
      await env.post(CHAT, body, { key: a2 }),
      await env.post(CHAT, body, { key: a2 }),
    ]);
    assertReplay(rs[0], bought[1], 'attempt 12 call 2 (after the restart)');
    assertReplay(rs[1], bought[2], 'attempt 12 call 3 (after the restart)');
    assertPaid(rs[2], 'attempt 12 call 4 (after the restart)');
    assert.equal(b.calls, 1);
  });

  it('attempt keys: a call retried after a transient error is still the same occurrence; the rerun replays it', async () => {
    // Attempt 1 makes ONE logical call; the provider answers 503 and the
    // client retries it, which succeeds. Attempt 2 (the rerun) makes the
    // same single call: attempt 1 bought that result, so it is a replay.
    const a1 = await env.createKey({ tenant: 'acme', job: 'k1', attempt: 21 });
    const a2 = await env.createKey({ tenant: 'acme', job: 'k1', attempt: 22 });
    const body = chatBody({ content: 'One call, one retry.' });
    const failed = await env.post(CHAT, body, { key: a1, headers: { 'x-fake-fault': 'status=503' } });
    assert.equal(failed.status, 503);
    const retried = await env.post(CHAT, body, { key: a1, headers: { 'x-stainless-retry-count': '1' } });
    assertPaid(retried, 'the retry in attempt 21');
    const [rerun, b] = await billedBy(env, () => env.post(CHAT, body, { key: a2 }));
    assert.equal(b.requests, 0, 'the rerun paid again for the result attempt 21 bought');
    assertReplay(rerun, retried, 'attempt 22 call 1');
  });

  it('attempt keys: the occurrence a failed call gave back is still given back after a restart', async () => {
    // Attempt 31 makes the same call twice; the first try of the first
    // call meets a 503 and is retried. Attempt 31 bought 2 results, so the
    // rerun (attempt 32, the same 2 calls) replays both, restart or not.
    const a1 = await env.createKey({ tenant: 'acme', job: 'k1', attempt: 31 });
    const a2 = await env.createKey({ tenant: 'acme', job: 'k1', attempt: 32 });
    const body = chatBody({ content: 'Twice, with a retry, across a restart.' });
    const failed = await env.post(CHAT, body, { key: a1, headers: { 'x-fake-fault': 'status=503' } });
    assert.equal(failed.status, 503);
    const one = await env.post(CHAT, body, { key: a1, headers: { 'x-stainless-retry-count': '1' } });
    assertPaid(one, 'attempt 31 call 1 (its retry)');
    await env.restart(); // SIGTERM, drained; the same data_dir
    const two = await env.post(CHAT, body, { key: a1 });
    assertPaid(two, 'attempt 31 call 2 (after the restart)');
    const [rerun, b] = await billedBy(env, async () => [
      await env.post(CHAT, body, { key: a2 }),
      await env.post(CHAT, body, { key: a2 }),
    ]);
    assertReplay(rerun[0], one, 'attempt 32 call 1');
    assertReplay(rerun[1], two, 'attempt 32 call 2');
    assert.equal(b.requests, 0, 'the rerun paid again for a result attempt 31 bought');
  });

  it('Idempotency-Key: a key first answered by a replay stays bound to its request', async () => {
    // IETF draft: the same key and request replays; the same key with
    // another request is 422. A key whose first use was served from a kept
    // result (found by fingerprint) must be bound to that request too.
    const key = await env.createKey({ tenant: 'acme', job: 'idem' });
    const X = chatBody({ content: 'Bound by replay X.' });
    const Y = chatBody({ content: 'Bound by replay Y.' });
    const x0 = await env.post(CHAT, X, { key });
    assertPaid(x0, 'X without a key');
    const x1 = await env.post(CHAT, X, { key, headers: { 'idempotency-key': 'op-bound' } });
    assertReplay(x1, x0, 'X with op-bound');
    const [[y1, x2], b] = await billedBy(env, async () => [
      await env.post(CHAT, Y, { key, headers: { 'idempotency-key': 'op-bound' } }),
      await env.post(CHAT, X, { key, headers: { 'idempotency-key': 'op-bound' } }),
    ]);
    // The client's retry of its op-bound request (same key, same body)
    // must replay, whatever happened in between.
    assertReplay(x2, x0, 'X with op-bound again');
    assert.equal(y1.status, 422, `Y with op-bound (used for X): ${y1.status} ${y1.text}`);
    assert.equal(b.requests, 0);
  });

  it('fusebox replay purge --job J: the next identical request is paid again', async () => {
    const key = await env.createKey({ tenant: 'acme', job: 'pg' });
    const body = chatBody({ content: 'Purge me.' });
    const first = await env.post(CHAT, body, { key });
    assertPaid(first, 'first');
    assertReplay(await env.post(CHAT, body, { key }), first, 'before the purge');
    const p = await cliRun(env, ['replay', 'purge', '--job', 'pg']);
    assert.equal(p.code, 0, p.stderr);
    assert.match(p.stdout, /purged 1 kept results/);
    const [after1, b] = await billedBy(env, () => env.post(CHAT, body, { key }));
    assertPaid(after1, 'after the purge');
    assert.notEqual(text(after1), text(first));
    assert.equal(b.calls, 1);
    assertReplay(await env.post(CHAT, body, { key }), after1, 'the new result is kept');
  });

  it('fusebox replay purge --job pg leaves job pg2 (whose name starts with pg) alone', async () => {
    const kpg = await env.createKey({ tenant: 'acme', job: 'pg' });
    const kpg2 = await env.createKey({ tenant: 'acme', job: 'pg2' });
    const body = chatBody({ content: 'Only mine may be purged.' });
    const mine = await env.post(CHAT, body, { key: kpg });
    const theirs = await env.post(CHAT, body, { key: kpg2 });
    assertPaid(mine, 'pg');
    assertPaid(theirs, 'pg2');
    const p = await cliRun(env, ['replay', 'purge', '--job', 'pg']);
    assert.equal(p.code, 0, p.stderr);
    const [again, b] = await billedBy(env, () => env.post(CHAT, body, { key: kpg2 }));
    assertReplay(again, theirs, 'job pg2 after purging job pg');
    assert.equal(b.requests, 0, 'purging job pg made job pg2 pay again');
    assert.match(p.stdout, /purged 2 kept results/, 'purge --job pg should count only pg\'s (the earlier test\'s and this one)');
  });
});

describe('retry budget and the trip switch', () => {
  let env, key, openai;
  const A = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Kept before the outage.' }], max_tokens: 16 };
  const B = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Meets the outage.' }], max_tokens: 16 };

  before(async () => {
    env = await startEnv({ budgets: { tenants: { acme: { jobs: { rb: null } } } } });
    key = await env.createKey({ tenant: 'acme', job: 'rb' });
    openai = new OpenAI({ baseURL: `${env.gwUrl}/openai/v1`, apiKey: key }); // default maxRetries (2)
  });
  afterEach(() => env?.checkNow());
  after(async () => {
    if (env) await env.close();
  });

  let keptA;
  it('an upstream that answers 503 forever is called 3 times for the fingerprint; the job trips; the SDK stops', async () => {
    keptA = await env.post(CHAT, A, { key });
    assertPaid(keptA, 'A before the outage');
    const b0 = await env.billing();
    await fakeFaultQueue(env, 'status=503', 1000);

    // The SDK's call and its two retries: 3 upstream attempts, all 503.
    const e1 = await openai.chat.completions.create(B).then(() => null, (e) => e);
    assert.ok(e1 instanceof OpenAI.APIError, `not an API error: ${e1}`);
    assert.equal(e1.status, 503);
    let b = await env.billingStable();
    assert.equal(b.requests - b0.requests, 3, 'the SDK and fusebox made other than 3 upstream attempts');

    // Calling again: the retry budget of the fingerprint is spent.
    const e2 = await openai.chat.completions.create(B).then(() => null, (e) => e);
    assert.ok(e2 instanceof OpenAI.APIError, `not an API error: ${e2}`);
    assert.equal(e2.status, 429);
    assert.equal(e2.error?.type, 'retry_budget_exhausted', JSON.stringify(e2.error));
    assert.equal(e2.headers.get('x-should-retry'), 'false');
    const raw = await env.post(CHAT, B, { key });
    assert.equal(raw.status, 429);
    assert.equal(raw.json.error.type, 'retry_budget_exhausted');
    assert.equal(raw.headers['x-should-retry'], 'false');
    assert.equal(costOf(raw), 0n);
    // The job is tripped: new paid calls are refused, replays still served.
    const other = await env.post(CHAT, chatBody({ content: 'Something new.' }), { key });
    assert.equal(other.status, 429, other.text);
    assert.equal(other.json.error.type, 'retry_budget_exhausted');
    assertReplay(await env.post(CHAT, A, { key }), keptA, 'A while the retry budget is spent');
    b = await env.billingStable();
    assert.equal(b.requests - b0.requests, 3, 'the provider was called after the job tripped');

    const row = await spendRowWhen(env, 'job:rb', (x) => x.blocked_calls >= 3 && x.replayed_calls >= 1);
    assert.equal(row.blocked_calls, 3, 'the SDK call, the raw retry and the new call are blocked');
    assert.equal(row.paid_calls, 1);
    assert.equal(BigInt(row.spent_pico), costOf(keptA));
  });

  it('replay.max_upstream_attempts: 2 in the config: 2 upstream attempts, then 429; the SDK (maxRetries 5) stops', async (t) => {
    const env2 = await startEnv({ t, budgets: { tenants: { acme: { jobs: { rb2: null } } } } });
    writeFileSync(env2.configPath, `${env2.yaml}replay:\n  max_upstream_attempts: 2\n`);
    await env2.restart();
    const key2 = await env2.createKey({ tenant: 'acme', job: 'rb2' });
    const sdk = new OpenAI({ baseURL: `${env2.gwUrl}/openai/v1`, apiKey: key2, maxRetries: 5 });
    const [err, b] = await billedBy(env2, () => sdk.chat.completions.create(B,
      { headers: { 'x-fake-fault': 'status=503' } }).then(() => null, (e) => e));
    assert.ok(err instanceof OpenAI.APIError, `not an API error: ${err}`);
    assert.equal(err.status, 429, `the SDK ended with ${err.status}`);
    assert.equal(err.error?.type, 'retry_budget_exhausted');
    assert.equal(b.requests, 2, `${b.requests} upstream attempts with max_upstream_attempts 2`);
    const row = await spendRowWhen(env2, 'job:rb2', (x) => x.blocked_calls >= 1);
    assert.equal(row.blocked_calls, 1, 'the SDK kept retrying after the 429');
  });

  it('fusebox reset --job clears the retry trip: a new distinct call goes through', async () => {
    await fakeFaultsClear(env);
    const b0 = await env.billing();
    const r = await cliRun(env, ['reset', '--job', 'rb']);
    assert.equal(r.code, 0, r.stderr);
    const fresh = chatBody({ content: 'After the reset.' });
    const ok = await waitFor(async () => {
      const x = await env.post(CHAT, fresh, { key });
      return x.status === 200 ? x : null;
    }, { timeoutMs: 2000, message: 'a new call to pass after fusebox reset' });
    assertPaid(ok, 'after the reset');
    const b = await env.billingStable();
    assert.equal(b.requests - b0.requests, 1);
  });

  it('fusebox trip --job blocks even replays (429 fuse_tripped) within ~2 s; fusebox reset restores them', async () => {
    const b0 = await env.billing();
    const t = await cliRun(env, ['trip', '--job', 'rb']);
    assert.equal(t.code, 0, t.stderr);
    const blocked = await waitFor(async () => {
      const x = await env.post(CHAT, A, { key });
      return x.status === 429 ? x : null;
    }, { timeoutMs: 2000, message: 'the trip to block a replay' });
    assert.equal(blocked.json.error.type, 'fuse_tripped');
    assert.equal(blocked.headers['x-should-retry'], 'false');
    const paid = await env.post(CHAT, chatBody({ content: 'While tripped by hand.' }), { key });
    assert.equal(paid.status, 429);
    assert.equal(paid.json.error.type, 'fuse_tripped');
    const sdkErr = await openai.chat.completions.create(A).then(() => null, (e) => e);
    assert.equal(sdkErr?.status, 429);

    const r = await cliRun(env, ['reset', '--job', 'rb']);
    assert.equal(r.code, 0, r.stderr);
    const back = await waitFor(async () => {
      const x = await env.post(CHAT, A, { key });
      return x.status === 200 ? x : null;
    }, { timeoutMs: 2000, message: 'replays to come back after fusebox reset' });
    assertReplay(back, keptA, 'A after the reset');
    const b = await env.billingStable();
    assert.equal(b.requests - b0.requests, 0, 'the trip let a call through to the provider');
  });
});

describe('kill -9 around a paid answer', () => {
  it('the provider answered and the client got the bytes: after restart the identical request replays; charged once', async (t) => {
    const env = await startEnv({ t, budgets: { tenants: { acme: { jobs: { cr: null } } } } });
    const key = await env.createKey({ tenant: 'acme', job: 'cr' });
    const body = chatBody({ content: 'Answered, then the gateway dies.' });
    const stream = chatBody({ content: 'Streamed, then the gateway dies.', extra: { stream: true } });

    const first = await env.post(CHAT, body, { key });
    assertPaid(first, 'first');
    await env.kill9();
    await env.restart();
    const again = await env.post(CHAT, body, { key });
    assertReplay(again, first, 'after kill -9 and restart');
    const b1 = await env.billingStable();
    assert.equal(b1.calls, 1, 'the provider billed the replayed call');
    assert.equal(BigInt(b1.billed_pico), costOf(first));
    const row1 = await spendRowWhen(env, 'job:cr', (x) => x.replayed_calls >= 1);
    assert.equal(BigInt(row1.spent_pico), BigInt(b1.billed_pico), 'charged other than once');
    assert.equal(row1.paid_calls, 1);
    assert.equal(row1.replayed_calls, 1);

    const s1 = await env.post(CHAT, stream, { key });
    assert.equal(s1.status, 200);
    assert.match(s1.text, /data: \[DONE\]\n\n/);
    await env.kill9();
    await env.restart();
    const s2 = await env.post(CHAT, stream, { key });
    assert.equal(s2.status, 200);
    assert.equal(s2.headers['x-fusebox-replayed'], 'true');
    const events = (x) => x.replace(/^: x-fusebox-cost-usd .*\n\n/m, '');
    assert.equal(events(s2.text), events(s1.text), 'the replayed stream differs');
    const streamCost = pico(/^: x-fusebox-cost-usd (\S+)$/m.exec(s1.text)[1]);

    const b = await env.billingStable();
    assert.equal(b.calls, 2, 'the provider billed a replayed call');
    assert.equal(BigInt(b.billed_pico), costOf(first) + streamCost);
    const row = await spendRowWhen(env, 'job:cr', (x) => x.replayed_calls >= 2);
    assert.equal(BigInt(row.spent_pico), BigInt(b.billed_pico), 'charged other than once');
    assert.equal(row.paid_calls, 2);
    assert.equal(row.replayed_calls, 2);
    assert.doesNotMatch(env.gatewayStderr(), /charged in full/, 'a delivered call was left unsettled');
  });

  it('kill -9 while the provider holds the call: after restart the request is replayed or paid once more; spend >= billed, never double', {
    // on a shared store a killed node's calls are charged when another
    // node reaps it, not at the restart: cluster.test.mjs shows that
    skip: STORE_PG && 'SQLite only: charged at the restart',
  }, async (t) => {
    const env = await startEnv({ t, budgets: { tenants: { acme: { jobs: { cr: null } } } } });
    const key = await env.createKey({ tenant: 'acme', job: 'cr' });
    const body = chatBody({ content: 'In flight when the gateway dies.' });
    const b0 = await env.billing();
    const inflight = env.post(CHAT, body, { key, headers: { 'x-fake-fault': `delay_ms=${1000 * SLOW}` } })
      .then((r) => r.status, (e) => `transport error: ${e.code || e.message}`);
    await waitFor(async () => (await env.billing()).requests > b0.requests,
      { message: 'the call to reach the provider' });
    await env.kill9();
    const lost = await inflight;
    assert.match(String(lost), /transport error/, `the client got ${lost} from a killed gateway`);
    await env.billingStable();
    await env.restart();
    assert.match(env.gatewayStderr(), /1 calls were in flight at the last stop; charged in full/);

    const r = await env.post(CHAT, body, { key });
    assert.equal(r.status, 200, r.text);
    const b = await env.billingStable();
    const replayed = replayedHeader(r.headers) === 'true';
    const row = await spendRowWhen(env, 'job:cr', (x) => x.replayed_calls + x.paid_calls >= 2);
    t.diagnostic(`after restart: ${replayed ? 'replayed' : 'paid again'}; provider billed ${b.calls} ` +
      `calls, ${b.billed_usd} USD; job spent ${row.spent_usd} USD over ${row.paid_calls} paid calls`);
    assert.ok(BigInt(row.spent_pico) >= BigInt(b.billed_pico), `spent ${row.spent_usd} < billed ${b.billed_usd}`);
    assert.equal(row.paid_calls, b.calls, 'the ledger counts other calls than the provider billed');
    if (replayed) {
      assert.equal(costOf(r), 0n);
      assert.equal(b.calls, 1);
      assert.equal(row.replayed_calls, 1);
    } else {
      assertPaid(r, 'after restart');
      assert.equal(b.calls, 2);
      assert.equal(row.replayed_calls, 0);
    }
    // The call cut off by the kill is charged once, its reservation (its
    // worst case, >= its bill); a new call once more, its real cost.
    assert.equal(BigInt(row.spent_pico), worstChat(body, 16) + (replayed ? 0n : costOf(r)),
      'the call cut off by the kill is not charged exactly once');
    assert.equal(pico(row.in_flight_usd), 0n);
  });
});
