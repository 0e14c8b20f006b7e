// abuse.test.mjs - hostile clients: a JSON nesting bomb, malformed UTF-8,
// more connections than max_connections, garbage pipelined behind a good
// request. Each gets a clean answer (or a closed connection), nothing
// reaches the provider, nothing is charged, and the daemon goes on serving
// with bounded memory.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { startEnv, rawExchange, chatBody } from './harness.mjs';

const CHAT = '/openai/v1/chat/completions';

function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

describe('abuse', () => {
  let env, key;

  before(async () => {
    env = await startEnv({
      budgets: { tenants: { acme: { budget: '10', jobs: { abuse: '1' } } } },
      limits: { max_connections: 64, max_body_bytes: 4194304 },
    });
    key = await env.createKey({ tenant: 'acme', job: 'abuse' });
  });

  afterEach(() => env?.checkNow());
  after(async () => {
    if (env) await env.close();
  });

  async function refusedUnbilled(body, why) {
    const b0 = await env.billing();
    const r = await env.post(CHAT, body, { key });
    assert.equal(r.status, 400, `${why}: want 400, got ${r.status}: ${r.text}`);
    assert.equal(r.json?.error?.type, 'invalid_request', `${why}: ${r.text}`);
    const b1 = await env.billing();
    assert.equal(b1.requests, b0.requests, `${why} reached the provider`);
    assert.equal(await env.healthz(), 200);
  }

  it('a JSON nesting bomb (100,000 deep) is a 400, and memory stays bounded', async () => {
    const pid = env.gw.pid;
    const before = rssKiB(pid);
    const deep = '['.repeat(100000) + ']'.repeat(100000);
    for (let i = 0; i < 5; i++)
      await refusedUnbilled(`{"model":"gpt-4o-mini","max_tokens":5,"messages":${deep}}`, 'nesting bomb');
    const grew = rssKiB(pid) - before;
    assert.ok(grew < 64 * 1024, `RSS grew ${grew} KiB over five nesting bombs`);
  });

  it('malformed UTF-8 inside a JSON string is a 400', async () => {
    const good = Buffer.from(chatBody({ content: 'XX' }));
    const at = good.indexOf('XX');
    good[at] = 0xff;
    good[at + 1] = 0xc0;
    await refusedUnbilled(good, 'malformed UTF-8');
  });

  it('connections past max_connections are closed; the daemon serves again once they go', async () => {
    const socks = [];
    try {
      for (let i = 0; i < 100; i++) {
        socks.push(await new Promise((ok, fail) => {
          const s = connect(env.gwPort, env.gwHost, () => ok(s));
          s.on('error', () => {});
          s.once('error', fail);
        }));
      }
      // The ones past the limit were accepted and closed at once.
      await new Promise((ok) => setTimeout(ok, 200));
      const closed = socks.filter((s) => s.destroyed || s.readableEnded).length;
      assert.ok(closed >= 100 - 64 - 1, `only ${closed} of 100 connections were closed (limit 64)`);
    } finally {
      for (const s of socks) s.destroy();
    }
    // Freed: a paid call goes through.
    let r;
    for (let i = 0; i < 50; i++) {
      r = await env.post(CHAT, chatBody({ content: 'after the flood' }), { key }).catch((e) => ({ status: 0, e }));
      if (r.status === 200) break;
      await new Promise((ok) => setTimeout(ok, 20));
    }
    assert.equal(r.status, 200, `no paid call after the flood: ${r.status} ${r.text ?? r.e}`);
  });

  it('garbage pipelined behind a good request: the good one is answered, then 400 and close', async () => {
    const body = chatBody({ content: 'before the garbage' });
    const r = await rawExchange(env.gwHost, env.gwPort,
      `POST ${CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}` +
      '\x00\x01\x02 NOT HTTP AT ALL\r\n\r\n', { timeoutMs: 5000 });
    assert.notEqual(r.why, 'timeout', 'the connection was left open');
    assert.equal(r.status, 200, `the good request first: ${r.text}`);
    assert.match(r.text, /HTTP\/1\.1 400/, 'no 400 for the garbage after it');
    assert.equal(await env.healthz(), 200);
  });

  it('an Idempotency-Key that is not printable ASCII is a 400, and the calls beside it go on', async () => {
    const body = chatBody({ content: 'a key with a stray byte' });
    const head = `POST ${CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
      'Connection: close\r\nIdempotency-Key: op-';
    const r = await rawExchange(env.gwHost, env.gwPort,
      Buffer.concat([Buffer.from(head), Buffer.from([0xff, 0xfe]), Buffer.from(`\r\n\r\n${body}`)]),
      { timeoutMs: 5000 });
    assert.equal(r.status, 400, r.text);
    assert.match(r.text, /printable ASCII/);
    const ok = await env.post(CHAT, chatBody({ content: 'next to it' }), { key, headers: { 'idempotency-key': 'op-fine' } });
    assert.equal(ok.status, 200, ok.text);
  });
});
