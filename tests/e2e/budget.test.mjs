// budget.test.mjs - the fuse itself: a refused call is a final 402 that the
// SDKs do not retry, concurrent calls can never spend past a ceiling, and a
// key's own (period) budget is enforced, across a restart too.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import {
  startEnv, pico, usd, worstChat, fakeChatCost, chatBody,
} from './harness.mjs';

// Replay answers an identical request in the same scope from the kept
// result, at no cost and without the fuse. Every test here needs each call
// to be a new paid call, so each call gets its own prompt: a fixed-width
// counter, so that every body has the same byte length and therefore the
// same worst case (and, at the fake, the same cost).
const sameLength = (make, n) => {
  const bodies = Array.from({ length: n }, (_, i) => make(i));
  for (const b of bodies) {
    assert.equal(Buffer.byteLength(b), Buffer.byteLength(bodies[0]), 'bodies differ in length');
  }
  return bodies;
};

// One SDK call's body, as the SDK serialises it (JSON.stringify).
const sdkParams = (n) => ({
  model: 'gpt-4o-mini',
  messages: [{ role: 'user', content: `paid call #${n}` }],
  max_tokens: 100,
});
sameLength((i) => JSON.stringify(sdkParams(i)), 10);
const SDK_WORST = worstChat(JSON.stringify(sdkParams(0)), sdkParams(0).max_tokens);

// The concurrency test's bodies: 1000 completion tokens asked and produced,
// so the real cost is close to the worst case.
const CONC_N = 200;
const CONC_BODIES = sameLength((i) =>
  chatBody({ content: `concurrent ${String(i).padStart(3, '0')}`, maxTokens: 1000 }), CONC_N);
const CONC_WORST = worstChat(CONC_BODIES[0], 1000);
const CONC_COST = fakeChatCost(CONC_BODIES[0], 1000);
const CONC_FIT = 50n;
const CONC_BUDGET = CONC_WORST * CONC_FIT;

// The key-budget test's bodies.
const KEY_BODIES = sameLength((i) => chatBody({ content: `key budget ${i}`, maxTokens: 50 }), 10);
const KEY_WORST = worstChat(KEY_BODIES[0], 50);

describe('budgets', () => {
  let env;

  before(async () => {
    env = await startEnv({
      budgets: {
        global: '1000',
        tenants: {
          acme: {
            budget: '500',
            jobs: {
              tiny: usd(SDK_WORST),
              broke: '0',
              conc: usd(CONC_BUDGET),
              keyed: null,
            },
          },
        },
      },
    });
  });

  afterEach(() => env?.checkNow());
  after(async () => {
    if (env) await env.close();
  });

  it('a 402 is final: the OpenAI SDK does not retry it, and its body says why', async () => {
    const key = await env.createKey({ tenant: 'acme', job: 'tiny' });
    const client = new OpenAI({ baseURL: `${env.gwUrl}/openai/v1`, apiKey: key }); // maxRetries 2
    const b0 = await env.billing();

    const { data, response } = await client.chat.completions.create(sdkParams(1)).withResponse();
    assert.match(data.choices[0].message.content, /^fake answer/);
    const cost1 = pico(response.headers.get('x-fusebox-cost-usd'));
    assert.ok(cost1 > 0n && cost1 < SDK_WORST);

    let err;
    try {
      // Another prompt of the same size: the same call again would be
      // replayed (free), not refused.
      await client.chat.completions.create(sdkParams(2));
    } catch (e) {
      err = e;
    }
    assert.ok(err, 'the second call was not refused');
    assert.ok(err instanceof OpenAI.APIError, `not an APIError: ${err}`);
    assert.equal(err.status, 402);
    assert.equal(err.type, 'budget_exceeded');
    assert.equal(err.code, 'budget_exceeded');
    assert.equal(err.headers.get('x-should-retry'), 'false');
    assert.equal(pico(err.headers.get('x-fusebox-cost-usd')), 0n);
    const e = err.error;
    assert.equal(e.scope, 'job:tiny');
    assert.equal(e.tenant, 'acme');
    assert.equal(e.period, 'total');
    assert.equal(pico(e.limit_usd), SDK_WORST);
    assert.equal(pico(e.spent_usd), cost1);
    assert.equal(pico(e.reserved_usd), 0n);
    assert.equal(pico(e.request_max_usd), SDK_WORST, 'worst case is not bytes*input + max_tokens*output');
    assert.match(e.message, /budget of job:tiny exceeded/);

    const b1 = await env.billing();
    assert.equal(b1.requests - b0.requests, 1, 'the provider saw more than the one paid call');
    assert.equal(BigInt(b1.billed_pico) - BigInt(b0.billed_pico), cost1);
    const job = (await env.settled()).scopes.find((s) => s.scope === 'job:tiny');
    assert.equal(job.blocked_calls, 1, 'the SDK sent the refused call more than once');
    assert.equal(job.paid_calls, 1);
    assert.equal(BigInt(job.spent_pico), cost1);
  });

  it('a 402 is final for the Anthropic SDK too', async () => {
    const key = await env.createKey({ tenant: 'acme', job: 'broke' });
    const client = new Anthropic({ baseURL: `${env.gwUrl}/anthropic`, apiKey: key });
    const b0 = await env.billing();
    let err;
    try {
      await client.messages.create({
        model: 'claude-haiku-4-5', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }],
      });
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof Anthropic.APIError, `not an APIError: ${err}`);
    assert.equal(err.status, 402);
    assert.equal(err.headers.get('x-should-retry'), 'false');
    assert.equal(err.error?.error?.type, 'budget_exceeded');
    assert.equal(err.error?.error?.scope, 'job:broke');
    assert.equal(pico(err.error.error.limit_usd), 0n);
    const b1 = await env.billing();
    assert.equal(b1.requests, b0.requests);
    const job = (await env.spend()).scopes.find((s) => s.scope === 'job:broke');
    assert.equal(job.blocked_calls, 1);
    assert.equal(BigInt(job.spent_pico), 0n);
  });

  it('200 concurrent calls never spend past the job ceiling', async (t) => {
    const key = await env.createKey({ tenant: 'acme', job: 'conc' });
    const b0 = await env.billing();
    const N = CONC_N;
    const results = await Promise.all(CONC_BODIES.map((body) =>
      env.post('/openai/v1/chat/completions', body, {
        key,
        headers: { 'x-fake-fault': 'delay_ms=50', 'x-fake-completion-tokens': '1000' },
      }).then((r) => r, (e) => ({ status: `transport error: ${e.message}` }))));
    const counts = {};
    for (const r of results) counts[r.status] = (counts[r.status] || 0) + 1;
    const ok = counts[200] || 0;
    const refused = counts[402] || 0;
    assert.equal(ok + refused, N, `statuses other than 200/402: ${JSON.stringify(counts)}`);
    for (const r of results) {
      if (r.status === 200) assert.equal(pico(r.headers['x-fusebox-cost-usd']), CONC_COST);
      if (r.status === 402) assert.equal(r.json?.error?.type, 'budget_exceeded');
    }

    // Every paid call costs CONC_COST, so at most budget / cost fit ...
    const maxOk = CONC_BUDGET / CONC_COST;
    const bNow = await env.billing();
    t.diagnostic(`200 concurrent: ${ok} paid, ${refused} refused (402); provider billed ` +
      `${bNow.billed_usd} USD against a ${usd(CONC_BUDGET)} USD ceiling ` +
      `(${CONC_FIT} worst cases fit)`);
    assert.ok(BigInt(ok) <= maxOk, `${ok} calls succeeded, at most ${maxOk} fit`);
    assert.ok(refused >= 1, 'no call was refused');
    // ... and a refusal means at least budget / worst were admitted.
    assert.ok(BigInt(ok) >= CONC_FIT, `only ${ok} succeeded; ${CONC_FIT} worst cases fit`);

    const b1 = await env.billingStable();
    const billed = BigInt(b1.billed_pico) - BigInt(b0.billed_pico);
    assert.equal(b1.requests - b0.requests, ok, 'refused calls reached the provider');
    assert.equal(billed, BigInt(ok) * CONC_COST);
    assert.ok(billed <= CONC_BUDGET, `billed ${usd(billed)} > budget ${usd(CONC_BUDGET)}`);
    const job = (await env.settled()).scopes.find((s) => s.scope === 'job:conc');
    assert.ok(BigInt(job.spent_pico) >= billed, 'the ledger recorded less than the provider billed');
    assert.equal(BigInt(job.spent_pico), billed);
    assert.ok(BigInt(job.spent_pico) <= CONC_BUDGET);
    assert.equal(job.paid_calls, ok);
    assert.equal(job.blocked_calls, refused);
  });

  it("a key's own --budget (per day) is enforced, also after a restart", async () => {
    const { key, id } = await env.createKeyFull({ tenant: 'acme', job: 'keyed', budget: `${usd(KEY_WORST)}/day` });
    const other = await env.createKey({ tenant: 'acme', job: 'keyed' });
    const list = await env.keyList();
    const rec = list.find((k) => k.id === id);
    assert.ok(rec, 'key list does not show the new key');
    assert.equal(pico(rec.budget.replace('/day', '')), KEY_WORST);
    assert.match(rec.budget, /\/day$/);

    let n = 0;
    const send = (k) => env.post('/openai/v1/chat/completions', KEY_BODIES[n++], { key: k });
    const r1 = await send(key);
    assert.equal(r1.status, 200, r1.text);
    const cost1 = pico(r1.headers['x-fusebox-cost-usd']);
    const b0 = await env.billing();

    const check402 = (r) => {
      assert.equal(r.status, 402, r.text);
      assert.equal(r.headers['x-should-retry'], 'false');
      const e = r.json.error;
      assert.equal(e.type, 'budget_exceeded');
      assert.equal(e.scope, `key:${id}`);
      assert.equal(e.period, 'day');
      assert.equal(pico(e.limit_usd), KEY_WORST);
      assert.equal(pico(e.spent_usd), cost1);
      assert.equal(pico(e.request_max_usd), KEY_WORST);
    };
    check402(await send(key));

    // The job has no ceiling: another key on it still gets through.
    const r3 = await send(other);
    assert.equal(r3.status, 200, r3.text);

    // The key's spend in this period is read back from the ledger.
    await env.settled();
    await env.restart();
    check402(await send(key));
    const r5 = await send(other);
    assert.equal(r5.status, 200, r5.text);
    const b1 = await env.billing();
    assert.equal(b1.requests - b0.requests, 2, 'a refused call reached the provider');
  });
});
