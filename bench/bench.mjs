// bench/bench.mjs - make bench: fusebox side by side with nginx and Portkey,
// in one run, on loopback, with the same request mix for every path (issue 5).
// bench/run.sh installs the tools and calls this; see bench/README.md for what
// is measured and how. Writes bench/results/latest.md and latest.json.
//
//   node bench/bench.mjs path/to/fusebox path/to/loadgen
//
// Every process it starts (nginx twice, fusebox, Portkey, wrk, loadgen) is
// stopped, and its temp dir removed, on every way out; each external command
// runs under a time bound.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const startedAt = Date.now();
// Other work on the machine shows in the tails: the report gives the load.
const loadAvg = () => fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const loadAtStart = loadAvg();

// wrk takes whole seconds: its durations are integers.
function envNum(name, dflt, { integer = false, min = 0 } = {}) {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min || (integer && !Number.isInteger(n)))
    throw new Error(`${name} must be ${integer ? 'an integer' : 'a number'} >= ${min}, not '${v}'`);
  return n;
}
function envList(name, dflt) {
  const v = process.env[name];
  if (!v) return dflt;
  return v.split(',').map((s) => {
    const n = Number(s.trim());
    if (!Number.isInteger(n) || n < 1) throw new Error(`${name}: '${s}' is not a positive integer`);
    return n;
  });
}

const opt = {
  satSeconds: envNum('BENCH_DURATION', 5, { integer: true, min: 1 }), // wrk at saturation, per path
  latSeconds: envNum('BENCH_LATENCY_DURATION', 4, { min: 0.1 }), // each loadgen window
  streamSeconds: envNum('BENCH_STREAM_DURATION', 3, { integer: true, min: 1 }),
  warmSeconds: envNum('BENCH_WARMUP', 1, { integer: true }), // before every measured window
  threads: envNum('BENCH_THREADS', 2, { integer: true, min: 1 }),
  conns: envNum('BENCH_CONNECTIONS', 16, { integer: true, min: 1 }), // wrk at saturation
  concurrencies: envList('BENCH_CONCURRENCIES', [1, 16, 64]),
  rates: envList('BENCH_RATES', [1000, 5000]),
  openConns: envNum('BENCH_OPEN_CONNECTIONS', 32, { integer: true, min: 1 }), // loadgen at fixed rates
  portkey: process.env.BENCH_PORTKEY !== '0',
};

const fuseboxBin = path.resolve(process.argv[2] || path.join(root, 'build/fusebox'));
const loadgenBin = path.resolve(process.argv[3] || path.join(root, 'build/loadgen'));
const outDir = path.join(here, 'results');

const log = (...a) => console.error('bench:', ...a);
class BenchError extends Error {}
const die = (msg) => {
  throw new BenchError(msg);
};

// --- processes: registered on start, always stopped ---------------------
const procs = new Set(); // {name, child}
let dir = null;

function startProc(name, cmd, args, { cwd, env, logFile } = {}) {
  const fd = fs.openSync(logFile, 'a');
  const child = spawn(cmd, args, { cwd, env: env || process.env, stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  const p = { name, child, exited: false, code: null };
  child.on('exit', (code, sig) => {
    p.exited = true;
    p.code = code ?? sig;
  });
  child.on('error', () => {
    p.exited = true;
  });
  procs.add(p);
  return p;
}

async function stopProc(p) {
  if (!p.exited) {
    p.child.kill('SIGTERM');
    const t = Date.now();
    while (!p.exited && Date.now() - t < 5000) await sleep(20);
    if (!p.exited) p.child.kill('SIGKILL');
  }
  procs.delete(p);
}

let cleaning = null;
function cleanup() {
  cleaning ??= (async () => {
    for (const p of [...procs].reverse()) await stopProc(p);
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    dir = null;
  })();
  return cleaning;
}
// The last resort, for an exit that skipped the async cleanup.
process.on('exit', () => {
  for (const p of procs) if (!p.exited) p.child.kill('SIGKILL');
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});
for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]]) {
  process.on(sig, () => {
    log(`${sig}: stopping`);
    cleanup().finally(() => process.exit(code));
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Run a command to its end (bounded): {code, stdout, stderr, timedOut}.
function run(cmd, args, { timeoutMs, cwd, env } = {}) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd, env: env || process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    const p = { name: cmd, child, exited: false };
    procs.add(p);
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    const done = (code) => {
      clearTimeout(timer);
      p.exited = true;
      procs.delete(p);
      resolve({ code, stdout, stderr, timedOut });
    };
    child.on('error', (e) => done(`${e.code || e.message}`));
    child.on('close', (code, sig) => done(code ?? sig));
  });
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitFor(what, check, ms, p) {
  const t = Date.now();
  while (Date.now() - t < ms) {
    if (await check()) return true;
    if (p && p.exited) return false;
    await sleep(50);
  }
  return false;
}

function portOpen(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

// One POST on a fresh connection: {status, headers, body}.
function post(port, urlPath, headers, body, timeoutMs = 10000) {
  return new Promise((resolve) => {
    const req = http.request(
      { host: '127.0.0.1', port, path: urlPath, method: 'POST', agent: false, headers, timeout: timeoutMs },
      (res) => {
        let b = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (b += d));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: b }));
        res.on('error', (e) => resolve({ status: 0, headers: {}, body: String(e) }));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (e) => resolve({ status: 0, headers: {}, body: String(e.message) }));
    req.end(body);
  });
}

// --- /proc: CPU time and peak RSS of the measured processes -------------
const clkTck = Number(spawnSync('getconf', ['CLK_TCK']).stdout?.toString().trim()) || 100;

function cpuTicks(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]); // utime, stime (fields 14 and 15)
  } catch {
    return 0;
  }
}
function vmHWM(pid) {
  try {
    const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmHWM:\s+(\d+) kB/m);
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}
function childPids(pid) {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    const out = [];
    for (const d of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(d)) continue;
      try {
        const s = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
        if (Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(d));
      } catch {
        /* gone */
      }
    }
    return out;
  }
}
// nginx: the workers do the work; the master only counts for memory.
const nginxWorkers = (p) => childPids(p.child.pid);

// --- the request mix ------------------------------------------------------
const filler =
  'Ledger line reconciled against the bank statement; totals match and no further action is needed for this period.';
const content = Array(6).fill(filler).join(' ');
const usage =
  '{"prompt_tokens":260,"completion_tokens":160,"total_tokens":420,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}';
const answer =
  `{"id":"chatcmpl-bench0001","object":"chat.completion","created":1764300000,"model":"gpt-4o-mini-2024-07-18",` +
  `"choices":[{"index":0,"message":{"role":"assistant","content":"${content}","refusal":null},"logprobs":null,"finish_reason":"stop"}],` +
  `"usage":${usage},"service_tier":"default","system_fingerprint":"fp_bench"}`;

// The same answer as an OpenAI chat.completion.chunk stream, as sent when
// stream_options.include_usage is on: "usage":null on every chunk, then a
// usage-only chunk, then [DONE].
const chunkHead =
  '{"id":"chatcmpl-bench0002","object":"chat.completion.chunk","created":1764300000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_bench",';
const sseEvents = [];
sseEvents.push(`${chunkHead}"choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}`);
const words = content.split(' ');
for (let i = 0; i < words.length; i += 8) {
  const piece = (i ? ' ' : '') + words.slice(i, i + 8).join(' ');
  sseEvents.push(`${chunkHead}"choices":[{"index":0,"delta":{"content":"${piece}"},"logprobs":null,"finish_reason":null}],"usage":null}`);
}
sseEvents.push(`${chunkHead}"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}`);
const usageEvent = `${chunkHead}"choices":[],"usage":${usage}}`;
sseEvents.push(usageEvent);
const sse = sseEvents.map((e) => `data: ${e}\n\n`).join('') + 'data: [DONE]\n\n';

const pad = Array(10)
  .fill('Summarise this ledger line for the monthly report, keeping amounts and dates exact. ')
  .join('');
function bodyParts(stream) {
  const pre =
    '{"model":"gpt-4o-mini","max_tokens":200,"temperature":0,' +
    (stream ? '"stream":true,' : '') +
    '"messages":[{"role":"system","content":"You are a careful bookkeeper."},{"role":"user","content":"request ';
  const post = ` ${pad}"}]}`;
  return { pre, post };
}
const fixedBody = (stream) => {
  const { pre, post } = bodyParts(stream);
  return `${pre}fixed${post}`;
};

// --- the paths --------------------------------------------------------------
// Each path: where to send, the headers, unique or fixed bodies, the
// processes whose CPU and memory it measures, and whether it can run.
const describe = {
  direct: 'client -> nginx upstream (static OpenAI-shaped JSON / SSE)',
  'nginx-proxy': 'client -> nginx proxy_pass (keepalive upstream) -> upstream',
  'fusebox-forward': 'client -> fusebox serve -> upstream; every body unique: each call forwarded and paid',
  'fusebox-replay': 'client -> fusebox serve; one identical body: answered from the kept result',
  portkey: 'client -> Portkey gateway (node) -> upstream (x-portkey-provider: openai, x-portkey-custom-host)',
};

async function main() {
  for (const [f, what] of [[fuseboxBin, 'fusebox binary (run make first)'], [loadgenBin, 'loadgen (make build/loadgen)']])
    if (!fs.existsSync(f)) die(`no ${what} at ${f}`);
  const nginxBin = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((f) => fs.existsSync(f)) || 'nginx';

  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fusebox-bench.'));
  fs.chmodSync(dir, 0o755); // nginx workers may run as nobody
  const nonce = `${process.pid}-${Date.now()}`;

  // --- the upstream and the reverse proxy: two nginx instances, so that
  // the proxy's CPU time is the proxy's alone
  const upPort = await freePort();
  let pxPort = await freePort();
  while (pxPort === upPort) pxPort = await freePort();
  const nginxConf = (name, server) => {
    const d = path.join(dir, name);
    fs.mkdirSync(path.join(d, 'logs'), { recursive: true });
    fs.mkdirSync(path.join(d, 'tmp'), { recursive: true });
    const conf = `daemon off;
master_process on;
worker_processes auto;
pid ${d}/nginx.pid;
error_log ${d}/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path ${d}/tmp/body;
    proxy_temp_path ${d}/tmp/proxy;
    fastcgi_temp_path ${d}/tmp/fastcgi;
    uwsgi_temp_path ${d}/tmp/uwsgi;
    scgi_temp_path ${d}/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
    client_body_buffer_size 64k;
${server}
}
`;
    fs.writeFileSync(path.join(d, 'nginx.conf'), conf);
    return d;
  };
  const esc = (s) => s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
  if (/['$]/.test(answer + sse)) die('the canned answers must not hold \' or $ (nginx strings)');
  // An nginx string holds at most 4 KB: the stream is returned from a few
  // variables, cut at event boundaries.
  const sseParts = [''];
  for (const e of sse.split(/(?<=\n\n)/)) {
    if (esc(sseParts[sseParts.length - 1] + e).length > 3500) sseParts.push('');
    sseParts[sseParts.length - 1] += e;
  }
  const sseReturn =
    sseParts.map((part, i) => `            set $sse${i} '${esc(part)}';`).join('\n') +
    `\n            return 200 '${sseParts.map((_, i) => `$sse${i}`).join('')}';`;
  const upDir = nginxConf(
    'upstream',
    `    server {
        listen 127.0.0.1:${upPort};
        location /stream/ {
            default_type text/event-stream;
${sseReturn}
        }
        location / {
            default_type application/json;
            return 200 '${esc(answer)}';
        }
    }`,
  );
  const pxDir = nginxConf(
    'proxy',
    `    upstream bench_upstream {
        server 127.0.0.1:${upPort};
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:${pxPort};
        location /stream/ {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off; # as an SSE proxy is set up
        }
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }`,
  );
  const startNginx = async (name, d, port) => {
    const args = ['-p', d, '-e', `${d}/logs/error.log`, '-c', `${d}/nginx.conf`];
    const t = await run(nginxBin, ['-t', '-q', ...args], { timeoutMs: 10000 });
    if (t.code !== 0) die(`nginx rejected the ${name} config:\n${t.stderr}`);
    const p = startProc(`nginx-${name}`, nginxBin, args, { logFile: `${d}/logs/stdout` });
    if (!(await waitFor(name, () => portOpen(port), 5000, p)))
      die(`nginx (${name}) did not start:\n${fs.readFileSync(`${d}/logs/error.log`, 'utf8')}`);
    return p;
  };
  const upNginx = await startNginx('upstream', upDir, upPort);
  const pxNginx = await startNginx('proxy', pxDir, pxPort);

  // --- fusebox: budgets far above what the run can spend, replay on; a
  // second provider entry reaches the upstream's streaming location
  const fbConf = path.join(dir, 'fusebox.yaml');
  fs.writeFileSync(
    fbConf,
    `listen: 127.0.0.1:0
data_dir: ./data
providers:
  openai: {kind: openai, base_url: http://127.0.0.1:${upPort}, api_key_env: OPENAI_API_KEY}
  openai-stream: {kind: openai, base_url: http://127.0.0.1:${upPort}/stream, api_key_env: OPENAI_API_KEY}
budgets:
  global: 1000000
  tenants:
    bench:
      budget: 1000000
      jobs:
        load: {budget: 1000000}
log_level: warn
replay:
  enabled: true
`,
  );
  const gwLog = path.join(dir, 'gw.log');
  const gw = startProc('fusebox', fuseboxBin, ['serve', '--config', fbConf], {
    logFile: gwLog,
    env: { ...process.env, OPENAI_API_KEY: 'sk-bench-upstream' },
  });
  let gwPort = 0;
  await waitFor(
    'fusebox',
    () => {
      const m = fs.readFileSync(gwLog, 'utf8').match(/listening on [\d.]+:(\d+)/);
      if (m) gwPort = Number(m[1]);
      return gwPort > 0;
    },
    10000,
    gw,
  );
  const gwLogText = () => fs.readFileSync(gwLog, 'utf8');
  if (!gwPort) die(`fusebox did not start:\n${gwLogText()}`);
  const kc = await run(fuseboxBin, ['key', 'create', '--config', fbConf, '--tenant', 'bench', '--job', 'load'], {
    timeoutMs: 20000,
  });
  const key = kc.stdout.trim().split('\n').pop();
  if (kc.code !== 0 || !key.startsWith('fbk_')) die(`fusebox key create failed:\n${kc.stderr}`);

  // --- Portkey, from bench/portkey (npm ci when node_modules is missing)
  const pk = { port: 0, proc: null, failed: null, streamFailed: null, version: null };
  const pkDir = path.join(here, 'portkey');
  const pkMain = path.join(pkDir, 'node_modules/@portkey-ai/gateway/build/start-server.js');
  const pkLog = path.join(dir, 'portkey.log');
  if (!opt.portkey) {
    pk.failed = 'skipped (BENCH_PORTKEY=0)';
  } else {
    if (!fs.existsSync(pkMain)) {
      log('portkey: npm ci in bench/portkey');
      // --ignore-scripts: its one install script (patch-package) has no
      // patch to apply; the run must not depend on what npm allows to run.
      const r = await run('npm', ['ci', '--no-audit', '--no-fund', '--ignore-scripts'], {
        cwd: pkDir,
        timeoutMs: 300000,
      });
      if (r.code !== 0) pk.failed = `npm ci failed (${r.timedOut ? 'timed out' : `exit ${r.code}`}): ${lastLine(r.stderr)}`;
    }
    if (!pk.failed && !fs.existsSync(pkMain)) pk.failed = `npm ci left no ${path.relative(root, pkMain)}`;
    if (!pk.failed) {
      pk.version = JSON.parse(fs.readFileSync(path.join(pkDir, 'node_modules/@portkey-ai/gateway/package.json'))).version;
      pk.port = await freePort();
      // loopback.mjs: start-server listens on every interface; keep it local.
      pk.proc = startProc(
        'portkey',
        process.execPath,
        ['--import', path.join(pkDir, 'loopback.mjs'), pkMain, `--port=${pk.port}`, '--headless'],
        { cwd: pkDir, logFile: pkLog },
      );
      if (!(await waitFor('portkey', () => portOpen(pk.port), 20000, pk.proc)))
        pk.failed = `did not start (${pk.proc.exited ? `exited ${pk.proc.code}` : 'no port in 20 s'}): ${lastLine(readLog(pkLog))}`;
    }
  }
  const pkHeaders = (stream) => ({
    'x-portkey-provider': 'openai',
    'x-portkey-custom-host': `http://127.0.0.1:${upPort}${stream ? '/stream' : ''}/v1`,
  });

  const paths = [
    {
      name: 'direct',
      port: upPort,
      url: { json: '/v1/chat/completions', stream: '/stream/v1/chat/completions' },
      headers: () => ({ Authorization: 'Bearer sk-bench-direct' }),
      unique: true,
      procs: () => nginxWorkers(upNginx),
      memPids: () => [upNginx.child.pid, ...nginxWorkers(upNginx)],
      process: 'nginx upstream workers (for scale; no proxy on this path)',
    },
    {
      name: 'nginx-proxy',
      port: pxPort,
      url: { json: '/v1/chat/completions', stream: '/stream/v1/chat/completions' },
      headers: () => ({ Authorization: 'Bearer sk-bench-direct' }),
      unique: true,
      procs: () => nginxWorkers(pxNginx),
      memPids: () => [pxNginx.child.pid, ...nginxWorkers(pxNginx)],
      process: 'proxy nginx: master + workers',
    },
    {
      name: 'fusebox-forward',
      port: gwPort,
      url: { json: '/openai/v1/chat/completions', stream: '/openai-stream/v1/chat/completions' },
      headers: () => ({ Authorization: `Bearer ${key}` }),
      unique: true,
      fusebox: true,
      procs: () => [gw.child.pid],
      memPids: () => [gw.child.pid],
      process: 'fusebox (one process for forward and replay)',
    },
    {
      name: 'fusebox-replay',
      port: gwPort,
      url: { json: '/openai/v1/chat/completions', stream: '/openai-stream/v1/chat/completions' },
      headers: () => ({ Authorization: `Bearer ${key}` }),
      unique: false,
      fusebox: true,
      procs: () => [gw.child.pid],
      memPids: () => [gw.child.pid],
      process: 'fusebox (one process for forward and replay)',
    },
    {
      name: 'portkey',
      port: pk.port,
      url: { json: '/v1/chat/completions', stream: '/v1/chat/completions' },
      headers: (stream) => ({ Authorization: 'Bearer sk-bench-upstream', ...pkHeaders(stream) }),
      unique: true,
      procs: () => [pk.proc.child.pid],
      memPids: () => [pk.proc.child.pid],
      process: 'node (Portkey gateway)',
    },
  ];
  const byName = Object.fromEntries(paths.map((p) => [p.name, p]));
  const skipReason = (p, stream) => {
    if (p.name !== 'portkey') return null;
    if (pk.failed) return `Portkey ${pk.failed}`;
    if (pk.proc.exited) return `Portkey exited (${pk.proc.code}) during the run: ${lastLine(readLog(pkLog))}`;
    if (stream && pk.streamFailed) return `Portkey ${pk.streamFailed}`;
    return null;
  };

  // --- checks before any load: each path answers; fusebox forwards, keeps
  // and replays, streams included, the whole stream through
  const jsonHdr = { 'Content-Type': 'application/json' };
  let replayedChecks = 0;
  for (const p of paths) {
    if (skipReason(p, false)) continue;
    for (const stream of [false, true]) {
      const body = fixedBody(stream);
      const r = await post(p.port, p.url[stream ? 'stream' : 'json'], { ...jsonHdr, ...p.headers(stream) }, body);
      const ok = r.status === 200 && (stream ? r.body.includes('data: [DONE]') : r.body.includes('"completion_tokens"'));
      if (ok && p.name === 'fusebox-replay') replayedChecks++; // forward's check just kept it
      if (ok) continue;
      const what = `${p.name}${stream ? ' (stream)' : ''} answered ${r.status}: ${r.body.slice(0, 200)}`;
      if (p.name === 'portkey') {
        const why = `answered ${r.status} to a ${stream ? 'streamed ' : ''}chat completion: ${r.body.slice(0, 120)}; its log: ${lastLine(readLog(pkLog), /error|exception/i)}`;
        if (stream) pk.streamFailed = why;
        else pk.failed = why;
        log(`WARNING: Portkey ${why}`);
        if (!stream) break;
        continue;
      }
      die(`${what}${p.fusebox ? `\nthe gateway log:\n${gwLogText()}` : ''}`);
    }
  }
  // fusebox: the fixed bodies above were forwarded and kept (paid twice:
  // JSON and stream, by fusebox-forward's check); again, they are replays.
  const streamChecks = {};
  for (const stream of [false, true]) {
    const p = byName['fusebox-replay'];
    const r = await post(p.port, p.url[stream ? 'stream' : 'json'], { ...jsonHdr, ...p.headers() }, fixedBody(stream));
    if (r.status !== 200 || r.headers['x-fusebox-replayed'] !== 'true')
      die(`the repeated ${stream ? 'streamed ' : ''}request was not replayed (${r.status}, x-fusebox-replayed: ${r.headers['x-fusebox-replayed']})`);
    replayedChecks++;
    if (stream) streamChecks.replay = r;
  }
  // The whole stream through fusebox: every upstream event in order (the
  // usage-only chunk is fusebox's to drop: it asked for it, the client did
  // not), [DONE], then the settled cost as an SSE comment.
  {
    const p = byName['fusebox-forward'];
    const r = await post(p.port, p.url.stream, { ...jsonHdr, ...p.headers() }, bodyParts(true).pre + `check-${nonce}` + bodyParts(true).post);
    const missing = checkStream(r);
    if (missing) die(`fusebox's streamed answer is not the full stream: ${missing}\n${r.body.slice(0, 400)}`);
    const rm = checkStream(streamChecks.replay);
    if (rm) die(`fusebox's replayed stream is not the full stream: ${rm}`);
    streamChecks.forward = r;
  }
  function checkStream(r) {
    if (r.status !== 200) return `status ${r.status}`;
    if (!String(r.headers['content-type']).startsWith('text/event-stream')) return `content-type ${r.headers['content-type']}`;
    let at = 0;
    for (const e of sseEvents) {
      if (e === usageEvent) continue;
      const i = r.body.indexOf(`data: ${e}`, at);
      if (i < 0) return `event ${sseEvents.indexOf(e) + 1} of ${sseEvents.length} missing or out of order`;
      at = i;
    }
    const done = r.body.indexOf('data: [DONE]', at);
    if (done < 0) return 'no data: [DONE] at the end';
    if (!/^: x-fusebox-cost-usd [0-9.]+$/m.test(r.body.slice(done))) return 'no ": x-fusebox-cost-usd" line after [DONE]';
    return null;
  }

  // --- the measurements ----------------------------------------------------
  const tally = { fwd: { done: 3, sent: 3, slack: 0 }, rep: { done: replayedChecks } }; // 3: the checks above
  const count = (p, done, sent, slack = 0) => {
    if (p.name === 'fusebox-forward') {
      tally.fwd.done += done;
      tally.fwd.sent += sent;
      tally.fwd.slack += slack;
    } else if (p.name === 'fusebox-replay') tally.rep.done += done;
  };
  const failFusebox = (p, what, res) => {
    if (!p.fusebox) return;
    const bad = (res.non_2xx || 0) + (res.errors || 0) + (res.bad_body || 0);
    if (bad > 0)
      die(`${p.name}: ${what}: ${res.non_2xx || 0} non-2xx, ${res.errors || 0} errors, ${res.bad_body || 0} incomplete answers\nthe gateway log:\n${gwLogText()}`);
  };

  const luaFor = (p, stream, tag) => {
    const f = path.join(dir, `${p.name}-${stream ? 'stream' : 'json'}.lua`);
    const { pre, post: postPart } = bodyParts(stream);
    const hdrs = { 'Content-Type': 'application/json', ...p.headers(stream) };
    const luaStr = (s) => `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
    fs.writeFileSync(
      f,
      `local path = ${luaStr(p.url[stream ? 'stream' : 'json'])}
local headers = {${Object.entries(hdrs).map(([k, v]) => `[${luaStr(k)}] = ${luaStr(v)}`).join(', ')}}
local pre = ${luaStr(pre)}
local post = ${luaStr(postPart)}
local unique = ${p.unique ? 1 : 0}
local fixed = pre .. "fixed" .. post
local n = 0
tid = 0 -- a global: setup() sets it in each thread's own Lua state
run = ""
local counter = 0
function setup(thread)
    n = n + 1
    thread:set("tid", n)
end
function init(args)
    run = args[1] or "" -- no two wrk runs may share a body
end
function request()
    if unique == 0 then
        return wrk.format("POST", path, headers, fixed)
    end
    counter = counter + 1
    return wrk.format("POST", path, headers, pre .. ${luaStr(`wrk-${tag}-`)} .. run .. "-" .. tid .. "-" .. counter .. post)
end
`,
    );
    return f;
  };
  const bodyFile = (stream) => {
    const f = path.join(dir, `body-${stream ? 'stream' : 'json'}.json`);
    const { pre, post: postPart } = bodyParts(stream);
    fs.writeFileSync(f, `${pre}@ID@${postPart}`);
    return f;
  };
  const fixedFile = (stream) => {
    const f = path.join(dir, `fixed-${stream ? 'stream' : 'json'}.json`);
    fs.writeFileSync(f, fixedBody(stream));
    return f;
  };
  const files = { body: [bodyFile(false), bodyFile(true)], fixed: [fixedFile(false), fixedFile(true)] };
  let runSeq = 0;

  // wrk at saturation; CPU time of the path's processes over the measured run.
  async function wrkRun(p, stream, seconds) {
    const lua = luaFor(p, stream, nonce);
    const url = `http://127.0.0.1:${p.port}`;
    const base = ['-t', String(opt.threads), '-c', String(opt.conns), '-s', lua, url];
    if (opt.warmSeconds > 0) {
      const warm = await run('wrk', ['-d', `${opt.warmSeconds}s`, ...base, '--', `w${++runSeq}`], {
        timeoutMs: (opt.warmSeconds + 20) * 1000,
      });
      const wp = parseWrk(warm.stdout);
      count(p, wp.requests, wp.requests, opt.conns);
      failFusebox(p, 'wrk warm-up', wp);
    }
    const pids = p.procs();
    const c0 = pids.reduce((a, pid) => a + cpuTicks(pid), 0);
    const r = await run('wrk', ['-d', `${seconds}s`, '--latency', ...base, '--', `m${++runSeq}`], {
      timeoutMs: (seconds + 20) * 1000,
    });
    const c1 = pids.reduce((a, pid) => a + cpuTicks(pid), 0);
    const w = parseWrk(r.stdout);
    if (r.code !== 0 || w.rps === undefined) die(`wrk failed for ${p.name}${stream ? ' (stream)' : ''}:\n${r.stdout}${r.stderr}`);
    count(p, w.requests, w.requests, opt.conns);
    failFusebox(p, `wrk${stream ? ' (stream)' : ''}`, w);
    w.cpu_us_per_request = w.requests > 0 ? (((c1 - c0) / clkTck) * 1e6) / w.requests : null;
    return w;
  }

  // loadgen: closed loop at concurrency c, or open loop at a rate.
  async function loadgenRun(p, stream, { conns, rate, seconds }) {
    const args = ['-u', `http://127.0.0.1:${p.port}${p.url[stream ? 'stream' : 'json']}`, '-c', String(conns)];
    args.push('-d', String(seconds), '-w', String(opt.warmSeconds), '-t', '5');
    if (rate) args.push('-r', String(rate));
    if (p.unique) args.push('-b', files.body[stream ? 1 : 0], '-i', `lg-${nonce}-${++runSeq}`);
    else args.push('-b', files.fixed[stream ? 1 : 0]);
    for (const [k, v] of Object.entries({ 'Content-Type': 'application/json', ...p.headers(stream) }))
      args.push('-H', `${k}: ${v}`);
    args.push('-e', stream ? 'data: [DONE]' : '"completion_tokens"');
    const r = await run(loadgenBin, args, { timeoutMs: (seconds + opt.warmSeconds + 20) * 1000 });
    let j;
    try {
      j = JSON.parse(r.stdout);
    } catch {
      die(`loadgen failed for ${p.name} (${rate ? `${rate}/s` : `c${conns}`}): ${r.timedOut ? 'timed out ' : ''}${r.stderr}${r.stdout}`);
    }
    count(p, j.done_total, j.sent_total);
    failFusebox(p, `loadgen ${rate ? `${rate}/s` : `c${conns}`}${stream ? ' (stream)' : ''}`, j);
    return j;
  }

  const results = { saturation: {}, closed: {}, open: {}, streamSat: {}, streamC16: {} };
  const forEachPath = async (label, stream, fn, into) => {
    for (const p of paths) {
      const skip = skipReason(p, stream);
      if (skip) {
        into[p.name] = { skipped: skip };
        continue;
      }
      log(`${label}: ${p.name}`);
      into[p.name] = await fn(p);
    }
  };
  // Scenario by scenario, every path in turn: slow drift of the machine
  // touches every path alike (A B C A B C, not A A A B B B).
  await forEachPath(`saturation, wrk -c${opt.conns} ${opt.satSeconds}s`, false, (p) => wrkRun(p, false, opt.satSeconds), results.saturation);
  for (const c of opt.concurrencies) {
    results.closed[c] = {};
    await forEachPath(`closed loop c${c}, ${opt.latSeconds}s`, false, (p) => loadgenRun(p, false, { conns: c, seconds: opt.latSeconds }), results.closed[c]);
  }
  for (const rate of opt.rates) {
    results.open[rate] = {};
    await forEachPath(`open loop ${rate}/s, ${opt.latSeconds}s`, false, (p) => loadgenRun(p, false, { conns: opt.openConns, rate, seconds: opt.latSeconds }), results.open[rate]);
  }
  await forEachPath(`stream, saturation, wrk -c${opt.conns} ${opt.streamSeconds}s`, true, (p) => wrkRun(p, true, opt.streamSeconds), results.streamSat);
  await forEachPath(`stream, closed loop c16, ${opt.streamSeconds}s`, true, (p) => loadgenRun(p, true, { conns: 16, seconds: opt.streamSeconds }), results.streamC16);

  const peakRssKb = {};
  for (const p of paths) if (!skipReason(p, false)) peakRssKb[p.name] = p.memPids().reduce((a, pid) => a + vmHWM(pid), 0);
  if (gw.exited) die(`fusebox exited during the run:\n${gwLogText()}`);

  // --- the ledger agrees: forwarded calls were paid, replays were not ------
  const sp = await run(fuseboxBin, ['spend', '--config', fbConf, '--json'], { timeoutMs: 30000 });
  let spend = null;
  try {
    spend = JSON.parse(sp.stdout);
  } catch {
    die(`could not read fusebox spend:\n${sp.stdout}${sp.stderr}`);
  }
  const job = findScope(spend, 'job:load');
  if (!job) die(`fusebox spend has no job:load scope:\n${sp.stdout}`);
  const ledger = {
    paid: job.paid_calls,
    replayed: job.replayed_calls,
    forward_answers: tally.fwd.done,
    forward_sent_at_most: tally.fwd.sent + tally.fwd.slack,
    replay_answers: tally.rep.done,
  };
  // wrk counts the answers it got; calls cut off by its stop may be paid too.
  if (ledger.paid < ledger.forward_answers || ledger.paid > ledger.forward_sent_at_most)
    die(`forward path: fusebox paid ${ledger.paid} calls, the clients got ${ledger.forward_answers} forwarded answers (sent at most ${ledger.forward_sent_at_most}): bodies not unique?`);
  if (ledger.replayed < ledger.replay_answers)
    die(`replay path: fusebox replayed ${ledger.replayed} calls, the clients got ${ledger.replay_answers} replayed answers`);

  // --- report ------------------------------------------------------------------
  const meta = await describeMachine(nginxBin, pk.version);
  const report = buildReport({ paths, results, peakRssKb, ledger, meta, spend, pk, streamChecks });
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, 'latest.json.tmp'), JSON.stringify(report.json, null, 2) + '\n');
  fs.writeFileSync(path.join(outDir, 'latest.md.tmp'), report.md);
  fs.renameSync(path.join(outDir, 'latest.json.tmp'), path.join(outDir, 'latest.json'));
  fs.renameSync(path.join(outDir, 'latest.md.tmp'), path.join(outDir, 'latest.md'));
  console.log(report.md);
  log(`wrote ${path.relative(root, outDir)}/latest.md and latest.json in ${((Date.now() - startedAt) / 1000).toFixed(0)} s`);
}

function findScope(spend, scope) {
  const rows = Array.isArray(spend) ? spend : spend.scopes || spend.rows || Object.values(spend).find(Array.isArray) || [];
  return rows.find((r) => r.scope === scope);
}

function readLog(f) {
  try {
    return fs.readFileSync(f, 'utf8');
  } catch {
    return '';
  }
}
function lastLine(text, re) {
  // eslint-disable-next-line no-control-regex
  const lines = text
    .replace(/\x1b\[[0-9;]*m/g, '') // colours
    .replace(/[\u2800-\u28ff] Starting AI Gateway\.\.\./g, '') // Portkey's start-up spinner
    .split(/[\r\n]+/)
    .map((l) => l.trim())
    .filter(Boolean);
  const pick = re ? lines.filter((l) => re.test(l)) : lines;
  return (pick.length ? pick[0] : lines[lines.length - 1] || '(empty)').slice(0, 200);
}

// wrk's report: requests/s, requests, non-2xx, socket errors, p50/p99.
function parseWrk(out) {
  const toUs = (v) => {
    const m = /^([\d.]+)(us|ms|s|m)$/.exec(v || '');
    if (!m) return undefined;
    return Number(m[1]) * { us: 1, ms: 1e3, s: 1e6, m: 6e7 }[m[2]];
  };
  const num = (re) => {
    const m = re.exec(out);
    return m ? Number(m[1]) : undefined;
  };
  const se = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  return {
    rps: num(/^Requests\/sec:\s+([\d.]+)/m),
    requests: num(/^\s*(\d+) requests in/m) ?? 0,
    non_2xx: num(/Non-2xx or 3xx responses:\s+(\d+)/) ?? 0,
    errors: se ? se.slice(1).reduce((a, x) => a + Number(x), 0) : 0,
    p50_us: toUs(/^\s+50%\s+(\S+)/m.exec(out)?.[1]),
    p99_us: toUs(/^\s+99%\s+(\S+)/m.exec(out)?.[1]),
  };
}

async function describeMachine(nginxBin, pkVersion) {
  const cpu = (fs.readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.*)$/m) || [])[1] || 'unknown CPU';
  const memKb = Number((fs.readFileSync('/proc/meminfo', 'utf8').match(/^MemTotal:\s+(\d+)/m) || [])[1] || 0);
  const nproc = Number(spawnSync('nproc').stdout?.toString().trim()) || os.cpus().length;
  const nginx = (spawnSync(nginxBin, ['-v']).stderr?.toString() || '').replace(/.*version:\s*/, '').trim();
  const wrk = (spawnSync('wrk', ['-v']).stdout?.toString() || '').split(/\s+/)[1] || 'unknown';
  const rev = spawnSync('git', ['-C', root, 'describe', '--always', '--dirty', '--abbrev=7']).stdout?.toString().trim() || 'unknown';
  return {
    when: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    machine: { nproc, cpu, kernel: os.release(), mem_total_mib: Math.round(memKb / 1024), loadavg_start: loadAtStart, loadavg_end: loadAvg() },
    versions: { fusebox: rev, nginx, wrk, node: process.version, portkey: pkVersion ? `@portkey-ai/gateway ${pkVersion}` : null, loadgen: 'bench/loadgen.c' },
  };
}

// --- tables and targets ---------------------------------------------------
function buildReport({ paths, results, peakRssKb, ledger, meta, spend, pk, streamChecks }) {
  const names = paths.map((p) => p.name);
  const ok = (r) => r && !r.skipped;
  const us = (v) => (v === undefined || v === null ? '-' : Math.round(v).toLocaleString('en-US'));
  const add = (v) => (v === undefined || v === null ? '-' : `${v >= 0 ? '+' : '-'}${Math.round(Math.abs(v)).toLocaleString('en-US')}`);
  const rpsF = (v) => (v === undefined || v === null ? '-' : Math.round(v).toLocaleString('en-US'));
  const NM = (r) => `**NOT MEASURED: ${r.skipped}**`;
  const lat = (r) => r.latency_us;
  const added = (r, d, k) => (ok(r) && ok(d) ? lat(r)[k] - lat(d)[k] : null);

  const md = [];
  const sat = results.saturation;
  md.push(`# fusebox bench: ${meta.when}`, '');
  md.push(
    `Machine: ${meta.machine.nproc} CPUs (nproc), ${meta.machine.cpu}, Linux ${meta.machine.kernel}, ${meta.machine.mem_total_mib} MiB; ` +
      `load average (1, 5, 15 min) ${meta.machine.loadavg_start} at the start, ${meta.machine.loadavg_end} at the end.`,
    '',
  );
  md.push(
    `Versions: fusebox ${meta.versions.fusebox}, nginx ${meta.versions.nginx}, wrk ${meta.versions.wrk}, node ${meta.versions.node}, ` +
      `${meta.versions.portkey || 'Portkey (not run)'}, loadgen (bench/loadgen.c).`,
    '',
  );
  md.push(
    `Request mix: POST /v1/chat/completions bodies of ${fixedBody(false).length} bytes (stream: ${fixedBody(true).length}), ` +
      `answers of ${answer.length} bytes (JSON, with usage) or ${sse.length} bytes (SSE, ${sseEvents.length} events and [DONE]). ` +
      `Everything on one machine, loopback only: clients, nginx, fusebox and Portkey share its CPUs, so compare ratios within this run.`,
    '',
  );
  if (pk.failed || pk.streamFailed) {
    md.push(`> **WARNING: Portkey ${pk.failed ? `was not measured: ${pk.failed}` : `streaming was not measured: ${pk.streamFailed}`}**`, '');
  }

  // targets
  const targets = [];
  const T = (name, load, pass, figures, extra = {}) => targets.push({ target: name, load, result: pass === null ? 'NOT MEASURED' : pass ? 'PASS' : 'MISS', figures, ...extra });
  const loads = [['c16', results.closed[16], 'closed loop, 16 connections']];
  for (const rate of Object.keys(results.open)) loads.push([`${rate}/s`, results.open[rate], `open loop, ${rate} requests/s`]);
  for (const [load, set, what] of loads) {
    if (!set) continue;
    const f = set['fusebox-forward'];
    const n = set['nginx-proxy'];
    const d = set.direct;
    if (!ok(f) || !ok(n) || !ok(d)) continue;
    const fa = added(f, d, 'p99');
    const na = added(n, d, 'p99');
    const notes = [];
    for (const [nm, r] of [['fusebox-forward', f], ['nginx-proxy', n], ['direct', d]])
      if (r.rate_reached === false) notes.push(`${nm} reached ${rpsF(r.rps)}/s of ${rpsF(r.target_rps)}/s`);
    const note = notes.length ? ` (rate not reached: ${notes.join('; ')})` : '';
    const reached = f.rate_reached !== false; // the others' shortfalls are noted
    T('forward added p99 ≤ 1.5 × nginx-proxy added p99', `${load} (${what})`, reached && fa <= 1.5 * na,
      `fusebox-forward ${add(fa)} µs, nginx-proxy ${add(na)} µs, limit ${add(1.5 * na)} µs${note}`, { load_key: load, value_us: fa, limit_us: 1.5 * na });
    T('forward added p99 ≤ 100 µs', `${load} (${what})`, reached && fa <= 100, `fusebox-forward ${add(fa)} µs${note}`, { load_key: load, value_us: fa, limit_us: 100 });
  }
  const fs_ = sat['fusebox-forward'];
  const rs = sat['fusebox-replay'];
  const ns = sat['nginx-proxy'];
  const ps = sat.portkey;
  if (ok(fs_) && ok(ns)) {
    T('forward throughput ≥ 0.8 × nginx-proxy', `saturation (wrk -c${opt.conns})`, fs_.rps >= 0.8 * ns.rps,
      `${rpsF(fs_.rps)}/s vs 0.8 × ${rpsF(ns.rps)}/s = ${rpsF(0.8 * ns.rps)}/s (ratio ${(fs_.rps / ns.rps).toFixed(2)})`, { value: fs_.rps / ns.rps, limit: 0.8 });
  }
  if (ok(rs) && ok(ns)) {
    T('replay throughput > nginx-proxy', `saturation (wrk -c${opt.conns})`, rs.rps > ns.rps,
      `${rpsF(rs.rps)}/s vs ${rpsF(ns.rps)}/s (ratio ${(rs.rps / ns.rps).toFixed(2)})`, { value: rs.rps / ns.rps, limit: 1 });
  }
  if (ok(fs_)) {
    if (ok(ps))
      T('fusebox throughput ≥ 10 × Portkey', `saturation (wrk -c${opt.conns}), forward path`, fs_.rps >= 10 * ps.rps,
        `${rpsF(fs_.rps)}/s vs 10 × ${rpsF(ps.rps)}/s = ${rpsF(10 * ps.rps)}/s (${(fs_.rps / ps.rps).toFixed(1)}×; replay ${ok(rs) ? `${(rs.rps / ps.rps).toFixed(1)}×` : '-'})`,
        { value: fs_.rps / ps.rps, limit: 10 });
    else T('fusebox throughput ≥ 10 × Portkey', `saturation (wrk -c${opt.conns})`, null, ps ? ps.skipped : 'Portkey not measured');
  }
  md.push('## Targets (issue 5), from this run', '');
  md.push('| target | load | figures | result |', '| --- | --- | --- | --- |');
  for (const t of targets) md.push(`| ${t.target} | ${t.load} | ${t.figures} | ${t.result === 'PASS' ? 'PASS' : `**${t.result}**`} |`);
  md.push('', 'Added latency: the path\'s percentile minus direct\'s at the same load. The 10,000 open streams target is the scale measurement\'s, not this table\'s.', '');

  // saturation
  md.push(`## Throughput at saturation (wrk -t${opt.threads} -c${opt.conns}, ${opt.satSeconds} s after ${opt.warmSeconds} s warm-up)`, '');
  md.push('| path | requests/s | × nginx-proxy | CPU µs / request | peak RSS MiB | measured process | requests | non-2xx | socket errors |');
  md.push('| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |');
  for (const p of paths) {
    const r = sat[p.name];
    if (!ok(r)) {
      md.push(`| ${p.name} | ${NM(r)} | | | | | | | |`);
      continue;
    }
    const x = ok(ns) ? (r.rps / ns.rps).toFixed(2) : '-';
    const rss = peakRssKb[p.name] ? (peakRssKb[p.name] / 1024).toFixed(1) : '-';
    md.push(`| ${p.name} | ${rpsF(r.rps)} | ${x} | ${r.cpu_us_per_request === null ? '-' : r.cpu_us_per_request.toFixed(1)} | ${rss} | ${p.process} | ${r.requests} | ${r.non_2xx} | ${r.errors} |`);
  }
  md.push('', 'CPU time per request: utime+stime of the measured process(es) over the measured wrk run (/proc/PID/stat), divided by the requests answered. Peak RSS: VmHWM at the end of the whole run (nginx: master and workers summed, shared pages counted in each).', '');

  // latency tables
  const latTable = (title, sets, keyLabel) => {
    md.push(`## ${title}`, '');
    md.push(`| path | ${keyLabel} | requests/s | p50 µs | p99 µs | p99.9 µs | max µs | added p50 | added p99 | added p99.9 | note |`);
    md.push('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |');
    for (const [k, set] of sets) {
      const d = set.direct;
      for (const p of paths) {
        const r = set[p.name];
        if (!ok(r)) {
          md.push(`| ${p.name} | ${k} | ${NM(r)} | | | | | | | | |`);
          continue;
        }
        const empty = r.count + (r.unsent || 0) === 0; // nothing answered, nothing due
        const l = empty ? {} : lat(r);
        const a = (q) => (p.name === 'direct' || empty ? '-' : add(added(r, d, q)));
        const bits = [];
        if (r.rate_reached === false) bits.push(`**rate not reached** (${r.unsent} due requests never sent)`);
        if (r.errors) bits.push(`${r.errors} errors`);
        if (r.non_2xx) bits.push(`${r.non_2xx} non-2xx`);
        if (r.bad_body) bits.push(`${r.bad_body} incomplete answers`);
        md.push(`| ${p.name} | ${k} | ${rpsF(r.rps)} | ${us(l.p50)} | ${us(l.p99)} | ${us(l.p99_9)} | ${us(l.max)} | ${a('p50')} | ${a('p99')} | ${a('p99_9')} | ${bits.join(', ')} |`);
      }
    }
    md.push('');
  };
  latTable(`Latency, closed loop (loadgen, ${opt.latSeconds} s per run after ${opt.warmSeconds} s warm-up)`, Object.entries(results.closed).map(([c, s]) => [`c${c}`, s]), 'concurrency');
  latTable(
    `Latency at fixed rates, open loop (loadgen, ${opt.openConns} connections, ${opt.latSeconds} s; from each request's intended send time: coordinated omission corrected)`,
    Object.entries(results.open).map(([r, s]) => [`${r}/s`, s]),
    'rate',
  );

  // streaming
  md.push(`## Streaming (SSE, ${sseEvents.length} events + [DONE], ${sse.length} bytes; "stream":true bodies)`, '');
  md.push(`| path | wrk -c${opt.conns} requests/s | CPU µs / request | c16 requests/s | c16 p50 µs | c16 p99 µs | c16 p99.9 µs | added p99 |`);
  md.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const p of paths) {
    const s = results.streamSat[p.name];
    const c = results.streamC16[p.name];
    if (!ok(s) || !ok(c)) {
      md.push(`| ${p.name} | ${NM(ok(s) ? c : s)} | | | | | | |`);
      continue;
    }
    const d = results.streamC16.direct;
    md.push(`| ${p.name} | ${rpsF(s.rps)} | ${s.cpu_us_per_request === null ? '-' : s.cpu_us_per_request.toFixed(1)} | ${rpsF(c.rps)} | ${us(lat(c).p50)} | ${us(lat(c).p99)} | ${us(lat(c).p99_9)} | ${p.name === 'direct' ? '-' : add(added(c, d, 'p99'))} |`);
  }
  md.push(
    '',
    `fusebox injects stream_options.include_usage and drops the usage-only chunk the client did not ask for; checked before the run: its streamed answer (${streamChecks.forward.body.length} bytes) and its replay carry every other event in order, [DONE], then \`: x-fusebox-cost-usd\`. Every loadgen answer was checked for \`data: [DONE]\` (JSON answers: for \`"completion_tokens"\`).`,
    '',
  );

  md.push(
    '## Ledger check (fusebox spend --json)',
    '',
    `${ledger.paid} calls paid, for ${ledger.forward_answers} forwarded answers the clients got (at most ${ledger.forward_sent_at_most} sent); ${ledger.replayed} replayed, for ${ledger.replay_answers} replayed answers. Forwarded calls are paid once each, replays are not paid.`,
    '',
  );
  md.push('## Paths', '');
  for (const p of paths) md.push(`- **${p.name}**: ${describe[p.name]}`);
  md.push(
    '',
    `Saturation throughput is wrk's (-t${opt.threads}, Lua script for the bodies). Latency is loadgen's (bench/loadgen.c, one thread, keep-alive, log-linear histogram, percentiles rounded up to their bucket's bound, ≤1.6%). Reproduce: \`make bench\`.`,
    '',
  );

  const json = {
    ...meta,
    settings: { ...opt },
    request_bytes: fixedBody(false).length,
    stream_request_bytes: fixedBody(true).length,
    response_bytes: answer.length,
    stream_response_bytes: sse.length,
    stream_events: sseEvents.length,
    paths: paths.map((p) => ({ path: p.name, description: describe[p.name], measured_process: p.process })),
    portkey: { measured: !pk.failed, failure: pk.failed, stream_failure: pk.streamFailed },
    targets,
    saturation: names.map((n) => ({ path: n, ...sat[n] })),
    closed_loop: Object.entries(results.closed).flatMap(([c, set]) => names.map((n) => withAdded(n, set, { concurrency: Number(c) }))),
    open_loop: Object.entries(results.open).flatMap(([r, set]) => names.map((n) => withAdded(n, set, { target_rps: Number(r) }))),
    stream: {
      saturation: names.map((n) => ({ path: n, ...results.streamSat[n] })),
      closed_loop_c16: names.map((n) => withAdded(n, results.streamC16, { concurrency: 16 })),
    },
    peak_rss_kb: peakRssKb,
    ledger,
    fusebox_spend: spend,
  };
  function withAdded(n, set, extra) {
    const r = set[n];
    const out = { path: n, ...extra, ...r };
    if (ok(r) && n !== 'direct' && ok(set.direct))
      out.added_us = Object.fromEntries(['p50', 'p90', 'p99', 'p99_9'].map((q) => [q, lat(r)[q] - lat(set.direct)[q]]));
    return out;
  }
  return { md: md.join('\n'), json };
}

try {
  await main();
  await cleanup();
} catch (e) {
  console.error(e instanceof BenchError ? `bench: ${e.message}` : e);
  await cleanup();
  process.exit(1);
}
