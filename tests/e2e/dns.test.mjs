// dns.test.mjs - a provider whose name does not resolve (the reserved
// .invalid domain): a 502 that costs nothing and is not final for the
// SDKs, within the connect timeout; the daemon stays ready (a DNS failure
// is not the store's).
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startEnv, pico, chatBody, request } from './harness.mjs';

describe('upstream DNS failure', () => {
  let env, key;

  before(async () => {
    env = await startEnv({
      budgets: { tenants: { acme: { budget: '10', jobs: { dns: '1' } } } },
      limits: { upstream_connect_timeout_ms: 3000 },
      providers: {
        nodns: { kind: 'openai', base_url: 'http://fusebox-test.invalid', api_key_env: 'OPENAI_API_KEY' },
      },
    });
    key = await env.createKey({ tenant: 'acme', job: 'dns' });
  });

  afterEach(() => env?.checkNow());
  after(async () => {
    if (env) await env.close();
  });

  it('502, charged nothing, retryable; the daemon stays ready', async () => {
    const r = await env.post('/nodns/v1/chat/completions', chatBody({ content: 'no such host' }), { key });
    assert.equal(r.status, 502, `want 502, got ${r.status}: ${r.text}`);
    assert.equal(r.json?.error?.type, 'upstream_error');
    assert.equal(pico(r.headers['x-fusebox-cost-usd']), 0n);
    assert.notEqual(r.headers['x-should-retry'], 'false', 'a DNS failure may pass: it must stay retryable');
    const row = (await env.settled()).scopes.find((s) => s.scope === 'job:dns');
    assert.equal(BigInt(row?.spent_pico ?? '0'), 0n, 'a call that never left was charged');
    const ready = await request('GET', `${env.gwUrl}/readyz`);
    assert.equal(ready.status, 200, `readyz after a DNS failure: ${ready.status} ${ready.text}`);
  });
});
