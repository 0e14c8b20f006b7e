// bench/replay.mjs - replay hit latency against a forwarded (paid) call,
// through the same gateway, client and keep-alive connection, interleaved
// A B A B in one run. A hit is answered from the kept result (a store read
// on the ledger thread); a forwarded call goes through the fuse, the
// durable reservation, the provider and the kept-result write.
//
//   node bench/replay.mjs [requests]     (default 3000, after a warm-up)
import http from 'node:http';
import { startEnv } from '../tests/e2e/harness.mjs';

const N = Number(process.argv[2] || 3000);

function post(agent, env, key, body) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const req = http.request({ agent, host: env.gwHost, port: env.gwPort,
      path: '/openai/v1/chat/completions', method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json',
        'content-length': Buffer.byteLength(body) } }, (res) => {
      res.resume();
      res.on('end', () => {
        if (res.statusCode !== 200) reject(new Error(`status ${res.statusCode}`));
        else resolve({ us: Number(process.hrtime.bigint() - t0) / 1000,
          replayed: res.headers['x-fusebox-replayed'] === 'true' });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

const pct = (a, p) => a[Math.min(a.length - 1, Math.floor((a.length * p) / 100))];
const body = (tag, i) => JSON.stringify({ model: 'gpt-4o-mini', max_tokens: 64,
  messages: [{ role: 'user', content: `${tag} ${i}: ` + 'x'.repeat(900) }] });

const env = await startEnv({ budgets: { tenants: { acme: { jobs: { main: null } } } } });
try {
  const key = await env.createKey({ job: 'main' });
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  // Buy the results that will be replayed.
  for (let i = 0; i < N; i++) await post(agent, env, key, body('kept', i));
  const hit = [], fwd = [];
  for (let i = 0; i < N; i++) {
    const a = await post(agent, env, key, body('kept', i));
    const b = await post(agent, env, key, body('new', i));
    if (!a.replayed || b.replayed) throw new Error('unexpected replay state');
    hit.push(a.us);
    fwd.push(b.us);
  }
  hit.sort((x, y) => x - y);
  fwd.sort((x, y) => x - y);
  console.log(`${N} calls each, interleaved; microseconds`);
  console.log(`${'path'.padEnd(24)} ${'p50'.padStart(8)} ${'p99'.padStart(8)}`);
  console.log(`${'replay hit'.padEnd(24)} ${pct(hit, 50).toFixed(0).padStart(8)} ${pct(hit, 99).toFixed(0).padStart(8)}`);
  console.log(`${'forwarded (paid)'.padEnd(24)} ${pct(fwd, 50).toFixed(0).padStart(8)} ${pct(fwd, 99).toFixed(0).padStart(8)}`);
  console.log(`hit / forwarded median: ${(pct(hit, 50) / pct(fwd, 50)).toFixed(2)}`);
} finally {
  await env.close();
}
