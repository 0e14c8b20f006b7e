// dashboard.mjs - the dashboard over a ledger of a million rows (issue 7).
//
//   node bench/dashboard.mjs [build/fusebox] [ROWS]     (make bench-dashboard)
//
// Seeds ROWS (default 1,000,000) ledger rows over 30 days, 10 tenants of 5
// jobs, 50 keys and 3 models straight into SQLite with their spend rollup
// (as the store writes it), starts the gateway with its admin surface, and
// times: GET /dashboard over HTTP (20 loads), the page in headless Chromium
// (10 loads, navigation to the load event), `fusebox spend --by day` and
// plain `fusebox spend`. `ledger verify` checks the seeded store first.
// Tables in bench/results/dashboard.{md,json}.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '..');
if (process.argv[2]) process.env.FUSEBOX_BIN = resolve(process.argv[2]);
const ROWS = Number(process.argv[3] || 1000000);
const { startEnv, request, sqlite, cliRun } = await import(join(REPO, 'tests/e2e/harness.mjs'));
const { chromium } = await import(join(REPO, 'tests/e2e/node_modules/playwright-core/index.mjs'));

const DAY = 86400000;
const now = Date.now();

function stats(ms) {
  const s = [...ms].sort((a, b) => a - b);
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return { n: s.length, median: q(0.5), p95: q(0.95), max: s[s.length - 1] };
}

const fmt = (x) => x.toFixed(1);

async function timed(fn) {
  const t = process.hrtime.bigint();
  const r = await fn();
  return [Number(process.hrtime.bigint() - t) / 1e6, r];
}

const tenants = {};
for (let t = 0; t < 10; t++) {
  const jobs = {};
  for (let j = 0; j < 5; j++) jobs[`j${j}`] = '1000/day';
  tenants[`t${t}`] = { budget: '10000/month', jobs };
}
const env = await startEnv({ admin: true, budgets: { tenants } });
try {
  await env.stop();
  const db = join(env.dataDir, 'fusebox.db');
  const seedSql = `BEGIN;
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM n WHERE i < ${ROWS - 1})
INSERT INTO ledger(id,ts_ms,tenant,job,key_id,provider,model,path,status,reserved,cost,state,outcome,fp,attempt,retry,saved)
SELECT 1000000+i, ${now - 30 * DAY} + (i*2654435761) % ${30 * DAY - 60000}, 't'||(i%10), 'j'||(i/10%5), 'k_'||(i%50),
 'openai', CASE i%3 WHEN 0 THEN 'gpt-4o-mini' WHEN 1 THEN 'gpt-4o' ELSE 'claude-3-5-haiku-latest' END,
 '/v1/chat/completions', CASE WHEN i%20 IN (15,16) THEN 402 ELSE 200 END, 1000000+(i*7919)%90000000,
 CASE WHEN i%20<15 THEN 1000000+(i*7919)%90000000-(i%1000000) ELSE 0 END,
 CASE WHEN i%20<15 THEN 1 WHEN i%20<17 THEN 2 ELSE 3 END,
 CASE WHEN i%20 IN (15,16) THEN 'budget_exceeded:bench' ELSE 'bench' END, NULL, 0, 0,
 CASE WHEN i%20>=17 THEN 1+(i%5000000) ELSE 0 END FROM n;
INSERT INTO spend_rollup SELECT ts_ms-ts_ms%3600000, tenant, job, key_id, COALESCE(model,''), COUNT(*),
 SUM(state=1 AND cost>0), SUM(state=2), SUM(state=3), SUM(cost), SUM(CASE state WHEN 3 THEN saved ELSE 0 END) FROM ledger WHERE id>=1000000
 GROUP BY 1,2,3,4,5 ON CONFLICT DO UPDATE SET calls=calls+excluded.calls, paid=paid+excluded.paid,
 blocked=blocked+excluded.blocked, replayed=replayed+excluded.replayed, cost=cost+excluded.cost, saved=saved+excluded.saved;
COMMIT;`;
  const [seedMs, seeded] = await timed(() => sqlite(db, seedSql));
  if (seeded.code !== 0) throw new Error(seeded.stderr);
  const rows = (await sqlite(db, 'SELECT COUNT(*) FROM ledger; SELECT COUNT(*) FROM spend_rollup;')).stdout.trim().split('\n');
  console.log(`seeded ${rows[0]} ledger rows (${rows[1]} rollup rows) in ${fmt(seedMs / 1000)} s`);
  const [verifyMs, v] = await timed(() => cliRun(env, ['ledger', 'verify'], { timeoutMs: 600000 }));
  if (v.code !== 0) throw new Error(`ledger verify failed:\n${v.stdout}${v.stderr}`);
  console.log(`ledger verify: clean in ${fmt(verifyMs / 1000)} s`);
  await env.restart();

  const auth = { authorization: `Bearer ${env.adminToken}` };
  const http = [];
  let bytes = 0;
  for (let i = 0; i < 21; i++) {
    const [ms, r] = await timed(() => request('GET', `${env.adminUrl}/dashboard`, { headers: auth, timeoutMs: 60000 }));
    if (r.status !== 200) throw new Error(`GET /dashboard: ${r.status} ${r.text}`);
    bytes = r.text.length;
    if (i > 0) http.push(ms); // the first warms the page cache
  }
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
  const ctx = await browser.newContext();
  const u = new URL(env.adminUrl);
  await ctx.addCookies([{ name: 'fusebox_admin', value: env.adminToken, domain: u.hostname, path: '/', httpOnly: true, sameSite: 'Strict' }]);
  const page = await ctx.newPage();
  const chrome = [];
  for (let i = 0; i < 10; i++) {
    const [ms, r] = await timed(() => page.goto(`${env.adminUrl}/dashboard`, { waitUntil: 'load' }));
    if (r.status() !== 200) throw new Error(`chromium: ${r.status()}`);
    chrome.push(ms);
  }
  const jobsShown = await page.locator('#jobs tr').count() - 1;
  await browser.close();
  const cli = [], plain = [];
  for (let i = 0; i < 5; i++) {
    const [a, r1] = await timed(() => cliRun(env, ['spend', '--by', 'day', '--json'], { timeoutMs: 600000 }));
    if (r1.code !== 0) throw new Error(r1.stderr);
    cli.push(a);
    const [b, r2] = await timed(() => cliRun(env, ['spend', '--json'], { timeoutMs: 600000 }));
    if (r2.code !== 0) throw new Error(r2.stderr);
    plain.push(b);
  }
  const res = {
    rows: Number(rows[0]), rollup_rows: Number(rows[1]), page_bytes: bytes, jobs_shown: jobsShown,
    http_ms: stats(http), chromium_ms: stats(chrome), spend_by_day_ms: stats(cli), spend_plain_ms: stats(plain),
    when: new Date().toISOString(),
  };
  const md = [
    `# Dashboard over ${res.rows.toLocaleString('en')} ledger rows`,
    '',
    `${res.when}; ${res.rollup_rows.toLocaleString('en')} rollup rows; page ${res.page_bytes.toLocaleString('en')} bytes, ${jobsShown} jobs.`,
    '',
    '| what | n | median ms | p95 ms | max ms |',
    '| --- | ---: | ---: | ---: | ---: |',
    ...[['GET /dashboard (HTTP)', res.http_ms], ['dashboard in headless Chromium (to load)', res.chromium_ms],
      ['fusebox spend --by day --json (CLI, process included)', res.spend_by_day_ms],
      ['fusebox spend --json (CLI, process included: 61 scopes, totals and periods)', res.spend_plain_ms]]
      .map(([w, s]) => `| ${w} | ${s.n} | ${fmt(s.median)} | ${fmt(s.p95)} | ${fmt(s.max)} |`),
    '',
  ].join('\n');
  mkdirSync(join(HERE, 'results'), { recursive: true });
  writeFileSync(join(HERE, 'results', 'dashboard.md'), md);
  writeFileSync(join(HERE, 'results', 'dashboard.json'), JSON.stringify(res, null, 2));
  console.log(md);
} finally {
  await env.close({ check: false });
}
