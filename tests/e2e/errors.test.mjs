// errors.test.mjs - every bad input gets its status and a JSON error
// {error:{type,message}}, no refused call reaches the provider, upstream
// failures map to 502/504, and the daemon keeps serving after each.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startEnv, closedPort, rawExchange, pico, chatBody, waitFor, SLOW,
} from './harness.mjs';

const CHAT = '/openai/v1/chat/completions';
const BODY = chatBody({ content: 'errors test', maxTokens: 20 });
// A request seen by no earlier test: replay would answer a repeat of one
// from its kept result (or refuse it once its upstream calls failed three
// times), so the tests that need the provider to be called send their own.
let fresh = 0;
const freshBody = () => chatBody({ content: `errors test ${++fresh}`, maxTokens: 20 });

describe('errors', () => {
  let env, key;

  before(async () => {
    const dead = await closedPort();
    env = await startEnv({
      budgets: {
        global: '100',
        tenants: { acme: { budget: '50', jobs: { main: '10', broke: '0' } } },
      },
      limits: {
        max_body_bytes: 4096,
        max_header_bytes: 8192,
        upstream_timeout_ms: 300,
        client_timeout_ms: 500,
      },
      providers: {
        dead: { kind: 'openai', base_url: `http://127.0.0.1:${dead}`, api_key_env: 'OPENAI_API_KEY' },
      },
    });
    key = await env.createKey({ tenant: 'acme', job: 'main' });
  });

  afterEach(() => env?.checkNow());
  after(async () => {
    if (env) await env.close();
  });

  /** The JSON error shape, and the daemon still up. */
  async function assertError(r, status, type) {
    assert.equal(r.status, status, `want ${status}, got ${r.status}: ${r.text ?? r.body}`);
    const j = r.json;
    assert.ok(j && typeof j === 'object', `not a JSON body: ${JSON.stringify(r.text ?? r.body)}`);
    assert.ok(j.error && typeof j.error === 'object', `no error object: ${JSON.stringify(j)}`);
    if (type) assert.equal(j.error.type, type);
    assert.equal(typeof j.error.type, 'string');
    assert.equal(typeof j.error.message, 'string');
    assert.ok(j.error.message.length > 0);
    assert.equal(await env.healthz(), 200, 'the daemon stopped serving');
  }

  /** Run fn; assert the provider saw no request meanwhile. */
  async function noUpstream(fn) {
    const b0 = await env.billing();
    const out = await fn();
    const b1 = await env.billing();
    assert.equal(b1.requests, b0.requests, 'the provider was called');
    assert.equal(b1.billed_pico, b0.billed_pico);
    return out;
  }

  const cases = [
    ['401 missing key', () => env.post(CHAT, BODY), 401, 'missing_api_key'],
    ['401 malformed key', () => env.post(CHAT, BODY, { key: 'sk-not-a-fusebox-key' }), 401, 'invalid_api_key'],
    ['401 malformed key in x-api-key', () => env.post(CHAT, BODY, { headers: { 'x-api-key': 'fbk_XYZ' } }), 401, 'invalid_api_key'],
    ['401 unknown well-formed key', () => env.post(CHAT, BODY, { key: `fbk_${'0123456789'.repeat(4)}` }), 401, 'invalid_api_key'],
    ['400 malformed JSON', () => env.post(CHAT, '{"model": "gpt-4o-mini", "messages": [', { key }), 400, 'invalid_request'],
    ['400 JSON that is not an object', () => env.post(CHAT, '[1,2,3]', { key }), 400, 'invalid_request'],
    ['400 unknown model price', () => env.post(CHAT, chatBody({ model: 'gpt-nonexistent-9' }), { key }), 400, 'unknown_price'],
    ['400 unpriced route', () => env.post('/openai/v1/files', '{}', { key }), 400, 'unpriced_route'],
    ['400 negative max_tokens', () => env.post(CHAT, chatBody({ maxTokens: -5 }), { key }), 400, 'invalid_request'],
    ['400 path with ..', () => env.post('/openai/v1/../v1/chat/completions', BODY, { key }), 400, 'invalid_request'],
    ['404 unknown provider', () => env.post('/nosuch/v1/chat/completions', BODY, { key }), 404, 'unknown_provider'],
    // Refused by the HTTP layer, before the handler.
    ['413 body over max_body_bytes', () => env.post(CHAT,
      chatBody({ content: 'x'.repeat(8000) }), { key }), 413, null],
  ];

  for (const [name, send, status, type] of cases) {
    it(name, async () => {
      const r = await noUpstream(send);
      await assertError(r, status, type);
      // Refusals a retry cannot fix are final for the SDKs, from the
      // handler and from the HTTP layer alike.
      assert.equal(r.headers['x-should-retry'], 'false');
    });
  }

  it('413 for a chunked body over max_body_bytes, final for the SDKs', async () => {
    const big = chatBody({ content: 'x'.repeat(8000) });
    const r = await noUpstream(() => rawExchange(env.gwHost, env.gwPort,
      `POST ${CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\n` +
      `Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n` +
      `${Buffer.byteLength(big).toString(16)}\r\n${big}\r\n0\r\n\r\n`));
    await assertError(r, 413, 'invalid_request');
    assert.equal(r.headers['x-should-retry'], 'false');
  });

  it('402 over budget, with no upstream call', async () => {
    const k = await env.createKey({ tenant: 'acme', job: 'broke' });
    const r = await noUpstream(() => env.post(CHAT, BODY, { key: k }));
    await assertError(r, 402, 'budget_exceeded');
    assert.equal(r.json.error.scope, 'job:broke');
  });

  it('401 revoked key (used before, so cached), within a bounded wait', async () => {
    const { key: k, id } = await env.createKeyFull({ tenant: 'acme', job: 'main' });
    const ok = await env.post(CHAT, BODY, { key: k });
    assert.equal(ok.status, 200, ok.text);
    await env.revokeKey(id);
    const list = await env.keyList();
    assert.equal(list.find((x) => x.id === id)?.revoked, true);
    const r = await waitFor(async () => {
      const x = await env.post(CHAT, BODY, { key: k });
      return x.status === 401 ? x : null;
    }, { timeoutMs: 5000, intervalMs: 100, message: 'the revoked key to be refused' });
    await assertError(r, 401, 'invalid_api_key');
    // And it stays refused, without reaching the provider.
    const again = await noUpstream(() => env.post(CHAT, BODY, { key: k }));
    await assertError(again, 401, 'invalid_api_key');
  });

  it('401 revoked key never used before', async () => {
    const { key: k, id } = await env.createKeyFull({ tenant: 'acme', job: 'main' });
    await env.revokeKey(id);
    const r = await noUpstream(() => env.post(CHAT, BODY, { key: k }));
    await assertError(r, 401, 'invalid_api_key');
  });

  it('431 request head over max_header_bytes', async () => {
    const head = `POST ${CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\n` +
      `X-Big: ${'a'.repeat(16384)}\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${Buffer.byteLength(BODY)}\r\n\r\n${BODY}`;
    const r = await noUpstream(() => rawExchange(env.gwHost, env.gwPort, head));
    await assertError(r, 431, null);
    assert.equal(r.headers['x-should-retry'], 'false');
  });

  it('400 garbage request line over a raw socket', async () => {
    const r = await noUpstream(() => rawExchange(env.gwHost, env.gwPort, 'HELLO THERE\x01\x02\r\n\r\n'));
    await assertError(r, 400, null);
    assert.equal(r.headers['x-should-retry'], 'false');
    const r2 = await noUpstream(() => rawExchange(env.gwHost, env.gwPort, '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n'));
    await assertError(r2, 400, null);
    assert.equal(r2.headers['x-should-retry'], 'false');
  });

  it('408 for a client that sends half a head and stalls', async () => {
    const r = await noUpstream(() => rawExchange(env.gwHost, env.gwPort,
      `POST ${CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\n`, { timeoutMs: 5000 }));
    assert.notEqual(r.why, 'timeout', 'the gateway never answered the stalled client');
    await assertError(r, 408, null);
    assert.notEqual(r.headers['x-should-retry'], 'false', 'a timeout is retryable');
  });

  it('408 for a client that sends half a body and stalls', async () => {
    const r = await noUpstream(() => rawExchange(env.gwHost, env.gwPort,
      `POST ${CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(BODY)}\r\n\r\n` +
      BODY.slice(0, 10), { timeoutMs: 5000 }));
    assert.notEqual(r.why, 'timeout', 'the gateway never answered the stalled client');
    await assertError(r, 408, null);
    assert.notEqual(r.headers['x-should-retry'], 'false', 'a timeout is retryable');
  });

  it('502 when the provider is unreachable, charged nothing', async () => {
    const s0 = await env.scope('job:main');
    const r = await noUpstream(() => env.post('/dead/v1/chat/completions', BODY, { key }));
    await assertError(r, 502, 'upstream_error');
    assert.equal(pico(r.headers['x-fusebox-cost-usd']), 0n);
    const s1 = (await env.settled()).scopes.find((s) => s.scope === 'job:main');
    assert.equal(s1.spent_pico, s0.spent_pico, 'an unreachable provider was charged');
  });

  it('504 when the provider is too slow; the ledger keeps at least the bill', async () => {
    const b0 = await env.billing();
    const s0 = await env.settled();
    const j0 = s0.scopes.find((s) => s.scope === 'job:main');
    const r = await env.post(CHAT, freshBody(), { key, headers: { 'x-fake-fault': 'delay_ms=2000' } });
    await assertError(r, 504, 'upstream_error');
    const b1 = await env.billingStable(5000 * SLOW);
    assert.equal(b1.requests - b0.requests, 1);
    const billed = BigInt(b1.billed_pico) - BigInt(b0.billed_pico);
    assert.ok(billed > 0n, 'the fake did not bill the slow call');
    const charged = pico(r.headers['x-fusebox-cost-usd']);
    assert.ok(charged >= billed, `charged ${charged} < billed ${billed}`);
    const j1 = (await env.settled()).scopes.find((s) => s.scope === 'job:main');
    assert.ok(BigInt(j1.spent_pico) - BigInt(j0.spent_pico) >= billed,
      'the ledger recorded less than the provider billed');
  });

  it('a provider 5xx is passed through with its status and costs 0', async () => {
    const b0 = await env.billing();
    const j0 = (await env.settled()).scopes.find((s) => s.scope === 'job:main');
    const r = await env.post(CHAT, freshBody(), { key, headers: { 'x-fake-fault': 'status=503' } });
    assert.equal(r.status, 503, r.text);
    assert.equal(r.json?.error?.type, 'server_error', 'not the provider\'s own error body');
    assert.equal(pico(r.headers['x-fusebox-cost-usd']), 0n);
    const b1 = await env.billing();
    assert.equal(b1.requests - b0.requests, 1);
    assert.equal(b1.billed_pico, b0.billed_pico);
    const j1 = (await env.settled()).scopes.find((s) => s.scope === 'job:main');
    assert.equal(j1.spent_pico, j0.spent_pico);
    assert.equal(await env.healthz(), 200);
  });

  it('after all that, a paid call still works', async () => {
    const b0 = await env.billing();
    const r = await env.post(CHAT, freshBody(), { key });
    assert.equal(r.status, 200, r.text);
    assert.match(r.json.choices[0].message.content, /^fake answer/);
    // Paid, not answered from a kept result.
    assert.equal(r.headers['x-fusebox-replayed'], undefined);
    assert.equal((await env.billing()).requests - b0.requests, 1, 'the call did not reach the provider');
    assert.ok(pico(r.headers['x-fusebox-cost-usd']) > 0n);
  });
});
