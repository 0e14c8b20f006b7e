// secrets.test.mjs - no secret at rest and none in a log (issue 6, item 5).
//
// One run of representative traffic with log_level debug: paid calls through
// the official OpenAI and Anthropic SDKs (plain and streamed), a generic
// route, replays, an Idempotency-Key, refusals (budget, trip, revoked and
// unknown keys), upstream errors, keys created and revoked with the CLI,
// `fusebox run`, a kill -9 with records still in the journal and a restart.
// Then every log the daemon and the CLI printed, and every file in data_dir
// (the SQLite store, its WAL, the journal, the epoch) at three moments, are
// searched for the provider keys the gateway holds and for every virtual
// key's secret; none may be there. The store keeps a key's SHA-256 and its
// 10-character prefix only. The fake provider's logs must not hold a virtual
// key either (it would mean one was forwarded upstream).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, readdirSync, writeFileSync, existsSync } from 'node:fs';
import { join, relative } from 'node:path';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import {
  startEnv, run, request, waitFor, chatBody, PROVIDER_KEYS, BIN, SLOW, STORE_PG,
} from './harness.mjs';

const CHAT = '/openai/v1/chat/completions';

/* ------------------------------------------------------------------ */
/* what must not leak, and where to look                               */

/** Every window of `len` characters of a virtual key past its public
 *  prefix (fbk_ and 6 hex digits, which key list prints and the store
 *  keeps): a log that printed part of a secret is caught too. */
function secretWindows(key, len = 12) {
  const hidden = key.slice(10);
  const out = [];
  for (let i = 0; i + len <= hidden.length; i++) out.push(hidden.slice(i, i + len));
  return out;
}

/** Needles: [{what, bytes}] for the provider keys and the virtual keys. */
function needles(providerKeys, virtualKeys) {
  const n = [];
  for (const [name, value] of Object.entries(providerKeys)) {
    n.push({ what: `provider key ${name}`, label: name, text: value });
  }
  for (const [label, key] of virtualKeys) {
    n.push({ what: `virtual key "${label}" (whole)`, label, text: key });
    for (const w of secretWindows(key)) n.push({ what: `virtual key "${label}" (part ${w})`, label, text: w });
  }
  return n.map((x) => ({ ...x, bytes: Buffer.from(x.text, 'utf8') }));
}

/** Where the needles occur in buf: [{where, what, at, context}], one hit
 *  per secret (the earliest; a whole key also matches its parts). */
function findIn(buf, ns, where) {
  const first = new Map();
  for (const n of ns) {
    const at = buf.indexOf(n.bytes);
    if (at < 0) continue;
    const seen = first.get(n.label);
    if (seen && seen.at <= at) continue;
    const from = Math.max(0, at - 60);
    const context = buf.subarray(from, at + n.bytes.length + 60).toString('latin1')
      .replace(/[^\x20-\x7e]/g, '.');
    first.set(n.label, { where, what: n.what, at, context });
  }
  return [...first.values()];
}

function filesUnder(dir) {
  const out = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...filesUnder(p));
    else if (e.isFile()) out.push(p);
  }
  return out;
}

function show(hits) {
  return hits.map((h) => `  ${h.where} @${h.at}: ${h.what}\n    ...${h.context}...`).join('\n');
}

/* ------------------------------------------------------------------ */

describe('secrets: none in any log or in data_dir after a full run', () => {
  let env;
  const logs = []; // [{where, text}] everything the daemon and the CLI printed
  const keys = new Map(); // label -> fbk_ key text
  const keyIds = new Map(); // label -> k_ id
  const snapshots = []; // data_dir scans: {moment, files, hits}
  let jobSeen = null; // what the job under `fusebox run` saw

  /** The CLI, with its output kept for the search. A key create's last
   *  stdout line is the key itself, shown once by design: it is taken out
   *  (and must be the only place the key appears). */
  async function cli(args, { label } = {}) {
    const r = await run([...args, '--config', env.configPath]);
    env.checkText(`fusebox ${args.join(' ')}`, r.stderr);
    let stdout = r.stdout;
    if (label !== undefined) {
      assert.equal(r.code, 0, `key create failed: ${r.stderr}`);
      const lines = stdout.trimEnd().split('\n');
      const key = lines.pop().trim();
      assert.match(key, /^fbk_[0-9a-f]{40}$/);
      keys.set(label, key);
      const m = /created key (k_[0-9a-zA-Z]+)/.exec(r.stderr);
      assert.ok(m, `key create stderr has no id: ${r.stderr}`);
      keyIds.set(label, m[1]);
      stdout = lines.join('\n');
    }
    logs.push({ where: `fusebox ${args.join(' ')} (stdout)`, text: stdout });
    logs.push({ where: `fusebox ${args.join(' ')} (stderr)`, text: r.stderr });
    return r;
  }

  const createKey = (label, extra = []) =>
    cli(['key', 'create', '--tenant', 'acme', ...extra], { label });

  async function settledStore() {
    await waitFor(async () => {
      const r = await run(['spend', '--config', env.configPath, '--json']);
      if (r.code !== 0) return false;
      return JSON.parse(r.stdout).scopes.every((x) => /^0(\.0*)?$/.test(x.in_flight_usd));
    }, { timeoutMs: 10000, message: 'nothing in flight' });
  }

  /** A `fusebox run --gateway` of a node job that makes a paid call with
   *  the attempt key and writes what it saw (its key, its environment) to
   *  a file outside data_dir. */
  async function fuseboxRun() {
    const seen = join(env.dir, 'job-seen.json');
    const job = join(env.dir, 'job.mjs');
    writeFileSync(job, `
import { writeFileSync } from 'node:fs';
const r = await fetch(process.env.OPENAI_BASE_URL + '/chat/completions', {
  method: 'POST',
  headers: { authorization: 'Bearer ' + process.env.OPENAI_API_KEY, 'content-type': 'application/json' },
  body: JSON.stringify({ model: 'gpt-4o-mini', max_tokens: 8,
    messages: [{ role: 'user', content: 'from a job under fusebox run' }] }),
});
await r.text();
writeFileSync(${JSON.stringify(seen)}, JSON.stringify({ status: r.status, env: process.env }));
`);
    const argv = ['run', '--config', env.configPath, '--json', '--job', 'main', '--tenant', 'acme',
      '--gateway', env.gwUrl, '--', process.execPath, job];
    const r = await new Promise((res) => {
      const child = spawn(BIN, argv, {
        env: { ...process.env, ...PROVIDER_KEYS }, cwd: env.dir, stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d) => { stdout += d; });
      child.stderr.on('data', (d) => { stderr += d; });
      const timer = setTimeout(() => child.kill('SIGKILL'), 60000 * SLOW);
      child.on('close', (code) => { clearTimeout(timer); res({ code, stdout, stderr }); });
    });
    env.checkText('fusebox run', r.stderr);
    logs.push({ where: 'fusebox run (stdout)', text: r.stdout });
    logs.push({ where: 'fusebox run (stderr)', text: r.stderr });
    assert.equal(r.code, 0, `fusebox run failed:\n${r.stdout}\n${r.stderr}`);
    assert.ok(existsSync(seen), 'the job did not run');
    jobSeen = JSON.parse(readFileSync(seen, 'utf8'));
    assert.equal(jobSeen.status, 200);
    assert.match(jobSeen.env.FUSEBOX_KEY, /^fbk_[0-9a-f]{40}$/);
    keys.set('fusebox run attempt key', jobSeen.env.FUSEBOX_KEY);
  }

  before(async () => {
    try {
      await traffic();
    } catch (e) {
      // The daemon's stderr says why (a sanitizer report, an assertion).
      if (env) e.message += `\n--- fusebox serve stderr:\n${env.gatewayStderr()}`;
      throw e;
    }
  });

  async function traffic() {
    env = await startEnv({
      logLevel: 'debug',
      budgets: { global: '100', tenants: { acme: { jobs: { main: null, other: null } } } },
    });

    await createKey('main', ['--job', 'main']);
    await createKey('no job');
    await createKey('tiny budget', ['--job', 'other', '--budget', '0.000001']);
    await createKey('attempt 2', ['--job', 'main', '--attempt', '2']);
    await createKey('revoked', ['--job', 'main']);
    await cli(['key', 'list']);
    await cli(['key', 'list', '--json']);

    const base = env.gwUrl;
    const openai = new OpenAI({ baseURL: `${base}/openai/v1`, apiKey: keys.get('main'), maxRetries: 0 });
    const anthropic = new Anthropic({ baseURL: `${base}/anthropic`, apiKey: keys.get('main'), maxRetries: 0 });

    // Paid calls, plain and streamed, then the same again (replays).
    for (let i = 0; i < 2; i++) {
      await openai.chat.completions.create({
        model: 'gpt-4o-mini', max_tokens: 16, messages: [{ role: 'user', content: 'a paid call' }],
      });
      const s = await openai.chat.completions.create({
        model: 'gpt-4o-mini', max_tokens: 16, stream: true,
        messages: [{ role: 'user', content: 'a paid stream' }],
      });
      for await (const _ of s) { /* drain */ }
      await anthropic.messages.create({
        model: 'claude-haiku-4-5', max_tokens: 16, messages: [{ role: 'user', content: 'via x-api-key' }],
      });
      const as = await anthropic.messages.create({
        model: 'claude-haiku-4-5', max_tokens: 16, stream: true,
        messages: [{ role: 'user', content: 'an anthropic stream' }],
      });
      for await (const _ of as) { /* drain */ }
    }
    const replayed = await env.post(CHAT, chatBody({ content: 'a paid call' }), { key: keys.get('main') });
    assert.equal(replayed.status, 200);

    // The other keys, the generic route, an Idempotency-Key.
    const r1 = await env.post(CHAT, chatBody({ content: 'no job' }), { key: keys.get('no job') });
    assert.equal(r1.status, 200, r1.text);
    const r2 = await env.post(CHAT, chatBody({ content: 'attempt' }), { key: keys.get('attempt 2') });
    assert.equal(r2.status, 200, r2.text);
    const g = await env.post('/generic/v1/send', { recipients: ['a@x', 'b@x'], text: 'hi' },
      { key: keys.get('main') });
    assert.equal(g.status, 200, g.text);
    for (let i = 0; i < 2; i++) {
      const r = await env.post(CHAT, chatBody({ content: 'idempotent' }),
        { key: keys.get('main'), headers: { 'idempotency-key': 'job-42-step-1' } });
      assert.equal(r.status, 200, r.text);
    }

    // Refusals and errors.
    const tiny = await env.post(CHAT, chatBody({ maxTokens: 4096 }), { key: keys.get('tiny budget') });
    assert.equal(tiny.status, 402, tiny.text);
    assert.equal((await env.post(CHAT, '{"model": ', { key: keys.get('main') })).status, 400);
    assert.equal((await env.post(CHAT, chatBody({ model: 'no-such-model' }), { key: keys.get('main') })).status, 400);
    assert.equal((await env.post('/nope/v1/x', chatBody(), { key: keys.get('main') })).status, 404);
    assert.equal((await env.post(CHAT, chatBody())).status, 401);
    const unknown = `fbk_${randomBytes(20).toString('hex')}`;
    keys.set('never created', unknown);
    assert.equal((await env.post(CHAT, chatBody(), { key: unknown })).status, 401);
    const wrongSecret = keys.get('main').slice(0, 10) + randomBytes(17).toString('hex');
    keys.set('right prefix, wrong secret', wrongSecret);
    assert.equal((await env.post(CHAT, chatBody(), { key: wrongSecret })).status, 401);
    assert.equal((await request('POST', `${base}${CHAT}`, {
      headers: { 'x-api-key': unknown }, body: chatBody(),
    })).status, 401);
    const up503 = await env.post(CHAT, chatBody({ content: 'upstream 503' }),
      { key: keys.get('main'), headers: { 'x-fake-fault': 'status=503', 'cache-control': 'no-store' } });
    assert.equal(up503.status, 503, up503.text);
    const up400 = await env.post(CHAT, chatBody({ content: 'upstream 400' }),
      { key: keys.get('main'), headers: { 'x-fake-fault': 'status=400' } });
    assert.equal(up400.status, 400, up400.text);
    // A stream the upstream breaks off (logged as a warning): whatever
    // the client sees, the logs are what is checked.
    await env.post(CHAT, chatBody({ content: 'broken', extra: { stream: true } }),
      { key: keys.get('main'), headers: { 'x-fake-fault': 'reset_after=50' } }).catch(() => null);

    // Revoke with the CLI; the daemon drops the key within a second.
    await cli(['key', 'revoke', keyIds.get('revoked')]);
    await waitFor(async () => (await env.post(CHAT, chatBody({ content: 'revoked' }),
      { key: keys.get('revoked') })).status === 401, { timeoutMs: 5000, message: 'revoked key refused' });

    // A trip by hand and its reset.
    await cli(['trip', '--job', 'main', '--tenant', 'acme', '--reason', 'secrets test']);
    await waitFor(async () => (await env.post(CHAT, chatBody({ content: 'tripped' }),
      { key: keys.get('main') })).status === 429, { timeoutMs: 5000, message: 'trip applied' });
    await cli(['reset', '--job', 'main', '--tenant', 'acme']);
    await waitFor(async () => (await env.post(CHAT, chatBody({ content: 'after reset' }),
      { key: keys.get('main') })).status === 200, { timeoutMs: 5000, message: 'reset applied' });

    await fuseboxRun();

    await settledStore();
    await cli(['spend']);
    await cli(['spend', '--json', '--job', 'main', '--tenant', 'acme']);
    await cli(['key', 'list', '--json']);
    snapshots.push({ moment: 'while serving', ...scanDataDirLater() });

    // kill -9 right after paid calls: their journal records may not have
    // reached the store yet; the restart applies them.
    await Promise.all([1, 2, 3].map((i) => env.post(CHAT, chatBody({ content: `before kill ${i}` }),
      { key: keys.get('main') })));
    await env.kill9();
    snapshots.push({ moment: 'after kill -9', ...scanDataDirLater() });
    await env.restart();
    const again = await env.post(CHAT, chatBody({ content: 'a paid call' }), { key: keys.get('main') });
    assert.equal(again.status, 200);
    await settledStore();
    await cli(['replay', 'purge', '--all']);
    await cli(['replay', 'purge']);
    await env.stop();
    snapshots.push({ moment: 'after a clean stop', ...scanDataDirLater() });
  }

  // The needles are only all known at the end (the run's attempt key): the
  // files are read at each moment and searched once all keys are known.
  function scanDataDirLater() {
    const files = filesUnder(env.dataDir);
    const contents = files.map((f) => ({ name: relative(env.dataDir, f), buf: readFileSync(f) }));
    // On PostgreSQL the store is the database: every row of it, as text
    if (STORE_PG) {
      contents.push({ name: '(pg_dump of the store)',
        buf: execFileSync('pg_dump', ['--data-only', env.store], { maxBuffer: 256 << 20 }) });
    }
    return { files: files.map((f) => relative(env.dataDir, f)).sort(), contents };
  }

  after(async () => {
    if (env) await env.close();
  });

  it('ran with debug logging, and data_dir held the store, its WAL and the journal', () => {
    const gwLog = env.gatewayStderr();
    assert.match(gwLog, /debug/i, 'no debug line in the daemon log');
    assert.match(gwLog, /call id=/, 'no per-call debug line in the daemon log');
    const all = new Set(snapshots.flatMap((s) => s.files));
    const names = [...all].join(', ');
    if (STORE_PG) { // no journal on a shared store; the dump was read
      assert.ok(snapshots.every((s) => s.contents.some((c) => c.name.startsWith('(pg_dump') &&
        c.buf.includes('COPY public.keys'))), 'no dump of the store');
    } else {
      assert.ok([...all].some((f) => /journal/.test(f)), `no journal file in data_dir: ${names}`);
      assert.ok([...all].some((f) => /-wal$/.test(f)), `no WAL in data_dir: ${names}`);
    }
    assert.ok([...all].some((f) => /epoch/.test(f)), `no epoch file in data_dir: ${names}`);
    assert.ok(keys.size >= 8, `only ${keys.size} virtual keys made`);
  });

  it('no provider key and no virtual key in any log of the daemon or the CLI', () => {
    const ns = needles(PROVIDER_KEYS, keys);
    const hits = [];
    for (const [i, p] of [...env.old].entries()) {
      hits.push(...findIn(Buffer.from(p.stderr), ns, `fusebox serve #${i + 1} (stderr)`));
      hits.push(...findIn(Buffer.from(p.stdout), ns, `fusebox serve #${i + 1} (stdout)`));
    }
    for (const l of logs) hits.push(...findIn(Buffer.from(l.text), ns, l.where));
    assert.equal(hits.length, 0, `secrets found in logs:\n${show(hits)}`);
  });

  it('no provider key and no virtual key in any file of data_dir (store, WAL, journal, epoch)', () => {
    const ns = needles(PROVIDER_KEYS, keys);
    const hits = [];
    for (const s of snapshots) {
      for (const c of s.contents) hits.push(...findIn(c.buf, ns, `${s.moment}: data_dir/${c.name}`));
    }
    assert.equal(hits.length, 0, `secrets found in data_dir:\n${show(hits)}`);
  });

  it('the store keeps a key as its SHA-256 and its 10-character prefix', () => {
    const db = filesUnder(env.dataDir).find((f) => {
      const head = readFileSync(f).subarray(0, 16).toString('latin1');
      return head === 'SQLite format 3\0';
    });
    assert.ok(db || STORE_PG, 'no SQLite database in data_dir');
    const rows = STORE_PG
      ? JSON.parse(execFileSync('psql', [env.store, '-X', '-A', '-t', '-c',
        "SELECT COALESCE(json_agg(json_build_object('id', id, 'prefix', prefix, 'hash', encode(hash, 'hex'))), '[]') FROM keys"],
      { encoding: 'utf8' }))
      : JSON.parse(execFileSync('sqlite3', ['-json', db,
        'SELECT id, prefix, lower(hex(hash)) AS hash FROM keys'], { encoding: 'utf8' }) || '[]');
    const byId = new Map(rows.map((r) => [r.id, r]));
    for (const [label, id] of keyIds) {
      const row = byId.get(id);
      assert.ok(row, `key ${label} (${id}) is not in the store`);
      const key = keys.get(label);
      assert.equal(row.prefix, key.slice(0, 10), `key ${label}: stored prefix`);
      assert.equal(row.hash, createHash('sha256').update(key).digest('hex'), `key ${label}: stored hash`);
    }
    // A textual dump of every table holds no secret either (the byte
    // search above already covers the file; this covers what SQLite
    // would print of it).
    const dump = STORE_PG
      ? execFileSync('pg_dump', [env.store], { encoding: 'utf8', maxBuffer: 256 << 20 })
      : execFileSync('sqlite3', [db, '.dump'], { encoding: 'utf8', maxBuffer: 256 << 20 });
    const hits = findIn(Buffer.from(dump), needles(PROVIDER_KEYS, keys), 'sqlite3 .dump');
    assert.equal(hits.length, 0, `secrets in the store's dump:\n${show(hits)}`);
  });

  it('no virtual key reached the fake provider, and the job under fusebox run saw no provider key', () => {
    const fakeLog = (env.fake ? env.fake.stderr + env.fake.stdout : '');
    const vk = new Map([...keys].filter(([l]) => l !== 'never created' && l !== 'right prefix, wrong secret'));
    const hits = findIn(Buffer.from(fakeLog), needles({}, vk), 'fake provider log');
    assert.equal(hits.length, 0, `virtual keys in the fake provider's log:\n${show(hits)}`);
    assert.ok(jobSeen, 'the job did not report');
    const provValues = new Set(Object.values(PROVIDER_KEYS));
    const leaked = Object.entries(jobSeen.env).filter(([, v]) => provValues.has(v));
    assert.deepEqual(leaked, [], 'provider keys in the environment of a job under fusebox run');
  });
});
