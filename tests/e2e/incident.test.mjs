// incident.test.mjs - the incident replay exists for, end to end: a batch
// job makes 20 paid chat calls through the official openai SDK, then its
// last step (a write into a real SQLite database whose table lacks the
// column) fails, and a naive queue reruns it from the top, 21 times in
// all. Through fusebox with one job key the provider bills the 20 calls
// once, not 420 times; the 400 reruns' calls are replays at cost 0, and
// `fusebox spend` shows them and what they saved, to the picodollar.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startEnv, pico, usd, GPT4O_MINI, SLOW, spendRowWhen } from './harness.mjs';

const CALLS = 20;
const RUNS = 21; // the first run and 20 reruns

// The job, as a user would write it: the SDK pointed at fusebox by its
// environment, 20 distinct prompts, then one INSERT of the summaries into
// a column the table does not have yet. It prints what it saw (answers,
// and fusebox's replay and cost headers) on one line before the write.
const JOB = `
import { execFileSync } from 'node:child_process';
const { default: OpenAI } = await import(process.env.OPENAI_SDK_URL);
const client = new OpenAI(); // OPENAI_BASE_URL, OPENAI_API_KEY
const seen = [];
for (let i = 1; i <= ${CALLS}; i++) {
  const { data, response } = await client.chat.completions.create({
    model: 'gpt-4o-mini',
    messages: [{ role: 'user', content: 'Summarise customer record ' + i + '.' }],
    max_tokens: 32,
  }).withResponse();
  seen.push({
    text: data.choices[0].message.content,
    usage: data.usage,
    replayed: response.headers.get('x-fusebox-replayed'),
    cost: response.headers.get('x-fusebox-cost-usd'),
  });
}
console.log('REPORT ' + JSON.stringify(seen));
const values = seen.map((s, i) => '(' + (i + 1) + ", 'record " + (i + 1) + "', '" +
  s.text.replaceAll("'", "''") + "')").join(', ');
try {
  execFileSync('sqlite3', ['-bail', process.env.JOB_DB,
    'INSERT INTO reports(id, title, summary) VALUES ' + values + ';'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
} catch (e) {
  process.stderr.write(String(e.stderr));
  process.exit(3);
}
console.log('written');
`;

function runJob(script, env, timeoutMs) {
  return new Promise((res) => {
    execFile(process.execPath, [script], { env, timeout: timeoutMs, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        res({ code: err ? (typeof err.code === 'number' ? err.code : String(err.code ?? err.signal)) : 0, stdout, stderr });
      });
  });
}

it('the incident: 20 paid calls, a failing SQLite write, 21 naive runs: billed 20 calls, not 420', async (t) => {
  const env = await startEnv({ t, budgets: { tenants: { acme: { jobs: { nightly: null } } } } });
  const key = await env.createKey({ tenant: 'acme', job: 'nightly' });

  // The job's database: real SQLite, the table without the summary column.
  const db = join(env.dir, 'reports.db');
  execFileSync('sqlite3', [db, 'CREATE TABLE reports(id INTEGER PRIMARY KEY, title TEXT NOT NULL);']);
  const script = join(env.dir, 'job.mjs');
  writeFileSync(script, JOB);
  const jobEnv = {
    PATH: process.env.PATH,
    HOME: env.dir,
    OPENAI_SDK_URL: import.meta.resolve('openai'),
    OPENAI_BASE_URL: `${env.gwUrl}/openai/v1`,
    OPENAI_API_KEY: key,
    JOB_DB: db,
  };

  // The naive queue: run, and on failure run again, 21 times in all.
  const reports = [];
  let sqliteSaid = '';
  for (let run = 0; run < RUNS; run++) {
    const r = await runJob(script, jobEnv, 60000 * SLOW);
    assert.equal(r.code, 3, `run ${run}: the job should fail at its write (exit ${r.code});\n` +
      `stdout: ${r.stdout}\nstderr: ${r.stderr}`);
    assert.match(r.stderr, /table reports has no column named summary|no such column/,
      `run ${run}: not SQLite's missing-column error: ${r.stderr}`);
    assert.doesNotMatch(r.stdout, /^written$/m);
    sqliteSaid = r.stderr.trim();
    const line = r.stdout.split('\n').find((l) => l.startsWith('REPORT '));
    assert.ok(line, `run ${run}: the job printed no report: ${r.stdout}`);
    reports.push(JSON.parse(line.slice(7)));
  }
  // The write really failed every time: the table is still empty.
  assert.equal(execFileSync('sqlite3', [db, 'SELECT COUNT(*) FROM reports;']).toString().trim(), '0');

  // Run 1 paid for 20 distinct answers; each cost header is its usage priced.
  const first = reports[0];
  assert.equal(first.length, CALLS);
  assert.equal(new Set(first.map((s) => s.text)).size, CALLS, 'the 20 answers are not distinct');
  let paid = 0n;
  for (const [i, s] of first.entries()) {
    assert.equal(s.replayed, null, `run 0 call ${i} was a replay`);
    const cost = pico(s.cost);
    assert.equal(cost, BigInt(s.usage.prompt_tokens) * GPT4O_MINI.input +
      BigInt(s.usage.completion_tokens) * GPT4O_MINI.output, `run 0 call ${i}: cost header is not the usage priced`);
    assert.ok(cost > 0n);
    paid += cost;
  }
  // Every rerun got the very same answers back, replayed, at cost 0.
  for (let run = 1; run < RUNS; run++) {
    assert.equal(reports[run].length, CALLS);
    for (const [i, s] of reports[run].entries()) {
      assert.equal(s.replayed, 'true', `run ${run} call ${i} was not a replay`);
      assert.equal(pico(s.cost), 0n, `run ${run} call ${i} cost ${s.cost}`);
      assert.equal(s.text, first[i].text, `run ${run} call ${i}: another answer`);
      assert.deepEqual(s.usage, first[i].usage);
    }
  }

  // The provider billed the 20 calls once.
  const b = await env.billingStable();
  assert.equal(b.calls, CALLS, `the provider billed ${b.calls} calls`);
  assert.equal(b.requests, CALLS, `the provider saw ${b.requests} requests`);
  assert.equal(BigInt(b.billed_pico), paid, 'billed != the cost headers of run 0');

  // fusebox spend: 20 paid, 400 replayed, saved = 20 reruns x the 20 calls.
  const replays = CALLS * (RUNS - 1);
  const saved = paid * BigInt(RUNS - 1);
  const check = (row, where) => {
    assert.equal(row.paid_calls, CALLS, `${where}: paid_calls`);
    assert.equal(row.replayed_calls, replays, `${where}: replayed_calls`);
    assert.equal(row.blocked_calls, 0, `${where}: blocked_calls`);
    assert.equal(row.calls, CALLS + replays, `${where}: calls`);
    assert.equal(BigInt(row.spent_pico), BigInt(b.billed_pico), `${where}: spent != billed`);
    assert.equal(pico(row.spent_usd), BigInt(b.billed_pico), `${where}: spent_usd`);
    assert.equal(BigInt(row.saved_pico), saved, `${where}: saved_pico`);
    assert.equal(pico(row.saved_usd), saved, `${where}: saved_usd`);
  };
  const job = await spendRowWhen(env, 'job:nightly', (r) => r.replayed_calls >= replays);
  check(job, 'job:nightly (daemon running)');
  for (const scope of ['tenant:acme', 'global']) check(await env.scope(scope), scope);
  // ... and nothing more once the daemon has drained and stopped.
  await env.stop();
  check(await env.scope('job:nightly'), 'job:nightly (daemon stopped)');

  t.diagnostic(`incident: provider billed ${b.calls} calls (${b.requests} requests), ` +
    `${usd(BigInt(b.billed_pico))} USD = ${b.billed_pico} pico; naive cost without fusebox: ` +
    `${CALLS * RUNS} calls, ${usd(paid * BigInt(RUNS))} USD; spend: paid ${job.paid_calls}, ` +
    `replayed ${job.replayed_calls}, spent ${job.spent_usd}, saved ${job.saved_usd} USD ` +
    `(${job.saved_pico} pico); each run ended with SQLite's ${JSON.stringify(sqliteSaid)}`);
});
