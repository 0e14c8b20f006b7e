// cluster.mjs - forwarded-call throughput of one node on SQLite, one node
// on PostgreSQL and three nodes on one PostgreSQL (issue 9), and the
// PostgreSQL round trips a call costs with budget leasing.
//
//   node bench/cluster.mjs [build/fusebox]            (make bench-cluster)
//
// Each node has its own fake provider; every call has a body of its own
// (so it is forwarded and paid, and its result kept), under a job budget
// large enough never to run out: every call reserves from a leased slice.
// wrk at saturation, 16 connections in all (split over the nodes), for
// BENCH_DURATION seconds (default 5) after a second of warm-up; the three
// set-ups run in turn, ROUNDS times (default 2: A B C A B C), medians
// reported. Round trips: fusebox_store_round_trips_total (/metrics) over
// the answered calls. PostgreSQL is a throw-away server (scripts/pg.sh:
// fsync off, as the SQLite store's default durability survives a killed
// process but not a power loss) unless FUSEBOX_TEST_PG names one.
// Tables in bench/results/cluster.{md,json}.
import { execFile, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync, readFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '..');
if (process.argv[2]) process.env.FUSEBOX_BIN = resolve(process.argv[2]);
const SECONDS = Number(process.env.BENCH_DURATION || 5);
const ROUNDS = Number(process.env.ROUNDS || 2);
const CONNS = Number(process.env.BENCH_CONNECTIONS || 16);

let pgDir = null;
if (!process.env.FUSEBOX_TEST_PG) {
  pgDir = mkdtempSync(join(os.tmpdir(), 'fusebox-bench-pg-'));
  const r = spawnSync(join(REPO, 'scripts/pg.sh'), ['start', pgDir], { encoding: 'utf8' });
  if (r.status !== 0) {
    console.error(`bench-cluster: no PostgreSQL server: ${r.stderr}`);
    process.exit(1);
  }
  process.env.FUSEBOX_TEST_PG = r.stdout.trim();
}
const { startEnv, request, run, pgDatabase, pgSql } = await import(join(REPO, 'tests/e2e/harness.mjs'));

// $1: a slice (a 32nd) lasts a few thousand calls, so takes show in the figures
const budgets = { tenants: { acme: { jobs: { bench: '1' } } } };
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function roundTrips(env) {
  const r = await request('GET', `${env.adminUrl}/metrics`, {
    headers: { authorization: `Bearer ${env.adminToken}` },
  });
  const m = /^fusebox_store_round_trips_total (\d+)$/m.exec(r.text);
  const l = /^fusebox_lease_round_trips_total (\d+)$/m.exec(r.text);
  return { all: m ? Number(m[1]) : 0, lease: l ? Number(l[1]) : 0 };
}

function luaFile(dir, key, tag) {
  const f = join(dir, `${tag}.lua`);
  writeFileSync(f, `
local headers = {['Content-Type'] = 'application/json', ['Authorization'] = 'Bearer ${key}'}
local n = 0
tid = 0
local counter = 0
function setup(thread) n = n + 1; thread:set("tid", n) end
function request()
  counter = counter + 1
  return wrk.format("POST", "/openai/v1/chat/completions", headers,
    '{"model":"gpt-4o-mini","max_tokens":8,"messages":[{"role":"user","content":"${tag} ' .. tid .. ' ' .. counter .. '"}]}')
end
`);
  return f;
}

function parseWrk(out) {
  const num = (re) => Number((re.exec(out) || [])[1] || 0);
  return {
    requests: num(/^\s*(\d+) requests in/m),
    non2xx: num(/Non-2xx or 3xx responses:\s+(\d+)/),
    errors: (/Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out) || [0, 0, 0, 0, 0])
      .slice(1).reduce((a, x) => a + Number(x), 0),
  };
}

async function wrk(nodes, keys, dir, tag, seconds) {
  const per = nodes.map((_, i) => Math.floor(CONNS / nodes.length) + (i < CONNS % nodes.length ? 1 : 0));
  const procs = nodes.map((e, i) => new Promise((res) => {
    const lua = luaFile(dir, keys[i], `${tag}-${i}`);
    const args = ['-t', '1', '-c', String(per[i]), '-d', `${seconds}s`, '-s', lua, e.gwUrl];
    execFile('wrk', args, { timeout: (seconds + 30) * 1000 }, (err, stdout) => res(parseWrk(stdout || '')));
  }));
  const rs = await Promise.all(procs);
  return rs.reduce((a, r) => ({ requests: a.requests + r.requests, non2xx: a.non2xx + r.non2xx,
    errors: a.errors + r.errors }), { requests: 0, non2xx: 0, errors: 0 });
}

async function setup(kind, dir) {
  let store = null;
  let db = null;
  if (kind !== 'sqlite-1') {
    db = `fbbench_${Math.random().toString(16).slice(2, 10)}`;
    store = await pgDatabase(db);
  }
  const n = kind === 'pg-3' ? 3 : 1;
  const nodes = [];
  for (let i = 0; i < n; i++) nodes.push(await startEnv({ store, budgets, admin: true, logLevel: 'warn' }));
  const keys = [];
  for (let i = 0; i < n; i++) keys.push(await nodes[0].createKey({ tenant: 'acme', job: 'bench' }));
  return {
    nodes, keys,
    async close() {
      for (const e of nodes) await e.close();
      if (db) await pgSql(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`).catch(() => {});
    },
  };
}

const dir = mkdtempSync(join(os.tmpdir(), 'fusebox-bench-cluster-'));
const kinds = ['sqlite-1', 'pg-1', 'pg-3'];
const results = Object.fromEntries(kinds.map((k) => [k, { rps: [], rtt: [], ltt: [], requests: 0, bad: 0 }]));
try {
  for (let round = 1; round <= ROUNDS; round++) {
    for (const kind of kinds) {
      const s = await setup(kind, dir);
      try {
        await wrk(s.nodes, s.keys, dir, `warm${round}${kind}`, 1);
        const before = await Promise.all(s.nodes.map(roundTrips));
        const w = await wrk(s.nodes, s.keys, dir, `run${round}${kind}`, SECONDS);
        const after = await Promise.all(s.nodes.map(roundTrips));
        const trips = after.reduce((a, x, i) => a + x.all - before[i].all, 0);
        const ltrips = after.reduce((a, x, i) => a + x.lease - before[i].lease, 0);
        const r = results[kind];
        r.rps.push(w.requests / SECONDS);
        r.rtt.push(w.requests ? trips / w.requests : 0);
        r.ltt.push(w.requests ? ltrips / w.requests : 0);
        r.requests += w.requests;
        r.bad += w.non2xx + w.errors;
        console.log(`round ${round} ${kind}: ${Math.round(w.requests / SECONDS)} calls/s, ` +
          `${(w.requests ? trips / w.requests : 0).toFixed(2)} round trips per call, ${w.non2xx} non-2xx, ${w.errors} errors`);
      } finally {
        await s.close();
      }
    }
  }
} finally {
  if (pgDir) spawnSync(join(REPO, 'scripts/pg.sh'), ['stop', pgDir]);
}

const base = median(results['sqlite-1'].rps);
const rows = kinds.map((k) => ({
  setup: k,
  calls_per_s: Math.round(median(results[k].rps)),
  vs_sqlite: Number((median(results[k].rps) / base).toFixed(2)),
  round_trips_per_call: Number(median(results[k].rtt).toFixed(2)),
  lease_round_trips_per_call: Number(median(results[k].ltt).toFixed(4)),
  answered: results[k].requests,
  failed: results[k].bad,
}));
const cpu = (readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.*)$/m) || [])[1] || 'unknown CPU';
const md = [
  `# fusebox cluster bench: ${new Date().toISOString().replace(/\.\d+Z$/, 'Z')}`, '',
  `Machine: ${os.cpus().length} CPUs, ${cpu}. wrk, ${CONNS} connections in all, ${SECONDS} s per run, ` +
    `${ROUNDS} rounds (medians); every call forwarded and paid under a leased job budget. ` +
    'Every process (nodes, fake providers, PostgreSQL, wrk) shares the same CPUs.', '',
  '| set-up | forwarded calls/s | × 1 node SQLite | PostgreSQL round trips per call | of them for budget slices | calls answered | failed |',
  '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
  ...rows.map((r) => `| ${r.setup} | ${r.calls_per_s.toLocaleString('en-US')} | ${r.vs_sqlite} | ${r.round_trips_per_call} | ${r.lease_round_trips_per_call} | ${r.answered.toLocaleString('en-US')} | ${r.failed} |`),
  '',
];
mkdirSync(join(REPO, 'bench/results'), { recursive: true });
writeFileSync(join(REPO, 'bench/results/cluster.md'), md.join('\n'));
writeFileSync(join(REPO, 'bench/results/cluster.json'), JSON.stringify({ rows, results }, null, 2));
console.log(md.join('\n'));
if (rows.some((r) => r.failed > 0)) process.exit(1);
