// torture.mjs - crash safety under load (issue 6, item 3). Runs the real
// gateway (`fusebox serve`) in front of three fake providers, drives it with
// concurrent clients (unique paid calls, identical calls that must replay,
// streams), and kills it with SIGKILL at random moments: mostly under load
// (the journal, the ledger thread and the WAL are being written), some
// while it starts (journal replay and crash recovery writing the store).
// After every restart it checks:
//
//   1. `fusebox ledger verify` passes (integrity_check and the ledger's
//      invariants);
//   2. every scope's recorded spend (`fusebox spend --json`) is at least
//      what its fake provider billed, and at most its ceiling (the job
//      "capped" has one the load reaches);
//   3. every answer a client got as 200 since the last kill (and a sample
//      of older ones) replays after the restart: x-fusebox-replayed: true
//      and the same body byte for byte (for a stream, the same event bytes:
//      the closing `: x-fusebox-cost-usd` comment says 0.0 on a replay);
//   4. no request acknowledged as paid reached a provider twice (a counting
//      proxy in front of each fake sees every forwarded call, by prompt).
//
// Node built-ins only. Loopback only; bounded in time and requests; every
// process and the temp dir are removed on exit or error.
//
//   KILLS=100                 kills (default 100)
//   TORTURE_SEED=n            the random seed (default: from the clock; printed)
//   TORTURE_CONCURRENCY=6     client workers during load
//   TORTURE_MAX_SECONDS=900   the whole run's bound
//   TORTURE_DURABILITY=full   the config's durability (default: process)
//   FUSEBOX_BIN               the binary (default build/fusebox)
//   TORTURE_KEEP=1            keep the temp dir (printed) for a post-mortem

import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '..', '..');
const BIN = (() => {
  const b = process.env.FUSEBOX_BIN || 'build/fusebox';
  return isAbsolute(b) ? b : resolve(REPO, b);
})();
const KILLS = Number.parseInt(process.env.KILLS || '100', 10);
const CONCURRENCY = Number.parseInt(process.env.TORTURE_CONCURRENCY || '6', 10);
const DURABILITY = process.env.TORTURE_DURABILITY || ''; // "full": no journal, fsync per commit
const MAX_SECONDS = Number.parseInt(process.env.TORTURE_MAX_SECONDS || '900', 10);
let seed = Number.parseInt(process.env.TORTURE_SEED || String(Date.now() % 2147483647), 10);
const SEED0 = seed;
const MAX_TOKENS = 24;
const ROUND_REQUESTS = 5000; // the most a round between two kills sends
// Ceilings, lifetime: the job "capped" is reached by the load, the others
// are not (they still must hold).
const CEILING = { global: '50', 'tenant:t1': '40', 'tenant:t2': '40', 'job:capped': '0.01' };
const PROVIDER_KEYS = { OPENAI_API_KEY: 'sk-fake-openai' };
const SANITIZER = ['AddressSanitizer', 'LeakSanitizer', 'runtime error:', 'assertion failed'];

// xorshift: a run is repeatable from its seed (up to the timing of kills)
function rand() {
  seed ^= seed << 13; seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5; seed >>>= 0;
  return (seed % 1000003) / 1000003;
}
const randInt = (a, b) => a + Math.floor(rand() * (b - a + 1));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/* ---- money: decimal USD text <-> BigInt picodollars ---- */
function pico(text) {
  const m = /^(\d*)(?:\.(\d*))?$/.exec(String(text).trim());
  if (!m) throw new Error(`not an amount: ${text}`);
  const frac = (m[2] || '').padEnd(12, '0');
  if (frac.length > 12) throw new Error(`finer than a picodollar: ${text}`);
  return BigInt(m[1] || '0') * 10n ** 12n + BigInt(frac);
}

/* ---- processes and cleanup ---- */
const live = new Set();
let workDir = null;
function cleanup() {
  for (const p of live) { try { p.kill('SIGKILL'); } catch { /* gone */ } }
  live.clear();
  if (workDir && process.env.TORTURE_KEEP !== '1') {
    try { rmSync(workDir, { recursive: true, force: true }); } catch { /* */ }
  }
}
process.on('exit', cleanup);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(sig, () => { cleanup(); process.exit(130); });
}

function start(name, args, env = {}) {
  const child = spawn(BIN, args, {
    env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], cwd: workDir,
  });
  const p = { name, child, out: '', err: '', exited: false, code: null, signal: null };
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (d) => { p.out += d; });
  child.stderr.on('data', (d) => { p.err += d; if (p.err.length > 1 << 20) p.err = p.err.slice(-(1 << 19)); });
  p.exit = new Promise((res) => child.on('exit', (code, signal) => {
    p.exited = true; p.code = code; p.signal = signal; live.delete(child); res();
  }));
  live.add(child);
  return p;
}

async function waitFor(fn, timeoutMs, what) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

async function readyAddr(p, prefix) {
  const re = new RegExp(`^${prefix} listening on (\\S+):(\\d+)\\s*$`, 'm');
  const m = await waitFor(() => {
    if (p.exited) throw new Error(`${p.name} exited (${p.code ?? p.signal}) before ready:\n${p.err.slice(-4000)}`);
    return re.exec(p.out);
  }, 15000, `${p.name} ready line`);
  return `${m[1]}:${m[2]}`;
}

function cli(args) {
  return new Promise((res) => {
    execFile(BIN, args, { timeout: 30000, maxBuffer: 16 << 20, env: { ...process.env, ...PROVIDER_KEYS } },
      (e, stdout, stderr) => {
        if (SANITIZER.some((m) => stderr.includes(m))) fail(`fusebox ${args[0]} printed a sanitizer report:\n${stderr.slice(-4000)}`);
        res({ code: e ? (typeof e.code === 'number' ? e.code : -1) : 0, stdout, stderr });
      });
  });
}

/* ---- HTTP, bodies as Buffers (byte-for-byte comparisons) ---- */
function request(method, url, { headers = {}, body, timeoutMs = 20000 } = {}) {
  return new Promise((res, rej) => {
    const u = new URL(url);
    const data = body === undefined ? undefined : Buffer.from(body);
    const h = { ...headers };
    if (data) { h['content-type'] = 'application/json'; h['content-length'] = data.length; }
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method, headers: h, agent: false },
      (resp) => {
        const chunks = [];
        resp.on('data', (c) => chunks.push(c));
        resp.on('end', () => res({ status: resp.statusCode, headers: resp.headers, body: Buffer.concat(chunks), complete: resp.complete }));
        resp.on('error', rej);
        resp.on('aborted', () => rej(new Error('aborted')));
      });
    req.setTimeout(timeoutMs, () => req.destroy(new Error('timed out')));
    req.on('error', rej);
    if (data) req.write(data);
    req.end();
  });
}

/* A proxy in front of a fake provider: counts every call forwarded to it,
 * by the prompt (the gateway may rewrite the rest of the body). */
function countingProxy(target) {
  const counts = new Map();
  const srv = http.createServer((req, resp) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('error', () => { /* the gateway was killed */ });
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      try {
        const tag = JSON.parse(body.toString('utf8')).messages?.[0]?.content;
        if (typeof tag === 'string') counts.set(tag, (counts.get(tag) || 0) + 1);
      } catch { /* not JSON: not a paid call */ }
      const t = new URL(target);
      const headers = { ...req.headers, host: t.host };
      const up = http.request({ host: t.hostname, port: t.port, path: req.url, method: req.method, headers, agent: false },
        (ur) => {
          resp.writeHead(ur.statusCode, ur.headers);
          ur.pipe(resp);
          ur.on('error', () => resp.destroy());
        });
      up.on('error', () => { try { resp.destroy(); } catch { /* */ } });
      resp.on('close', () => { /* the fake finishes (and bills) on its own */ });
      up.end(body);
    });
  });
  return new Promise((res) => srv.listen(0, '127.0.0.1', () => {
    res({ srv, counts, url: `http://127.0.0.1:${srv.address().port}` });
  }));
}

/* ---- the setup: three fakes, each behind a proxy, one per job ---- */
const JOBS = [
  { job: 'capped', tenant: 't1', provider: 'pa' },
  { job: 'bulk', tenant: 't1', provider: 'pb' },
  { job: 'side', tenant: 't2', provider: 'pc' },
];

function configYaml(dataDir, proxies) {
  const q = JSON.stringify;
  return [
    `listen: ${q('127.0.0.1:0')}`,
    `data_dir: ${q(dataDir)}`,
    'log_level: info',
    ...(DURABILITY ? [`durability: ${DURABILITY}`] : []),
    'providers:',
    ...JOBS.map((j, i) => `  ${j.provider}: {kind: openai, base_url: ${q(proxies[i].url)}, api_key_env: OPENAI_API_KEY}`),
    'budgets:',
    `  global: ${q(CEILING.global)}`,
    '  tenants:',
    '    t1:',
    `      budget: ${q(CEILING['tenant:t1'])}`,
    '      jobs:',
    `        capped: {budget: ${q(CEILING['job:capped'])}}`,
    '        bulk: {}',
    '    t2:',
    `      budget: ${q(CEILING['tenant:t2'])}`,
    '      jobs:',
    '        side: {}',
    '',
  ].join('\n');
}

/* ---- state of the run ---- */
const stats = {
  kills: 0, killsStartup: 0, killsUnderLoad: 0, killsWithInFlight: 0, restarts: 0,
  requests: 0, acked: 0, replayedLive: 0, status: {}, transport: 0, checks: 0,
  replayChecks: 0, verifyRuns: 0, maxJournalBytes: 0, killsOnWrite: 0,
  killsJournalPending: 0, maxInFlightRows: 0, overGlobal: 0n, slackGlobal: 0n,
};
const failures = [];
function fail(msg) {
  failures.push(msg);
  console.error(`torture: FAIL: ${msg}`);
}
function check(ok, msg) {
  if (ok) stats.checks++;
  else fail(msg);
  return ok;
}

// The answers the clients saw as 200, by prompt: {job, body (request text),
// stream, answer (Buffer), round}. Replays must hand back the same bytes.
const acked = new Map();
// Per job: calls whose client got no answer (the kill cut them), and the
// dearest worst case sent. A call answered was settled at its real cost
// first, so the ledger can exceed the bill by at most the reservations of
// the calls left unanswered.
const unanswered = { capped: 0, bulk: 0, side: 0 };
const worstMax = { capped: 0n, bulk: 0n, side: 0n };
const bigMax = (a, b) => (a > b ? a : b);
// gpt-4o-mini: 0.15 and 0.60 USD per million tokens, in picodollars per
// token; the gateway bounds input tokens by the body's bytes.
const worst = (body) => BigInt(Buffer.byteLength(body)) * 150000n + BigInt(MAX_TOKENS) * 600000n;
let uniq = 0;
let round = 0;

const STREAM_TRAILER = /: x-fusebox-cost-usd [0-9.]+\n\n$/;
function eventBytes(buf, stream) {
  if (!stream) return buf;
  const s = buf.toString('latin1');
  const m = STREAM_TRAILER.exec(s);
  return m ? Buffer.from(s.slice(0, m.index), 'latin1') : buf;
}
function streamComplete(buf) {
  const s = buf.toString('latin1');
  return s.includes('data: [DONE]') && STREAM_TRAILER.test(s);
}

function newCall(j) {
  const stream = rand() < 0.3;
  const tag = `torture ${j.job} ${String(uniq++).padStart(7, '0')}`;
  const body = JSON.stringify({
    model: 'gpt-4o-mini', messages: [{ role: 'user', content: tag }], max_tokens: MAX_TOKENS,
    ...(stream ? { stream: true } : {}),
  });
  return { tag, body, stream, job: j.job };
}

async function send(gwUrl, keys, call) {
  const j = JOBS.find((x) => x.job === call.job);
  return request('POST', `${gwUrl}/${j.provider}/v1/chat/completions`, {
    headers: { authorization: `Bearer ${keys[call.job]}`, 'x-fake-completion-tokens': String(MAX_TOKENS) },
    body: call.body,
  });
}

/* One client worker: until stop(), send a mix of calls. */
async function worker(gwUrl, keys, state) {
  while (!state.stop && stats.requests < state.roundEnd) {
    const j = JOBS[randInt(0, JOBS.length - 1)];
    let call;
    const pool = state.pools[j.job];
    if (rand() < 0.3 && pool.length) call = pool[randInt(0, pool.length - 1)];
    else call = newCall(j);
    const repeat = acked.has(call.tag);
    worstMax[call.job] = bigMax(worstMax[call.job], worst(call.body));
    stats.requests++;
    state.inFlight++;
    try {
      const r = await send(gwUrl, keys, call);
      stats.status[r.status] = (stats.status[r.status] || 0) + 1;
      const ok = r.status === 200 && r.complete && (!call.stream || streamComplete(r.body));
      if (!ok) continue;
      const replayed = r.headers['x-fusebox-replayed'] === 'true';
      const first = acked.get(call.tag);
      if (first) {
        stats.replayedLive++;
        check(replayed, `round ${round}: an identical call (${call.tag}) answered 200 was paid again, not replayed`);
        check(eventBytes(first.answer, call.stream).equals(eventBytes(r.body, call.stream)),
          `round ${round}: the replay of ${call.tag} differs from its first answer`);
      } else if (!repeat) {
        stats.acked++;
        acked.set(call.tag, { ...call, answer: r.body, round, replayedFirst: replayed });
        pool.push(call);
        if (pool.length > 200) pool.splice(0, pool.length - 200);
      }
    } catch {
      stats.transport++; // the kill: this call is not acknowledged
      unanswered[call.job]++;
    } finally {
      state.inFlight--;
    }
  }
}

/* Poll the store's files until one changes (size or mtime), at most ms. */
async function storeWritten(dataDir, ms) {
  const files = ['fusebox.db', 'fusebox.db-wal', 'fusebox.journal.0', 'fusebox.journal.1'].map((f) => join(dataDir, f));
  const look = () => files.map((f) => { try { const s = statSync(f); return `${s.size}/${s.mtimeMs}`; } catch { return '-'; } }).join(' ');
  const first = look();
  const end = Date.now() + ms;
  while (Date.now() < end) {
    await new Promise((r) => setImmediate(r));
    if (look() !== first) return true;
  }
  return false;
}

async function fakeBilling(fake) {
  const r = await request('GET', `${fake.url}/_fake/billing`, { timeoutMs: 5000 });
  return JSON.parse(r.body.toString('utf8'));
}

/* Wait until no fake holds a call and two reads agree. */
async function billingStable(fakes) {
  let prev = null;
  return waitFor(async () => {
    const b = await Promise.all(fakes.map(fakeBilling));
    const key = JSON.stringify(b.map((x) => [x.requests, x.billed_pico, x.pending]));
    const same = prev === key && b.every((x) => x.pending === 0);
    prev = key;
    return same ? b : null;
  }, 15000, 'the fake providers to settle');
}

/* The checks after a restart. */
async function checkAll(cfgPath, gwUrl, keys, fakes, proxies, lastCheckedRound) {
  // 1. the store
  const v = await cli(['ledger', 'verify', '--config', cfgPath, '--json']);
  stats.verifyRuns++;
  let vj = null;
  try { vj = JSON.parse(v.stdout); } catch { /* below */ }
  if (check(v.code === 0 && vj?.ok === true, `round ${round}: ledger verify failed (exit ${v.code}): ${v.stdout}${v.stderr}`)) {
    stats.maxJournalBytes = Math.max(stats.maxJournalBytes, vj.journal_pending_bytes);
  }

  // 2. money: recorded >= billed, <= ceilings
  const billing = await billingStable(fakes);
  const billed = Object.fromEntries(JOBS.map((j, i) => [`job:${j.job}`, BigInt(billing[i].billed_pico)]));
  billed['tenant:t1'] = billed['job:capped'] + billed['job:bulk'];
  billed['tenant:t2'] = billed['job:side'];
  billed.global = billed['tenant:t1'] + billed['tenant:t2'];
  const sp = await cli(['spend', '--config', cfgPath, '--json']);
  let rows = [];
  try { rows = JSON.parse(sp.stdout).scopes; } catch { fail(`round ${round}: fusebox spend --json: ${sp.stderr}`); }
  const spent = Object.fromEntries(rows.map((r) => [r.scope, BigInt(r.spent_pico)]));
  const slack = Object.fromEntries(JOBS.map((j) => [`job:${j.job}`, BigInt(unanswered[j.job]) * worstMax[j.job]]));
  slack['tenant:t1'] = slack['job:capped'] + slack['job:bulk'];
  slack['tenant:t2'] = slack['job:side'];
  slack.global = slack['tenant:t1'] + slack['tenant:t2'];
  stats.overGlobal = (spent.global ?? 0n) - billed.global;
  stats.slackGlobal = slack.global;
  for (const [scope, b] of Object.entries(billed)) {
    const s = spent[scope] ?? 0n;
    check(s >= b, `round ${round}: ${scope} recorded ${s} pico < billed ${b} pico`);
    check(s - b <= slack[scope], `round ${round}: ${scope} recorded ${s} pico, billed ${b}: ` +
      `${s - b} more than the ${slack[scope]} the unanswered calls could have reserved`);
    if (CEILING[scope]) {
      check(s <= pico(CEILING[scope]), `round ${round}: ${scope} recorded ${s} pico > ceiling ${CEILING[scope]} USD`);
      check(b <= pico(CEILING[scope]), `round ${round}: ${scope} billed ${b} pico > ceiling ${CEILING[scope]} USD`);
    }
  }

  // 3. kept results replay byte for byte: every answer since the last
  // check, and a sample of older ones.
  const fresh = [], old = [];
  for (const a of acked.values()) (a.round > lastCheckedRound ? fresh : old).push(a);
  const sample = fresh.concat(Array.from({ length: Math.min(8, old.length) }, () => old[randInt(0, old.length - 1)]));
  const before = proxies.map((p) => [...p.counts.values()].reduce((x, y) => x + y, 0));
  for (let i = 0; i < sample.length; i += 8) {
    await Promise.all(sample.slice(i, i + 8).map(async (a) => {
      let r;
      try { r = await send(gwUrl, keys, a); } catch (e) {
        fail(`round ${round}: replaying ${a.tag}: ${e.message}`);
        return;
      }
      stats.replayChecks++;
      check(r.status === 200 && r.headers['x-fusebox-replayed'] === 'true',
        `round ${round}: ${a.tag} (answered 200 in round ${a.round}) did not replay after the restart: ` +
        `status ${r.status}, replayed ${r.headers['x-fusebox-replayed']}: ${r.body.toString('utf8').slice(0, 300)}`);
      check(r.status !== 200 || eventBytes(a.answer, a.stream).equals(eventBytes(r.body, a.stream)),
        `round ${round}: the kept result of ${a.tag} (round ${a.round}) differs from the first answer`);
    }));
  }
  const after = proxies.map((p) => [...p.counts.values()].reduce((x, y) => x + y, 0));
  check(before.every((b, i) => b === after[i]), `round ${round}: replays reached a provider (${before} -> ${after})`);

  // 4. nothing acknowledged was paid twice
  for (const [i, j] of JOBS.entries()) {
    for (const [tag, n] of proxies[i].counts) {
      if (n > 1 && acked.has(tag)) fail(`round ${round}: ${tag} (job ${j.job}, answered 200) reached the provider ${n} times`);
    }
  }
  stats.checks++;
}

async function main() {
  const t0 = Date.now();
  const deadline = t0 + MAX_SECONDS * 1000;
  workDir = mkdtempSync(join(tmpdir(), 'fusebox-torture-'));
  const dataDir = join(workDir, 'data');
  const cfgPath = join(workDir, 'fusebox.yaml');
  console.log(`torture: ${KILLS} kills, seed ${SEED0}, concurrency ${CONCURRENCY}, ` +
    `durability ${DURABILITY || 'process'}, dir ${workDir}`);

  const fakes = [];
  const proxies = [];
  for (let i = 0; i < JOBS.length; i++) {
    const f = start(`fake-provider ${i}`, ['fake-provider', '--listen', '127.0.0.1:0']);
    fakes.push({ proc: f, url: `http://${await readyAddr(f, 'fake-provider')}` });
    proxies.push(await countingProxy(fakes[i].url));
  }
  writeFileSync(cfgPath, configYaml(dataDir, proxies));
  const keys = {};
  for (const j of JOBS) {
    const r = await cli(['key', 'create', '--config', cfgPath, '--tenant', j.tenant, '--job', j.job]);
    if (r.code !== 0) throw new Error(`key create: ${r.stderr}`);
    keys[j.job] = r.stdout.trim().split('\n').pop().trim();
  }

  const logPath = join(workDir, 'gateway.log');
  let log = '';
  const startGateway = () => start('fusebox serve', ['serve', '--config', cfgPath], PROVIDER_KEYS);
  const gwUp = async (gw) => {
    const url = `http://${await readyAddr(gw, 'fusebox')}`;
    await waitFor(async () => {
      try { return (await request('GET', `${url}/healthz`, { timeoutMs: 2000 })).status === 200; } catch { return false; }
    }, 10000, '/healthz');
    return url;
  };
  const reap = async (gw) => {
    await gw.exit;
    log += gw.err;
    if (SANITIZER.some((m) => gw.err.includes(m))) fail(`round ${round}: the gateway printed a sanitizer report:\n${gw.err.slice(-4000)}`);
    if (!gw.signal && gw.code !== 0) fail(`round ${round}: the gateway exited ${gw.code} on its own:\n${gw.err.slice(-4000)}`);
  };
  const state = { stop: false, inFlight: 0, roundEnd: 0, pools: { capped: [], bulk: [], side: [] } };
  let lastChecked = -1;

  while (stats.kills < KILLS) {
    if (Date.now() > deadline) throw new Error(`over TORTURE_MAX_SECONDS (${MAX_SECONDS}) after ${stats.kills} kills`);
    round++;
    const gw = startGateway();
    // Some kills land while the daemon starts: journal replay, recovery.
    if (rand() < 0.12) {
      await sleep(randInt(0, 40));
      gw.child.kill('SIGKILL');
      stats.kills++;
      stats.killsStartup++;
      await reap(gw);
      continue;
    }
    const url = await gwUp(gw);
    stats.restarts++;
    await checkAll(cfgPath, url, keys, fakes, proxies, lastChecked);
    lastChecked = round;
    if (failures.length) break;

    state.stop = false;
    state.roundEnd = stats.requests + ROUND_REQUESTS;
    const workers = Array.from({ length: CONCURRENCY }, () => worker(url, keys, state));
    // Mostly short rounds; some long enough for the journal to pass the
    // 1 MiB at which the daemon empties it once the store holds it all.
    await sleep(rand() < 0.7 ? randInt(20, 450) : randInt(450, 2000));
    // Half the kills wait for the store's files to move (the journal, the
    // SQLite WAL or database growing): the daemon is writing right then.
    if (rand() < 0.5 && await storeWritten(dataDir, 200)) stats.killsOnWrite++;
    stats.killsWithInFlight += state.inFlight > 0 ? 1 : 0;
    gw.child.kill('SIGKILL');
    stats.kills++;
    stats.killsUnderLoad++;
    await reap(gw);
    state.stop = true;
    await Promise.all(workers);
    if (failures.length) break;
    // The store as the kill left it, no daemon: verify must pass and say
    // what the journal holds (applied at the next start).
    const v = await cli(['ledger', 'verify', '--config', cfgPath, '--json']);
    let vj = null;
    try { vj = JSON.parse(v.stdout); } catch { /* below */ }
    if (check(v.code === 0 && vj?.ok === true, `round ${round}: ledger verify right after the kill failed (exit ${v.code}): ${v.stdout}${v.stderr}`)) {
      stats.maxJournalBytes = Math.max(stats.maxJournalBytes, vj.journal_pending_bytes);
      if (vj.journal_pending_bytes > 0) stats.killsJournalPending++;
      const inFlight = vj.checks.find((c) => c.check === 'in_flight')?.count ?? 0;
      stats.maxInFlightRows = Math.max(stats.maxInFlightRows, inFlight);
    }
  }

  // A last restart: the checks once more, then a clean stop and verify
  // with no daemon running.
  if (!failures.length) {
    round++;
    const gw = startGateway();
    const url = await gwUp(gw);
    stats.restarts++;
    await checkAll(cfgPath, url, keys, fakes, proxies, lastChecked);
    gw.child.kill('SIGTERM');
    await reap(gw);
    const v = await cli(['ledger', 'verify', '--config', cfgPath]);
    check(v.code === 0, `ledger verify after a clean stop failed: ${v.stdout}${v.stderr}`);
    check(/journal_pending\s+0\b/.test(v.stdout), `journal not empty after a clean stop: ${v.stdout}`);
  }
  writeFileSync(logPath, log.slice(-(4 << 20)));

  const secs = ((Date.now() - t0) / 1000).toFixed(1);
  const st = Object.entries(stats.status).map(([k, n]) => `${k}:${n}`).join(' ');
  console.log(`torture: statuses ${st}, transport errors ${stats.transport}, ` +
    `kills under load ${stats.killsUnderLoad} (${stats.killsWithInFlight} with calls in flight), ` +
    `${stats.killsOnWrite} as the store's files moved, during startup ${stats.killsStartup}, ` +
    `${stats.killsJournalPending} with journal bytes pending (largest ${stats.maxJournalBytes}), ` +
    `most rows in flight ${stats.maxInFlightRows}, restarts ${stats.restarts}, answers kept ${stats.acked}, ` +
    `replayed under load ${stats.replayedLive}, replayed after restarts ${stats.replayChecks}, ` +
    `recorded - billed (global) ${stats.overGlobal} pico, bound ${stats.slackGlobal}`);
  console.log(`torture: ${stats.kills} kills, ${stats.requests} requests, ${stats.checks} checks passed, ` +
    `${failures.length} failed, ${secs} s, seed ${SEED0}`);
  if (failures.length && process.env.TORTURE_KEEP !== '1') {
    console.log('torture: rerun with TORTURE_KEEP=1 to keep the data dir and gateway.log');
  }
  return failures.length ? 1 : 0;
}

main().then((code) => { cleanup(); process.exit(code); }, (e) => {
  console.error(`torture: error: ${e.stack || e}`);
  console.log(`torture: ${stats.kills} kills, ${stats.requests} requests, ${stats.checks} checks passed, 1 failed (error)`);
  cleanup();
  process.exit(1);
});
