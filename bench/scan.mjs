// scan.mjs - the scan rate of `fusebox scan` (issue 8), in MB/s.
//
//   node bench/scan.mjs [build/fusebox] [FILES] [KB]      (make bench-scan)
//
// The tree: a copy of this project's own sources (src, tests, bench, docs,
// data, scripts) plus FILES (default 3,000) generated files of about KB
// (default 100) KiB each: Python, JavaScript and Go that look like batch
// jobs (imports, clients, config reads, SQL, comments), with a made-up
// key planted in one file in fifty. The tree is a git repository (the
// common case: git ls-files). Each run is timed 5 times, the page cache
// warm; the table gives bytes/second of the median run, and the findings
// found, which must be the planted keys (a check that the scan scanned).
// Results in bench/results/scan.{md,json}.
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '..');
const BIN = resolve(process.argv[2] || join(REPO, 'build', 'fusebox'));
const FILES = Number(process.argv[3] || 3000);
const KB = Number(process.argv[4] || 100);

let seed = 7;
const rnd = (n) => {
  seed = (seed * 48271) % 2147483647;
  return seed % n;
};
const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
const word = () => ['report', 'ledger', 'summary', 'invoice', 'customer', 'batch', 'total', 'amount',
  'record', 'result', 'window', 'period', 'retry', 'client', 'config', 'row'][rnd(16)];

const LINES = {
  py: [
    () => `import ${word()}_utils as ${word()}`,
    () => `def ${word()}_${word()}(db, ${word()}):`,
    () => `    ${word()} = db.execute("SELECT ${word()}, ${word()} FROM ${word()}s WHERE id = ?", (i,))`,
    () => `    for ${word()} in ${word()}s:  # ${word()} the ${word()} of each ${word()}`,
    () => `    api_key = os.environ["OPENAI_API_KEY"]`,
    () => `    return {"${word()}": ${word()}, "token_count": ${rnd(5000)}}`,
    () => `    log.info("processed %d ${word()}s in %s", n, ${word()})`,
  ],
  js: [
    () => `const ${word()} = require('./${word()}');`,
    () => `export async function ${word()}${word()}(${word()}) {`,
    () => `  const ${word()} = await fetch(\`\${BASE}/${word()}/\${id}\`);`,
    () => `  // keep the ${word()} key stable across ${word()} retries`,
    () => `  if (!${word()}.ok) throw new Error('${word()} failed: ' + ${word()}.status);`,
    () => `  return ${word()}.map((x) => x.${word()} * ${rnd(100)});`,
  ],
  go: [
    () => `func ${word()}${word()}(ctx context.Context, ${word()} string) error {`,
    () => `\t${word()}, err := db.QueryContext(ctx, "SELECT ${word()} FROM ${word()}s")`,
    () => `\tif err != nil { return fmt.Errorf("${word()}: %w", err) }`,
    () => `\t// the secret sauce: ${word()} before ${word()}`,
    () => `\tfor _, ${word()} := range ${word()}s { total += ${word()}.Amount }`,
  ],
};

function makeTree(dir) {
  for (const d of ['src', 'tests', 'bench', 'docs', 'data', 'scripts']) {
    cpSync(join(REPO, d), join(dir, 'fusebox', d), {
      recursive: true,
      filter: (p) => !/node_modules|results|\/portkey\//.test(p),
    });
  }
  let planted = 0;
  for (let i = 0; i < FILES; i++) {
    const ext = ['py', 'js', 'go'][i % 3];
    const gen = LINES[ext];
    const out = [];
    let size = 0;
    while (size < KB * 1024) {
      const l = gen[rnd(gen.length)]();
      out.push(l);
      size += l.length + 1;
    }
    if (i % 50 === 0) {
      let k = 'sk-proj-';
      for (let j = 0; j < 48; j++) k += ALNUM[rnd(62)];
      out.splice(rnd(out.length), 0, `OPENAI_KEY = "${k}"`);
      planted++;
    }
    const sub = join(dir, 'jobs', String(i % 40));
    mkdirSync(sub, { recursive: true });
    writeFileSync(join(sub, `job_${i}.${ext}`), out.join('\n') + '\n');
  }
  execFileSync('git', ['-C', dir, 'init', '-q']);
  execFileSync('git', ['-C', dir, 'add', '-A']);
  return planted;
}

const dir = mkdtempSync(join(tmpdir(), 'fusebox-scan-bench-'));
try {
  const planted = makeTree(dir);
  const runs = [];
  let last;
  for (let i = 0; i < 6; i++) {
    const t = process.hrtime.bigint();
    const r = spawnSync(BIN, ['scan', dir, '--format', 'json', '--fail-on', 'never'], { maxBuffer: 1 << 28 });
    const ms = Number(process.hrtime.bigint() - t) / 1e6;
    if (r.status !== 0) throw new Error(`fusebox scan: ${r.status} ${r.stderr}`);
    last = JSON.parse(r.stdout);
    if (i > 0) runs.push(ms); // the first warms the page cache
  }
  runs.sort((a, b) => a - b);
  const median = runs[Math.floor(runs.length / 2)];
  const bytes = last.stats.bytes;
  const secrets = last.findings.filter((f) => f.kind === 'secret');
  const plantedFound = secrets.filter((f) => f.file.startsWith('jobs/') && f.rule === 'openai-api-key').length;
  const res = {
    files: last.stats.files, bytes, planted, planted_found: plantedFound, findings: last.findings.length,
    median_ms: median, runs_ms: runs, mb_per_s: bytes / 1e6 / (median / 1000), when: new Date().toISOString(),
  };
  if (plantedFound !== planted) throw new Error(`found ${plantedFound} of ${planted} planted keys`);
  const md = [
    `# fusebox scan rate`,
    '',
    `${res.when}: ${res.files.toLocaleString('en')} files, ${(bytes / 1e6).toFixed(1)} MB (this project's sources and ${FILES} generated files of ~${KB} KiB), a git work tree, page cache warm.`,
    '',
    '| median of 5 | MB/s | findings | planted keys found |',
    '| ---: | ---: | ---: | ---: |',
    `| ${median.toFixed(0)} ms | ${res.mb_per_s.toFixed(0)} | ${res.findings} | ${plantedFound} of ${planted} |`,
    '',
  ].join('\n');
  mkdirSync(join(HERE, 'results'), { recursive: true });
  writeFileSync(join(HERE, 'results', 'scan.md'), md);
  writeFileSync(join(HERE, 'results', 'scan.json'), JSON.stringify(res, null, 2));
  console.log(md);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
