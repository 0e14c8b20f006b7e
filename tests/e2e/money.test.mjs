// money.test.mjs - the harness's exact decimal <-> picodollar helpers, on
// which every cost comparison of the suite rests.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { pico, usd } from './harness.mjs';

it('pico() reads decimal USD text exactly', () => {
  assert.equal(pico('0.0000126'), 12600000n);
  assert.equal(pico('5'), 5000000000000n);
  assert.equal(pico('5.0'), 5000000000000n);
  assert.equal(pico('0.0'), 0n);
  assert.equal(pico('.5'), 500000000000n);
  assert.equal(pico('1.5e-07'), 150000n);
  assert.equal(pico('2.5E-6'), 2500000n);
  assert.equal(pico('-1.25'), -1250000000000n);
  assert.equal(pico('0.000000000001'), 1n);
  assert.equal(pico('1.000000000001000'), 1000000000001n);
  assert.equal(pico('92233.720368547758'), 92233720368547758n);
  assert.equal(pico('123456789012345678901234567890'), 123456789012345678901234567890n * 10n ** 12n);
});

it('pico() refuses what it cannot read exactly', () => {
  for (const bad of ['', '.', 'abc', '1.2.3', '0.0000000000001', '1e-13', '--1', '1,5', ' ']) {
    assert.throws(() => pico(bad), `pico(${JSON.stringify(bad)}) did not throw`);
  }
  assert.throws(() => pico(0.1));
  assert.throws(() => pico(undefined));
});

it('usd() writes picodollars as the gateway does, and round-trips', () => {
  assert.equal(usd(0n), '0.0');
  assert.equal(usd(12600000n), '0.0000126');
  assert.equal(usd(5000000000000n), '5.0');
  assert.equal(usd(-1250000000000n), '-1.25');
  assert.equal(usd(1n), '0.000000000001');
  for (const p of [0n, 1n, 7n, 999999999999n, 1000000000000n, 1234567890123456789n]) {
    assert.equal(pico(usd(p)), p);
  }
});
