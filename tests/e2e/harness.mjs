// harness.mjs - the shared side of the black-box tests: start the real
// fusebox binary (the fake paid provider and the gateway in front of it)
// in a fresh temp dir, talk to it, stop it, and fail the test when any
// process printed a sanitizer report. Nothing here sleeps to synchronise:
// waits poll a condition with a bound (waitFor).
//
//   FUSEBOX_BIN       the binary (default: build/fusebox in the repo)
//   FUSEBOX_VALGRIND  1: run the daemon under valgrind (bounds grow x10)

import { spawn, execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync, renameSync, rmSync, existsSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

const HERE = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(HERE, '..', '..');

function binPath() {
  const b = process.env.FUSEBOX_BIN || 'build/fusebox';
  return isAbsolute(b) ? b : resolve(REPO, b);
}
export const BIN = binPath();
export const VALGRIND = process.env.FUSEBOX_VALGRIND === '1';
/** Multiplier for every time bound (valgrind is ~20x slower). */
export const SLOW = VALGRIND ? 10 : 1;

export const PROVIDER_KEYS = {
  OPENAI_API_KEY: 'sk-fake-openai',
  ANTHROPIC_API_KEY: 'sk-fake-anthropic',
  GENERIC_API_KEY: 'fake-generic-key',
};

const SANITIZER_MARKS = ['AddressSanitizer', 'LeakSanitizer', 'runtime error:',
  'assertion failed'];
// What valgrind -q prints for a memory error (the exit code 99 says it too,
// but only at a clean exit).
const VALGRIND_ERROR = /==\d+== (Invalid (read|write|free)|Conditional jump|Use of uninitialised|Syscall param|Mismatched free|Source and destination overlap|\d+ bytes in \d+ blocks are definitely lost)/;

function reportIn(text) {
  return SANITIZER_MARKS.some((m) => text.includes(m)) || VALGRIND_ERROR.test(text);
}

/* ------------------------------------------------------------------ */
/* money: exact decimal USD <-> BigInt picodollars                     */

const PICO_DIGITS = 12;
export const PICO_PER_USD = 10n ** 12n;

/** "0.0000126", "5", "-1.25", "1.5e-07" -> BigInt picodollars, exactly.
 *  Throws if the text is not a number or has digits finer than 1e-12. */
export function pico(text) {
  if (typeof text === 'bigint') return text;
  if (typeof text !== 'string') {
    // A JS number may already have lost digits: never guess.
    throw new Error(`pico(${text}): want the decimal text, got a ${typeof text}`);
  }
  const m = /^\s*\$?([+-])?(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?\s*$/.exec(String(text));
  if (!m || (m[2] === '' && (m[3] === undefined || m[3] === ''))) {
    throw new Error(`pico(${JSON.stringify(text)}): not a decimal amount`);
  }
  const sign = m[1] === '-' ? -1n : 1n;
  const intPart = m[2] || '';
  const frac = m[3] || '';
  const exp = m[4] ? Number.parseInt(m[4], 10) : 0;
  let digits = (intPart + frac).replace(/^0+(?=\d)/, '') || '0';
  let scale = PICO_DIGITS - frac.length + exp; // digits * 10^scale
  if (scale >= 0) return sign * BigInt(digits) * 10n ** BigInt(scale);
  const cut = -scale;
  const padded = digits.padStart(cut + 1, '0');
  const kept = padded.slice(0, padded.length - cut);
  const dropped = padded.slice(padded.length - cut);
  if (/[^0]/.test(dropped)) {
    throw new Error(`pico(${JSON.stringify(text)}): finer than a picodollar`);
  }
  return sign * BigInt(kept);
}

/** BigInt picodollars -> "0.0000126" (exact; at least one decimal). */
export function usd(p) {
  p = BigInt(p);
  const neg = p < 0n;
  if (neg) p = -p;
  const whole = p / PICO_PER_USD;
  let frac = (p % PICO_PER_USD).toString().padStart(PICO_DIGITS, '0').replace(/0+$/, '');
  if (frac === '') frac = '0';
  return `${neg ? '-' : ''}${whole}.${frac}`;
}

/* ------------------------------------------------------------------ */
/* waiting                                                             */

/** Poll fn() (sync or async) until it returns a truthy value; return it.
 *  Throws after timeoutMs (scaled by SLOW) with the message (a string or
 *  a function giving one) and the last value seen. */
export async function waitFor(fn, { timeoutMs = 5000, intervalMs = 20, message = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs * SLOW;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) {
      const what = typeof message === 'function' ? message() : message;
      throw new Error(`timed out after ${timeoutMs * SLOW} ms waiting for ${what}` +
        ` (last: ${safeJson(last)})`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

function safeJson(v) {
  try {
    return JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x));
  } catch {
    return String(v);
  }
}

/* ------------------------------------------------------------------ */
/* child processes                                                     */

const live = new Set();

function killAllSync() {
  for (const p of live) {
    try { p.child.kill('SIGKILL'); } catch { /* gone */ }
  }
  live.clear();
}
process.on('exit', killAllSync);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => { killAllSync(); process.exit(130); });
}

/** A long-running child whose stdout announces "... listening on H:P". */
class Proc {
  constructor(name, cmd, args, { env, cwd } = {}) {
    this.name = name;
    this.stdout = '';
    this.stderr = '';
    this.exited = false;
    this.code = null;
    this.signal = null;
    this.child = spawn(cmd, args, {
      env: { ...process.env, ...env },
      cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.pid = this.child.pid;
    this.child.stdout.setEncoding('utf8');
    this.child.stderr.setEncoding('utf8');
    this.child.stdout.on('data', (d) => { this.stdout += d; });
    this.child.stderr.on('data', (d) => { this.stderr += d; });
    this.exitPromise = new Promise((res) => {
      this.child.on('exit', (code, signal) => {
        this.exited = true;
        this.code = code;
        this.signal = signal;
        live.delete(this);
        res({ code, signal });
      });
      this.child.on('error', (err) => {
        this.stderr += `\n[harness] spawn error: ${err.message}\n`;
        this.exited = true;
        live.delete(this);
        res({ code: -1, signal: null });
      });
    });
    // Both pipes closed too: everything the child wrote has been read.
    this.closedPromise = new Promise((res) => this.child.on('close', res));
    live.add(this);
  }

  /** Wait for the ready line; returns "HOST:PORT". */
  async ready(prefix, timeoutMs = 10000) {
    const re = new RegExp(`^${prefix} listening on (\\S+):(\\d+)\\s*$`, 'm');
    const m = await waitFor(() => {
      if (this.exited) {
        throw new Error(`${this.name} exited (code ${this.code}, signal ${this.signal}) ` +
          `before it was ready; stderr:\n${this.stderr}`);
      }
      return re.exec(this.stdout);
    }, { timeoutMs, intervalMs: 10, message: `${this.name} ready line` });
    return { host: m[1], port: Number(m[2]), addr: `${m[1]}:${m[2]}` };
  }

  /** SIGTERM (or sig), wait for exit (bounded), then SIGKILL. */
  async stop(sig = 'SIGTERM', timeoutMs = 15000) {
    if (!this.exited) {
      try { this.child.kill(sig); } catch { /* gone */ }
      const t = setTimeout(() => { try { this.child.kill('SIGKILL'); } catch { /* */ } },
        timeoutMs * SLOW);
      await this.exitPromise;
      clearTimeout(t);
    }
    await Promise.race([this.closedPromise,
      new Promise((r) => setTimeout(r, 2000).unref())]);
    return { code: this.code, signal: this.signal };
  }

  sanitizerReport() {
    return reportIn(this.stderr) ? this.stderr : null;
  }
}

/** Run a fusebox CLI command to its end. */
export function run(args, { env, timeoutMs = 20000 } = {}) {
  return new Promise((res) => {
    execFile(BIN, args, {
      env: { ...process.env, ...env },
      timeout: timeoutMs * SLOW,
      maxBuffer: 16 << 20,
    }, (err, stdout, stderr) => {
      res({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

/* ------------------------------------------------------------------ */
/* plain HTTP (one connection per request: no pooled sockets to race   */
/* the gateway's idle timeout)                                         */

/** request('POST', url, {headers, body}) -> {status, headers, text, json}.
 *  Rejects only on transport errors. */
export function request(method, url, { headers = {}, body, timeoutMs = 30000 } = {}) {
  return new Promise((res, rej) => {
    // Not new URL(url): it would normalise "/a/../b", which tests send on
    // purpose.
    const m = /^http:\/\/([^/:]+|\[[^\]]+\]):(\d+)(\/.*)?$/.exec(url);
    if (!m) throw new Error(`request: cannot parse ${url}`);
    const u = { hostname: m[1].replace(/^\[|\]$/g, ''), port: m[2], pathname: m[3] || '/', search: '' };
    const data = body === undefined ? undefined
      : (typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body));
    const h = { ...headers };
    if (data !== undefined && !Object.keys(h).some((k) => k.toLowerCase() === 'content-type')) {
      h['content-type'] = 'application/json';
    }
    if (data !== undefined) h['content-length'] = Buffer.byteLength(data);
    const req = http.request({
      host: u.hostname, port: u.port, path: u.pathname + u.search, method,
      headers: h, agent: false,
    }, (resp) => {
      const chunks = [];
      resp.on('data', (c) => chunks.push(c));
      resp.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try { json = JSON.parse(text); } catch { json = undefined; }
        res({ status: resp.statusCode, headers: resp.headers, text, json });
      });
      resp.on('error', rej);
    });
    req.setTimeout(timeoutMs * SLOW, () => req.destroy(new Error(`${method} ${url}: timed out`)));
    req.on('error', rej);
    if (data !== undefined) req.write(data);
    req.end();
  });
}

/** Write raw bytes to host:port and resolve with what came back before
 *  the server closed the connection or timeoutMs passed (`why` tells
 *  which), parsed into status, headers, body and json where possible.
 *  Write errors (the server answering and closing early) are tolerated. */
export function rawExchange(host, port, bytes, { timeoutMs = 5000 } = {}) {
  return new Promise((res) => {
    const chunks = [];
    let done = false;
    const sock = net.connect({ host, port });
    const finish = (why) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      const text = Buffer.concat(chunks).toString('latin1');
      res({ text, why, ...parseRawResponse(text) });
    };
    const timer = setTimeout(() => finish('timeout'), timeoutMs * SLOW);
    sock.on('connect', () => sock.write(bytes, () => { /* written */ }));
    sock.on('data', (c) => chunks.push(c));
    sock.on('end', () => finish('end'));
    sock.on('close', () => finish('close'));
    sock.on('error', () => { /* EPIPE/ECONNRESET after an early answer */ });
  });
}

function parseRawResponse(text) {
  const m = /^HTTP\/1\.[01] (\d{3})[^\r\n]*\r\n([\s\S]*?)\r\n\r\n([\s\S]*)$/.exec(text);
  if (!m) return { status: null, headers: {}, body: '', json: undefined };
  const headers = {};
  for (const line of m[2].split('\r\n')) {
    const i = line.indexOf(':');
    if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  let body = m[3];
  if (headers['content-length'] !== undefined) body = body.slice(0, Number(headers['content-length']));
  let json;
  try { json = JSON.parse(body); } catch { json = undefined; }
  return { status: Number(m[1]), headers, body, json };
}

/** A loopback port that nothing listens on (bound, then closed). */
export async function closedPort() {
  const srv = net.createServer();
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

/* ------------------------------------------------------------------ */
/* config                                                              */

function yq(s) {
  return JSON.stringify(String(s)); // a JSON string is a YAML double-quoted scalar
}

/** The YAML text of a config. budgets: {global, tenants: {T: {budget,
 *  jobs: {J: budget}}}}; limits: {...}; providers: extra providers
 *  {name: {kind, base_url, ...}} merged over the defaults. */
function configYaml(o) {
  const lines = [];
  lines.push(`listen: ${yq('127.0.0.1:0')}`);
  lines.push(`data_dir: ${yq(o.dataDir)}`);
  if (o.logLevel) lines.push(`log_level: ${o.logLevel}`);
  if (o.prices && o.prices.length) {
    lines.push('prices:');
    for (const p of o.prices) lines.push(`  - ${yq(p)}`);
  }
  if (o.modelPrices && Object.keys(o.modelPrices).length) {
    lines.push('model_prices:');
    for (const [m, p] of Object.entries(o.modelPrices)) {
      lines.push(`  ${yq(m)}:`);
      for (const [k, v] of Object.entries(p)) lines.push(`    ${k}: ${yq(v)}`);
    }
  }
  lines.push('providers:');
  for (const [name, p] of Object.entries(o.providers)) {
    lines.push(`  ${name}:`);
    for (const [k, v] of Object.entries(p)) {
      if (v !== undefined && v !== null) lines.push(`    ${k}: ${yq(v)}`);
    }
  }
  const b = o.budgets || {};
  lines.push('budgets:');
  if (b.global !== undefined) lines.push(`  global: ${yq(b.global)}`);
  const tenants = b.tenants || {};
  if (Object.keys(tenants).length) {
    lines.push('  tenants:');
    for (const [t, tc] of Object.entries(tenants)) {
      lines.push(`    ${t}:`);
      if (tc.budget !== undefined) lines.push(`      budget: ${yq(tc.budget)}`);
      const jobs = tc.jobs || {};
      if (Object.keys(jobs).length) {
        lines.push('      jobs:');
        for (const [j, jb] of Object.entries(jobs)) {
          lines.push(jb === null || jb === undefined ? `        ${j}: {}` : `        ${j}: ${yq(jb)}`);
        }
      } else if (tc.budget === undefined) {
        lines.push('      jobs: {}');
      }
    }
  }
  if (o.limits && Object.keys(o.limits).length) {
    lines.push('limits:');
    for (const [k, v] of Object.entries(o.limits)) lines.push(`  ${k}: ${v}`);
  }
  if (o.admin) lines.push('admin:', `  listen: ${yq('127.0.0.1:0')}`);
  else lines.push('admin:', '  listen: off');
  if (o.store) {
    lines.push(`store: ${yq(o.store)}`);
    // short leases: a node killed in a test is reaped within seconds
    lines.push('cluster:', '  lease_ms: 1500');
  }
  if (o.extraYaml) lines.push(o.extraYaml.trimEnd());
  return lines.join('\n') + '\n';
}

/* ------------------------------------------------------------------ */
/* the environment: fake provider + gateway                            */

/**
 * Start the fake provider and the gateway in a fresh temp dir.
 *
 * opts:
 *   budgets     {global, tenants: {T: {budget, jobs: {J: budget}}}}
 *   limits      {max_body_bytes, upstream_timeout_ms, ...}
 *   providers   extra/overriding providers: {name: {kind, base_url, ...}};
 *               base_url may contain "FAKE" for the fake's http://HOST:PORT
 *   generic     {price, countField} for both the fake and the generic provider
 *   pricesJson  a LiteLLM-style price object given to both sides
 *   modelPrices model_prices overrides (gateway only)
 *   logLevel
 *   gwEnv       extra environment for the gateway (LD_PRELOAD, ...)
 *   extraYaml   raw YAML appended to the config (alerts: ...)
 *   store       a PostgreSQL URL to share (cluster tests); by default each
 *               env gets a database of its own when FUSEBOX_E2E_STORE=pg
 *               (then FUSEBOX_TEST_PG names the server), else SQLite
 *   clock       a test clock's start (ms): env.setClock(ms) moves it
 *   admin       true: the admin surface on a free loopback port
 *               (env.adminUrl), with a random token (env.adminToken)
 *   t           a node:test context: cleanup is registered with t.after
 *
 * Call env.close() at the end (or pass t): it stops everything and
 * asserts that no process printed a sanitizer report.
 */
/* ---- PostgreSQL (FUSEBOX_TEST_PG: a throw-away server, scripts/pg.sh) ---- */

/** The suites run on PostgreSQL when FUSEBOX_E2E_STORE=pg. */
export const STORE_PG = process.env.FUSEBOX_E2E_STORE === 'pg' && !!process.env.FUSEBOX_TEST_PG;
export const PG_URL = process.env.FUSEBOX_TEST_PG || null;

/** Run SQL on the test server's postgres database (psql, no retries). */
export function pgSql(sql, db = null) {
  let url = PG_URL;
  if (db) url = url.replace(/\/[^/?]*(\?|$)/, `/${db}$1`);
  return new Promise((res, rej) => {
    execFile('psql', [url, '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-c', sql],
      { timeout: 60000 }, (err, stdout, stderr) => (err ? rej(new Error(`${sql}: ${stderr}`)) : res(stdout.trim())));
  });
}

/** A new, empty database on the test server; its URL. */
export async function pgDatabase(name) {
  assert.ok(PG_URL, 'FUSEBOX_TEST_PG is not set');
  await pgSql(`CREATE DATABASE ${name}`);
  return PG_URL.replace(/\/[^/?]*(\?|$)/, `/${name}$1`);
}

export async function startEnv(opts = {}) {
  const env = new Env(opts);
  if (opts.t) opts.t.after(() => env.close());
  try {
    await env.start();
  } catch (e) {
    await env.close({ check: false });
    throw e;
  }
  return env;
}

class Env {
  constructor(opts) {
    this.opts = opts;
    this.dir = mkdtempSync(join(tmpdir(), 'fusebox-e2e-'));
    this.dataDir = join(this.dir, 'data');
    this.configPath = join(this.dir, 'fusebox.yaml');
    this.fake = null;
    this.gw = null;
    this.old = []; // stopped processes, kept for their stderr
    this.closed = false;
    // The admin surface's token (opts.admin): random per run, so that a
    // test can also look for it where it must not be (logs, data_dir).
    this.adminToken = opts.admin ? `adm-${randomBytes(12).toString('hex')}` : null;
    // A test clock (opts.clock, ms): the gateway and the CLI read the wall
    // time from this file (FUSEBOX_CLOCK_FILE); env.setClock moves it.
    this.clockFile = null;
    this.cliEnv = {};
    if (opts.clock !== undefined) {
      this.clockFile = join(this.dir, 'clock');
      this.setClock(opts.clock);
      this.cliEnv = { FUSEBOX_CLOCK_FILE: this.clockFile };
    }
  }

  /** Set the test clock (opts.clock) to ms since the epoch. */
  setClock(ms) {
    this.clockNow = ms;
    writeFileSync(`${this.clockFile}.tmp`, String(ms));
    renameSync(`${this.clockFile}.tmp`, this.clockFile); // never half-written
  }

  async start() {
    const o = this.opts;
    let pricesFile = null;
    if (o.pricesJson) {
      pricesFile = join(this.dir, 'prices.json');
      writeFileSync(pricesFile, JSON.stringify(o.pricesJson, null, 2));
    }
    const fakeArgs = ['fake-provider', '--listen', '127.0.0.1:0'];
    if (o.generic?.price !== undefined) fakeArgs.push('--generic-price', String(o.generic.price));
    if (o.generic?.countField) fakeArgs.push('--generic-count-field', o.generic.countField);
    if (pricesFile) fakeArgs.push('--prices', pricesFile);
    this.fake = new Proc('fake-provider', BIN, fakeArgs, { cwd: this.dir });
    const f = await this.fake.ready('fake-provider');
    this.fakeAddr = f.addr;
    this.fakeUrl = `http://${f.addr}`;

    const providers = {
      openai: { kind: 'openai', base_url: this.fakeUrl, api_key_env: 'OPENAI_API_KEY' },
      anthropic: { kind: 'anthropic', base_url: this.fakeUrl, api_key_env: 'ANTHROPIC_API_KEY' },
      generic: {
        kind: 'generic', base_url: `${this.fakeUrl}/generic`, api_key_env: 'GENERIC_API_KEY',
        price_per_call_usd: o.generic?.price !== undefined ? String(o.generic.price) : '0.008',
        count_field: o.generic?.countField,
      },
    };
    for (const [name, p] of Object.entries(o.providers || {})) {
      const copy = { ...p };
      if (typeof copy.base_url === 'string') copy.base_url = copy.base_url.replace('FAKE', this.fakeUrl);
      providers[name] = copy;
    }
    this.store = o.store || null;
    if (!this.store && STORE_PG) {
      this.pgDb = `fbe2e_${randomBytes(6).toString('hex')}`;
      this.store = await pgDatabase(this.pgDb);
    }
    this.yaml = configYaml({
      store: this.store,
      dataDir: this.dataDir,
      logLevel: o.logLevel,
      prices: pricesFile ? [pricesFile] : [],
      modelPrices: o.modelPrices,
      providers,
      budgets: o.budgets || { tenants: { acme: { jobs: { main: null } } } },
      limits: o.limits,
      admin: !!o.admin,
      extraYaml: o.extraYaml,
    });
    writeFileSync(this.configPath, this.yaml);
    if (this.store) {
      const m = await run(['migrate', '--config', this.configPath], { env: this.cliEnv });
      assert.equal(m.code, 0, `fusebox migrate failed: ${m.stderr}`);
    }
    await this.startGateway();
  }

  async startGateway() {
    const args = ['serve', '--config', this.configPath];
    const cmd = VALGRIND ? 'valgrind' : BIN;
    const argv = VALGRIND
      ? ['--error-exitcode=99', '--leak-check=full', '-q', BIN, ...args]
      : args;
    this.gw = new Proc('fusebox serve', cmd, argv, {
      env: {
        ...PROVIDER_KEYS,
        ...(this.adminToken ? { FUSEBOX_ADMIN_TOKEN: this.adminToken } : {}),
        ...this.cliEnv,
        ...(this.opts.gwEnv || {}),
      },
      cwd: this.dir,
    });
    const g = await this.gw.ready('fusebox', 15000);
    if (this.adminToken) {
      const a = await this.gw.ready('fusebox admin', 5000);
      this.adminUrl = `http://${a.addr}`;
    }
    this.gwAddr = g.addr;
    this.gwHost = g.host;
    this.gwPort = g.port;
    this.gwUrl = `http://${g.addr}`;
    const gw = this.gw;
    let lastErr = null;
    await waitFor(async () => {
      if (gw.exited || gw.sanitizerReport()) {
        await Promise.race([gw.closedPromise, new Promise((r) => setTimeout(r, 1000).unref())]);
        throw new Error(`fusebox serve died before answering /healthz (code ${gw.code}, ` +
          `signal ${gw.signal}); stderr:\n${gw.stderr}`);
      }
      try {
        const r = await request('GET', `${this.gwUrl}/healthz`, { timeoutMs: 2000 });
        lastErr = `status ${r.status}`;
        return r.status === 200;
      } catch (e) {
        lastErr = e.message;
        return false;
      }
    }, { timeoutMs: 10000, message: () => `GET /healthz 200 (last: ${lastErr})` });
  }

  /* ---- the store, straight (tests that seed or inspect it) ---- */

  /** Run SQL on this env's store: sqlite3 on data_dir/fusebox.db, or psql
   *  on its PostgreSQL database (SQL on stdin, rows as a|b|c lines). */
  sql(text) {
    if (!this.store) return sqlite(join(this.dataDir, 'fusebox.db'), text);
    return new Promise((res) => {
      const c = execFile('psql', [this.store, '-X', '-q', '-A', '-t', '-F', '|', '-v', 'ON_ERROR_STOP=1', '-f', '-'],
        { timeout: 60000 * SLOW, maxBuffer: 256 << 20 },
        (err, stdout, stderr) => res({ code: err ? (err.code ?? -1) : 0, stdout, stderr }));
      c.stdin.end(text.trimEnd().endsWith(';') ? `${text}\n` : `${text};\n`);
    });
  }

  /** Every row of the store as text (sqlite3 .dump, pg_dump). */
  dump() {
    if (!this.store) return sqlite(join(this.dataDir, 'fusebox.db'), '.dump');
    return new Promise((res) => execFile('pg_dump', [this.store], { maxBuffer: 256 << 20 },
      (err, stdout, stderr) => res({ code: err ? (err.code ?? -1) : 0, stdout, stderr })));
  }

  /** A 32-byte value in this store's SQL (hex text in). */
  blob(hex) {
    return this.store ? `'\\x${hex}'::bytea` : `X'${hex}'`;
  }

  /* ---- the CLI ---- */

  /** fusebox key create; returns the key text (last stdout line). The id
   *  ("created key k_...") is kept in this.lastKeyId. */
  async createKey({ tenant = 'acme', job, budget, attempt } = {}) {
    const full = await this.createKeyFull({ tenant, job, budget, attempt });
    return full.key;
  }

  async createKeyFull({ tenant = 'acme', job, budget, attempt } = {}) {
    const args = ['key', 'create', '--config', this.configPath, '--tenant', tenant];
    if (job) args.push('--job', job);
    if (budget !== undefined) args.push('--budget', String(budget));
    if (attempt !== undefined) args.push('--attempt', String(attempt));
    const r = await run(args, { env: this.cliEnv });
    assert.equal(r.code, 0, `key create failed: ${r.stderr}`);
    this.checkText('fusebox key create', r.stderr);
    const lines = r.stdout.trim().split('\n');
    const key = lines[lines.length - 1].trim();
    assert.match(key, /^fbk_[0-9a-f]{40}$/, `key create printed ${JSON.stringify(r.stdout)}`);
    const m = /created key (k_[0-9a-zA-Z]+)/.exec(r.stderr);
    assert.ok(m, `key create stderr has no key id: ${r.stderr}`);
    this.lastKeyId = m[1];
    return { key, id: m[1] };
  }

  async revokeKey(id) {
    const r = await run(['key', 'revoke', '--config', this.configPath, id], { env: this.cliEnv });
    assert.equal(r.code, 0, `key revoke failed: ${r.stderr}`);
    this.checkText('fusebox key revoke', r.stderr);
    return r;
  }

  async keyList() {
    const r = await run(['key', 'list', '--config', this.configPath, '--json'], { env: this.cliEnv });
    assert.equal(r.code, 0, `key list failed: ${r.stderr}`);
    return JSON.parse(r.stdout).keys;
  }

  /** fusebox spend --json [args]; the parsed object. */
  async spend(args = []) {
    const r = await run(['spend', '--config', this.configPath, '--json', ...args], { env: this.cliEnv });
    assert.equal(r.code, 0, `spend failed: ${r.stderr}`);
    this.checkText('fusebox spend', r.stderr);
    return JSON.parse(r.stdout);
  }

  /** One scope row of `spend --json` ("global", "tenant:T", "job:J"). */
  async scope(name, args = []) {
    const s = await this.spend(args);
    const row = s.scopes.find((x) => x.scope === name);
    assert.ok(row, `spend has no scope ${name}: ${JSON.stringify(s.scopes.map((x) => x.scope))}`);
    return row;
  }

  /** Poll spend until nothing is in flight in any scope; the last spend. */
  async settled(args = [], timeoutMs = 5000) {
    return waitFor(async () => {
      const s = await this.spend(args);
      return s.scopes.every((x) => pico(x.in_flight_usd) === 0n) ? s : null;
    }, { timeoutMs, message: 'spend with nothing in flight' });
  }

  /* ---- the fake ---- */

  async billing() {
    const r = await request('GET', `${this.fakeUrl}/_fake/billing`);
    assert.equal(r.status, 200);
    return r.json;
  }

  /** Poll billing until two reads in a row agree and nothing is pending. */
  async billingStable(timeoutMs = 10000) {
    let prev = null;
    return waitFor(async () => {
      const b = await this.billing();
      const same = prev && prev.requests === b.requests && prev.billed_pico === b.billed_pico &&
        prev.calls === b.calls;
      prev = b;
      return same && b.pending === 0 ? b : null;
    }, { timeoutMs, intervalMs: 50, message: 'fake billing to settle' });
  }

  /* ---- requests to the gateway ---- */

  url(path) {
    return `${this.gwUrl}${path}`;
  }

  /** POST path with a fusebox key; body an object or a string. */
  post(path, body, { key, headers = {}, timeoutMs } = {}) {
    const h = { ...headers };
    if (key) h.authorization = `Bearer ${key}`;
    return request('POST', this.url(path), { headers: h, body, timeoutMs });
  }

  async healthz() {
    const r = await request('GET', this.url('/healthz'));
    return r.status;
  }

  /* ---- lifecycle ---- */

  checkText(name, text) {
    assert.ok(!reportIn(text), `${name} printed a sanitizer report:\n${text}`);
  }

  /** Assert that no running or stopped process has printed a sanitizer
   *  (or valgrind) report so far; for afterEach hooks. */
  checkNow() {
    for (const p of [...this.old, this.gw, this.fake]) if (p) this.checkProc(p, false);
  }

  checkProc(p, exited = true) {
    const rep = p.sanitizerReport();
    assert.equal(rep, null, `${p.name} (pid ${p.pid}) printed a sanitizer report:\n${rep}`);
    if (exited && VALGRIND && p.name === 'fusebox serve' && p.signal !== 'SIGKILL') {
      assert.notEqual(p.code, 99, `valgrind found errors in ${p.name}:\n${p.stderr}`);
    }
  }

  /** SIGTERM the gateway and wait for its exit; asserts a clean stderr. */
  async stop() {
    if (!this.gw) return;
    const gw = this.gw;
    this.gw = null;
    const { code, signal } = await gw.stop('SIGTERM');
    this.old.push(gw);
    this.checkProc(gw);
    assert.equal(code, 0,
      `fusebox serve exited with code ${code} signal ${signal}; stderr:\n${gw.stderr}`);
  }

  /** kill -9 the gateway and wait until it is gone. */
  async kill9() {
    if (!this.gw) return;
    const gw = this.gw;
    this.gw = null;
    await gw.stop('SIGKILL');
    this.old.push(gw);
    this.checkProc(gw);
  }

  /** Start the gateway again on the same config and data_dir (after stop
   *  or kill9; stops it first when it still runs). */
  async restart() {
    if (this.gw) await this.stop();
    await this.startGateway();
  }

  /** All stderr of the gateway so far (every incarnation). */
  gatewayStderr() {
    return [...this.old.map((p) => p.stderr), this.gw ? this.gw.stderr : ''].join('');
  }

  /** Stop everything; check every stderr (unless check is false); remove
   *  the temp dir. Safe to call twice. */
  async close({ check = true } = {}) {
    if (this.closed) return;
    this.closed = true;
    const procs = [];
    if (this.gw) { procs.push(this.gw); this.gw = null; }
    if (this.fake) { procs.push(this.fake); this.fake = null; }
    const results = await Promise.all(procs.map((p) => p.stop('SIGTERM').then((r) => [p, r])));
    const all = [...this.old, ...procs];
    try {
      if (check) {
        for (const p of all) this.checkProc(p);
        for (const [p, r] of results) {
          assert.equal(r.code, 0, `${p.name} did not exit cleanly on SIGTERM ` +
            `(code ${r.code}, signal ${r.signal}); stderr:\n${p.stderr}`);
        }
      }
    } finally {
      if (this.pgDb) await pgSql(`DROP DATABASE IF EXISTS ${this.pgDb} WITH (FORCE)`).catch(() => {});
      if (process.env.FUSEBOX_E2E_KEEP !== '1' && existsSync(this.dir)) {
        rmSync(this.dir, { recursive: true, force: true });
      }
    }
  }
}

/* ------------------------------------------------------------------ */
/* request bodies and prices                                           */

/** gpt-4o-mini per token, picodollars (the built-in table). */
export const GPT4O_MINI = { input: 150000n, output: 600000n };

/** Worst case the gateway reserves for an OpenAI chat body on a model
 *  priced like GPT4O_MINI: body bytes * input + max_tokens * output. */
export function worstChat(bodyText, maxTokens, price = GPT4O_MINI) {
  return BigInt(Buffer.byteLength(bodyText)) * price.input + BigInt(maxTokens) * price.output;
}

/** What the fake bills a non-stream chat of bodyText producing `words`
 *  completion tokens: floor(bytes/4) (min 1) prompt tokens. */
export function fakeChatCost(bodyText, words, price = GPT4O_MINI) {
  const bytes = Buffer.byteLength(bodyText);
  const prompt = BigInt(Math.max(1, Math.floor(bytes / 4)));
  return prompt * price.input + BigInt(words) * price.output;
}

export function chatBody({ model = 'gpt-4o-mini', content = 'hello', maxTokens = 16, extra = {} } = {}) {
  return JSON.stringify({ model, messages: [{ role: 'user', content }], max_tokens: maxTokens, ...extra });
}

/* ------------------------------------------------------------------ */
/* replay helpers (replay.test.mjs, incident.test.mjs)                 */

/** Queue a fault on the fake provider: its next `count` API requests get
 *  it (POST /_fake/faults). */
export async function fakeFaultQueue(env, fault, count = 1) {
  const r = await request('POST', `${env.fakeUrl}/_fake/faults`, { body: { fault, count } });
  assert.equal(r.status, 200, `queueing fault ${fault}: ${r.text}`);
  return r.json;
}

/** Empty the fake provider's fault queue (DELETE /_fake/faults). */
export async function fakeFaultsClear(env) {
  const r = await request('DELETE', `${env.fakeUrl}/_fake/faults`);
  assert.equal(r.status, 200, `clearing faults: ${r.text}`);
  return r.json;
}

/** sqlite3 SQL on a database file (the CLI from Debian): {code, stdout,
 *  stderr}. For seeding and damaging stores in tests. */
export function sqlite(dbPath, sql) {
  return new Promise((res) => {
    // The SQL on stdin: a seeding script can be longer than an argument.
    const c = execFile('sqlite3', ['-bail', '-cmd', '.timeout 5000', dbPath],
      { timeout: 60000 * SLOW, maxBuffer: 256 << 20 },
      (err, stdout, stderr) => res({ code: err ? (err.code ?? -1) : 0, stdout, stderr }));
    // (a dot-command such as .dump takes no ';': ".dump;" is an error)
    const t = sql.trimEnd();
    c.stdin.end(t.endsWith(';') || t.startsWith('.') ? `${sql}\n` : `${sql};\n`);
  });
}

/** SQL that seeds a store's ledger with `count` rows over the `days`
 *  before `now` (ids from idBase up), and their hours in the spend
 *  rollup, as the store itself would write them. Deterministic: the same
 *  seed gives the same rows. scopes: [[tenant, job, key], ...]. Mostly
 *  paid rows; some blocked, replayed, and left in flight (the next start
 *  charges those in full). Run it with the gateway stopped. */
export function seedLedgerSql({ count, now, days = 3, seed = 7, idBase = 1000000,
  scopes = [['acme', 'main', 'k_seed']], models = ['gpt-4o-mini'], pg = STORE_PG }) {
  let x = BigInt(seed);
  const rnd = () => {
    x = (x * 6364136223846793005n + 1442695040888963407n) & ((1n << 64n) - 1n);
    return Number(x >> 33n);
  };
  const span = days * 24 * 3600000;
  const values = [];
  for (let i = 0; i < count; i++) {
    const [t, j, k] = scopes[rnd() % scopes.length];
    const m = models[rnd() % models.length];
    const ts = now - span + (rnd() % (span - 60000));
    const r = rnd() % 20;
    const state = r < 14 ? 1 : r < 16 ? 2 : r < 19 ? 3 : 0;
    const reserved = 1000000 + (rnd() % 90000000);
    const cost = state === 1 ? (r === 0 ? 0 : reserved - (rnd() % 1000000)) : 0;
    const saved = state === 3 ? 1 + (rnd() % 5000000) : 0;
    const status = state === 2 ? 402 : 200;
    const outcome = state === 0 ? 'NULL' : state === 2 ? "'budget_exceeded:seeded'" : "'seeded'";
    values.push(`(${idBase + i},${ts},'${t}','${j}','${k}','openai','${m}','/v1/chat/completions',` +
      `${status},${reserved},${cost},${state},${outcome},NULL,0,0,${saved})`);
  }
  // SQL both stores take; on PostgreSQL the rows in flight (ids in node
  // 0's range) belong to a node 0 that died: reaped at the next start.
  return 'BEGIN;INSERT INTO ledger(id,ts_ms,tenant,job,key_id,provider,model,path,' +
    `status,reserved,cost,state,outcome,fp,attempt,retry,saved) VALUES ${values.join(',')};` +
    ROLLUP_SEED(`id>=${idBase}`) +
    (pg ? 'INSERT INTO nodes VALUES(0, 0, 0) ON CONFLICT DO NOTHING;' : '') + 'COMMIT;';
}

/** The spend rollup of seeded ledger rows (WHERE on the ledger), as the
 *  store keeps it: SQL that SQLite and PostgreSQL both take. */
export function ROLLUP_SEED(where) {
  return "INSERT INTO spend_rollup SELECT ts_ms-ts_ms%3600000, tenant, job, key_id, COALESCE(model,''), " +
    'COUNT(*), COUNT(*) FILTER (WHERE state=1 AND cost>0), COUNT(*) FILTER (WHERE state=2), ' +
    'COUNT(*) FILTER (WHERE state=3), SUM(cost), SUM(CASE state WHEN 3 THEN saved ELSE 0 END) ' +
    `FROM ledger WHERE ${where} AND state<>0 GROUP BY 1,2,3,4,5 ON CONFLICT(hour_ms,tenant,job,key_id,model) ` +
    'DO UPDATE SET calls=spend_rollup.calls+excluded.calls, paid=spend_rollup.paid+excluded.paid, ' +
    'blocked=spend_rollup.blocked+excluded.blocked, replayed=spend_rollup.replayed+excluded.replayed, ' +
    'cost=spend_rollup.cost+excluded.cost, saved=spend_rollup.saved+excluded.saved;';
}

/** `fusebox ARGS --config <env's config>` to its end: {code, stdout,
 *  stderr}; fails the test if it printed a sanitizer report. */
export async function cliRun(env, args, opts = {}) {
  const r = await run([...args, '--config', env.configPath],
    { ...opts, env: { ...env.cliEnv, ...(opts.env || {}) } });
  env.checkText(`fusebox ${args.join(' ')}`, r.stderr);
  return r;
}

/** Was this answer served from a kept result? Takes node's header object
 *  or a fetch Headers (what the SDKs' withResponse() gives). */
export function replayedHeader(headers) {
  const v = typeof headers?.get === 'function' ? headers.get('x-fusebox-replayed')
    : headers?.['x-fusebox-replayed'];
  return v === undefined ? null : v;
}

/** Poll `fusebox spend --json` until scope's row satisfies pred (and
 *  nothing is in flight), then return a fresh read of that row. Replays
 *  and refusals are recorded just after they are answered, so a read
 *  right after the last answer may not see them yet. */
export async function spendRowWhen(env, scope, pred, { timeoutMs = 5000, args = [] } = {}) {
  let last = null;
  await waitFor(async () => {
    const s = await env.spend(args);
    last = s.scopes.find((x) => x.scope === scope) || null;
    return last && pico(last.in_flight_usd) === 0n && pred(last);
  }, { timeoutMs, message: () => `spend row ${scope} to match (last: ${safeJson(last)})` });
  return env.scope(scope, args);
}
