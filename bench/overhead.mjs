// bench/overhead.mjs - a first, rough figure: latency added by the fusebox
// forward path (auth, worst-case pricing, reservation made durable, upstream
// call, settlement) over calling the fake provider directly. Same client,
// same keep-alive connection, same request mix, interleaved A B A B in one
// run; medians and p99 reported. The full suite against nginx is bench/
// (issue 5); this script is only the early number.
//
//   node bench/overhead.mjs [requests]     (default 4000, after 400 warm-up)
import http from 'node:http';
import { startEnv, PROVIDER_KEYS } from '../tests/e2e/harness.mjs';

const N = Number(process.argv[2] || 4000);
const WARM = Math.ceil(N / 10);

function post(agent, host, port, path, headers, body) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const req = http.request({ agent, host, port, path, method: 'POST', headers }, (res) => {
      res.resume();
      res.on('end', () => {
        if (res.statusCode !== 200) reject(new Error(`status ${res.statusCode}`));
        else resolve(Number(process.hrtime.bigint() - t0) / 1000);
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

function pct(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))];
}

const env = await startEnv({ budgets: { tenants: { acme: { jobs: { main: null } } } } });
try {
  const key = await env.createKey({ job: 'main' });
  const [fh, fp] = env.fakeAddr.split(':');
  const direct = { host: fh, port: Number(fp), path: '/v1/chat/completions',
    auth: `Bearer ${PROVIDER_KEYS.OPENAI_API_KEY}` };
  const viaGw = { host: env.gwHost, port: env.gwPort, path: '/openai/v1/chat/completions',
    auth: `Bearer ${key}` };
  const agents = [new http.Agent({ keepAlive: true, maxSockets: 1 }),
    new http.Agent({ keepAlive: true, maxSockets: 1 })];
  const times = [[], []];
  for (let i = 0; i < N + WARM; i++) {
    // ~1 KB in: a unique prompt each time, as a batch job sends.
    const body = JSON.stringify({ model: 'gpt-4o-mini', max_tokens: 64,
      messages: [{ role: 'user', content: `row ${i}: ` + 'x'.repeat(900) }] });
    const order = i % 2 === 0 ? [0, 1] : [1, 0];
    for (const which of order) {
      const t = which === 0 ? direct : viaGw;
      const us = await post(agents[which], t.host, t.port, t.path,
        { authorization: t.auth, 'content-type': 'application/json',
          'content-length': Buffer.byteLength(body) }, body);
      if (i >= WARM) times[which].push(us);
    }
  }
  const s = times.map((a) => a.slice().sort((x, y) => x - y));
  const row = (name, a) => `${name.padEnd(22)} ${pct(a, 50).toFixed(0).padStart(8)} ${pct(a, 99).toFixed(0).padStart(8)}`;
  console.log(`${N} sequential calls each way, interleaved; microseconds`);
  console.log(`${'path'.padEnd(22)} ${'p50'.padStart(8)} ${'p99'.padStart(8)}`);
  console.log(row('direct to provider', s[0]));
  console.log(row('through fusebox', s[1]));
  console.log(`added by fusebox       ${(pct(s[1], 50) - pct(s[0], 50)).toFixed(0).padStart(8)} ${(pct(s[1], 99) - pct(s[0], 99)).toFixed(0).padStart(8)}`);
  if (process.env.SHOW_STDERR) console.log(env.gatewayStderr());
} finally {
  await env.close();
}
