// sdk.test.mjs - the official OpenAI and Anthropic SDKs talk to the fake
// paid provider through fusebox: answers arrive intact, the settled cost
// equals what the provider billed to the picodollar, the real provider key
// is injected and the fusebox key never leaves the gateway.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { startEnv, pico, usd, waitFor, GPT4O_MINI } from './harness.mjs';

const EMBED_MODEL = 'text-embedding-3-small';
const EMBED_PRICE = 20000n; // 2e-08 USD per token
const HAIKU = { model: 'claude-haiku-4-5', input: 1000000n, output: 5000000n };

const FAKE_ANSWER = /^fake answer #\d+( w\d+)*$/;

describe('official SDKs through fusebox', () => {
  let env, key, openai, anthropic;

  before(async () => {
    env = await startEnv({
      budgets: { global: '100', tenants: { acme: { budget: '50', jobs: { sdk: '10' } } } },
      pricesJson: {
        [EMBED_MODEL]: { input_cost_per_token: 2e-8, output_cost_per_token: 0, max_input_tokens: 8191 },
      },
    });
    key = await env.createKey({ tenant: 'acme', job: 'sdk' });
    openai = new OpenAI({ baseURL: `${env.gwUrl}/openai/v1`, apiKey: key, maxRetries: 2 });
    anthropic = new Anthropic({ baseURL: `${env.gwUrl}/anthropic`, apiKey: key, maxRetries: 2 });
  });

  afterEach(() => env?.checkNow());
  after(async () => {
    if (env) await env.close();
  });

  /** Run fn and return [result, billedDelta, ledgerDelta] in picodollars;
   *  the ledger delta is read once nothing is in flight. */
  async function measured(fn) {
    const b0 = BigInt((await env.billing()).billed_pico);
    const s0 = BigInt((await env.settled()).scopes.find((s) => s.scope === 'job:sdk').spent_pico);
    const out = await fn();
    const b1 = BigInt((await env.billing()).billed_pico);
    const s1 = BigInt((await env.settled()).scopes.find((s) => s.scope === 'job:sdk').spent_pico);
    return [out, b1 - b0, s1 - s0];
  }

  it('chat completion (non-stream): content, usage, cost header = provider bill', async () => {
    const [{ data, response }, billed, ledger] = await measured(() =>
      openai.chat.completions.create({
        model: 'gpt-4o-mini',
        messages: [{ role: 'user', content: 'Say something.' }],
        max_tokens: 64,
      }).withResponse());
    assert.equal(response.status, 200);
    assert.equal(data.object, 'chat.completion');
    const text = data.choices[0].message.content;
    assert.match(text, FAKE_ANSWER);
    assert.equal(text.split(' ').length, data.usage.completion_tokens);
    assert.equal(data.usage.completion_tokens, 16);
    assert.ok(data.usage.prompt_tokens > 0);
    const header = response.headers.get('x-fusebox-cost-usd');
    assert.ok(header, 'x-fusebox-cost-usd header missing');
    const cost = pico(header);
    const fromUsage = BigInt(data.usage.prompt_tokens) * GPT4O_MINI.input +
      BigInt(data.usage.completion_tokens) * GPT4O_MINI.output;
    assert.equal(cost, fromUsage, 'cost header is not the usage priced');
    assert.ok(billed > 0n);
    assert.equal(cost, billed, `cost header ${header} != billed ${usd(billed)}`);
    assert.equal(ledger, billed, 'ledger delta != billed delta');
  });

  it('chat stream without include_usage: text assembled, no usage-only chunk, usage asked upstream', async () => {
    const before = await env.billing();
    const body = {
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'Stream something.' }],
      max_tokens: 64,
      stream: true,
    };
    const [{ chunks, reserved }, billed, ledger] = await measured(async () => {
      const { data: stream, response } = await openai.chat.completions.create(body).withResponse();
      const got = [];
      for await (const chunk of stream) got.push(chunk);
      return { chunks: got, reserved: response.headers.get('x-fusebox-reserved-usd') };
    });
    assert.ok(chunks.length > 2, `only ${chunks.length} chunks`);
    for (const c of chunks) {
      assert.equal(c.object, 'chat.completion.chunk');
      assert.ok(Array.isArray(c.choices) && c.choices.length > 0,
        `a chunk with empty choices reached the client: ${JSON.stringify(c)}`);
      assert.ok(c.usage === undefined || c.usage === null,
        `usage reached a client that did not ask for it: ${JSON.stringify(c.usage)}`);
    }
    const text = chunks.map((c) => c.choices[0].delta?.content ?? '').join('');
    assert.match(text, FAKE_ANSWER);
    assert.equal(text.split(' ').length, 16);
    assert.equal(chunks.at(-1).choices[0].finish_reason, 'stop');
    const after = await env.billing();
    assert.equal(after.include_usage_seen - before.include_usage_seen, 1,
      'the gateway did not ask the provider for stream usage');
    assert.ok(reserved, 'x-fusebox-reserved-usd header missing on a stream');
    assert.ok(pico(reserved) >= billed, 'reserved less than billed');
    assert.ok(billed > 0n);
    assert.equal(ledger, billed, 'stream settled to a cost other than the bill');
  });

  it('chat stream with stream_options.include_usage: the client gets the usage chunk', async () => {
    const [chunks, billed, ledger] = await measured(async () => {
      const stream = await openai.chat.completions.create({
        model: 'gpt-4o-mini',
        messages: [{ role: 'user', content: 'Stream with usage.' }],
        max_completion_tokens: 40,
        stream: true,
        stream_options: { include_usage: true },
      });
      const got = [];
      for await (const chunk of stream) got.push(chunk);
      return got;
    });
    const usageChunks = chunks.filter((c) => c.choices.length === 0);
    assert.equal(usageChunks.length, 1, 'expected exactly one usage-only chunk');
    const u = usageChunks[0].usage;
    assert.ok(u, 'the usage chunk has no usage');
    assert.equal(u.completion_tokens, 16);
    const text = chunks.filter((c) => c.choices.length).map((c) => c.choices[0].delta?.content ?? '').join('');
    assert.match(text, FAKE_ANSWER);
    const fromUsage = BigInt(u.prompt_tokens) * GPT4O_MINI.input + BigInt(u.completion_tokens) * GPT4O_MINI.output;
    assert.equal(billed, fromUsage);
    assert.equal(ledger, billed);
  });

  it('Responses API (non-stream)', async () => {
    const [{ data, response }, billed, ledger] = await measured(() =>
      openai.responses.create({ model: 'gpt-4o-mini', input: 'Respond.', max_output_tokens: 50 }).withResponse());
    assert.equal(data.status, 'completed');
    assert.match(data.output_text, FAKE_ANSWER);
    assert.equal(data.usage.output_tokens, 16);
    const cost = pico(response.headers.get('x-fusebox-cost-usd'));
    assert.equal(cost, BigInt(data.usage.input_tokens) * GPT4O_MINI.input +
      BigInt(data.usage.output_tokens) * GPT4O_MINI.output);
    assert.equal(cost, billed);
    assert.equal(ledger, billed);
  });

  it('Responses API stream', async () => {
    const [events, billed, ledger] = await measured(async () => {
      const stream = await openai.responses.create({
        model: 'gpt-4o-mini', input: 'Stream a response.', max_output_tokens: 50, stream: true,
      });
      const got = [];
      for await (const ev of stream) got.push(ev);
      return got;
    });
    const text = events.filter((e) => e.type === 'response.output_text.delta').map((e) => e.delta).join('');
    assert.match(text, FAKE_ANSWER);
    const done = events.find((e) => e.type === 'response.completed');
    assert.ok(done, 'no response.completed event');
    const u = done.response.usage;
    assert.equal(u.output_tokens, 16);
    assert.equal(billed, BigInt(u.input_tokens) * GPT4O_MINI.input + BigInt(u.output_tokens) * GPT4O_MINI.output);
    assert.equal(ledger, billed);
  });

  it('embeddings', async () => {
    const [{ data, response }, billed, ledger] = await measured(() =>
      openai.embeddings.create({ model: EMBED_MODEL, input: ['one', 'two'] }).withResponse());
    assert.equal(data.data.length, 2);
    for (const e of data.data) {
      assert.equal(e.embedding.length, 8);
      assert.ok(e.embedding.every((x) => Number.isFinite(x)));
    }
    const cost = pico(response.headers.get('x-fusebox-cost-usd'));
    assert.equal(cost, BigInt(data.usage.prompt_tokens) * EMBED_PRICE);
    assert.ok(billed > 0n);
    assert.equal(cost, billed);
    assert.equal(ledger, billed);
  });

  it('the real OpenAI key was injected, the fusebox key not forwarded', async () => {
    const b = await env.billing();
    assert.equal(b.last_auth, 'Bearer sk-fake-openai');
    assert.equal(b.unauthorized, 0);
    assert.equal(b.virtual_key_seen, 0);
  });

  it('Anthropic messages.create (non-stream)', async () => {
    const [{ data, response }, billed, ledger] = await measured(() =>
      anthropic.messages.create({
        model: HAIKU.model,
        max_tokens: 100,
        messages: [{ role: 'user', content: 'Hello, Claude.' }],
      }).withResponse());
    assert.equal(data.type, 'message');
    assert.equal(data.content[0].type, 'text');
    assert.match(data.content[0].text, FAKE_ANSWER);
    assert.equal(data.usage.output_tokens, 16);
    const cost = pico(response.headers.get('x-fusebox-cost-usd'));
    assert.equal(cost, BigInt(data.usage.input_tokens) * HAIKU.input +
      BigInt(data.usage.output_tokens) * HAIKU.output);
    assert.equal(cost, billed);
    assert.equal(ledger, billed);
  });

  it('Anthropic messages.stream: final message text and usage', async () => {
    const [msg, billed, ledger] = await measured(async () => {
      const stream = anthropic.messages.stream({
        model: HAIKU.model,
        max_tokens: 100,
        messages: [{ role: 'user', content: 'Stream, Claude.' }],
      });
      let deltas = '';
      stream.on('text', (t) => { deltas += t; });
      const final = await stream.finalMessage();
      return { final, deltas };
    });
    const text = msg.final.content.map((c) => c.text).join('');
    assert.match(text, FAKE_ANSWER);
    assert.equal(msg.deltas, text);
    assert.equal(msg.final.usage.output_tokens, 16);
    assert.ok(msg.final.usage.input_tokens > 0);
    assert.equal(billed, BigInt(msg.final.usage.input_tokens) * HAIKU.input +
      BigInt(msg.final.usage.output_tokens) * HAIKU.output);
    assert.equal(ledger, billed);
  });

  it('the real Anthropic key was injected, the fusebox key never forwarded', async () => {
    const b = await env.billing();
    assert.equal(b.last_x_api_key, 'sk-fake-anthropic');
    assert.equal(b.unauthorized, 0);
    assert.equal(b.virtual_key_seen, 0);
  });

  it('ledger: the job spent exactly what the provider billed', async () => {
    const b = await env.billing();
    const s = await env.settled();
    for (const name of ['global', 'tenant:acme', 'job:sdk']) {
      const row = s.scopes.find((x) => x.scope === name);
      assert.ok(row, `no scope ${name}`);
      assert.equal(BigInt(row.spent_pico), BigInt(b.billed_pico), `${name} spent != billed`);
      assert.equal(pico(row.spent_usd), BigInt(b.billed_pico));
      assert.equal(row.paid_calls, b.calls);
      assert.equal(row.blocked_calls, 0);
    }
    assert.equal(b.requests, b.calls, 'the fake saw requests it did not bill');
  });
});

describe('SDK streams when something goes wrong', () => {
  let env, key, openai, anthropic;

  before(async () => {
    env = await startEnv({
      budgets: { tenants: { acme: { budget: '50', jobs: { faults: '10' } } } },
    });
    key = await env.createKey({ tenant: 'acme', job: 'faults' });
    openai = new OpenAI({ baseURL: `${env.gwUrl}/openai/v1`, apiKey: key, maxRetries: 0 });
    anthropic = new Anthropic({ baseURL: `${env.gwUrl}/anthropic`, apiKey: key, maxRetries: 0 });
  });

  afterEach(() => env?.checkNow());
  after(async () => {
    if (env) await env.close();
  });

  /** [result, billed delta, ledger delta of job:faults once settled]. */
  async function measured(fn) {
    const b0 = BigInt((await env.billing()).billed_pico);
    const s0 = BigInt((await env.settled()).scopes.find((s) => s.scope === 'job:faults').spent_pico);
    const out = await fn();
    const b1 = BigInt((await env.billingStable()).billed_pico);
    const s1 = BigInt((await env.settled()).scopes.find((s) => s.scope === 'job:faults').spent_pico);
    return [out, b1 - b0, s1 - s0];
  }

  it('a client that leaves mid-stream: the call is read to the end and settled at its real cost', async () => {
    const [got, billed, ledger] = await measured(async () => {
      const stream = await openai.chat.completions.create({
        model: 'gpt-4o-mini',
        messages: [{ role: 'user', content: 'I will leave early.' }],
        max_tokens: 64,
        stream: true,
      }, { headers: { 'x-fake-fault': 'chunk_delay_ms=15' } });
      let n = 0;
      for await (const _chunk of stream) {
        if (++n === 2) break; // ends the request: the SDK aborts it
      }
      return n;
    });
    assert.equal(got, 2);
    assert.ok(billed > 0n);
    assert.equal(ledger, billed, `settled ${usd(ledger)}, the provider billed ${usd(billed)}`);
  });

  it('a client that gives up before the answer: the call is still settled at its real cost', async () => {
    const [err, billed, ledger] = await measured(async () => {
      const b0 = await env.billing();
      const ac = new AbortController();
      const p = openai.chat.completions.create({
        model: 'gpt-4o-mini',
        messages: [{ role: 'user', content: 'I will not wait.' }],
        max_tokens: 64,
      }, { signal: ac.signal, headers: { 'x-fake-fault': 'delay_ms=1000' } });
      p.catch(() => {});
      await waitFor(async () => (await env.billing()).requests > b0.requests,
        { message: 'the call to reach the provider' });
      ac.abort();
      return p.then(() => null, (e) => e);
    });
    assert.ok(err instanceof OpenAI.APIUserAbortError, `not aborted: ${err}`);
    assert.ok(billed > 0n);
    assert.equal(ledger, billed, `settled ${usd(ledger)}, the provider billed ${usd(billed)}`);
  });

  it('an Anthropic stream cut short by the provider: the ledger keeps at least the bill', async () => {
    const [, billed, ledger] = await measured(async () => {
      const stream = anthropic.messages.stream({
        model: HAIKU.model,
        max_tokens: 100,
        messages: [{ role: 'user', content: 'The provider will cut me off.' }],
      }, { headers: { 'x-fake-fault': 'reset_after=4' } });
      try {
        await stream.finalMessage();
      } catch {
        /* the outcome for the client is the next test's business */
      }
    });
    assert.ok(billed > 0n);
    assert.ok(ledger >= billed,
      `the ledger recorded ${usd(ledger)} for a call the provider billed ${usd(billed)}`);
  });

  it('an OpenAI stream cut short by the provider: the ledger keeps at least the bill', async () => {
    const [, billed, ledger] = await measured(async () => {
      const stream = await openai.chat.completions.create({
        model: 'gpt-4o-mini',
        messages: [{ role: 'user', content: 'The provider will cut me off.' }],
        max_tokens: 64,
        stream: true,
      }, { headers: { 'x-fake-fault': 'reset_after=4' } });
      try {
        for await (const _chunk of stream) { /* read */ }
      } catch {
        /* see the next test */
      }
    });
    assert.ok(billed > 0n);
    assert.ok(ledger >= billed,
      `the ledger recorded ${usd(ledger)} for a call the provider billed ${usd(billed)}`);
  });

  it('a stream cut short by the provider fails for the client instead of ending cleanly', async () => {
    const stream = await openai.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'Cut short.' }],
      max_tokens: 64,
      stream: true,
    }, { headers: { 'x-fake-fault': 'reset_after=4' } });
    let text = '';
    let finish = null;
    await assert.rejects(async () => {
      for await (const c of stream) {
        text += c.choices[0]?.delta?.content ?? '';
        finish = c.choices[0]?.finish_reason ?? finish;
      }
    }, `the truncated stream ended like a whole answer (text ${JSON.stringify(text)}, ` +
      `finish_reason ${finish})`);
    assert.equal(finish, null);
    await env.billingStable();
    await env.settled();
  });
});
