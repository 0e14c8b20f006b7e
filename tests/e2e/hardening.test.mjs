// hardening.test.mjs - black-box tests for the review fixes of c4ff663:
// deep pipelines, the read watermark after a keep-alive answer, one daemon
// per data_dir, keys of retired tenants, revocation by unique id, upstream
// response header lines with control bytes or folding, bodiless and HEAD
// upstream calls, fusebox keys in the URL, a second SIGTERM while draining,
// and the priority service tier. Each test starts its own gateway (their
// limits differ); every wait is a bounded poll.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import {
  startEnv, run, rawExchange, waitFor, pico, usd, chatBody, worstChat, GPT4O_MINI,
  PROVIDER_KEYS, SLOW, STORE_PG,
} from './harness.mjs';

const CHAT = '/openai/v1/chat/completions';
/** gpt-4o-mini at the priority tier (the built-in table), picodollars. */
const GPT4O_MINI_PRIORITY = { input: 250000n, output: 1000000n, cacheRead: 125000n };
/** A well-formed fusebox key that no store holds. */
const UNKNOWN_KEY = `fbk_${'0123456789abcdef'.repeat(3).slice(0, 40)}`;

/* ------------------------------------------------------------------ */
/* helpers                                                             */

/** A keep-alive raw client: send bytes, read whole responses (by
 *  Content-Length, or to the end for HEAD answers with length 0). */
class RawConn {
  constructor(host, port) {
    this.buf = Buffer.alloc(0);
    this.closed = false;
    this.waiters = [];
    this.sock = net.connect({ host, port });
    this.sock.on('data', (c) => { this.buf = Buffer.concat([this.buf, c]); this.wake(); });
    this.sock.on('close', () => { this.closed = true; this.wake(); });
    this.sock.on('error', () => { /* seen as close */ });
    this.connected = new Promise((res, rej) => {
      this.sock.once('connect', res);
      this.sock.once('error', rej);
    });
  }

  wake() {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  async send(bytes) {
    await this.connected;
    await new Promise((res, rej) => this.sock.write(bytes, (e) => (e ? rej(e) : res())));
  }

  /** One response: {status, head, headers, body}; rejects after timeoutMs
   *  or when the connection closes first. */
  async response({ timeoutMs = 10000 } = {}) {
    const deadline = Date.now() + timeoutMs * SLOW;
    for (;;) {
      const end = this.buf.indexOf('\r\n\r\n');
      if (end >= 0) {
        const head = this.buf.subarray(0, end).toString('latin1');
        const m = /^HTTP\/1\.[01] (\d{3})/.exec(head);
        if (!m) throw new Error(`not an HTTP response: ${JSON.stringify(head.slice(0, 200))}`);
        const headers = {};
        for (const line of head.split('\r\n').slice(1)) {
          const i = line.indexOf(':');
          if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
        }
        const len = Number(headers['content-length'] ?? 0);
        if (this.buf.length >= end + 4 + len) {
          const body = this.buf.subarray(end + 4, end + 4 + len).toString('utf8');
          this.buf = this.buf.subarray(end + 4 + len);
          let json;
          try { json = JSON.parse(body); } catch { json = undefined; }
          return { status: Number(m[1]), head, headers, body, json };
        }
      }
      if (this.closed) throw new Error(`connection closed; had ${JSON.stringify(this.buf.toString('latin1').slice(0, 300))}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timed out waiting for a response');
      await new Promise((res) => {
        const t = setTimeout(res, left);
        this.waiters.push(() => { clearTimeout(t); res(); });
      });
    }
  }

  close() {
    this.sock.destroy();
  }
}

/** A tiny HTTP/1.1 upstream on a raw socket: records every request
 *  exactly as it arrived (method, target, header lines, body bytes) and
 *  answers each with answer(req): raw response bytes, or a promise of
 *  them (answers on one connection may then go out of order: the tests
 *  send one request at a time). */
async function rawUpstream(answer) {
  const seen = [];
  const socks = new Set();
  const srv = net.createServer((sock) => {
    socks.add(sock);
    sock.on('close', () => socks.delete(sock));
    sock.on('error', () => { /* the gateway went away */ });
    let buf = Buffer.alloc(0);
    sock.on('data', (c) => {
      buf = Buffer.concat([buf, c]);
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.subarray(0, end).toString('latin1');
        const lines = head.split('\r\n');
        const [method, target] = lines[0].split(' ');
        const headers = lines.slice(1);
        const get = (n) => {
          const l = headers.find((h) => h.toLowerCase().startsWith(`${n.toLowerCase()}:`));
          return l === undefined ? undefined : l.slice(l.indexOf(':') + 1).trim();
        };
        const clen = Number(get('content-length') ?? 0);
        const chunked = /chunked/i.test(get('transfer-encoding') ?? '');
        if (chunked) {
          // Not expected from the gateway for these calls: record it, and
          // treat everything buffered as the body.
          const req = { method, target, headers, get, body: buf.subarray(end + 4).toString('latin1'), chunked };
          buf = Buffer.alloc(0);
          seen.push(req);
          Promise.resolve(answer(req)).then((a) => { if (!sock.destroyed) sock.write(a); });
          return;
        }
        if (buf.length < end + 4 + clen) return;
        const req = { method, target, headers, get, body: buf.subarray(end + 4, end + 4 + clen).toString('latin1'), chunked };
        buf = buf.subarray(end + 4 + clen);
        seen.push(req);
        Promise.resolve(answer(req)).then((a) => { if (!sock.destroyed) sock.write(a); });
      }
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return {
    port: srv.address().port,
    seen,
    close: () => new Promise((r) => {
      for (const s of socks) s.destroy();
      srv.close(() => r());
    }),
  };
}

/** sqlite3 CLI on the gateway's store. */
function sqlite(dbPath, sql) {
  return new Promise((res) => {
    execFile('sqlite3', ['-cmd', '.timeout 5000', dbPath, sql], { timeout: 10000 * SLOW },
      (err, stdout, stderr) => res({ code: err ? (err.code ?? -1) : 0, stdout, stderr }));
  });
}

/** Hand the running gateway process over to the env's stopped list (for
 *  the sanitizer checks at close) after a test stopped it itself. */
function detachGateway(env) {
  const gw = env.gw;
  env.gw = null;
  env.old.push(gw);
  return gw;
}

/** Does a new TCP connection to host:port get accepted? */
function canConnect(host, port) {
  return new Promise((res) => {
    const s = net.connect({ host, port });
    s.once('connect', () => { s.destroy(); res(true); });
    s.once('error', () => res(false));
  });
}

/* ------------------------------------------------------------------ */
/* 1. deep pipelining                                                  */

it('a deep pipeline behind slow and async requests is answered in full; the daemon survives', async (t) => {
  // The first request is held by the upstream until the whole pipeline has
  // been written, so that tens of thousands of requests are buffered when
  // its answer goes out; the second has an unknown key (an async lookup).
  let release;
  const held = new Promise((r) => { release = r; });
  const up = await rawUpstream(async () => {
    await held;
    return 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}';
  });
  t.after(() => { release(); return up.close(); });
  const env = await startEnv({
    t,
    limits: { max_header_bytes: 4194304 },
    providers: {
      up: { kind: 'generic', base_url: `http://127.0.0.1:${up.port}`, api_key_env: 'GENERIC_API_KEY', price_per_call_usd: '0.001' },
    },
  });
  const key = await env.createKey();
  const N = 50000;
  const payload =
    `POST /up/v1/hold HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\n` +
    'Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}' +
    `GET /openai/v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${UNKNOWN_KEY}\r\n\r\n` +
    'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(N);
  assert.ok(payload.length < 4194304, 'the pipeline must fit the read limit while the first call is handled');

  let written = false;
  const counts = await new Promise((res) => {
    let ok = 0;
    let unauthorized = 0;
    let other = 0;
    let tail = '';
    let done = false;
    const sock = net.connect({ host: env.gwHost, port: env.gwPort });
    const finish = (why) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      res({ ok, unauthorized, other, why });
    };
    const timer = setTimeout(() => finish('timeout'), 60000 * SLOW);
    sock.setEncoding('latin1');
    sock.on('connect', () => sock.write(payload, () => { written = true; }));
    sock.on('data', (d) => {
      const s = tail + d;
      const re = /HTTP\/1\.1 (\d{3}) /g;
      let m;
      let last = 0;
      while ((m = re.exec(s)) !== null) {
        if (m[1] === '200') ok++;
        else if (m[1] === '401') unauthorized++;
        else other++;
        last = re.lastIndex;
      }
      // Keep a tail that may hold the start of a split status line.
      tail = s.slice(Math.max(last, s.length - 12));
      if (ok + unauthorized + other >= N + 2) finish('all');
    });
    sock.on('close', () => finish('close'));
    sock.on('error', () => finish('error'));
    // Release the first call once the pipeline is written and the call is
    // upstream.
    waitFor(() => done || (written && up.seen.length >= 1),
      { timeoutMs: 20000, message: 'the pipeline written and the first call upstream' })
      .then(() => release(), () => release());
  });
  t.diagnostic(`pipeline: ${counts.ok} x 200, ${counts.unauthorized} x 401, ${counts.other} other (${counts.why})`);
  assert.equal(env.gw.exited, false,
    `the daemon exited (code ${env.gw.code}, signal ${env.gw.signal}) under a deep pipeline`);
  assert.equal(up.seen.length, 1, 'the held call did not reach the upstream once');
  assert.equal(counts.unauthorized, 1, 'the unknown key was not refused');
  assert.equal(counts.other, 0);
  assert.equal(counts.ok, N + 1, `only ${counts.ok} of ${N + 1} requests were answered 200 (${counts.why})`);
  assert.equal(await env.healthz(), 200);
  assert.equal(env.gw.exited, false);
  env.checkNow();
});

/* ------------------------------------------------------------------ */
/* 2. the read watermark is reset after a keep-alive answer             */

it('keep-alive: a second request with a body larger than max_header_bytes is served', async (t) => {
  const env = await startEnv({
    t,
    limits: { max_header_bytes: 2048, client_timeout_ms: 10000 },
    budgets: { global: '100', tenants: { acme: { jobs: { main: '50' } } } },
  });
  const key = await env.createKey({ tenant: 'acme', job: 'main' });
  const post = (body) => `POST ${CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\n` +
    `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
  const small = chatBody({ content: 'first on this connection', maxTokens: 8 });
  const big = chatBody({ content: 'x'.repeat(100 * 1024), maxTokens: 8 });
  assert.ok(Buffer.byteLength(big) > 2048 * 40);

  const c = new RawConn(env.gwHost, env.gwPort);
  try {
    await c.send(post(small));
    const r1 = await c.response();
    assert.equal(r1.status, 200, r1.body);
    assert.doesNotMatch(r1.head, /^Connection: close/im, 'the gateway did not keep the connection');
    const b0 = await env.billing();
    await c.send(post(big));
    const r2 = await c.response({ timeoutMs: 20000 });
    assert.equal(r2.status, 200, `second request on the connection: ${r2.status} ${r2.body}`);
    assert.match(r2.json.choices[0].message.content, /^fake answer/);
    const b1 = await env.billing();
    assert.equal(b1.requests - b0.requests, 1, 'the big call did not reach the provider once');
  } finally {
    c.close();
  }
});

/* ------------------------------------------------------------------ */
/* 3. one daemon per data_dir                                          */

it('a second fusebox serve on the same data_dir exits non-zero naming it; the first keeps serving', async (t) => {
  const env = await startEnv({ t });
  const r = await run(['serve', '--config', env.configPath], { env: PROVIDER_KEYS, timeoutMs: 10000 });
  env.checkText('second fusebox serve', r.stderr);
  // (A second daemon that served would only stop at run's bound.)
  assert.doesNotMatch(r.stdout, /listening on/, `the second daemon started serving; stderr:\n${r.stderr}`);
  assert.notEqual(r.code, 0, `the second daemon exited 0; stderr:\n${r.stderr}`);
  assert.notEqual(r.code, -1, `the second daemon did not exit by itself (killed at the bound); stderr:\n${r.stderr}`);
  assert.ok(r.stderr.includes(env.dataDir), `the message does not name the data_dir: ${r.stderr}`);
  // The first one still owns the store and serves paid calls.
  assert.equal(env.gw.exited, false);
  assert.equal(await env.healthz(), 200);
  const key = await env.createKey();
  const ok = await env.post(CHAT, chatBody({ content: 'still here' }), { key });
  assert.equal(ok.status, 200, ok.text);
});

/* ------------------------------------------------------------------ */
/* 4. keys of a tenant removed from the config                          */

it('a key whose tenant was removed from the config gets 403 unknown_tenant, no upstream call', async (t) => {
  const env = await startEnv({
    t,
    budgets: { global: '100', tenants: { acme: { budget: '1', jobs: { main: null } } } },
  });
  const key = await env.createKey({ tenant: 'acme', job: 'main' });
  const body = chatBody({ content: 'retired tenant' });
  const ok = await env.post(CHAT, body, { key });
  assert.equal(ok.status, 200, ok.text);
  await env.stop();

  const yaml = env.yaml.replace(/^ {4}acme:$/m, '    other:');
  assert.notEqual(yaml, env.yaml, 'the tenant block was not found in the config');
  assert.doesNotMatch(yaml, /^ {4}acme:$/m);
  writeFileSync(env.configPath, yaml);
  await env.restart();

  const b0 = await env.billing();
  const r = await env.post(CHAT, body, { key });
  assert.equal(r.status, 403, `want 403, got ${r.status}: ${r.text}`);
  assert.equal(r.json?.error?.type, 'unknown_tenant', r.text);
  assert.equal(r.headers['x-should-retry'], 'false');
  const b1 = await env.billing();
  assert.equal(b1.requests, b0.requests, 'the call of a retired tenant reached the provider');
  assert.equal(b1.billed_pico, b0.billed_pico);
  // A key of a configured tenant still works.
  const k2 = await env.createKey({ tenant: 'other', job: 'main' });
  const ok2 = await env.post(CHAT, body, { key: k2 });
  assert.equal(ok2.status, 200, ok2.text);
});

/* ------------------------------------------------------------------ */
/* 5. revocation by unique id                                           */

it('key revoke refuses a prefix shared by two keys and revokes by id', {
  skip: STORE_PG && 'SQLite only: it writes a key row with sqlite3',
}, async (t) => {
  const env = await startEnv({ t });
  const a = await env.createKeyFull({ tenant: 'acme', job: 'main' });
  const b = await env.createKeyFull({ tenant: 'acme', job: 'main' });
  // Each call its own body: an identical one could be answered from a kept
  // result instead of the provider.
  let n = 0;
  const call = (k) => env.post(CHAT, chatBody({ content: `revoke by id ${n++}` }), { key: k });
  // Both used once: the daemon holds them in its cache.
  assert.equal((await call(a.key)).status, 200);
  assert.equal((await call(b.key)).status, 200);

  const list0 = await env.keyList();
  const pa = list0.find((k) => k.id === a.id)?.prefix;
  assert.ok(pa, `no prefix for ${a.id} in ${JSON.stringify(list0)}`);
  assert.match(pa, /^[0-9A-Za-z_]+$/);
  const db = join(env.dataDir, 'fusebox.db');
  const u = await sqlite(db, `UPDATE keys SET prefix='${pa}' WHERE id='${b.id}';`);
  assert.equal(u.code, 0, `sqlite3: ${u.stderr}`);
  const list1 = await env.keyList();
  assert.equal(list1.filter((k) => k.prefix === pa).length, 2, 'the two keys do not share a prefix');

  const r = await run(['key', 'revoke', '--config', env.configPath, pa]);
  env.checkText('fusebox key revoke', r.stderr);
  assert.notEqual(r.code, 0, `revoking a shared prefix succeeded: ${r.stderr}`);
  assert.match(r.stderr, /several keys/, r.stderr);
  const list2 = await env.keyList();
  for (const id of [a.id, b.id]) {
    assert.equal(list2.find((k) => k.id === id)?.revoked, false, `${id} was revoked by the refused command`);
  }
  assert.equal((await call(a.key)).status, 200);
  assert.equal((await call(b.key)).status, 200);

  // By id: only that key, and the daemon learns it within a bounded wait.
  await env.revokeKey(b.id);
  const list3 = await env.keyList();
  assert.equal(list3.find((k) => k.id === b.id)?.revoked, true);
  assert.equal(list3.find((k) => k.id === a.id)?.revoked, false);
  const refused = await waitFor(async () => {
    const x = await call(b.key);
    return x.status === 401 ? x : null;
  }, { timeoutMs: 5000, intervalMs: 100, message: 'the revoked key to be refused' });
  assert.equal(refused.json.error.type, 'invalid_api_key');
  // The change feed is applied in order: had the refused command revoked
  // anything, the daemon would know it by now.
  const still = await call(a.key);
  assert.equal(still.status, 200, `the other key of the shared prefix was dropped: ${still.text}`);
});

/* ------------------------------------------------------------------ */
/* 6. upstream response header injection                               */

it('upstream header lines with a bare CR or folding are not passed on', async (t) => {
  const up = await rawUpstream(() =>
    'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-A: foo\rInjected: yes\r\n' +
    ' X-Folded: bar\r\nX-Ok: fine\r\nContent-Length: 2\r\n\r\n{}');
  t.after(() => up.close());
  const env = await startEnv({
    t,
    providers: {
      up: { kind: 'generic', base_url: `http://127.0.0.1:${up.port}`, api_key_env: 'GENERIC_API_KEY', price_per_call_usd: '0.001' },
    },
  });
  const key = await env.createKey();
  const body = '{"q":"headers"}';
  const r = await rawExchange(env.gwHost, env.gwPort,
    `POST /up/v1/search HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\n` +
    `Content-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
    { timeoutMs: 10000 });
  assert.equal(up.seen.length, 1, 'the upstream was not called once');
  assert.equal(r.status, 200, r.text);
  const end = r.text.indexOf('\r\n\r\n');
  assert.ok(end > 0, `no response head: ${JSON.stringify(r.text)}`);
  const head = r.text.slice(0, end);
  const lines = head.split('\r\n');
  assert.ok(lines.some((l) => /^X-Ok: fine$/i.test(l)), `no X-Ok line in ${JSON.stringify(head)}`);
  assert.ok(!head.includes('Injected'), `an injected header got through: ${JSON.stringify(head)}`);
  assert.ok(!lines.some((l) => /^[ \t]/.test(l)), `a folded line got through: ${JSON.stringify(head)}`);
  assert.ok(!head.includes('X-Folded'), `the folded header got through: ${JSON.stringify(head)}`);
  assert.ok(!/\r(?!\n)/.test(head), `a bare CR in the head: ${JSON.stringify(head)}`);
  assert.equal(r.body, '{}');
  assert.equal(pico(r.headers['x-fusebox-cost-usd']), pico('0.001'));
});

/* ------------------------------------------------------------------ */
/* 7. HEAD and bodiless DELETE upstream                                 */

it('HEAD and a bodiless DELETE reach the upstream with their method and no body', async (t) => {
  const up = await rawUpstream((req) => (req.method === 'HEAD'
    ? 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nX-Up-Method: HEAD\r\n\r\n'
    : `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Up-Method: ${req.method}\r\n` +
      'Content-Length: 11\r\n\r\n{"ok":true}'));
  t.after(() => up.close());
  const env = await startEnv({
    t,
    limits: { upstream_timeout_ms: 5000 },
    providers: {
      up: { kind: 'generic', base_url: `http://127.0.0.1:${up.port}`, api_key_env: 'GENERIC_API_KEY', price_per_call_usd: '0.002' },
    },
  });
  const key = await env.createKey();
  const send = (method) => rawExchange(env.gwHost, env.gwPort,
    `${method} /up/v1/items/42 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\nConnection: close\r\n\r\n`,
    { timeoutMs: 15000 });

  const checkUpstream = (req, method) => {
    assert.equal(req.method, method, `the upstream saw ${req.method}`);
    assert.equal(req.target, '/v1/items/42');
    const cl = req.get('content-length');
    assert.ok(cl === undefined || Number(cl) === 0, `${method} forwarded Content-Length: ${cl}`);
    assert.equal(req.chunked, false, `${method} forwarded a chunked body`);
    assert.equal(req.body, '', `${method} forwarded a body`);
    assert.equal(req.get('content-type'), undefined,
      `${method} got a Content-Type the client never sent: ${req.get('content-type')}`);
    assert.equal(req.get('authorization'), `Bearer ${PROVIDER_KEYS.GENERIC_API_KEY}`);
  };

  const h = await send('HEAD');
  assert.equal(up.seen.length, 1, 'HEAD did not reach the upstream once');
  checkUpstream(up.seen[0], 'HEAD');
  assert.equal(h.status, 200, `HEAD answered ${h.status}: ${h.text}`);
  assert.equal(h.headers['x-up-method'], 'HEAD');
  assert.equal(pico(h.headers['x-fusebox-cost-usd']), pico('0.002'));
  const hb = h.text.slice(h.text.indexOf('\r\n\r\n') + 4);
  assert.equal(hb, '', 'a HEAD answer carried a body');

  const d = await send('DELETE');
  assert.equal(up.seen.length, 2, 'DELETE did not reach the upstream once');
  checkUpstream(up.seen[1], 'DELETE');
  assert.equal(d.status, 200, `DELETE answered ${d.status}: ${d.text}`);
  assert.equal(d.headers['x-up-method'], 'DELETE');
  assert.deepEqual(d.json, { ok: true });
  assert.equal(pico(d.headers['x-fusebox-cost-usd']), pico('0.002'));
  assert.equal(await env.healthz(), 200);
});

/* ------------------------------------------------------------------ */
/* 8. fusebox keys in the URL                                          */

it('a fusebox key in the query string is refused with 400 and never reaches the provider', async (t) => {
  const env = await startEnv({ t });
  const key = await env.createKey();
  const body = chatBody({ content: 'key in url' });
  const b0 = await env.billing();
  for (const path of [`${CHAT}?api_key=${key}`, `${CHAT}?x=1&key=${key}`, `/generic/v1/send?token=${key}`]) {
    const r = await env.post(path, path.startsWith('/generic') ? '{}' : body, { key });
    assert.equal(r.status, 400, `${path}: ${r.status} ${r.text}`);
    assert.equal(r.json?.error?.type, 'invalid_request', r.text);
    assert.equal(r.headers['x-should-retry'], 'false');
  }
  const b1 = await env.billing();
  assert.equal(b1.requests, b0.requests, 'a call with the key in its URL reached the provider');
  assert.equal(b1.virtual_key_seen, b0.virtual_key_seen);
  // The same call with the key only in the header goes through.
  const ok = await env.post(CHAT, body, { key });
  assert.equal(ok.status, 200, ok.text);
});

/* ------------------------------------------------------------------ */
/* 9. a second SIGTERM while draining                                   */

it('a second SIGTERM during a drain stops the daemon promptly', {
  // on a shared store the calls cut are charged as the node leaves, not
  // at the next start (cluster.test.mjs)
  skip: STORE_PG && 'SQLite only: charged at the next start',
}, async (t) => {
  const env = await startEnv({ t, budgets: { global: '100', tenants: { acme: { budget: '50', jobs: { main: '10' } } } } });
  const key = await env.createKey({ tenant: 'acme', job: 'main' });
  const N = 3;
  // Distinct bodies: identical calls in flight would wait for one another.
  const bodies = Array.from({ length: N }, (_, i) => chatBody({ content: `held in flight ${i}` }));
  const b0 = await env.billing();
  const calls = bodies.map((body) =>
    env.post(CHAT, body, { key, headers: { 'x-fake-fault': 'delay_ms=20000' }, timeoutMs: 60000 })
      .then((r) => r.status, (e) => `transport error: ${e.code || e.message}`));
  await waitFor(async () => (await env.billing()).requests - b0.requests >= N,
    { timeoutMs: 10000, message: 'the calls to reach the provider' });

  const gw = env.gw;
  const { gwHost: host, gwPort: port } = env;
  gw.child.kill('SIGTERM');
  await waitFor(() => new RegExp(`draining ${N} calls in flight`).test(gw.stderr) || gw.exited,
    { timeoutMs: 5000, message: 'the drain to start' });
  // Draining: the listener is closed, the process still runs (its calls
  // are held for 20 s).
  await waitFor(async () => gw.exited || !(await canConnect(host, port)),
    { timeoutMs: 5000, message: 'the listener to close' });
  assert.equal(gw.exited, false, `the daemon exited on the first SIGTERM with calls in flight: ${gw.stderr}`);

  gw.child.kill('SIGTERM');
  await waitFor(() => gw.exited, { timeoutMs: 5000, message: 'the daemon to exit after a second SIGTERM' });
  detachGateway(env);
  await Promise.race([gw.closedPromise, new Promise((r) => setTimeout(r, 2000).unref())]);
  assert.match(gw.stderr, /second signal/, gw.stderr);
  env.checkProc(gw);
  assert.equal(gw.code, 0, `exit code ${gw.code}, signal ${gw.signal}; stderr:\n${gw.stderr}`);
  const statuses = await Promise.all(calls);
  for (const s of statuses) assert.notEqual(s, 200, 'a call held 20 s was answered before the forced stop');

  // The abandoned calls are charged in full at the next start; nothing is
  // left in flight.
  await env.restart();
  assert.match(env.gw.stderr, new RegExp(`${N} calls were in flight at the last stop; charged in full`));
  const s = await env.settled();
  const job = s.scopes.find((x) => x.scope === 'job:main');
  const reserved = bodies.reduce((sum, body) => sum + worstChat(body, 16), 0n);
  assert.equal(BigInt(job.spent_pico), reserved, 'the abandoned calls were not charged their reservation');
});

/* ------------------------------------------------------------------ */
/* 10. the priority service tier                                        */

it('service_tier priority is reserved and settled at the priority prices; unknown priority prices are refused', async (t) => {
  const env = await startEnv({ t });
  const maxTokens = 1000;
  const prioBody = chatBody({ content: 'priority please', maxTokens, extra: { service_tier: 'priority' } });
  const stdWorst = worstChat(prioBody, maxTokens, GPT4O_MINI);
  const prioWorst = worstChat(prioBody, maxTokens, GPT4O_MINI_PRIORITY);
  const budget = (stdWorst + prioWorst) / 2n;
  assert.ok(stdWorst < budget && budget < prioWorst);
  const key = await env.createKey({ tenant: 'acme', job: 'main', budget: usd(budget) });

  const b0 = await env.billing();
  const r = await env.post(CHAT, prioBody, { key });
  assert.equal(r.status, 402, `a priority call fitting only the standard worst case: ${r.status} ${r.text}`);
  assert.equal(r.json.error.type, 'budget_exceeded');
  assert.match(r.json.error.scope, /^key:/);
  assert.equal(pico(r.json.error.request_max_usd), prioWorst,
    `reserved ${r.json.error.request_max_usd}, want the priority worst case ${usd(prioWorst)} (standard: ${usd(stdWorst)})`);
  assert.equal((await env.billing()).requests, b0.requests);

  // The same call at the default tier fits that budget.
  const defBody = chatBody({ content: 'priority please', maxTokens, extra: { service_tier: 'default' } });
  assert.ok(worstChat(defBody, maxTokens) < budget);
  const d = await env.post(CHAT, defBody, { key });
  assert.equal(d.status, 200, d.text);

  // Settled from usage at the priority prices.
  const big = await env.createKey({ tenant: 'acme', job: 'main' });
  const p = await env.post(CHAT,
    chatBody({ content: 'priority, settled', maxTokens, extra: { service_tier: 'priority' } }), { key: big });
  assert.equal(p.status, 200, p.text);
  const u = p.json.usage;
  const cached = BigInt(u.prompt_tokens_details?.cached_tokens ?? 0);
  const want = (BigInt(u.prompt_tokens) - cached) * GPT4O_MINI_PRIORITY.input +
    cached * GPT4O_MINI_PRIORITY.cacheRead + BigInt(u.completion_tokens) * GPT4O_MINI_PRIORITY.output;
  assert.equal(pico(p.headers['x-fusebox-cost-usd']), want,
    `charged ${p.headers['x-fusebox-cost-usd']}, want ${usd(want)} at priority prices`);

  // A model with no priority price: refused, fail closed.
  const b1 = await env.billing();
  const o = await env.post(CHAT, chatBody({ model: 'o3-mini', maxTokens: 100, extra: { service_tier: 'priority' } }), { key: big });
  assert.equal(o.status, 400, o.text);
  assert.equal(o.json.error.type, 'unknown_price');
  assert.equal(o.headers['x-should-retry'], 'false');
  assert.equal((await env.billing()).requests, b1.requests, 'an unpriced priority call reached the provider');
  // o3-mini itself is priced at the default tier.
  const o2 = await env.post(CHAT, chatBody({ model: 'o3-mini', maxTokens: 100 }), { key: big });
  assert.equal(o2.status, 200, o2.text);
});
