// generic.test.mjs - the generic per-call provider: price_per_call_usd
// times count_field (an array's length or an integer) is reserved, charged
// and billed to the picodollar; malformed counts and calls over budget are
// refused before the provider is called.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startEnv, pico, usd } from './harness.mjs';

const PRICE = '0.0125';
const PRICE_PICO = pico(PRICE);
const SEND = '/generic/v1/send';
const TINYQ = '0.05';

describe('generic per-call provider', () => {
  let env, key, smallKey;
  let blastBilled = 0n; // what the provider billed for job:blast

  before(async () => {
    env = await startEnv({
      generic: { price: PRICE, countField: 'recipients' },
      budgets: {
        global: '100',
        tenants: { mail: { budget: '10', jobs: { blast: '5', small: '0.1', query: '5', tinyq: TINYQ } } },
      },
    });
    key = await env.createKey({ tenant: 'mail', job: 'blast' });
    smallKey = await env.createKey({ tenant: 'mail', job: 'small' });
  });

  afterEach(() => env?.checkNow());
  after(async () => {
    if (env) await env.close();
  });

  /** Send, and check the charge = the bill = count * price. */
  async function charged(send, count) {
    const b0 = await env.billing();
    const j0 = (await env.settled()).scopes.find((s) => s.scope === 'job:blast');
    const r = await send();
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.ok, true);
    assert.equal(r.json.count, count, 'the provider counted differently');
    const b1 = await env.billing();
    const billed = BigInt(b1.billed_pico) - BigInt(b0.billed_pico);
    const want = PRICE_PICO * BigInt(count);
    assert.equal(billed, want, `the provider billed ${usd(billed)}, want ${usd(want)}`);
    const header = pico(r.headers['x-fusebox-cost-usd']);
    assert.equal(header, billed, `charged ${usd(header)}, billed ${usd(billed)}`);
    const j1 = (await env.settled()).scopes.find((s) => s.scope === 'job:blast');
    assert.equal(BigInt(j1.spent_pico) - BigInt(j0.spent_pico), billed, 'ledger delta != bill');
    blastBilled += billed;
    return r;
  }

  it('count_field as an array: price x length', async () => {
    await charged(() => env.post(SEND, { recipients: ['a@x', 'b@x', 'c@x'], text: 'hi' }, { key }), 3);
  });

  it('count_field as an integer: price x value', async () => {
    await charged(() => env.post(SEND, { recipients: 5, text: 'hi' }, { key }), 5);
  });

  it('count_field absent: one call', async () => {
    await charged(() => env.post(SEND, { text: 'hi' }, { key }), 1);
  });

  it('count_field an empty array: costs nothing', async () => {
    await charged(() => env.post(SEND, { recipients: [] }, { key }), 0);
  });

  it('a large count is charged exactly', async () => {
    const many = Array.from({ length: 37 }, (_, i) => `r${i}@x`);
    await charged(() => env.post(SEND, { recipients: many }, { key }), 37);
  });

  it('the real generic key was injected, the fusebox key never forwarded', async () => {
    const b = await env.billing();
    assert.equal(b.last_auth, 'Bearer fake-generic-key');
    assert.equal(b.unauthorized, 0);
    assert.equal(b.virtual_key_seen, 0);
  });

  it('a malformed count is refused before the provider', async () => {
    for (const bad of [{ recipients: 'everyone' }, { recipients: -1 }, { recipients: 1.5 }]) {
      const b0 = await env.billing();
      const r = await env.post(SEND, bad, { key });
      assert.equal(r.status, 400, `${JSON.stringify(bad)}: ${r.status} ${r.text}`);
      assert.equal(r.json.error.type, 'invalid_request');
      const b1 = await env.billing();
      assert.equal(b1.requests, b0.requests, `${JSON.stringify(bad)} reached the provider`);
    }
  });

  it('a call whose count passes the job budget is refused with 402', async () => {
    const b0 = await env.billing();
    // 8 x 0.0125 = 0.1 fits the job's 0.1 exactly ...
    const ok = await env.post(SEND, { recipients: 8 }, { key: smallKey });
    assert.equal(ok.status, 200, ok.text);
    assert.equal(pico(ok.headers['x-fusebox-cost-usd']), PRICE_PICO * 8n);
    // ... and then even one more recipient does not.
    const r = await env.post(SEND, { recipients: ['one@x'] }, { key: smallKey });
    assert.equal(r.status, 402, r.text);
    const e = r.json.error;
    assert.equal(e.type, 'budget_exceeded');
    assert.equal(e.scope, 'job:small');
    assert.equal(pico(e.limit_usd), pico('0.1'));
    assert.equal(pico(e.spent_usd), PRICE_PICO * 8n);
    assert.equal(pico(e.request_max_usd), PRICE_PICO);
    const b1 = await env.billing();
    assert.equal(b1.requests - b0.requests, 1, 'the refused call reached the provider');
    assert.equal(BigInt(b1.billed_pico) - BigInt(b0.billed_pico), PRICE_PICO * 8n);
  });

  // The provider counts ?recipients=N when the request has no body; the
  // fuse must reserve and charge that count too.
  it('a bodiless call counted from its query string is charged what the provider bills', async () => {
    const k = await env.createKey({ tenant: 'mail', job: 'query' });
    const b0 = await env.billing();
    const r = await env.post('/generic/v1/send?recipients=7', undefined, { key: k });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.count, 7);
    const b1 = await env.billing();
    const billed = BigInt(b1.billed_pico) - BigInt(b0.billed_pico);
    assert.equal(billed, PRICE_PICO * 7n);
    const charged = pico(r.headers['x-fusebox-cost-usd']);
    const job = (await env.settled()).scopes.find((x) => x.scope === 'job:query');
    assert.ok(BigInt(job.spent_pico) >= billed && charged >= billed,
      `the gateway charged ${usd(charged)} (ledger ${job.spent_usd}) for a call ` +
      `the provider billed ${usd(billed)}`);
  });

  it('a bodiless call cannot bill past the job ceiling through its query string', async () => {
    const k = await env.createKey({ tenant: 'mail', job: 'tinyq' });
    const b0 = await env.billing();
    const r = await env.post('/generic/v1/send?recipients=100', undefined, { key: k });
    const b1 = await env.billing();
    const billed = BigInt(b1.billed_pico) - BigInt(b0.billed_pico);
    assert.ok(billed <= pico(TINYQ), `status ${r.status}: the provider billed ${usd(billed)} ` +
      `to a job whose ceiling is ${TINYQ}`);
  });

  it('ledger: the job spent exactly what the provider billed for it', async () => {
    await env.billingStable();
    const s = await env.settled();
    const blast = s.scopes.find((x) => x.scope === 'job:blast');
    assert.ok(blastBilled > 0n);
    assert.equal(BigInt(blast.spent_pico), blastBilled);
    assert.equal(blast.blocked_calls, 0);
  });
});
