// tls.test.mjs - the upstream's TLS: certificate verification is on by
// default (a provider with a self-signed certificate is refused before any
// request reaches it), and a TLS failure is a 502 that costs nothing.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEnv, pico, chatBody } from './harness.mjs';

const CHAT = '/selfsigned/v1/chat/completions';

describe('upstream TLS', () => {
  let env, key, server, seen = 0, dir;

  before(async () => {
    // A provider on TLS with a certificate no authority signed.
    dir = mkdtempSync(join(tmpdir(), 'fb-tls-'));
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'),
      '-days', '1', '-subj', '/CN=127.0.0.1',
      '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
    server = createServer({
      key: readFileSync(join(dir, 'key.pem')),
      cert: readFileSync(join(dir, 'cert.pem')),
    }, (req, res) => {
      seen++;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ id: 'x', object: 'chat.completion', choices: [],
        usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } }));
    });
    await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
    const port = server.address().port;
    env = await startEnv({
      budgets: { tenants: { acme: { budget: '10', jobs: { tls: '1' } } } },
      providers: {
        selfsigned: { kind: 'openai', base_url: `https://127.0.0.1:${port}`, api_key_env: 'OPENAI_API_KEY' },
      },
    });
    key = await env.createKey({ tenant: 'acme', job: 'tls' });
  });

  afterEach(() => env?.checkNow());
  after(async () => {
    if (env) await env.close();
    if (server) await new Promise((ok) => server.close(ok));
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a self-signed provider certificate is refused: 502, nothing sent, nothing charged', async () => {
    const s0 = (await env.settled()).scopes.find((s) => s.scope === 'job:tls');
    const r = await env.post(CHAT, chatBody({ content: 'over TLS' }), { key });
    assert.equal(r.status, 502, `want 502, got ${r.status}: ${r.text}`);
    assert.equal(r.json?.error?.type, 'upstream_error');
    assert.equal(pico(r.headers['x-fusebox-cost-usd']), 0n);
    assert.equal(seen, 0, 'a request reached a provider whose certificate failed');
    const s1 = (await env.settled()).scopes.find((s) => s.scope === 'job:tls');
    assert.equal(s1?.spent_pico ?? '0', s0?.spent_pico ?? '0', 'a TLS failure was charged');
    assert.equal(await env.healthz(), 200);
  });

  it('TLS to a port that speaks plain HTTP: 502, the provider billed nothing', async () => {
    // A second gateway whose provider speaks TLS to the first one's fake
    // provider, which answers plain HTTP: that fake's billing must not move.
    const b0 = await env.billing();
    const url = env.fakeUrl.replace(/^http:/, 'https:');
    const env2 = await startEnv({
      budgets: { tenants: { acme: { budget: '10', jobs: { tls: '1' } } } },
      providers: { plain: { kind: 'openai', base_url: url, api_key_env: 'OPENAI_API_KEY' } },
    });
    try {
      const k2 = await env2.createKey({ tenant: 'acme', job: 'tls' });
      const r = await env2.post('/plain/v1/chat/completions', chatBody({ content: 'tls to http' }), { key: k2 });
      assert.equal(r.status, 502, `want 502, got ${r.status}: ${r.text}`);
      assert.equal(pico(r.headers['x-fusebox-cost-usd']), 0n);
      const b1 = await env.billing();
      assert.equal(b1.calls, b0.calls, 'the provider billed a call that never got through TLS');
    } finally {
      await env2.close();
    }
  });
});
