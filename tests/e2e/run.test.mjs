// run.test.mjs - `fusebox run` from the outside: the real binary runs small
// shell, node and python jobs (written to a temp dir) against the fake paid
// provider, through the harness's gateway (--gateway) or one of its own
// (--serve, --staging). What is asserted is what a queue or an operator
// sees: the exit code, the --json summary on stdout, the decision printed
// on stderr, the fake provider's billing counters and `fusebox spend`.
//
// Error messages are the real ones wherever a real program can print them
// here (sqlite3, psql against a closed port or a real PostgreSQL server when
// one is installed, python3, node, curl); the rest are copied verbatim from
// the programs that print them (psql 15, psycopg2).
//
// Nothing sleeps to synchronise: waits poll a condition with a bound, and no
// assertion is an upper bound on wall time.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import {
  writeFileSync, readFileSync, existsSync, mkdirSync, readdirSync, symlinkSync, chmodSync,
  mkdtempSync, rmSync,
} from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  startEnv, BIN, REPO, SLOW, PROVIDER_KEYS, waitFor, pico, closedPort, cliRun,
} from './harness.mjs';

/* ------------------------------------------------------------------ */
/* running `fusebox run`                                               */

const live = new Set();
process.on('exit', () => {
  for (const c of live) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
});

/** A sanitizer's reports go to files under dir (ASAN/UBSAN log_path): the
 *  gateway and fake that `fusebox run --serve/--staging` start write their
 *  stderr to a log that is removed with their temp dir, so a report there
 *  would otherwise be lost. */
function sanitizerEnv(dir) {
  mkdirSync(dir, { recursive: true });
  const add = (name, what) => {
    const old = process.env[name];
    return `${old ? `${old}:` : ''}log_path=${join(dir, what)}`;
  };
  return { ASAN_OPTIONS: add('ASAN_OPTIONS', 'asan'), UBSAN_OPTIONS: add('UBSAN_OPTIONS', 'ubsan') };
}

function checkSanitizerFiles(dir) {
  if (!existsSync(dir)) return;
  const files = readdirSync(dir);
  const text = files.map((f) => `--- ${f}\n${readFileSync(join(dir, f), 'utf8')}`).join('\n');
  assert.equal(files.length, 0, `a sanitizer reported:\n${text}`);
}

/** Start `fusebox run --config CFG --json [--gateway URL] ARGS -- CMD...`.
 *  mode: 'gateway' (the harness's), 'serve' or 'staging'. Returns a handle with the child
 *  and a promise `done` of {code, signal, stdout, stderr, summary}. */
function startRun(env, {
  job, tenant = 'acme', args = [], cmd, mode = 'gateway', config, extraEnv = {},
  timeoutMs = 30000,
}) {
  const argv = ['run', '--config', config || env.configPath, '--json', '--job', job];
  if (tenant) argv.push('--tenant', tenant);
  if (mode === 'gateway') argv.push('--gateway', env.gwUrl);
  else if (mode === 'serve') argv.push('--serve');
  else if (mode === 'staging') argv.push('--staging');
  argv.push(...args, '--', ...cmd);
  const sanDir = join(env.dir, 'san');
  const child = spawn(BIN, argv, {
    env: { ...process.env, ...PROVIDER_KEYS, ...sanitizerEnv(sanDir), ...extraEnv },
    cwd: env.dir,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => { stderr += d; });
  const timer = setTimeout(() => { try { child.kill('SIGKILL'); } catch { /* */ } },
    timeoutMs * SLOW);
  const h = { child, exited: false };
  h.done = new Promise((res) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      live.delete(child);
      h.exited = true;
      env.checkText('fusebox run', stderr);
      checkSanitizerFiles(sanDir);
      res({ code, signal, stdout, stderr, summary: lastJson(stdout) });
    });
  });
  return h;
}

/** Run to the end; the summary must be there. */
async function fbRun(env, opts) {
  const r = await startRun(env, opts).done;
  assert.ok(r.summary, `fusebox run printed no JSON summary (exit ${r.code}, ` +
    `signal ${r.signal});\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  return r;
}

/** The last line of text that parses as a JSON object (the job's own
 *  stdout passes through before the summary). */
function lastJson(text) {
  const lines = text.split('\n').filter((l) => l.trim() !== '');
  for (let i = lines.length - 1; i >= 0; i--) {
    try {
      const o = JSON.parse(lines[i]);
      if (o && typeof o === 'object') return o;
    } catch { /* not JSON */ }
  }
  return null;
}

function show(r) {
  return `exit ${r.code} signal ${r.signal}\nsummary: ${JSON.stringify(r.summary)}\n` +
    `stderr:\n${r.stderr}`;
}

/** Write an executable job file; returns its path. */
function jobFile(dir, name, text) {
  mkdirSync(dir, { recursive: true });
  const p = join(dir, name);
  writeFileSync(p, text);
  chmodSync(p, 0o755);
  return p;
}

/** A shell script that prints `text` on stderr, verbatim, and exits with
 *  `status`. */
function printingJob(dir, name, text, status) {
  const p = join(dir, `${name}.txt`);
  writeFileSync(p, text);
  return jobFile(dir, `${name}.sh`, `#!/bin/sh\ncat "${p}" >&2\nexit ${status}\n`);
}

const HTTP_OF = { 0: 200, 65: 422, 78: 422, 69: 402, 75: 503 };

/** The common checks of a finished run. */
function checkOutcome(r, { code, cls, rule, attempts }) {
  assert.equal(r.code, code, show(r));
  const s = r.summary;
  assert.equal(s.exit_code, code, show(r));
  assert.equal(s.http_status, HTTP_OF[code], show(r));
  if (attempts !== undefined) assert.equal(s.attempts.length, attempts, show(r));
  for (const a of s.attempts) {
    if (cls !== undefined) assert.equal(a.class, cls, show(r));
    if (rule !== undefined) {
      assert.equal(a.rule, rule, show(r));
      assert.ok(typeof a.matched === 'string' && a.matched.length > 0, show(r));
      // The decision and its rule are printed too.
      assert.ok(r.stderr.includes(`attempt ${a.attempt} failed: ${cls} (rule ${rule})`), show(r));
    }
  }
}

/** A loopback HTTP server answering /status/NNN with status NNN. */
async function statusServer() {
  const srv = http.createServer((req, res) => {
    const m = /^\/status\/(\d{3})/.exec(req.url);
    const status = m ? Number(m[1]) : 404;
    res.writeHead(status, { 'content-type': 'text/plain', connection: 'close' });
    res.end(`status ${status}\n`);
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return { srv, url: `http://127.0.0.1:${srv.address().port}` };
}

/** A real PostgreSQL server on a Unix socket in a temp dir, when its
 *  binaries are installed (Debian's postgresql package); null otherwise.
 *  As root the server runs as the postgres user. */
function startPostgres() {
  let bin = null;
  try {
    const root = '/usr/lib/postgresql';
    for (const v of readdirSync(root).sort().reverse()) {
      if (existsSync(join(root, v, 'bin', 'initdb'))) { bin = join(root, v, 'bin'); break; }
    }
  } catch { return null; }
  if (!bin) return null;
  const dir = mkdtempSync(join(tmpdir(), 'fusebox-pg-'));
  const asRoot = process.getuid && process.getuid() === 0;
  const as = (cmd, args) => (asRoot ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]] : [cmd, args]);
  try {
    if (asRoot) execFileSync('chown', ['postgres', dir]);
    execFileSync(...as(join(bin, 'initdb'), ['-D', join(dir, 'pg'), '-A', 'trust', '-U', 'postgres',
      '--no-sync']), { stdio: 'ignore', timeout: 60000 });
    execFileSync(...as(join(bin, 'pg_ctl'), ['-D', join(dir, 'pg'), '-w', '-t', '30', '-o',
      `-k ${dir} -c listen_addresses='' -F`, 'start']), { stdio: 'ignore', timeout: 60000 });
  } catch {
    rmSync(dir, { recursive: true, force: true });
    return null;
  }
  const pg = {
    dir,
    psql: ['psql', '-h', dir, '-U', 'postgres', '-X', '-q'],
    stop() {
      try {
        execFileSync(...as(join(bin, 'pg_ctl'), ['-D', join(dir, 'pg'), '-m', 'immediate', 'stop']),
          { stdio: 'ignore', timeout: 30000 });
      } catch { /* gone */ }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    execFileSync(pg.psql[0], [...pg.psql.slice(1), '-v', 'ON_ERROR_STOP=1', '-c',
      'CREATE TABLE reports(id serial PRIMARY KEY, title text NOT NULL);' +
      'CREATE TABLE counters(id int PRIMARY KEY, v int NOT NULL); INSERT INTO counters VALUES (1, 0);'],
    { stdio: 'ignore', timeout: 30000 });
  } catch {
    pg.stop();
    return null;
  }
  return pg;
}

/* ------------------------------------------------------------------ */
/* what real programs print, copied verbatim                           */

// psql 15: INSERT into a column the migration has not added yet.
const PSQL_UNDEFINED_COLUMN = `ERROR:  column "summary" of relation "reports" does not exist
LINE 1: INSERT INTO reports (title, summary) VALUES ('record 1', 'Th...
                                    ^
`;
// The same with \\set VERBOSITY verbose: the SQLSTATE is printed.
const PSQL_UNDEFINED_COLUMN_VERBOSE = `ERROR:  42703: column "summary" of relation "reports" does not exist
LINE 1: INSERT INTO reports (title, summary) VALUES ('record 1', 'x'...
                                    ^
LOCATION:  checkInsertTargets, parse_target.c:1075
`;
// psycopg2 2.9, the job's INSERT through cursor.execute().
const PSYCOPG2_UNDEFINED_COLUMN = `Traceback (most recent call last):
  File "/srv/jobs/nightly_report.py", line 58, in <module>
    main()
  File "/srv/jobs/nightly_report.py", line 52, in main
    cur.execute(
psycopg2.errors.UndefinedColumn: column "summary" of relation "reports" does not exist
LINE 1: INSERT INTO reports (title, summary) VALUES ('record 1', 'Th...
                                    ^

`;
// psql 15 (VERBOSITY verbose, a script run with -f): a REPEATABLE READ
// transaction updating a row another session changed.
const PSQL_SERIALIZATION_FAILURE = `psql:/srv/jobs/rollup.sql:4: ERROR:  40001: could not serialize access due to concurrent update
LOCATION:  ExecUpdate, nodeModifyTable.c:2399
`;
// The same without VERBOSITY: the message alone.
const PSQL_SERIALIZATION_FAILURE_TERSE =
  'psql:/srv/jobs/rollup.sql:4: ERROR:  could not serialize access due to concurrent update\n';
// Python requests, raise_for_status() on a 503 and a 429.
const REQUESTS_503 = `Traceback (most recent call last):
  File "/srv/jobs/sync.py", line 12, in <module>
    r.raise_for_status()
  File "/usr/lib/python3/dist-packages/requests/models.py", line 1021, in raise_for_status
    raise HTTPError(http_error_msg, response=self)
requests.exceptions.HTTPError: 503 Server Error: Service Unavailable for url: https://api.example.com/v1/reports
`;
const REQUESTS_429 = `Traceback (most recent call last):
  File "/srv/jobs/sync.py", line 12, in <module>
    r.raise_for_status()
  File "/usr/lib/python3/dist-packages/requests/models.py", line 1021, in raise_for_status
    raise HTTPError(http_error_msg, response=self)
requests.exceptions.HTTPError: 429 Client Error: Too Many Requests for url: https://api.example.com/v1/reports
`;

/* ------------------------------------------------------------------ */

/** A paid call from a shell job: curl to the gateway with the attempt
 *  key; a refusal's body goes to stderr as the job would print it. */
const CURL_CHAT = (content, maxTokens = 16) => `
code=$(curl -sS -o "$tmp/answer" -w '%{http_code}' "$OPENAI_BASE_URL/chat/completions" \\
  -H "Authorization: Bearer $OPENAI_API_KEY" -H 'Content-Type: application/json' \\
  -d '{"model":"gpt-4o-mini","max_tokens":${maxTokens},"messages":[{"role":"user","content":"${content}"}]}') || exit 1
if [ "$code" != 200 ]; then
  echo "job: HTTP $code from the provider:" >&2
  cat "$tmp/answer" >&2
  echo >&2
  exit 1
fi
`;

describe('fusebox run: classification, exit codes, backoff, signals, the rerun guard', () => {
  let env, dir, status, pg;
  let seq = 0;
  const uniq = (p) => `${p}_${++seq}`;

  before(async () => {
    env = await startEnv({
      budgets: {
        tenants: {
          acme: { jobs: { main: null, tiny: '0.000001', capped: null, guarded: null } },
        },
      },
    });
    dir = join(env.dir, 'jobs');
    mkdirSync(dir, { recursive: true });
    status = await statusServer();
    pg = startPostgres();
  });
  afterEach(() => env?.checkNow());
  after(async () => {
    status?.srv.close();
    pg?.stop();
    for (const c of live) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
    if (env) await env.close();
  });

  /* ---- 1. classification ---- */

  // Deterministic: one attempt, exit 65, http 422, the rule named.
  const deterministic = [
    ['psql: undefined column (SQLSTATE 42703 by message)', 'pg_undefined_object',
      () => printingJob(dir, uniq('psql'), PSQL_UNDEFINED_COLUMN, 1)],
    ['psql VERBOSITY verbose: ERROR:  42703', 'pg_sqlstate',
      () => printingJob(dir, uniq('psqlv'), PSQL_UNDEFINED_COLUMN_VERBOSE, 1)],
    ['psycopg2.errors.UndefinedColumn traceback', 'pg_error_class',
      () => printingJob(dir, uniq('psycopg2'), PSYCOPG2_UNDEFINED_COLUMN, 1)],
    ['the sqlite3 CLI: INSERT into a column the table lacks (real)', 'sqlite_schema', () => {
      const db = join(dir, `${uniq('db')}.sqlite`);
      execFileSync('sqlite3', [db, 'CREATE TABLE reports(id INTEGER PRIMARY KEY, title TEXT NOT NULL);']);
      return jobFile(dir, `${uniq('sqlite')}.sh`, `#!/bin/sh
echo "writing 1 report" >&2
sqlite3 -bail "${db}" "INSERT INTO reports(title, summary) VALUES ('record 1', 'fine');"
`);
    }],
    ['the sqlite3 CLI: SELECT a column the table lacks, statement echoed (real)', 'sqlite_schema', () => {
      const db = join(dir, `${uniq('db')}.sqlite`);
      execFileSync('sqlite3', [db, 'CREATE TABLE reports(id INTEGER PRIMARY KEY, title TEXT NOT NULL);']);
      return jobFile(dir, `${uniq('sqlite')}.sh`, `#!/bin/sh
sqlite3 "${db}" 'SELECT summary FROM reports LIMIT 0'
`);
    }],
    ['curl -f: HTTP 404 (real)', 'http_client_error',
      () => jobFile(dir, `${uniq('curl404')}.sh`, `#!/bin/sh\ncurl -sSf "${status.url}/status/404"\n`)],
    ['python urllib: HTTP Error 403 traceback (real)', 'http_client_error',
      () => jobFile(dir, `${uniq('py403')}.sh`,
        `#!/bin/sh\nexec python3 -c 'import urllib.request; urllib.request.urlopen("${status.url}/status/403")'\n`)],
    ['python: SyntaxError traceback (real)', 'syntax_error', () => {
      const py = join(dir, `${uniq('bad')}.py`);
      writeFileSync(py, 'import sys\n\ndef main(:\n    return 0\n');
      return jobFile(dir, `${uniq('pysyntax')}.sh`, `#!/bin/sh\nexec python3 "${py}"\n`);
    }],
    ['python: ImportError traceback (real)', 'import_error',
      () => jobFile(dir, `${uniq('pyimport')}.sh`,
        `#!/bin/sh\nexec python3 -c 'from os import nightly_report_helpers'\n`)],
    ['python: ModuleNotFoundError traceback (real)', 'import_error',
      () => jobFile(dir, `${uniq('pymodule')}.sh`,
        `#!/bin/sh\nexec python3 -c 'import nightly_report_helpers'\n`)],
    ['node: Cannot find module (real)', 'import_error',
      () => jobFile(dir, `${uniq('nodemissing')}.cjs`, "require('./nightly-report-helpers');\n")],
    ['bash: command not found, exit 127 (real)', 'command_not_found',
      () => jobFile(dir, `${uniq('notfound')}.sh`, '#!/bin/bash\necho "starting" >&2\nnightly-report-tool --all\n')],
  ];
  for (const [name, rule, make] of deterministic) {
    it(`deterministic, exit 65, not retried: ${name}`, async () => {
      const script = make();
      const cmd = script.endsWith('.cjs') ? [process.execPath, script]
        : script.endsWith('.sh') && readFileSync(script, 'utf8').startsWith('#!/bin/bash') ? ['bash', script]
          : ['sh', script];
      const r = await fbRun(env, { job: uniq('det'), cmd, args: ['--attempts', '3', '--backoff-base', '0'] });
      checkOutcome(r, { code: 65, cls: 'deterministic', rule, attempts: 1 });
      assert.equal(r.summary.stopped_because, 'a deterministic failure: retrying cannot help');
    });
  }

  // Transient: retried up to --attempts (2 here), then exit 75, http 503.
  const transient = [
    ['node fetch: connect ECONNREFUSED (real)', 'connection_refused', async () => {
      const port = await closedPort();
      return [process.execPath, jobFile(dir, `${uniq('refused')}.mjs`,
        `await fetch('http://127.0.0.1:${port}/v1/reports');\n`)];
    }],
    ['psql: connection refused, "Is the server running" (real)', 'pg_unavailable', async () => {
      const port = await closedPort();
      return ['sh', jobFile(dir, `${uniq('psqlrefused')}.sh`,
        `#!/bin/sh\nexec psql -X -h 127.0.0.1 -p ${port} -U app -c 'SELECT 1'\n`)];
    }],
    ['python urllib: HTTP Error 503 traceback (real)', 'http_server_error', async () =>
      ['sh', jobFile(dir, `${uniq('py503')}.sh`,
        `#!/bin/sh\nexec python3 -c 'import urllib.request; urllib.request.urlopen("${status.url}/status/503")'\n`)]],
    ['curl -f: HTTP 429 (real)', 'http_server_error', async () =>
      ['sh', jobFile(dir, `${uniq('curl429')}.sh`, `#!/bin/sh\ncurl -sSf "${status.url}/status/429"\n`)]],
    ['python requests: 503 Server Error', 'http_server_error', async () =>
      ['sh', printingJob(dir, uniq('req503'), REQUESTS_503, 1)]],
    ['python requests: 429 Client Error: Too Many Requests', 'http_server_error', async () =>
      ['sh', printingJob(dir, uniq('req429'), REQUESTS_429, 1)]],
    ['psql: ERROR:  40001 serialization failure (SQLSTATE)', 'pg_sqlstate', async () =>
      ['sh', printingJob(dir, uniq('pg40001'), PSQL_SERIALIZATION_FAILURE, 3)]],
    ['psql: could not serialize access (message)', 'pg_contention', async () =>
      ['sh', printingJob(dir, uniq('pgser'), PSQL_SERIALIZATION_FAILURE_TERSE, 3)]],
    ['python sqlite3: database is locked (real)', 'sqlite_busy', async () => {
      const db = join(dir, `${uniq('locked')}.sqlite`);
      execFileSync('sqlite3', [db, 'CREATE TABLE reports(id INTEGER PRIMARY KEY, title TEXT);']);
      const py = jobFile(dir, `${uniq('locked')}.py`, `import sqlite3
holder = sqlite3.connect(${JSON.stringify(db)}, isolation_level=None)
holder.execute('BEGIN EXCLUSIVE')
writer = sqlite3.connect(${JSON.stringify(db)}, timeout=0)
writer.execute("INSERT INTO reports(title) VALUES ('record 1')")
`);
      return ['python3', py];
    }],
    ['the job exits 75 (EX_TEMPFAIL)', 'ex_tempfail', async () =>
      ['sh', jobFile(dir, `${uniq('ex75')}.sh`, '#!/bin/sh\necho "upstream not ready" >&2\nexit 75\n')]],
  ];
  for (const [name, rule, make] of transient) {
    it(`transient, retried up to --attempts, then exit 75: ${name}`, async () => {
      const cmd = await make();
      const r = await fbRun(env, {
        job: uniq('tr'), cmd, args: ['--attempts', '2', '--backoff-base', '0', '--backoff-cap', '0'],
      });
      checkOutcome(r, { code: 75, cls: 'transient', rule, attempts: 2 });
      assert.equal(r.summary.stopped_because, 'transient failures used up the attempts');
    });
  }

  it('unknown failures are treated as transient, bounded by --attempts: 3 attempts, then 75', async () => {
    const script = jobFile(dir, `${uniq('unknown')}.sh`,
      '#!/bin/sh\necho "nightly report: 17 rows skipped, giving up" >&2\nexit 1\n');
    const r = await fbRun(env, {
      job: uniq('unknown'), cmd: ['sh', script], args: ['--attempts', '3', '--backoff-base', '0'],
    });
    checkOutcome(r, { code: 75, attempts: 3 });
    for (const a of r.summary.attempts) {
      assert.equal(a.class, 'unknown', show(r));
      assert.equal(a.exit_status, 1, show(r));
    }
  });

  it('real PostgreSQL: psql INSERT into a missing column -> 65; a real serialization failure (40001) -> 75', async (t) => {
    if (!pg) {
      t.skip('no PostgreSQL server binaries (/usr/lib/postgresql/*/bin)');
      return;
    }
    const psql = pg.psql.map((a) => `'${a}'`).join(' ');
    const insert = jobFile(dir, `${uniq('pginsert')}.sh`, `#!/bin/sh
exec ${psql} -v ON_ERROR_STOP=1 -c "INSERT INTO reports (title, summary) VALUES ('record 1', 'fine')"
`);
    let r = await fbRun(env, { job: uniq('pg'), cmd: ['sh', insert], args: ['--attempts', '3'] });
    checkOutcome(r, { code: 65, cls: 'deterministic', rule: 'pg_undefined_object', attempts: 1 });
    assert.match(r.stderr, /ERROR: {2}column "summary" of relation "reports" does not exist/);

    // Session 1 reads under REPEATABLE READ, session 2 (\!) updates the
    // row and commits, session 1's UPDATE fails with SQLSTATE 40001.
    const sql = join(dir, `${uniq('rollup')}.sql`);
    writeFileSync(sql, `BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT v FROM counters WHERE id = 1;
\\! ${psql} -c 'UPDATE counters SET v = v + 1 WHERE id = 1'
UPDATE counters SET v = v + 1 WHERE id = 1;
COMMIT;
`);
    const rollup = jobFile(dir, `${uniq('pgser')}.sh`,
      `#!/bin/sh\nexec ${psql} -v ON_ERROR_STOP=1 -v VERBOSITY=verbose -f "${sql}"\n`);
    r = await fbRun(env, {
      job: uniq('pg'), cmd: ['sh', rollup], args: ['--attempts', '2', '--backoff-base', '0'],
    });
    checkOutcome(r, { code: 75, cls: 'transient', rule: 'pg_sqlstate', attempts: 2 });
    assert.match(r.stderr, /ERROR: {2}40001: could not serialize access due to concurrent update/);
  });

  it('budget: a tiny job budget, the gateway\'s real 402 printed by the job -> 69, not retried, nothing forwarded', async () => {
    const before = await env.billing();
    const script = jobFile(dir, `${uniq('budget')}.sh`, `#!/bin/sh
tmp=$(mktemp -d)
${CURL_CHAT('Summarise ledger row 1.', 64)}
echo "job: answered" >&2
`);
    const r = await fbRun(env, { job: 'tiny', cmd: ['sh', script], args: ['--attempts', '3', '--backoff-base', '0'] });
    checkOutcome(r, { code: 69, cls: 'budget', rule: 'budget_exceeded', attempts: 1 });
    assert.match(r.stderr, /job: HTTP 402 from the provider/, show(r));
    assert.match(r.stderr, /budget_exceeded/, show(r));
    assert.equal(r.summary.paid_calls, 0, show(r));
    assert.equal(r.summary.blocked_calls, 1, show(r));
    const after = await env.billing();
    assert.equal(after.requests, before.requests, 'the refused call reached the provider');
  });

  it('budget: the run\'s own --budget, spent by the first call, stops the job with 69', async () => {
    const before = await env.billing();
    const script = jobFile(dir, `${uniq('runbudget')}.sh`, `#!/bin/sh
tmp=$(mktemp -d)
${CURL_CHAT('Summarise ledger row 1.', 64)}
echo "job: answered" >&2
`);
    const r = await fbRun(env, {
      job: uniq('runbudget'), cmd: ['sh', script],
      args: ['--budget', '0.000001', '--attempts', '3', '--backoff-base', '0'],
    });
    checkOutcome(r, { code: 69, cls: 'budget', rule: 'budget_exceeded', attempts: 1 });
    assert.match(r.stderr, /job: HTTP 402 from the provider/, show(r));
    assert.equal(r.summary.paid_calls, 0, show(r));
    assert.equal((await env.billing()).requests, before.requests, 'the refused call reached the provider');
  });

  /* ---- 4. exit codes and --http-status ---- */

  it('exit codes 0, 65, 75, 78, 69 and --http-status: the printed mapping matches each summary', async () => {
    // --http-status needs neither a config, a job nor a command.
    const printed = await new Promise((res) => {
      const c = spawn(BIN, ['run', '--http-status'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      c.stdout.on('data', (d) => { out += d; });
      c.on('close', (code) => res({ code, out }));
    });
    assert.equal(printed.code, 0, printed.out);
    const mapping = {};
    for (const line of printed.out.split('\n')) {
      const m = /^\s*(\d+)\s+.*\s(\d{3})\s*$/.exec(line);
      if (m) mapping[Number(m[1])] = Number(m[2]);
    }
    assert.deepEqual(mapping, { 0: 200, 65: 422, 78: 422, 69: 402, 75: 503 }, printed.out);
    for (const code of Object.keys(mapping)) assert.notEqual(mapping[code], 500);

    const ok = jobFile(dir, `${uniq('ok')}.sh`, '#!/bin/sh\necho "report written"\n');
    const det = printingJob(dir, uniq('det'), PSQL_UNDEFINED_COLUMN, 1);
    const tmp = jobFile(dir, `${uniq('tmp')}.sh`, '#!/bin/sh\nexit 75\n');
    const budget = jobFile(dir, `${uniq('budget')}.sh`, `#!/bin/sh\ntmp=$(mktemp -d)\n${CURL_CHAT('Row 2.', 64)}`);
    const cases = [
      [0, { job: uniq('code'), cmd: ['sh', ok] }],
      [65, { job: uniq('code'), cmd: ['sh', det] }],
      [75, { job: uniq('code'), cmd: ['sh', tmp], args: ['--attempts', '1'] }],
      [78, { job: uniq('code'), cmd: ['sh', ok], args: ['--preflight', 'exit 1'] }],
      [69, { job: 'tiny', cmd: ['sh', budget], args: ['--attempts', '2', '--backoff-base', '0'] }],
    ];
    for (const [code, opts] of cases) {
      const r = await fbRun(env, opts);
      assert.equal(r.code, code, show(r));
      assert.equal(r.summary.exit_code, code, show(r));
      assert.equal(r.summary.http_status, mapping[code], show(r));
    }
  });

  /* ---- 3. backoff ---- */

  it('backoff: each wait within [0, min(cap, base*2^(k-2))], and at least that long between attempts', async () => {
    const stamps = join(dir, `${uniq('stamps')}.log`);
    // hrtime is CLOCK_MONOTONIC: comparable across processes.
    const script = jobFile(dir, `${uniq('backoff')}.mjs`, `import { appendFileSync } from 'node:fs';
const start = process.hrtime.bigint();
process.stderr.write('Error: connect ECONNREFUSED 127.0.0.1:5432\\n');
appendFileSync(${JSON.stringify(stamps)}, process.env.FUSEBOX_ATTEMPT + ' ' + start + ' ' + process.hrtime.bigint() + '\\n');
process.exit(1);
`);
    const base = 200;
    const cap = 300;
    const r = await fbRun(env, {
      job: uniq('backoff'), cmd: [process.execPath, script],
      args: ['--attempts', '3', '--backoff-base', String(base), '--backoff-cap', String(cap)],
    });
    checkOutcome(r, { code: 75, cls: 'transient', rule: 'connection_refused', attempts: 3 });
    const att = r.summary.attempts;
    const rows = readFileSync(stamps, 'utf8').trim().split('\n').map((l) => l.split(' '));
    assert.equal(rows.length, 3, readFileSync(stamps, 'utf8'));
    assert.equal(att[0].backoff_ms, 0, show(r));
    for (let k = 2; k <= 3; k++) {
      const b = att[k - 1].backoff_ms;
      const bound = Math.min(cap, base * 2 ** (k - 2));
      assert.ok(Number.isInteger(b) && b >= 0 && b <= bound,
        `attempt ${k}: backoff ${b} ms outside [0, ${bound}]\n${show(r)}`);
      // The job saw its attempt number (counted across the day's runs).
      assert.equal(Number(rows[k - 1][0]), att[k - 1].attempt);
      const endPrev = BigInt(rows[k - 2][2]);
      const startThis = BigInt(rows[k - 1][1]);
      assert.ok(startThis - endPrev >= BigInt(b) * 1000000n,
        `attempt ${k} started ${(startThis - endPrev) / 1000000n} ms after attempt ${k - 1} ended, ` +
        `less than its ${b} ms backoff`);
    }
  });

  /* ---- 5. signals ---- */

  it('SIGTERM to fusebox run reaches the job (node, process.on SIGTERM); fusebox run ends after it, no retry', async () => {
    const ready = join(dir, `${uniq('ready')}`);
    const mark = join(dir, `${uniq('mark')}`);
    const script = jobFile(dir, `${uniq('sig')}.mjs`, `import { writeFileSync } from 'node:fs';
process.on('SIGTERM', () => {
  writeFileSync(${JSON.stringify(mark)}, 'got SIGTERM at attempt ' + process.env.FUSEBOX_ATTEMPT + '\\n');
  process.exit(0);
});
writeFileSync(${JSON.stringify(ready)}, String(process.pid));
setInterval(() => {}, 1000);
`);
    const h = startRun(env, { job: uniq('sig'), cmd: [process.execPath, script], args: ['--attempts', '3'] });
    await waitFor(() => existsSync(ready) || h.exited, { timeoutMs: 15000, message: 'the job to start' });
    assert.ok(!h.exited, 'fusebox run ended before the signal');
    h.child.kill('SIGTERM');
    await waitFor(() => h.exited, { timeoutMs: 15000, message: 'fusebox run to end after SIGTERM' });
    const r = await h.done;
    assert.ok(existsSync(mark), `the job did not get SIGTERM\n${show(r)}`);
    assert.match(readFileSync(mark, 'utf8'), /got SIGTERM/);
    assert.ok(r.summary, show(r));
    assert.equal(r.summary.attempts.length, 1, `retried after a signal\n${show(r)}`);
  });

  it('SIGTERM: a job killed by the forwarded signal ends the run (128+15), not retried', async () => {
    const ready = join(dir, `${uniq('ready')}`);
    const script = jobFile(dir, `${uniq('sigdie')}.mjs`, `import { writeFileSync } from 'node:fs';
writeFileSync(${JSON.stringify(ready)}, String(process.pid));
setInterval(() => {}, 1000);
`);
    const h = startRun(env, { job: uniq('sig'), cmd: [process.execPath, script], args: ['--attempts', '3'] });
    await waitFor(() => existsSync(ready) || h.exited, { timeoutMs: 15000, message: 'the job to start' });
    assert.ok(!h.exited, 'fusebox run ended before the signal');
    h.child.kill('SIGTERM');
    await waitFor(() => h.exited, { timeoutMs: 15000, message: 'fusebox run to end after SIGTERM' });
    const r = await h.done;
    assert.equal(r.code, 143, show(r));
    assert.equal(r.summary.attempts.length, 1, show(r));
    assert.equal(r.summary.attempts[0].signal, 15, show(r));
    assert.equal(r.summary.stopped_because, 'interrupted', show(r));
  });

  it('SIGTERM: a shell job with a trap, waiting on its worker, gets it; fusebox run ends after the shell', async () => {
    // The usual shell pattern: run the worker in the background and wait,
    // so that the trap runs at once; the trap stops the worker and exits.
    const ready = join(dir, `${uniq('ready')}`);
    const mark = join(dir, `${uniq('mark')}`);
    const worker = join(dir, `${uniq('worker')}.pid`);
    const script = jobFile(dir, `${uniq('sigsh')}.sh`, `#!/bin/sh
trap 'echo "got TERM" > "${mark}"; kill $pid 2>/dev/null; exit 0' TERM
sleep 60 &
pid=$!
echo $pid > "${worker}"
echo ready > "${ready}"
wait $pid
`);
    const h = startRun(env, { job: uniq('sig'), cmd: ['sh', script], args: ['--attempts', '3'] });
    try {
      await waitFor(() => existsSync(ready) || h.exited, { timeoutMs: 15000, message: 'the job to start' });
      assert.ok(!h.exited, 'fusebox run ended before the signal');
      h.child.kill('SIGTERM');
      await waitFor(() => h.exited, { timeoutMs: 15000, message: 'fusebox run to end after SIGTERM' });
      const r = await h.done;
      assert.ok(existsSync(mark), `the job's trap did not run\n${show(r)}`);
      assert.equal(r.summary.attempts.length, 1, show(r));
    } finally {
      try { process.kill(Number(readFileSync(worker, 'utf8')), 'SIGKILL'); } catch { /* gone */ }
    }
  });

  it('SIGTERM reaches the command a shell job is running, and fusebox run ends with the shell', async () => {
    // The most common job: a shell script whose last step is the real
    // worker, run in the foreground. The queue stops fusebox run; the
    // worker must be told (it holds an attempt key and may be paying),
    // and fusebox run must not wait for a process it cannot see.
    const ready = join(dir, `${uniq('ready')}`);
    const mark = join(dir, `${uniq('mark')}`);
    const worker = jobFile(dir, `${uniq('worker')}.mjs`, `import { writeFileSync } from 'node:fs';
process.on('SIGTERM', () => { writeFileSync(${JSON.stringify(mark)}, 'worker got SIGTERM\\n'); process.exit(0); });
writeFileSync(${JSON.stringify(ready)}, String(process.pid));
setInterval(() => {}, 1000);
`);
    const script = jobFile(dir, `${uniq('sigfg')}.sh`,
      `#!/bin/sh\necho "nightly: starting the worker" >&2\n"${process.execPath}" "${worker}"\necho "nightly: done" >&2\n`);
    const h = startRun(env, { job: uniq('sig'), cmd: ['sh', script], args: ['--attempts', '3'] });
    try {
      await waitFor(() => existsSync(ready) || h.exited, { timeoutMs: 15000, message: 'the worker to start' });
      assert.ok(!h.exited, 'fusebox run ended before the signal');
      h.child.kill('SIGTERM');
      await waitFor(() => h.exited || existsSync(mark), { timeoutMs: 10000,
        message: 'the worker to get SIGTERM or fusebox run to end' });
      await waitFor(() => h.exited, { timeoutMs: 10000,
        message: () => `fusebox run to end after SIGTERM (worker got it: ${existsSync(mark)})` });
      const r = await h.done;
      assert.ok(existsSync(mark), `the worker never got SIGTERM\n${show(r)}`);
      assert.equal(r.summary.attempts.length, 1, show(r));
    } finally {
      // Stop the worker if the signal never reached it.
      try { process.kill(Number(readFileSync(ready, 'utf8')), 'SIGKILL'); } catch { /* gone */ }
    }
  });

  /* ---- 6. the rerun guard ---- */

  it('rerun guard: max_runs_per_day (config) and --max-runs refuse further runs with 78; the job does not start', async () => {
    // The same config with max_runs_per_day for job "capped" (the gateway
    // does not need it: fusebox run reads it).
    const cfg = join(env.dir, 'capped.yaml');
    const yaml = readFileSync(env.configPath, 'utf8');
    const capped = yaml.replace(/^(\s+)capped: \{\}$/m, '$1capped: {max_runs_per_day: 2}');
    assert.notEqual(capped, yaml, `no "capped: {}" line in\n${yaml}`);
    writeFileSync(cfg, capped);
    const count = join(dir, `${uniq('count')}`);
    const script = jobFile(dir, `${uniq('counted')}.sh`, `#!/bin/sh\necho run >> "${count}"\n`);
    const runs = () => (existsSync(count) ? readFileSync(count, 'utf8').trim().split('\n').length : 0);
    for (let i = 1; i <= 2; i++) {
      const r = await fbRun(env, { job: 'capped', config: cfg, cmd: ['sh', script] });
      checkOutcome(r, { code: 0, attempts: 1 });
      assert.equal(runs(), i);
    }
    let r = await fbRun(env, { job: 'capped', config: cfg, cmd: ['sh', script] });
    checkOutcome(r, { code: 78, attempts: 0 });
    assert.equal(r.summary.stopped_because, 'refused by the rerun guard', show(r));
    assert.match(r.stderr, /max_runs_per_day/);
    assert.equal(runs(), 2, 'the refused run started the job');

    // --max-runs on the command line, for a job without it in the config.
    const job = uniq('maxruns');
    r = await fbRun(env, { job, cmd: ['sh', script], args: ['--max-runs', '1'] });
    checkOutcome(r, { code: 0, attempts: 1 });
    assert.equal(runs(), 3);
    r = await fbRun(env, { job, cmd: ['sh', script], args: ['--max-runs', '1'] });
    checkOutcome(r, { code: 78, attempts: 0 });
    assert.equal(runs(), 3, 'the refused run started the job');
  });

  it('rerun guard: a deterministic failure refuses an identical rerun (78) until the script changes or fusebox reset', async () => {
    const count = join(dir, `${uniq('count')}`);
    const db = join(dir, `${uniq('guard')}.sqlite`);
    execFileSync('sqlite3', [db, 'CREATE TABLE reports(id INTEGER PRIMARY KEY, title TEXT NOT NULL);']);
    const body = `#!/bin/sh
echo run >> "${count}"
sqlite3 -bail "${db}" "INSERT INTO reports(title, summary) VALUES ('record 1', 'fine');"
`;
    const script = jobFile(dir, `${uniq('guarded')}.sh`, body);
    const runs = () => (existsSync(count) ? readFileSync(count, 'utf8').trim().split('\n').length : 0);
    const go = () => fbRun(env, { job: 'guarded', cmd: ['sh', script] });

    let r = await go();
    checkOutcome(r, { code: 65, cls: 'deterministic', rule: 'sqlite_schema', attempts: 1 });
    assert.equal(runs(), 1);
    r = await go();
    checkOutcome(r, { code: 78, attempts: 0 });
    assert.equal(r.summary.stopped_because, 'refused by the rerun guard', show(r));
    assert.match(r.stderr, /failed deterministically today/);
    assert.equal(runs(), 1, 'the refused run started the job');

    // The script changes (a fix that is not one yet): it runs again.
    writeFileSync(script, `${body}# retry with the new client\n`);
    r = await go();
    checkOutcome(r, { code: 65, cls: 'deterministic', rule: 'sqlite_schema', attempts: 1 });
    assert.equal(runs(), 2);
    r = await go();
    checkOutcome(r, { code: 78, attempts: 0 });
    assert.equal(runs(), 2);

    // fusebox reset --job: it runs again (and fails again the same way).
    const reset = await cliRun(env, ['reset', '--job', 'guarded']);
    assert.equal(reset.code, 0, reset.stderr);
    r = await go();
    checkOutcome(r, { code: 65, cls: 'deterministic', rule: 'sqlite_schema', attempts: 1 });
    assert.equal(runs(), 3);
    r = await go();
    checkOutcome(r, { code: 78, attempts: 0 });
    assert.equal(runs(), 3);

    // The migration runs: the fixed database passes, and a new preflight
    // (part of the job's identity) lets the job run again.
    execFileSync('sqlite3', [db, 'ALTER TABLE reports ADD COLUMN summary TEXT;']);
    r = await fbRun(env, {
      job: 'guarded', cmd: ['sh', script],
      args: ['--preflight', `sqlite3 '${db}' 'SELECT summary FROM reports LIMIT 0'`],
    });
    checkOutcome(r, { code: 0, attempts: 1 });
    assert.equal(runs(), 4);
  });
});

/* ------------------------------------------------------------------ */
/* 2. a failing preflight stops before any paid call                   */

it('a failing preflight (sqlite3: no such column) stops before any paid call: 78, the fake saw 0 requests, the job never ran', async (t) => {
  const env = await startEnv({ t, budgets: { tenants: { acme: { jobs: { nightly: null } } } } });
  const dir = join(env.dir, 'jobs');
  const db = join(dir, 'reports.db');
  mkdirSync(dir, { recursive: true });
  execFileSync('sqlite3', [db, 'CREATE TABLE reports(id INTEGER PRIMARY KEY, title TEXT NOT NULL);']);
  const marker = join(dir, 'job-started');
  const script = jobFile(dir, 'job.sh', `#!/bin/sh
echo started > "${marker}"
tmp=$(mktemp -d)
${CURL_CHAT('Summarise ledger row 1.')}
sqlite3 -bail "${db}" "INSERT INTO reports(title, summary) VALUES ('record 1', 'x');"
`);
  const preflight = `sqlite3 '${db}' 'SELECT summary FROM reports LIMIT 0'`;
  const r = await fbRun(env, { job: 'nightly', cmd: ['sh', script], args: ['--preflight', preflight] });
  checkOutcome(r, { code: 78, attempts: 0 });
  assert.equal(r.summary.stopped_because, 'a preflight failed', show(r));
  assert.match(r.stderr, /no such column: summary/, 'the preflight\'s own error is shown');
  assert.match(r.stderr, /preflight failed/);
  assert.equal(r.summary.paid_calls, 0);
  assert.ok(!existsSync(marker), 'the job started');
  const b = await env.billing();
  assert.equal(b.requests, 0, `the fake saw requests: ${JSON.stringify(b)}`);
  assert.equal(b.billed_pico, 0);
  const job = (await env.spend()).scopes.find((s) => s.job === 'nightly');
  assert.ok(!job || (job.paid_calls === 0 && pico(job.spent_usd) === 0n), JSON.stringify(job));

  assert.equal(r.summary.failed_preflight, preflight, show(r));

  // A failed preflight is not remembered by the rerun guard (preflights
  // cost nothing and run first): an identical rerun checks again, fails
  // again, and still starts nothing.
  const again = await fbRun(env, { job: 'nightly', cmd: ['sh', script], args: ['--preflight', preflight] });
  checkOutcome(again, { code: 78, attempts: 0 });
  assert.equal(again.summary.stopped_because, 'a preflight failed', show(again));
  assert.ok(!existsSync(marker), 'the job started');
  assert.equal((await env.billing()).requests, 0);

  // The migration runs: the same command line now starts the job, which
  // pays for its call and writes its row.
  execFileSync('sqlite3', [db, 'ALTER TABLE reports ADD COLUMN summary TEXT;']);
  const fixed = await fbRun(env, { job: 'nightly', cmd: ['sh', script], args: ['--preflight', preflight] });
  checkOutcome(fixed, { code: 0, attempts: 1 });
  assert.ok(existsSync(marker), 'the job did not start');
  assert.equal(fixed.summary.paid_calls, 1, show(fixed));
  assert.equal((await env.billingStable()).calls, 1);
  assert.equal(execFileSync('sqlite3', [db, 'SELECT summary FROM reports']).toString().trim(), 'x');
});

/* ------------------------------------------------------------------ */
/* 7. replay across attempts and invocations                           */

it('replay: 5 paid calls then a transient failure, --attempts 3: paid 5, replayed 10, billed 5; a second invocation replays all', async (t) => {
  const env = await startEnv({ t, budgets: { tenants: { acme: { jobs: { nightly: null } } } } });
  const dir = join(env.dir, 'jobs');
  const log = join(dir, 'calls.log');
  const port = await closedPort();
  const script = jobFile(dir, 'job.mjs', `import { appendFileSync } from 'node:fs';
for (let i = 1; i <= 5; i++) {
  const res = await fetch(process.env.OPENAI_BASE_URL + '/chat/completions', {
    method: 'POST',
    headers: { authorization: 'Bearer ' + process.env.OPENAI_API_KEY, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o-mini', max_tokens: 16,
      messages: [{ role: 'user', content: 'Summarise ledger row ' + i + '.' }] }),
  });
  const body = await res.json();
  if (res.status !== 200) { console.error('HTTP ' + res.status + ' ' + JSON.stringify(body)); process.exit(1); }
  appendFileSync(${JSON.stringify(log)}, process.env.FUSEBOX_ATTEMPT + ' ' + i + ' ' +
    (res.headers.get('x-fusebox-replayed') || 'false') + ' ' + JSON.stringify(body.choices[0].message.content) + '\\n');
}
// The last step: a database that is not there yet.
await fetch('http://127.0.0.1:${port}/write');
`);
  const args = ['--attempts', '3', '--backoff-base', '0', '--backoff-cap', '0'];
  let r = await fbRun(env, { job: 'nightly', cmd: [process.execPath, script], args });
  checkOutcome(r, { code: 75, cls: 'transient', attempts: 3 });
  assert.equal(r.summary.paid_calls, 5, show(r));
  assert.equal(r.summary.replayed_calls, 10, show(r));
  assert.ok(pico(r.summary.saved_usd) > 0n, show(r));
  let b = await env.billingStable();
  assert.equal(b.calls, 5, JSON.stringify(b));
  assert.equal(pico(r.summary.spent_usd), BigInt(b.billed_pico), `summary spent vs fake billed\n${show(r)}`);

  // Every attempt saw the same 5 answers; attempts 2 and 3 were replays.
  const lines = readFileSync(log, 'utf8').trim().split('\n').map((l) => l.split(' '));
  assert.equal(lines.length, 15);
  const first = lines.slice(0, 5).map((l) => l[3]);
  const firstAttempt = Number(lines[0][0]);
  for (const l of lines) {
    const again = Number(l[0]) !== firstAttempt;
    assert.equal(l[2], again ? 'true' : 'false', `call ${l[1]} of attempt ${l[0]}`);
    assert.equal(l[3], first[Number(l[1]) - 1], 'a replay answered differently');
  }

  // A second invocation by an outer queue: replays too, buys nothing.
  r = await fbRun(env, { job: 'nightly', cmd: [process.execPath, script], args });
  checkOutcome(r, { code: 75, cls: 'transient', attempts: 3 });
  assert.equal(r.summary.paid_calls, 0, show(r));
  assert.equal(r.summary.replayed_calls, 15, show(r));
  assert.ok(r.summary.attempts[0].attempt > 3, `attempt numbers restart: ${show(r)}`);
  b = await env.billingStable();
  assert.equal(b.calls, 5, JSON.stringify(b));

  const row = (await env.settled()).scopes.find((s) => s.job === 'nightly');
  assert.equal(row.paid_calls, 5, JSON.stringify(row));
  assert.equal(row.replayed_calls, 25, JSON.stringify(row));
  assert.equal(pico(row.spent_usd), BigInt(b.billed_pico), JSON.stringify(row));
});

/* ------------------------------------------------------------------ */
/* 8. the official openai SDK, unmodified, under --serve               */

it('an unmodified job on the official openai SDK (new OpenAI()) runs under fusebox run --serve; the real key never reaches it', async (t) => {
  const env = await startEnv({ t, budgets: { tenants: { acme: { jobs: { sdkjob: null } } } } });
  const dir = join(env.dir, 'sdkjob');
  mkdirSync(dir, { recursive: true });
  // The job's own package dir: `import OpenAI from 'openai'` resolves
  // through node_modules, as in the user's repository.
  symlinkSync(join(REPO, 'tests', 'e2e', 'node_modules'), join(dir, 'node_modules'), 'dir');
  const envDump = join(dir, 'env.json');
  // --serve starts its own gateway on the same store, which only one
  // `fusebox serve` may hold: the harness's stops first (the fake stays).
  await env.stop();
  const script = jobFile(dir, 'job.mjs', `import OpenAI from 'openai';
import { writeFileSync } from 'node:fs';

const client = new OpenAI();
const answers = [];
for (const row of [1, 2, 3]) {
  const r = await client.chat.completions.create({
    model: 'gpt-4o-mini',
    messages: [{ role: 'user', content: 'Summarise ledger row ' + row + '.' }],
    max_tokens: 16,
  });
  answers.push(r.choices[0].message.content);
}
console.log('ANSWERS ' + JSON.stringify(answers));
writeFileSync(process.argv[2], JSON.stringify(process.env));
`);
  const r = await fbRun(env, { job: 'sdkjob', mode: 'serve', cmd: [process.execPath, script, envDump] });
  checkOutcome(r, { code: 0, attempts: 1 });
  const m = /^ANSWERS (.*)$/m.exec(r.stdout);
  assert.ok(m, show(r));
  const answers = JSON.parse(m[1]);
  assert.equal(answers.length, 3);
  for (const a of answers) assert.match(a, /^fake answer #\d+/);
  assert.equal(r.summary.paid_calls, 3, show(r));

  const b = await env.billingStable();
  assert.equal(b.calls, 3, JSON.stringify(b));
  assert.equal(b.last_auth, `Bearer ${PROVIDER_KEYS.OPENAI_API_KEY}`, 'the provider did not get the real key');
  assert.equal(b.virtual_key_seen, 0, 'a fusebox key reached the provider');
  assert.equal(pico(r.summary.spent_usd), BigInt(b.billed_pico), show(r));

  // The job's environment: the attempt key and the gateway, never the
  // provider keys the config names.
  const jobEnv = JSON.parse(readFileSync(envDump, 'utf8'));
  for (const [name, value] of Object.entries(PROVIDER_KEYS)) {
    const holders = Object.entries(jobEnv).filter(([, v]) => v.includes(value)).map(([k]) => k);
    assert.deepEqual(holders, [], `the job's environment holds the real ${name}`);
  }
  assert.match(jobEnv.OPENAI_API_KEY, /^fbk_[0-9a-f]{40}$/);
  assert.equal(jobEnv.FUSEBOX_KEY, jobEnv.OPENAI_API_KEY);
  assert.match(jobEnv.OPENAI_BASE_URL, /^http:\/\/127\.0\.0\.1:\d+\/openai\/v1$/);
  assert.equal(jobEnv.FUSEBOX_URL, jobEnv.OPENAI_BASE_URL.replace(/\/openai\/v1$/, ''));
  assert.equal(jobEnv.FUSEBOX_JOB, 'sdkjob');
  assert.equal(jobEnv.FUSEBOX_ATTEMPT, String(r.summary.attempts[0].attempt));
  assert.equal(jobEnv.GENERIC_API_KEY, undefined);

  // The attempt key, bound to the job and the attempt, was revoked when
  // the attempt ended.
  const keys = (await env.keyList()).filter((x) => x.job === 'sdkjob');
  assert.equal(keys.length, 1, JSON.stringify(keys));
  assert.ok(jobEnv.OPENAI_API_KEY.startsWith(keys[0].prefix), JSON.stringify(keys));
  assert.equal(keys[0].attempt, r.summary.attempts[0].attempt);
  assert.equal(keys[0].revoked, true, JSON.stringify(keys));
});

/* ------------------------------------------------------------------ */
/* 9. staging prices the incident before it ships                      */

it('staging: the incident job is priced with zero provider calls; the real run is billed > 0 and <= the projection', async (t) => {
  const env = await startEnv({ t, budgets: { tenants: { acme: { jobs: { nightly: null } } } } });
  const dir = join(env.dir, 'jobs');
  const db = join(dir, 'reports.db');
  mkdirSync(dir, { recursive: true });
  execFileSync('sqlite3', [db, 'CREATE TABLE reports(id INTEGER PRIMARY KEY, day TEXT NOT NULL);']);
  const N = 6;
  // N paid calls (curl), then one write into a column the table lacks.
  let calls = '';
  for (let i = 1; i <= N; i++) calls += CURL_CHAT(`Summarise ledger row ${i} in two sentences.`, 40 + i * 8);
  const script = jobFile(dir, 'job.sh', `#!/bin/sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
${calls}
echo "job: ${N} answers; writing the report" >&2
sqlite3 -bail "${db}" "INSERT INTO reports(day, summary) VALUES ('today', 'x');"
`);

  const staged = await fbRun(env, { job: 'nightly', mode: 'staging', cmd: ['sh', script], args: ['--reruns', '21'] });
  assert.equal(staged.code, 65, show(staged));
  const st = staged.summary.staging;
  assert.ok(st, `no staging section\n${show(staged)}`);
  const projected = BigInt(st.projected_pico);
  assert.ok(projected > 0n, show(staged));
  assert.equal(pico(st.projected_usd), projected);
  const rows = st.calls;
  assert.ok(Array.isArray(rows) && rows.length >= 1, show(staged));
  let stagedCalls = 0;
  let sum = 0n;
  for (const row of rows) {
    assert.equal(row.provider, 'openai', JSON.stringify(row));
    assert.equal(row.model, 'gpt-4o-mini', JSON.stringify(row));
    assert.match(row.path, /chat\/completions$/, JSON.stringify(row));
    stagedCalls += row.calls;
    sum += BigInt(row.projected_pico);
  }
  assert.equal(stagedCalls, N, show(staged));
  assert.equal(sum, projected);
  assert.equal(st.reruns, 21);
  assert.equal(pico(st.reruns_without_replay_usd), projected * 21n);
  assert.equal(staged.summary.paid_calls, 0, 'staging paid');
  let b = await env.billing();
  assert.equal(b.requests, 0, `staging reached the provider: ${JSON.stringify(b)}`);
  assert.equal(b.billed_pico, 0);
  const rowAfterStaging = (await env.spend()).scopes.find((s) => s.job === 'nightly');
  assert.ok(!rowAfterStaging || rowAfterStaging.calls === 0, `staging wrote to the real store: ${JSON.stringify(rowAfterStaging)}`);

  // The same job for real, through the gateway.
  const real = await fbRun(env, { job: 'nightly', cmd: ['sh', script] });
  checkOutcome(real, { code: 65, cls: 'deterministic', rule: 'sqlite_schema', attempts: 1 });
  b = await env.billingStable();
  const billed = BigInt(b.billed_pico);
  assert.equal(b.calls, stagedCalls, `real calls ${b.calls} vs staged ${stagedCalls}`);
  assert.ok(billed > 0n, JSON.stringify(b));
  assert.ok(billed <= projected, `billed ${billed} pico > projected ${projected} pico`);
  assert.equal(real.summary.paid_calls, N, show(real));
  assert.equal(pico(real.summary.spent_usd), billed, show(real));
});
