#!/usr/bin/env node
// bench/scale.mjs - make bench-scale: fusebox's memory and scale (issue 5,
// items 3 and 4), in one run, on loopback, with node built-ins only:
//
//   1. streams  N concurrent streaming chat completions held open through
//               `fusebox serve` against `fusebox fake-provider` (slow SSE
//               chunks): fusebox RSS before, with all N open, and after;
//               RSS per open stream; every stream's first bytes and its
//               closing events and its settlement in the ledger checked.
//               Several waves: the last one's peak must stay within 5%
//               (+4 MiB) of the one before (memory bounded, not growing).
//   2. keys     RSS with 1, 100 and 10,000 keys, each used once (so the
//               daemon caches it), beside a control of 10,000 calls on one
//               key (growth per call, not per key).
//   3. replay   a store of 1k, 10k, 100k, 1M kept results (filled with the
//               sqlite3 CLI while the daemon is stopped; every row is the
//               kept result of a request we can send: its fingerprint is
//               computed as src/replay.c does and checked against a real
//               one first): daemon start time (the Bloom filter is loaded
//               from the store), RSS, and replay latency p50/p99 of
//               sequential hits on distinct random kept results (store
//               reads), then the same again (the in-memory cache), each
//               checked with x-fusebox-replayed: true. At 1M, replays go on
//               until the daemon's once-a-minute size-cap check (seen in
//               /proc/PID/io) to show what callers see while it runs.
//
// Writes bench/results/scale.md and scale.json and prints the table.
//
//   node bench/scale.mjs [path/to/fusebox]
//   env: SCALE_STREAMS (10000)   concurrent streams to hold
//        SCALE_WAVES (3)         stream waves
//        SCALE_HOLD_S (30)       every stream of a wave ends about this long
//                                after the wave starts (the fake provider's
//                                delay between SSE events is set per stream)
//        SCALE_LINGER_S (0)      after the waves, idle this long and measure
//                                again (libcurl drops idle upstream
//                                connections after 118 s)
//        SCALE_KEYS (1,100,10000)
//        SCALE_RESULTS (1000,10000,100000,1000000)
//        SCALE_LOOKUPS (2000)    measured replays per store size
//        SCALE_STALL_S (120)     at the largest size, replay until the daemon's
//                                once-a-minute size-cap check is seen, at
//                                most this long after its start (0: skip)
//        SCALE_PHASES (streams,keys,replay)
//
// File descriptors: each open stream costs fusebox two (client and
// upstream). Every child is started through `sh -c 'ulimit -n ...'` with
// the highest soft limit the hard limit allows; if that is too low for
// SCALE_STREAMS the run holds as many as fit and says so in the table.
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync,
  writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '..');
const BIN = resolve(process.argv[2] || join(REPO, 'build', 'fusebox'));
const OUT = join(HERE, 'results');

const envInt = (name, def) => {
  const v = process.env[name];
  if (v === undefined || v === '') return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) die(`${name}=${v}: want an integer`);
  return n;
};
const envList = (name, def) => (process.env[name] || def).split(',')
  .map((s) => s.trim()).filter(Boolean);
const STREAMS = envInt('SCALE_STREAMS', 10000);
const WAVES = Math.max(1, envInt('SCALE_WAVES', 3));
const HOLD_MS = envInt('SCALE_HOLD_S', 30) * 1000;
const KEY_STEPS = envList('SCALE_KEYS', '1,100,10000').map(Number).sort((a, b) => a - b);
const RESULT_STEPS = envList('SCALE_RESULTS', '1000,10000,100000,1000000').map(Number)
  .sort((a, b) => a - b);
const LOOKUPS = envInt('SCALE_LOOKUPS', 2000);
const STALL_S = envInt('SCALE_STALL_S', 120);
const LINGER_S = envInt('SCALE_LINGER_S', 0);
const PHASES = new Set(envList('SCALE_PHASES', 'streams,keys,replay'));
const WANT_NOFILE = 65536;
const SECRET = 'sk-fake-openai'; // the fake provider's default OpenAI key

function die(msg) {
  console.error(`bench-scale: ${msg}`);
  process.exit(1);
}
const log = (msg) => console.error(`bench-scale: ${msg}`);

/* ------------------------------------------------------------------ */
/* file descriptors: raise our own soft limit by re-executing once     */

function shLimits() {
  const r = spawnSync('sh', ['-c', 'ulimit -Sn; ulimit -Hn'], { encoding: 'utf8' });
  const [soft, hard] = r.stdout.trim().split('\n').map((x) => (x === 'unlimited' ? Infinity : Number(x)));
  return { soft, hard };
}
{
  const { soft, hard } = shLimits();
  if (soft < Math.min(hard, WANT_NOFILE) && !process.env.SCALE_REEXEC) {
    const r = spawnSync('sh', ['-c',
      `ulimit -n ${WANT_NOFILE} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"`, 'sh',
      process.execPath, ...process.execArgv, fileURLToPath(import.meta.url),
      ...process.argv.slice(2)], { stdio: 'inherit', env: { ...process.env, SCALE_REEXEC: '1' } });
    process.exit(r.status === null ? 1 : r.status);
  }
}
const NODE_NOFILE = shLimits();

/* ------------------------------------------------------------------ */
/* temp dir and child processes, always cleaned up                     */

if (!existsSync(BIN)) die(`no fusebox binary at ${BIN} (run make first)`);
const TMP = mkdtempSync(join(os.tmpdir(), 'fusebox-scale-'));
const live = new Set();
process.on('exit', () => {
  for (const p of live) { try { process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ } }
  try { rmSync(TMP, { recursive: true, force: true }); } catch { /* best effort */ }
});
process.on('SIGINT', () => process.exit(130));
process.on('SIGTERM', () => process.exit(143));
process.on('uncaughtException', (e) => { console.error(e); process.exit(1); });
process.on('unhandledRejection', (e) => { console.error(e); process.exit(1); });

/** A child started with the highest fd limit allowed; resolves when its
 *  stdout says "listening on HOST:PORT". */
function start(name, argv, env = {}) {
  const t0 = process.hrtime.bigint();
  const wall0 = Date.now();
  const child = spawn('sh', ['-c',
    `ulimit -n ${WANT_NOFILE} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"`, 'sh', ...argv],
  { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const p = { name, child, pid: child.pid, out: '', err: '', exited: false, t0: wall0 };
  live.add(p);
  p.exitP = new Promise((res) => child.on('exit', (code, sig) => {
    p.exited = true; p.code = code; p.signal = sig; live.delete(p); res();
  }));
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => { if (p.err.length < 1 << 20) p.err += d; });
  return new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error(`${name} not ready after 120 s; stderr:\n${p.err}`)), 120000);
    child.stdout.on('data', (d) => {
      p.out += d;
      const m = /listening on (\S+):(\d+)/.exec(p.out);
      if (m && !p.port) {
        clearTimeout(t);
        p.host = m[1]; p.port = Number(m[2]);
        p.startMs = Number(process.hrtime.bigint() - t0) / 1e6;
        res(p);
      }
    });
    p.exitP.then(() => { clearTimeout(t); if (!p.port) rej(new Error(`${name} exited (${p.code ?? p.signal}) before it was ready:\n${p.err}`)); });
  });
}

async function stop(p, sig = 'SIGTERM', ms = 20000) {
  if (!p || p.exited) return;
  try { process.kill(p.pid, sig); } catch { /* gone */ }
  const t = setTimeout(() => { try { process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ } }, ms);
  await p.exitP;
  clearTimeout(t);
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status}\n${r.stderr}`);
  return r.stdout;
}

/* ------------------------------------------------------------------ */
/* /proc                                                               */

function mem(pid) {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k) => Number((new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(s) || [0, 0])[1]);
  let fds = -1;
  try { fds = readdirSync(`/proc/${pid}/fd`).length; } catch { /* not ours to read */ }
  return { rssKiB: kb('VmRSS'), hwmKiB: kb('VmHWM'), anonKiB: kb('RssAnon'), fileKiB: kb('RssFile'), shmemKiB: kb('RssShmem'), fds };
}
const CLK_TCK = 100; // sysconf(_SC_CLK_TCK) on Linux
/** CPU seconds (user + system, all threads) of a process. */
function cpuSec(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const x = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(x[11]) + Number(x[12])) / CLK_TCK;
}
const clientCpuSec = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };
function nofile(pid) {
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'));
  const n = (x) => (x === 'unlimited' ? Infinity : Number(x));
  return { soft: n(m[1]), hard: n(m[2]) };
}
const mib = (kib) => kib / 1024;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/* ------------------------------------------------------------------ */
/* fusebox: config, keys, requests                                     */

function writeConfig(dir, upPort, extra = '') {
  mkdirSync(dir, { recursive: true });
  const f = join(dir, 'fusebox.yaml');
  writeFileSync(f, `listen: 127.0.0.1:0
data_dir: ./data
providers:
  openai: {kind: openai, base_url: http://127.0.0.1:${upPort}, api_key_env: OPENAI_API_KEY}
budgets:
  global: 1000000
  tenants:
    bench:
      budget: 1000000
      jobs:
        streams: {budget: 1000000}
        keys: {budget: 1000000}
        replay: {budget: 1000000}
log_level: warn
${extra}`);
  return f;
}

function startGateway(cfg) {
  return start('fusebox serve', [BIN, 'serve', '--config', cfg], { OPENAI_API_KEY: SECRET });
}

function createKey(cfg, job) {
  const out = run(BIN, ['key', 'create', '--config', cfg, '--tenant', 'bench', '--job', job]);
  const key = out.trim().split('\n').pop();
  if (!/^fbk_[0-9a-f]{40}$/.test(key)) throw new Error(`fusebox key create printed ${out}`);
  return key;
}

/** One POST; resolves {status, headers, body, us}. */
function post(port, path, body, headers, agent) {
  return new Promise((res, rej) => {
    const t0 = process.hrtime.bigint();
    const r = http.request({ host: '127.0.0.1', port, path, method: 'POST', agent,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers } },
    (resp) => {
      const chunks = [];
      resp.on('data', (d) => chunks.push(d));
      resp.on('end', () => res({ status: resp.statusCode, headers: resp.headers,
        body: Buffer.concat(chunks).toString('utf8'), us: Number(process.hrtime.bigint() - t0) / 1000 }));
      resp.on('error', rej);
    });
    r.on('error', rej);
    r.end(body);
  });
}
function get(port, path) {
  return new Promise((res, rej) => {
    http.get({ host: '127.0.0.1', port, path, agent: false }, (resp) => {
      let b = '';
      resp.on('data', (d) => { b += d; });
      resp.on('end', () => res({ status: resp.statusCode, body: b }));
    }).on('error', rej);
  });
}

/** Canonical JSON as jansson's JSON_SORT_KEYS|JSON_COMPACT prints it, for
 *  the plain ASCII bodies this script sends. */
function canon(v) {
  if (Array.isArray(v)) return `[${v.map(canon).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canon(v[k])}`).join(',')}}`;
  }
  return JSON.stringify(v);
}
/** fb_fingerprint (src/replay.c): SHA-256 over NUL-terminated parts. */
function fingerprint(method, provider, path, canonBody) {
  const h = createHash('sha256');
  for (const part of ['fusebox-fp-1', method, provider, path, canonBody]) {
    h.update(part);
    h.update(Buffer.from([0]));
  }
  return h.digest();
}

/** Run fn(i) for i in [0, n) with at most conc in flight. */
async function pool(n, conc, fn) {
  let next = 0;
  const worker = async () => { while (next < n) await fn(next++); };
  await Promise.all(Array.from({ length: Math.min(conc, n) }, worker));
}

const pct = (sorted, p) => (sorted.length ? sorted[Math.min(sorted.length - 1,
  Math.floor((sorted.length * p) / 100))] : NaN);

function sqlite(db, sql) {
  return run('sqlite3', ['-batch', db], { input: `.timeout 20000\n${sql}\n` });
}

function ensureSqlite() {
  if (spawnSync('sqlite3', ['-version']).status === 0) return;
  if (process.getuid && process.getuid() === 0) {
    log('installing sqlite3 (Debian)');
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    spawnSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
    spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'sqlite3'], { stdio: 'inherit', env });
  }
  if (spawnSync('sqlite3', ['-version']).status !== 0) {
    die('the sqlite3 CLI is missing. Run: sudo apt-get install -y sqlite3');
  }
}

/* ------------------------------------------------------------------ */
/* 1. concurrent open streams                                          */

const TOKENS = 4; // role, 4 words, finish, usage, [DONE]: 8 events, 7 gaps

async function streamWave(gw, key, n, wave, onAllOpen) {
  const st = { n, ok200: 0, first: 0, open: 0, maxOpen: 0, done: 0, complete: 0,
    errors: 0, bad: [], ttfbMs: [] };
  const agent = false; // one connection per stream, as SDK clients do
  let resolveOpened;
  const opened = new Promise((r) => { resolveOpened = r; });
  let settled = 0; // first bytes or failure
  const endP = [];
  const markSettled = () => { if (++settled === n) resolveOpened(); };
  const t0 = Date.now();
  await pool(n, 512, (i) => new Promise((stepDone) => {
    const body = JSON.stringify({ model: 'gpt-4o-mini', max_tokens: 16, stream: true,
      messages: [{ role: 'user', content: `scale wave ${wave} stream ${i}` }] });
    const t = process.hrtime.bigint();
    // Spread the stream's 7 gaps over what is left of the hold, so that
    // all of them stay open until the last one has opened.
    const gap = Math.max(200, Math.ceil((HOLD_MS - (Date.now() - t0)) / (TOKENS + 3)));
    let finished;
    endP.push(new Promise((r) => { finished = r; }));
    let gotFirst = false;
    let isOpen = false;
    let over = false;
    const fail = (why) => {
      if (over) return;
      over = true;
      st.errors++;
      if (isOpen) { isOpen = false; st.open--; }
      if (st.bad.length < 5) st.bad.push(why);
      if (!gotFirst) { gotFirst = true; markSettled(); stepDone(); }
      finished();
    };
    const r = http.request({ host: '127.0.0.1', port: gw.port, method: 'POST', agent,
      path: '/openai/v1/chat/completions',
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body),
        authorization: `Bearer ${key}`, 'x-fake-fault': `chunk_delay_ms=${gap}`,
        'x-fake-completion-tokens': String(TOKENS) } }, (resp) => {
      let text = '';
      if (resp.statusCode === 200) st.ok200++;
      resp.setEncoding('utf8');
      resp.on('data', (d) => {
        text += d;
        if (!gotFirst && resp.statusCode === 200) {
          gotFirst = true;
          st.first++;
          st.open++;
          isOpen = true;
          if (st.open > st.maxOpen) st.maxOpen = st.open;
          st.ttfbMs.push(Number(process.hrtime.bigint() - t) / 1e6);
          markSettled();
          stepDone();
        }
      });
      resp.on('end', () => {
        st.done++;
        if (resp.statusCode !== 200) {
          fail(`status ${resp.statusCode}: ${text.slice(0, 200)}`);
          return;
        }
        if (over) return;
        if (text.includes('data: [DONE]') && /: x-fusebox-cost-usd \d/.test(text)) {
          over = true;
          isOpen = false;
          st.open--;
          st.complete++;
          finished();
        } else {
          fail(`stream cut short: ${text.slice(-200)}`);
        }
      });
      resp.on('error', (e) => fail(e.message));
    });
    r.on('error', (e) => fail(e.message));
    r.end(body);
  }));
  await opened;
  st.rampMs = Date.now() - t0;
  st.openAtSample = st.open;
  await onAllOpen(st);
  await Promise.all(endP);
  st.totalMs = Date.now() - t0;
  st.ttfbMs.sort((a, b) => a - b);
  return st;
}

async function phaseStreams(R) {
  log(`streams: starting the fake provider and the gateway`);
  const dir = join(TMP, 'streams');
  mkdirSync(dir);
  const fake = await start('fake-provider', [BIN, 'fake-provider', '--listen', '127.0.0.1:0']);
  // The in-memory replay cache (replay.cache_bytes, 64 MiB by default,
  // where the build has it) would fill with the kept streams across the
  // waves; off here, so that growth from wave to wave is not that cache.
  const cacheOff = readFileSync(BIN).includes('replay.cache_bytes');
  const cfg = writeConfig(dir, fake.port, `limits:\n  max_connections: ${STREAMS + 1024}\n` +
    (cacheOff ? 'replay:\n  cache_bytes: 0\n' : ''));
  const gw = await startGateway(cfg);
  try {
    const key = createKey(cfg, 'streams');
    const lim = { fusebox: nofile(gw.pid), fake: nofile(fake.pid), client: NODE_NOFILE };
    // One warm-up stream so the "before" figure has the lazy setup done.
    const warm = await streamWave(gw, key, 1, 0, async () => {});
    if (warm.complete !== 1) throw new Error(`warm-up stream failed: ${warm.bad.join('; ')}`);
    await sleep(300);
    const before = mem(gw.pid);
    const fakeBefore = mem(fake.pid);
    const clientBefore = process.memoryUsage().rss / 1024;
    // Each stream holds two of fusebox's fds, one of the fake's and one of ours.
    const spare = 64;
    const fit = Math.min(Math.floor((lim.fusebox.soft - before.fds - spare) / 2),
      lim.fake.soft - mem(fake.pid).fds - spare, lim.client.soft - spare);
    const n = Math.min(STREAMS, fit);
    if (n < STREAMS) {
      log(`streams: only ${n} of ${STREAMS} fit the open-file limits ` +
        `(fusebox soft ${lim.fusebox.soft}, hard ${lim.fusebox.hard}; it needs ~${2 * STREAMS + before.fds + spare})`);
    }
    const waves = [];
    for (let w = 1; w <= WAVES; w++) {
      log(`streams: wave ${w}: opening ${n} streams (each ends about ${HOLD_MS / 1000} s after the wave starts)`);
      const at = {};
      const cpu0 = { gw: cpuSec(gw.pid), fake: cpuSec(fake.pid), client: clientCpuSec() };
      const st = await streamWave(gw, key, n, w, async (s) => {
        at.cpu = { gw: cpuSec(gw.pid) - cpu0.gw, fake: cpuSec(fake.pid) - cpu0.fake, client: clientCpuSec() - cpu0.client };
        at.gw = mem(gw.pid);
        at.fake = mem(fake.pid);
        at.clientKiB = process.memoryUsage().rss / 1024;
        log(`streams: wave ${w}: ${s.openAtSample} open after ${s.rampMs} ms; fusebox RSS ${mib(at.gw.rssKiB).toFixed(1)} MiB, ${at.gw.fds} fds; ` +
          `CPU s so far: fusebox ${at.cpu.gw.toFixed(1)}, fake ${at.cpu.fake.toFixed(1)}, client ${at.cpu.client.toFixed(1)}`);
      });
      // Let the last settlements reach the ledger before "after".
      await sleep(1500);
      const after = mem(gw.pid);
      const cpu = { gw: cpuSec(gw.pid) - cpu0.gw, fake: cpuSec(fake.pid) - cpu0.fake, client: clientCpuSec() - cpu0.client };
      const health = await get(gw.port, '/healthz');
      waves.push({ wave: w, ...st, ttfb_p50_ms: pct(st.ttfbMs, 50), ttfb_p99_ms: pct(st.ttfbMs, 99),
        ttfb_max_ms: st.ttfbMs[st.ttfbMs.length - 1], with: at, after, cpu_s: cpu, healthz: health.status });
      delete waves[waves.length - 1].ttfbMs;
      log(`streams: wave ${w}: ${st.complete}/${n} complete in ${st.totalMs} ms, ${st.errors} errors; ` +
        `fusebox RSS after ${mib(after.rssKiB).toFixed(1)} MiB, ${after.fds} fds`);
    }
    // Optionally wait (idle) and look again: libcurl closes idle upstream
    // connections older than CURLOPT_MAXAGE_CONN (118 s by default) the
    // next time it runs, which the call below makes it do.
    let linger = null;
    if (LINGER_S > 0) {
      log(`streams: idle for ${LINGER_S} s`);
      await sleep(LINGER_S * 1000);
      await get(gw.port, '/healthz');
      linger = { seconds: LINGER_S, idle: mem(gw.pid) };
    }
    // Still answering: a fresh paid call and its replay.
    const body = JSON.stringify({ model: 'gpt-4o-mini', max_tokens: 8,
      messages: [{ role: 'user', content: 'scale after streams' }] });
    const a = await post(gw.port, '/openai/v1/chat/completions', body, { authorization: `Bearer ${key}` }, false);
    const b = await post(gw.port, '/openai/v1/chat/completions', body, { authorization: `Bearer ${key}` }, false);
    if (linger) { await sleep(300); linger.after_a_call = mem(gw.pid); }
    const peakHwm = mem(gw.pid).hwmKiB;
    const spend = JSON.parse(run(BIN, ['spend', '--config', cfg, '--json']));
    // Every stream (and the warm-up and the call above) paid and settled.
    const g = spend.scopes.find((x) => x.scope === 'global') || {};
    const ledger = { paid_calls: g.paid_calls, expected: n * WAVES + 2, in_flight_usd: g.in_flight_usd };
    R.streams = { target: STREAMS, held: n, limits: lim, hold_s: HOLD_MS / 1000, replay_cache_off: cacheOff, linger, peak_hwm_kib: peakHwm, before,
      fake_before: fakeBefore, client_before_kib: clientBefore, waves,
      answers_after: { paid: a.status, replayed: b.headers['x-fusebox-replayed'] === 'true' },
      ledger, spend };
  } finally {
    await stop(gw);
    await stop(fake);
  }
}

/* ------------------------------------------------------------------ */
/* 2. keys                                                             */

function keyRows(n, job, now) {
  const keys = [];
  const rows = [];
  for (let i = 0; i < n; i++) {
    const text = `fbk_${randomBytes(20).toString('hex')}`;
    const id = `k_${randomBytes(6).toString('hex')}`;
    const hash = createHash('sha256').update(text).digest('hex');
    keys.push(text);
    rows.push({ id, hash, prefix: text.slice(0, 10) });
  }
  // As `fusebox key create` writes them (src/cli.c): the key row and its
  // key_created change, in one transaction.
  let sql = 'BEGIN IMMEDIATE;\n';
  for (let i = 0; i < rows.length; i += 500) {
    const part = rows.slice(i, i + 500);
    sql += 'INSERT INTO keys(id,hash,prefix,tenant,job,attempt,budget_limit,budget_period,created_ms,revoked_ms) VALUES\n' +
      part.map((r) => `('${r.id}',X'${r.hash}','${r.prefix}','bench','${job}',0,NULL,0,${now},0)`).join(',\n') + ';\n';
    sql += 'INSERT INTO changes(kind,subject) VALUES ' +
      part.map((r) => `('key_created','${r.id}')`).join(',') + ';\n';
  }
  return { keys, sql: `${sql}COMMIT;` };
}

async function useKeys(gw, keys, tag) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
  let bad = 0;
  let why = '';
  await pool(keys.length, 16, async (i) => {
    const body = JSON.stringify({ model: 'gpt-4o-mini', max_tokens: 8,
      messages: [{ role: 'user', content: `scale keys ${tag} ${i}` }] });
    // Not kept (x-fusebox-replay: off), so that what grows is the keys, not
    // the kept results the daemon holds in memory (phase 3 covers those).
    const r = await post(gw.port, '/openai/v1/chat/completions', body,
      { authorization: `Bearer ${keys[i]}`, 'x-fusebox-replay': 'off' }, agent);
    if (r.status !== 200) { bad++; why = `${r.status} ${r.body.slice(0, 200)}`; }
  });
  agent.destroy();
  if (bad) throw new Error(`keys: ${bad} of ${keys.length} calls failed (last: ${why})`);
}

async function phaseKeys(R) {
  log('keys: starting the fake provider and the gateway');
  const dir = join(TMP, 'keys');
  mkdirSync(dir);
  const fake = await start('fake-provider', [BIN, 'fake-provider', '--listen', '127.0.0.1:0']);
  const cfg = writeConfig(dir, fake.port);
  const gw = await startGateway(cfg);
  const db = join(dir, 'data', 'fusebox.db');
  const rows = [];
  try {
    const first = createKey(cfg, 'keys'); // the real path, for the first key
    const keys = [first];
    let calls = 0;
    const sample = (label, nkeys) => {
      const m = mem(gw.pid);
      rows.push({ label, keys: nkeys, calls, rss_kib: m.rssKiB, hwm_kib: m.hwmKiB });
      log(`keys: ${label}: RSS ${mib(m.rssKiB).toFixed(1)} MiB`);
    };
    await useKeys(gw, [first], 'k1');
    calls += 1;
    await sleep(300);
    sample('1 key', 1);
    const control = Math.max(...KEY_STEPS);
    await useKeys(gw, Array(control).fill(first), 'control');
    calls += control;
    await sleep(300);
    sample(`1 key, after ${fmt(control)} more calls (control)`, 1);
    for (const want of KEY_STEPS.filter((k) => k > 1)) {
      const add = want - keys.length;
      const { keys: fresh, sql } = keyRows(add, 'keys', Date.now());
      sqlite(db, sql);
      await useKeys(gw, fresh, `n${want}`);
      keys.push(...fresh);
      calls += add;
      await sleep(300);
      sample(`${fmt(want)} keys`, want);
    }
    R.keys = { rows, per_key_bytes: perKey(rows) };
  } finally {
    await stop(gw);
    await stop(fake);
  }
}

/** Bytes of RSS per added key: the last row against the control row (the
 *  same daemon after as many calls on one key), per key added since. */
function perKey(rows) {
  const ctl = rows.find((r) => r.label.includes('control'));
  const last = rows[rows.length - 1];
  if (!ctl || last === ctl || last.keys <= 1) return null;
  return Math.round(((last.rss_kib - ctl.rss_kib) * 1024) / (last.keys - 1));
}

/* ------------------------------------------------------------------ */
/* 3. replay store                                                     */

const REPLAY_PATH = '/v1/chat/completions';
const replayBody = (i) => canon({ model: 'gpt-4o-mini', max_tokens: 8,
  messages: [{ role: 'user', content: `scale replay ${i}` }] });

/** Fill results up to `to` rows, rows [from, to) cloned from the template
 *  row with only fp changed (the fingerprint of replayBody(i)). */
function fill(db, tmplId, from, to) {
  return new Promise((res, rej) => {
    const c = spawn('sqlite3', ['-batch', db], { stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '';
    c.stderr.on('data', (d) => { err += d; });
    c.stdout.resume();
    c.on('exit', (code) => (code === 0 && !err ? res() : rej(new Error(`sqlite3 fill: exit ${code}: ${err}`))));
    c.stdin.on('error', () => {});
    const w = (s) => (c.stdin.write(s) ? Promise.resolve() : new Promise((r) => c.stdin.once('drain', r)));
    (async () => {
      await w('.timeout 20000\nPRAGMA temp_store=MEMORY;\nCREATE TEMP TABLE f(fp BLOB NOT NULL);\nBEGIN;\n');
      for (let i = from; i < to; i += 1000) {
        const vals = [];
        for (let j = i; j < Math.min(to, i + 1000); j++) {
          vals.push(`(X'${fingerprint('POST', 'openai', REPLAY_PATH, replayBody(j)).toString('hex')}')`);
        }
        await w(`INSERT INTO f VALUES ${vals.join(',')};\n`);
      }
      await w(`INSERT INTO results(scope,fp,seq,attempt,status,stream,headers,body,cost,created_ms,expires_ms)
 SELECT t.scope, f.fp, t.seq, t.attempt, t.status, t.stream, t.headers, t.body, t.cost, t.created_ms, t.expires_ms
 FROM f, results t WHERE t.id=${tmplId} ORDER BY f.rowid;\nCOMMIT;\nPRAGMA wal_checkpoint(TRUNCATE);\n`);
      c.stdin.end();
    })().catch(rej);
  });
}

/** k distinct integers from [1, n) (row 0 is the real paid call), shuffled. */
function sampleDistinct(n, k) {
  k = Math.min(k, n - 1);
  const seen = new Set();
  while (seen.size < k) seen.add(1 + Math.floor(Math.random() * (n - 1)));
  return [...seen];
}

function rchar(pid) {
  return Number(/^rchar: (\d+)/m.exec(readFileSync(`/proc/${pid}/io`, 'utf8'))[1]);
}

/** Keep replaying (sequentially, random kept results) until the daemon's
 *  maintenance thread has run its once-a-minute size-cap check, seen in
 *  the daemon's read counter (/proc/PID/io rchar) as a burst of about the
 *  store's size, or until STALL_S after its start; report what the
 *  replays saw during that burst and outside it. */
async function stallProbe(gw, size, auth, agent, dbBytes) {
  log(`replay: replaying on until the size-cap check (once a minute; at most ${STALL_S} s after the start)`);
  const tl = [];
  const io = [[Date.now() - gw.t0, rchar(gw.pid)]];
  const sampler = setInterval(() => { try { io.push([Date.now() - gw.t0, rchar(gw.pid)]); } catch { /* gone */ } }, 250);
  const burst = () => {
    // Samples whose read volume is far above the lookups' own.
    const d = io.slice(1).map((x, k) => [x[0], x[1] - io[k][1]]);
    const med = [...d.map((x) => x[1])].sort((x, y) => x - y)[Math.floor(d.length / 2)] || 0;
    const hot = d.filter((x) => x[1] > Math.max(64 << 20, 8 * med));
    if (!hot.length) return null;
    return { from: hot[0][0] - 250, to: hot[hot.length - 1][0], bytes: hot.reduce((t, x) => t + x[1], 0) };
  };
  let misses = 0;
  let b = null;
  for (;;) {
    const now = Date.now() - gw.t0;
    if (now > STALL_S * 1000) break;
    if (io.length % 8 === 0) b = burst();
    if (b && b.bytes > dbBytes / 2 && now > b.to + 3000) break;
    const i = Math.floor(Math.random() * size);
    const r = await post(gw.port, `/openai${REPLAY_PATH}`, replayBody(i), auth, agent);
    if (r.status !== 200 || r.headers['x-fusebox-replayed'] !== 'true') misses++;
    tl.push([Date.now() - gw.t0, r.us]);
  }
  clearInterval(sampler);
  b = burst();
  const sorted = tl.map((x) => x[1]).sort((x, y) => x - y);
  const worst = tl.reduce((w, x) => (x[1] > w[1] ? x : w), [0, 0]);
  const inB = b ? tl.filter((x) => x[0] >= b.from - 500 && x[0] <= b.to + 1500) : [];
  const outB = b ? tl.filter((x) => !(x[0] >= b.from - 500 && x[0] <= b.to + 1500)) : tl;
  const maxOf = (xs) => xs.reduce((m, x) => Math.max(m, x[1]), 0);
  const st = { deadline_s: STALL_S, until_s: Number(((Date.now() - gw.t0) / 1000).toFixed(1)), requests: tl.length, misses,
    p50_us: Math.round(pct(sorted, 50)), p99_us: Math.round(pct(sorted, 99)),
    max_us: Math.round(worst[1]), max_at_s: Number((worst[0] / 1000).toFixed(2)),
    over_20ms: tl.filter((x) => x[1] > 20000).length, over_50ms: tl.filter((x) => x[1] > 50000).length,
    burst: b && { from_s: Number((b.from / 1000).toFixed(2)), to_s: Number((b.to / 1000).toFixed(2)),
      read_mib: Math.round(b.bytes / 2 ** 20) },
    max_in_burst_us: Math.round(maxOf(inB)), max_outside_us: Math.round(maxOf(outB)),
    worst: [...tl].sort((x, y) => y[1] - x[1]).slice(0, 6)
      .map((x) => [Number((x[0] / 1000).toFixed(2)), Number((x[1] / 1000).toFixed(1))]) };
  log(`replay: ${tl.length} more replays; ` + (b ? `read burst of ${st.burst.read_mib} MiB at ${st.burst.from_s}-${st.burst.to_s} s; ` : 'no read burst seen; ') +
    `max ${fmt(st.max_us / 1000, 1)} ms at ${st.max_at_s} s (in the burst ${fmt(st.max_in_burst_us / 1000, 1)} ms, outside ${fmt(st.max_outside_us / 1000, 1)} ms)`);
  return st;
}

async function phaseReplay(R) {
  ensureSqlite();
  log('replay: starting the fake provider and the gateway');
  const dir = join(TMP, 'replay');
  mkdirSync(dir);
  const fake = await start('fake-provider', [BIN, 'fake-provider', '--listen', '127.0.0.1:0']);
  const cfg = writeConfig(dir, fake.port);
  const db = join(dir, 'data', 'fusebox.db');
  let gw = await startGateway(cfg);
  const rows = [];
  let check;
  let stall = null;
  try {
    const key = createKey(cfg, 'replay');
    const auth = { authorization: `Bearer ${key}` };
    // One real paid call: the template row, and the check that our
    // fingerprint is the gateway's.
    const paid = await post(gw.port, `/openai${REPLAY_PATH}`, replayBody(0), auth, false);
    const again = await post(gw.port, `/openai${REPLAY_PATH}`, replayBody(0), auth, false);
    if (paid.status !== 200 || again.headers['x-fusebox-replayed'] !== 'true') {
      throw new Error(`replay: the template call was not kept and replayed (${paid.status}, ${again.headers['x-fusebox-replayed']})`);
    }
    await stop(gw);
    const [tmplId, fpHex, scope, bodyLen] = sqlite(db,
      "SELECT id, hex(fp), scope, length(body)+length(headers) FROM results;").trim().split('|');
    const ours = fingerprint('POST', 'openai', REPLAY_PATH, replayBody(0)).toString('hex').toUpperCase();
    if (fpHex !== ours) throw new Error(`replay: fingerprint mismatch: store ${fpHex}, computed ${ours}`);
    check = { template_id: Number(tmplId), scope, row_bytes: Number(bodyLen), fingerprint_matches: true };
    log(`replay: fingerprint check ok (scope ${scope}, ${bodyLen} bytes a row)`);
    let have = 1;
    for (const size of RESULT_STEPS) {
      if (size > have) {
        const t0 = Date.now();
        await fill(db, Number(tmplId), have, size);
        log(`replay: filled ${size} kept results in ${Date.now() - t0} ms`);
        have = size;
      }
      const count = Number(sqlite(db, 'SELECT count(*) FROM results;').trim());
      // The size-cap check the maintenance thread runs once a minute sums
      // every body (src/store_sqlite.c, fb_store_results_purge).
      const ts = process.hrtime.bigint();
      sqlite(db, 'SELECT SUM(length(body)) FROM results;');
      const sumMs = Number(process.hrtime.bigint() - ts) / 1e6;
      const dbBytes = ['', '-wal'].reduce((s, x) => s + (existsSync(db + x) ? Number(run('stat', ['-c', '%s', db + x]).trim()) : 0), 0);
      gw = await startGateway(cfg);
      const startMs = gw.startMs;
      await sleep(200);
      const idle = mem(gw.pid);
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      let misses = 0;
      let bad = '';
      const replay = async (i) => {
        const r = await post(gw.port, `/openai${REPLAY_PATH}`, replayBody(i), auth, agent);
        if (r.status !== 200 || r.headers['x-fusebox-replayed'] !== 'true') {
          misses++;
          bad = `#${i}: ${r.status} replayed=${r.headers['x-fusebox-replayed']}`;
        }
        return r.us;
      };
      // Distinct random kept results, each asked once: every one is a
      // read from the store (the daemon has just started, so nothing is
      // in its memory). Then the same ones again: the daemon may answer
      // those from memory (replay.cache_bytes, where the build has it).
      const pick = sampleDistinct(Math.min(size, have), Math.min(200 + LOOKUPS, Math.min(size, have)));
      const warmN = Math.min(200, Math.floor(pick.length / 5));
      for (const i of pick.slice(0, warmN)) await replay(i);
      const cold = [];
      for (const i of pick.slice(warmN)) cold.push(await replay(i));
      const hot = [];
      for (const i of pick.slice(warmN)) hot.push(await replay(i));
      cold.sort((x, y) => x - y);
      hot.sort((x, y) => x - y);
      const lat = cold;
      const after = mem(gw.pid);
      if (size === RESULT_STEPS[RESULT_STEPS.length - 1] && STALL_S > 0) {
        stall = await stallProbe(gw, size, auth, agent, dbBytes);
        misses += stall.misses;
      }
      agent.destroy();
      await stop(gw);
      const row = { results: count, db_bytes: dbBytes, start_ms: Math.round(startMs),
        rss_idle_kib: idle.rssKiB, rss_after_kib: after.rssKiB, lookups: cold.length, misses,
        p50_us: Math.round(pct(lat, 50)), p90_us: Math.round(pct(lat, 90)),
        p99_us: Math.round(pct(lat, 99)), max_us: Math.round(lat[lat.length - 1]),
        again_p50_us: Math.round(pct(hot, 50)), again_p99_us: Math.round(pct(hot, 99)),
        size_cap_scan_ms: Math.round(sumMs) };
      rows.push(row);
      log(`replay: ${count} kept: start ${row.start_ms} ms, RSS ${mib(row.rss_after_kib).toFixed(1)} MiB, ` +
        `p50 ${row.p50_us} us, p99 ${row.p99_us} us (again: ${row.again_p50_us} / ${row.again_p99_us} us), misses ${misses}`);
      if (misses) throw new Error(`replay: ${misses} requests were not replayed (last ${bad})`);
    }
    R.replay = { check, rows, stall };
  } finally {
    await stop(gw);
    await stop(fake);
  }
}

/* ------------------------------------------------------------------ */
/* report                                                              */

function machine() {
  const cpu = os.cpus();
  const dpkg = (p) => {
    const r = spawnSync('dpkg-query', ['-W', '-f', '${Version}', p], { encoding: 'utf8' });
    return r.status === 0 ? r.stdout : null;
  };
  let debian = null;
  try { debian = readFileSync('/etc/debian_version', 'utf8').trim(); } catch { /* not Debian */ }
  return {
    cpus: cpu.length, cpu_model: cpu[0] ? cpu[0].model : null,
    mem_gib: Math.round(os.totalmem() / 2 ** 30), kernel: os.release(), debian,
    node: process.version, fusebox: run(BIN, ['version']).trim(),
    sqlite3: (spawnSync('sqlite3', ['-version'], { encoding: 'utf8' }).stdout || '').split(' ')[0] || null,
    libcurl: dpkg('libcurl4'), libevent: dpkg('libevent-2.1-7'),
    nofile_hard: NODE_NOFILE.hard,
  };
}

const fmt = (n, d = 0) => (Number.isFinite(n) ? n.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d }) : 'n/a');

function markdown(R) {
  const L = [];
  const m = R.machine;
  L.push('# fusebox memory and scale (make bench-scale)');
  L.push('');
  L.push(`${m.cpus} CPUs (${m.cpu_model}), ${m.mem_gib} GiB, Linux ${m.kernel}${m.debian ? `, Debian ${m.debian}` : ''}; ` +
    `${m.fusebox}, node ${m.node}, sqlite3 ${m.sqlite3}, libcurl ${m.libcurl}, libevent ${m.libevent}; ` +
    `open files hard limit ${m.nofile_hard}. ${R.date}, ${fmt(R.runtime_s, 0)} s.`);
  if (R.streams) {
    const s = R.streams;
    const w1 = s.waves[0];
    L.push('');
    L.push(`## Concurrent open streams (target ${fmt(s.target)})`);
    L.push('');
    L.push(`Streaming chat completions through \`fusebox serve\` to \`fusebox fake-provider\`, one connection each, opened ` +
      `with at most 512 waiting for their first bytes; the provider sends 8 SSE events per stream, spaced so that every stream ` +
      `ends about ${s.hold_s} s after its wave started (all are open at once once the last has its first bytes); replay on ` +
      `(each stream is kept${s.replay_cache_off ? '; the in-memory replay cache, `replay.cache_bytes`, off so that it does not fill across the waves' : ''}). ` +
      `RSS is VmRSS of the fusebox process; CPU is user + system time of all its threads; ` +
      `ramp: from the first request to the last stream's first bytes.`);
    L.push('');
    L.push('| wave | held open at once | first bytes | complete | errors | ramp (s) | TTFB p50 / p99 (ms) | fusebox CPU in the ramp (s) | RSS before (MiB) | RSS with all open (MiB) | RSS after (MiB) | fds with all open | fds after | /healthz |');
    L.push('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
    let base = s.before;
    for (const w of s.waves) {
      L.push(`| ${w.wave} | ${fmt(w.openAtSample)} of ${fmt(w.n)} | ${fmt(w.first)} | ${fmt(w.complete)} | ${fmt(w.errors)} | ` +
        `${fmt(w.rampMs / 1000, 1)} | ${fmt(w.ttfb_p50_ms, 1)} / ${fmt(w.ttfb_p99_ms, 1)} | ${fmt(w.with.cpu.gw, 2)} | ${fmt(mib(base.rssKiB), 1)} | ` +
        `${fmt(mib(w.with.gw.rssKiB), 1)} | ${fmt(mib(w.after.rssKiB), 1)} | ${fmt(w.with.gw.fds)} | ` +
        `${fmt(w.after.fds)} | ${w.healthz} |`);
      base = w.after;
    }
    const wl = s.waves[s.waves.length - 1];
    L.push('');
    L.push(`**RSS per open stream: ${fmt((w1.with.gw.rssKiB - s.before.rssKiB) / w1.n, 1)} KiB** ` +
      `((RSS with all open - RSS before), wave 1).` +
      (s.waves.length > 1 ? ` With all open, RSS by wave: ${s.waves.map((x) => `${fmt(mib(x.with.gw.rssKiB), 1)}`).join(', ')} MiB.` : '') +
      ` Fake provider RSS with all open: ${fmt(mib(w1.with.fake.rssKiB), 1)} MiB; this client: ${fmt(mib(w1.with.clientKiB), 1)} MiB. ` +
      `Open-file limits: fusebox ${s.limits.fusebox.soft} (hard ${s.limits.fusebox.hard}), fake provider ${s.limits.fake.soft}, client ${s.limits.client.soft}.` +
      (s.held < s.target ? ` **Only ${fmt(s.held)} of ${fmt(s.target)} streams fit**: each open stream holds two of fusebox's ` +
        `file descriptors (client and upstream), and the hard limit here is ${s.limits.fusebox.hard}.` : ''));
    if (s.linger) {
      L.push(`After ${s.linger.seconds} s idle: RSS ${fmt(mib(s.linger.idle.rssKiB), 1)} MiB, ${fmt(s.linger.idle.fds)} fds; ` +
        `after one more call: RSS ${fmt(mib(s.linger.after_a_call.rssKiB), 1)} MiB, ${fmt(s.linger.after_a_call.fds)} fds.`);
    }
    L.push(`Ledger (\`fusebox spend\`): ${fmt(s.ledger.paid_calls)} paid calls (expected ${fmt(s.ledger.expected)}), ` +
      `in flight ${s.ledger.in_flight_usd} USD.`);
    L.push(`After the waves: a new paid call answered ${s.answers_after.paid}, its repeat replayed: ${s.answers_after.replayed}; ` +
      `peak RSS (VmHWM) of the run ${fmt(mib(s.peak_hwm_kib), 1)} MiB.`);
  }
  if (R.keys) {
    L.push('');
    L.push(`## RSS with ${R.keys.rows.filter((r) => !r.label.includes('control')).map((r) => fmt(r.keys)).join(', ')} keys`);
    L.push('');
    L.push('Each key used once by a paid call (so the daemon has cached it and has its key scope), sent with ' +
      '`x-fusebox-replay: off` so that no result is kept (kept results are phase 3); the control row makes as many calls on one key. ' +
      'Keys after the first are written to the store as `fusebox key create` writes them (a key row and its `key_created` change), ' +
      'with the sqlite3 CLI, while the daemon runs.');
    L.push('');
    L.push('| state | keys | calls so far | RSS (MiB) |');
    L.push('| --- | --- | --- | --- |');
    for (const r of R.keys.rows) L.push(`| ${r.label} | ${fmt(r.keys)} | ${fmt(r.calls)} | ${fmt(mib(r.rss_kib), 1)} |`);
    if (R.keys.per_key_bytes !== null) {
      L.push('');
      L.push(`About ${fmt(R.keys.per_key_bytes)} bytes of RSS per cached key (last row minus the control row, per added key).`);
    }
  }
  if (R.replay) {
    const rr = R.replay.rows;
    L.push('');
    L.push(`## Replay store of up to ${fmt(rr[rr.length - 1].results)} kept results`);
    L.push('');
    L.push(`Kept results in one scope (\`${R.replay.check.scope}\`, ${R.replay.check.row_bytes} bytes of headers and body each), ` +
      `filled with the sqlite3 CLI while the daemon is stopped; every row is the kept answer of a request we send ` +
      `(fingerprint computed as src/replay.c does, checked against a real kept call). For each size a fresh daemon, then ` +
      'sequential replays on one keep-alive connection, each checked with `x-fusebox-replayed: true`: distinct random kept ' +
      'results asked once each (a store read; after up to 200 warm-up ones), then the same ones asked again (the daemon may answer ' +
      'them from memory). Start: spawn to the ready line (the Bloom filter is loaded from the store).');
    L.push('');
    L.push('| kept results | store (MiB) | daemon start (ms) | RSS idle (MiB) | RSS after lookups (MiB) | replays | first read p50 (µs) | p90 (µs) | p99 (µs) | max (µs) | asked again p50 / p99 (µs) | not replayed | SUM(length(body)) scan (ms) |');
    L.push('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
    for (const r of rr) {
      L.push(`| ${fmt(r.results)} | ${fmt(r.db_bytes / 2 ** 20, 0)} | ${fmt(r.start_ms)} | ${fmt(mib(r.rss_idle_kib), 1)} | ` +
        `${fmt(mib(r.rss_after_kib), 1)} | ${fmt(r.lookups)} | ${fmt(r.p50_us)} | ${fmt(r.p90_us)} | ${fmt(r.p99_us)} | ${fmt(r.max_us)} | ` +
        `${fmt(r.again_p50_us)} / ${fmt(r.again_p99_us)} | ${r.misses} | ${fmt(r.size_cap_scan_ms)} |`);
    }
    L.push('');
    L.push('The last column times, with the sqlite3 CLI, the sum the maintenance thread computes once a minute for ' +
      '`replay.max_bytes` (`fb_store_results_purge`): it reads every row, in a read of its own (in WAL mode the writes of the ledger go on meanwhile).');
    const st = R.replay.stall;
    if (st) {
      L.push('');
      L.push(`With ${fmt(rr[rr.length - 1].results)} kept results, replaying on (sequentially) until the daemon's maintenance ` +
        `thread ran its once-a-minute size-cap check, seen as a burst in the daemon's read counter (/proc/PID/io): ` +
        (st.burst ? `**${fmt(st.burst.read_mib)} MiB read at ${st.burst.from_s}-${st.burst.to_s} s after the start; the slowest replay ` +
          `around it took ${fmt(st.max_in_burst_us / 1000, 1)} ms, the slowest elsewhere ${fmt(st.max_outside_us / 1000, 1)} ms**` :
          `no burst seen within ${st.deadline_s} s`) +
        `. ${fmt(st.requests)} replays up to ${st.until_s} s: p50 ${fmt(st.p50_us)} µs, p99 ${fmt(st.p99_us)} µs, ` +
        `${st.over_20ms} over 20 ms, ${st.over_50ms} over 50 ms; slowest [s after start, ms]: ` +
        `${st.worst.map((x) => `[${x[0]}, ${x[1]}]`).join(' ')}.`);
    }
  }
  L.push('');
  L.push('## Targets');
  L.push('');
  for (const t of R.targets) L.push(`- **${t.ok ? 'PASS' : 'MISS'}** ${t.what}: ${t.detail}`);
  L.push('');
  return L.join('\n');
}

function targets(R) {
  const T = [];
  if (R.streams) {
    const s = R.streams;
    const w = s.waves;
    const allOpen = w.every((x) => x.openAtSample === x.n && x.first === x.n && x.complete === x.n);
    const perKiB = (w[0].with.gw.rssKiB - s.before.rssKiB) / w[0].n;
    const peak1 = w.length > 1 ? w[w.length - 2].with.gw.rssKiB : w[0].with.gw.rssKiB;
    const peakN = w[w.length - 1].with.gw.rssKiB;
    const bounded = peakN <= peak1 * 1.05 + 4096;
    const settled = s.ledger.paid_calls === s.ledger.expected && Number(s.ledger.in_flight_usd) === 0;
    T.push({ what: `${fmt(s.target)} concurrent open streams`,
      ok: allOpen && settled && s.held >= s.target,
      detail: `${fmt(s.held)} held open at once, in each of ${w.length} waves (every first byte and closing event: ${allOpen ? 'yes' : 'no'}; ` +
        `every one paid and settled in the ledger: ${settled ? 'yes' : 'no'})` +
        (s.held < s.target ? `; fd-bound: fusebox needs two descriptors per open stream, ~${fmt(2 * s.target + 100)} in all, ` +
          `and the hard open-file limit here is ${s.limits.fusebox.hard}` : '') });
    T.push({ what: 'with bounded memory (RSS per stream)',
      ok: bounded,
      detail: `${fmt(perKiB, 1)} KiB RSS per open stream; with all open, wave ${w.length} at ${fmt(mib(peakN), 1)} MiB vs ` +
        `wave ${Math.max(1, w.length - 1)} at ${fmt(mib(peak1), 1)} MiB (${bounded ? 'within' : 'more than'} 5% + 4 MiB)` });
  }
  if (R.replay && R.replay.rows.length >= 2) {
    const rr = R.replay.rows;
    const a = rr[0];
    const b = rr[rr.length - 1];
    const ratio = b.p50_us / a.p50_us;
    const ratio99 = b.p99_us / a.p99_us;
    T.push({ what: 'replay lookups O(1) or O(log n) as the store grows',
      ok: ratio <= 2 && rr.every((r) => r.misses === 0),
      detail: `p50 ${fmt(a.p50_us)} µs at ${fmt(a.results)} kept results, ${fmt(b.p50_us)} µs at ${fmt(b.results)} ` +
        `(x${fmt(ratio, 2)} for x${fmt(b.results / a.results)} results; p99 x${fmt(ratio99, 2)})` });
  }
  return T;
}

/* ------------------------------------------------------------------ */

const t0 = Date.now();
const R = { date: new Date().toISOString(), config: { streams: STREAMS, waves: WAVES, hold_s: HOLD_MS / 1000,
  keys: KEY_STEPS, results: RESULT_STEPS, lookups: LOOKUPS } };
R.machine = machine();
if (PHASES.has('streams')) await phaseStreams(R);
if (PHASES.has('keys')) await phaseKeys(R);
if (PHASES.has('replay')) await phaseReplay(R);
R.runtime_s = (Date.now() - t0) / 1000;
R.targets = targets(R);
const md = markdown(R);
mkdirSync(OUT, { recursive: true });
writeFileSync(join(OUT, 'scale.md'), md);
writeFileSync(join(OUT, 'scale.json'), `${JSON.stringify(R, null, 2)}\n`);
console.log(md);
log(`wrote ${join(OUT, 'scale.md')} and scale.json (${fmt(R.runtime_s, 0)} s)`);
process.exit(0);
