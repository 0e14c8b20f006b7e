// dashboard.test.mjs - the dashboard in a real browser (issue 7):
// headless Chromium from Debian, driven by playwright-core, against a
// daemon whose ledger is seeded over three days plus live calls. It signs
// in with the admin token, checks every number the jobs and tenants tables
// show against `fusebox spend --json`, clicks Trip and sees the job tripped
// (and the gateway refusing it), clicks Reset, and leaves a screenshot in
// build/dashboard.png. Forms from another origin and wrong tokens are
// refused.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, statSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startEnv, chatBody, cliRun, pico, request, waitFor, seedLedgerSql, REPO } from './harness.mjs';

const CHAT = '/openai/v1/chat/completions';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

describe('the dashboard in Chromium', () => {
  let env, key, browser, page;

  before(async () => {
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing (apt-get install chromium)`);
    env = await startEnv({
      admin: true,
      budgets: { tenants: { acme: { budget: '50/day', jobs: { main: '1', etl: '5/day', tight: '0.000001' } }, beta: { jobs: { x: null } } } },
    });
    key = await env.createKey({ tenant: 'acme', job: 'main' });
    await env.stop();
    const seeded = await env.sql(seedLedgerSql({
      count: 3000, now: Date.now(),
      scopes: [['acme', 'etl', 'k_etl1'], ['acme', 'etl', 'k_etl2'], ['beta', 'x', 'k_x1']],
      models: ['gpt-4o-mini', 'gpt-4o'],
    }));
    assert.equal(seeded.code, 0, seeded.stderr);
    await env.restart();
    for (let i = 0; i < 3; i++) {
      const r = await env.post(CHAT, chatBody({ content: `dash ${i}` }), { key });
      assert.equal(r.status, 200, r.text);
    }
    assert.equal((await env.post(CHAT, chatBody({ content: 'dash 0' }), { key })).headers['x-fusebox-replayed'], 'true');
    const tight = await env.createKey({ tenant: 'acme', job: 'tight' });
    assert.equal((await env.post(CHAT, chatBody({ content: 'too dear' }), { key: tight })).status, 402);
    await env.settled();

    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
    page = await browser.newPage({ viewport: { width: 1200, height: 1000 } });
  });

  afterEach(() => env?.checkNow());
  after(async () => {
    if (browser) await browser.close();
    if (env) await env.close();
  });

  it('asks for the admin token, refuses a wrong one, signs in with the right one', async () => {
    const r = await page.goto(`${env.adminUrl}/dashboard`);
    assert.equal(r.status(), 401);
    await page.fill('input[name=token]', 'not-the-token');
    await Promise.all([page.waitForLoadState('load'), page.click('button[type=submit]')]);
    assert.match(await page.content(), /not the admin token/);
    assert.equal(await page.locator('#jobs').count(), 0);

    await page.fill('input[name=token]', env.adminToken);
    const t0 = Date.now();
    await Promise.all([page.waitForURL(`${env.adminUrl}/dashboard`), page.click('button[type=submit]')]);
    await page.locator('#jobs').waitFor();
    console.log(`# dashboard: signed in and loaded in ${Date.now() - t0} ms`);
    const cookies = await page.context().cookies();
    const c = cookies.find((x) => x.name === 'fusebox_admin');
    assert.ok(c, 'no session cookie');
    assert.equal(c.httpOnly, true);
    assert.equal(c.sameSite, 'Strict');
  });

  it('shows the numbers `fusebox spend --json` gives, job by job and tenant by tenant', async () => {
    await page.goto(`${env.adminUrl}/dashboard`);
    const spend = JSON.parse((await cliRun(env, ['spend', '--json'])).stdout);
    const cells = await page.$$eval('td[data-scope][data-field]', (tds) =>
      tds.map((td) => ({ scope: td.dataset.scope, field: td.dataset.field, usd: td.dataset.usd, text: td.textContent })));
    const cell = (scope, field) => cells.find((x) => x.scope === scope && x.field === field);
    let checked = 0;
    for (const row of spend.scopes) {
      let scope;
      if (row.scope.startsWith('job:')) scope = `job:${row.tenant}/${row.job}`;
      else if (row.scope.startsWith('tenant:')) scope = row.scope;
      else continue;
      const s = cell(scope, 'spent_usd');
      assert.ok(s, `the page has no spent_usd for ${scope}`);
      assert.equal(pico(s.usd), pico(row.spent_usd), `${scope} spent`);
      assert.equal(s.text, `$${s.usd}`, 'what is shown is the exact amount');
      assert.equal(Number(cell(scope, 'paid_calls').text), row.paid_calls, `${scope} paid`);
      assert.equal(Number(cell(scope, 'replayed_calls').text), row.replayed_calls, `${scope} replayed`);
      assert.equal(pico(cell(scope, 'saved_usd').usd), pico(row.saved_usd), `${scope} saved`);
      if (scope.startsWith('job:')) {
        assert.equal(Number(cell(scope, 'blocked_calls').text), row.blocked_calls, `${scope} blocked`);
      }
      checked++;
    }
    assert.ok(checked >= 6, `checked ${checked} rows`);
    // Budgets as gauges, with the ceiling; the blocked call is listed.
    const lim = cell('job:acme/main', 'limit_usd');
    assert.equal(pico(lim.usd), pico('1'));
    assert.ok(await page.locator('#budgets svg.gauge').count() >= 3);
    assert.match(await page.locator('#blocked').innerText(), /acme\/tight.*budget_exceeded/s);
    assert.equal(await page.locator('[data-field=replayed_today]').innerText(), String(
      JSON.parse((await cliRun(env, ['spend', '--by', 'day', '--json', '--since', new Date(Date.now() - (Date.now() % 86400000)).toISOString().slice(0, 10)])).stdout).total.replayed_calls));
  });

  it('Trip trips the job (the gateway refuses it), Reset undoes it', async () => {
    await page.goto(`${env.adminUrl}/dashboard`);
    await Promise.all([page.waitForURL(`${env.adminUrl}/dashboard`),
      page.click('button[data-action=trip][data-scope="job:acme/main"]')]);
    await page.locator('[data-tripped="job:acme/main"]').waitFor();
    assert.match(await page.locator('#trips').innerText(), /job:acme\/main.*from the dashboard/s);
    // The gateway applies it through the change feed.
    const blocked = await waitFor(async () => {
      const r = await env.post(CHAT, chatBody({ content: 'after the trip' }), { key });
      return r.status === 429 ? r : null;
    }, { timeoutMs: 5000, message: 'the gateway refusing the tripped job' });
    assert.equal(blocked.json.error.type, 'fuse_tripped');

    mkdirSync(join(REPO, 'build'), { recursive: true });
    const shot = join(REPO, 'build', 'dashboard.png');
    await page.screenshot({ path: shot, fullPage: true });
    assert.ok(statSync(shot).size > 10000, 'the screenshot is empty');

    await Promise.all([page.waitForURL(`${env.adminUrl}/dashboard`),
      page.click('button[data-action=reset][data-scope="job:acme/main"] >> nth=0')]);
    assert.equal(await page.locator('[data-tripped="job:acme/main"]').count(), 0);
    await waitFor(async () => (await env.post(CHAT, chatBody({ content: 'after the reset' }), { key })).status === 200,
      { timeoutMs: 5000, message: 'calls pass again after the reset' });
  });

  it('refuses forms from another origin, bad scopes, and requests without the token', async () => {
    const auth = { authorization: `Bearer ${env.adminToken}`, 'content-type': 'application/x-www-form-urlencoded' };
    const evil = await request('POST', `${env.adminUrl}/dashboard/trip`,
      { headers: { ...auth, origin: 'http://evil.example' }, body: 'scope=job%3Aacme%2Fmain' });
    assert.equal(evil.status, 403);
    for (const scope of ['job:acme', 'job:/x', 'nope:x', 'tenant:a%20b', 'global%00']) {
      const r = await request('POST', `${env.adminUrl}/dashboard/trip`, { headers: auth, body: `scope=${scope}` });
      assert.equal(r.status, 400, `${scope}: ${r.status}`);
    }
    const anon = await request('POST', `${env.adminUrl}/dashboard/trip`,
      { headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'scope=global' });
    assert.equal(anon.status, 401);
    const trips = JSON.parse((await cliRun(env, ['ledger', 'verify', '--json'])).stdout);
    assert.equal(trips.ok, true);
    assert.ok(!env.gatewayStderr().includes(env.adminToken), 'the admin token is in the log');
  });
});
