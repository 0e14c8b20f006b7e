// scan.test.mjs - fusebox scan (issue 8, first part: secrets) as a CI job
// runs it: a git repository with keys in code, in the README and in an
// untracked .env.example, a key in a .gitignore'd file and one in a binary
// (both skipped), an inline allow and a .fuseboxignore fingerprint. The
// fake keys are made here at run time: none is in the repository. Checked:
// what is found and where, that no output ever holds a whole key, the exit
// statuses for --fail-on and for bad input.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { mkdtempSync, mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { run } from './harness.mjs';

// SARIF 2.1.0's JSON schema (draft-04), as Microsoft publishes it in the
// npm package @microsoft/jest-sarif, checked with ajv 6.
const require = createRequire(import.meta.url);
const Ajv = require('ajv');
const SARIF_SCHEMA = require('@microsoft/jest-sarif/lib/schemas/sarif-2.1.0-rtm.5.json');
function sarifValidator() {
  const ajv = new Ajv({ schemaId: 'auto', allErrors: true });
  ajv.addMetaSchema(require('ajv/lib/refs/json-schema-draft-04.json'));
  return ajv.compile(SARIF_SCHEMA);
}

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
// Random each run; drawn again in the rare case it spells a word that
// marks a placeholder (the scanner rightly skips "...fake..." keys).
const PLACEHOLDER = /xxxx|fake|sample|dummy|example|your|placeholder|change_?me|redacted|env|config|settings|secret|token|passw|apikey|api_key|vault|param/i;
function fake(prefix, n, set = ALNUM) {
  for (;;) {
    let s = '';
    for (let i = 0; i < n; i++) s += set[randomInt(set.length)];
    if (!PLACEHOLDER.test(s)) return prefix + s;
  }
}

describe('fusebox scan', () => {
  let dir, plain, keys;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'fusebox-scan-'));
    keys = {
      openai: fake('sk-proj-', 48),
      anthropic: fake('sk-ant-api03-', 90),
      github: fake('ghp_', 36),
      ignoredFile: fake('sk-proj-', 48),
      binary: fake('sk-proj-', 48),
      allowed: fake('sk-proj-', 48),
      byFingerprint: fake('AKIA', 16, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567'),
    };
    const git = (...a) => execFileSync('git', ['-C', dir, ...a], { stdio: 'pipe' });
    git('init', '-q');
    git('config', 'user.email', 't@example.invalid');
    git('config', 'user.name', 'test');
    mkdirSync(join(dir, 'src'));
    writeFileSync(join(dir, 'src', 'job.py'),
      `from openai import OpenAI\n\nclient = OpenAI(api_key="${keys.openai}")\n`);
    writeFileSync(join(dir, 'README.md'),
      `# My job\n\nSet the key:\n\n    export ANTHROPIC_API_KEY=${keys.anthropic}\n\nThen run it. Docs use sk-... as a placeholder.\n`);
    writeFileSync(join(dir, 'src', 'allowed.js'),
      `const k = '${keys.allowed}'; // fusebox:allow (revoked, kept for a test)\n`);
    writeFileSync(join(dir, 'src', 'aws.cfg'), `aws_access_key_id = ${keys.byFingerprint}\n`);
    writeFileSync(join(dir, '.gitignore'), 'secrets.local\n');
    writeFileSync(join(dir, 'secrets.local'), `OPENAI_API_KEY=${keys.ignoredFile}\n`);
    writeFileSync(join(dir, 'model.bin'), Buffer.concat([Buffer.from([0x7f, 0x45, 0, 0, 0]), Buffer.from(keys.binary)]));
    git('add', '-A');
    git('commit', '-q', '-m', 'first');
    // Untracked but not ignored: scanned too.
    writeFileSync(join(dir, '.env.example'), `GITHUB_TOKEN=${keys.github}\n`);

    plain = mkdtempSync(join(tmpdir(), 'fusebox-scan-plain-'));
    writeFileSync(join(plain, 'notes.txt'), `token: ${keys.github}\n`);
  });

  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
    if (plain) rmSync(plain, { recursive: true, force: true });
  });

  const noKeyIn = (text, what) => {
    for (const [name, k] of Object.entries(keys)) {
      assert.ok(!text.includes(k), `${what} holds the ${name} key`);
      assert.ok(!text.includes(k.slice(8)), `${what} holds most of the ${name} key`);
    }
  };

  let fpAws;
  it('finds the keys in code, docs and untracked files, and redacts them', async () => {
    const r = await run(['scan', dir, '--format', 'json']);
    assert.equal(r.code, 1, r.stderr);
    noKeyIn(r.stdout + r.stderr, 'the JSON report');
    const j = JSON.parse(r.stdout);
    assert.equal(j.tier, 'blocked');
    const where = j.findings.filter((f) => f.kind === 'secret').map((f) => `${f.file}:${f.line}:${f.rule}`).sort();
    assert.deepEqual(where, [
      '.env.example:1:github-token',
      'README.md:5:anthropic-api-key',
      'src/aws.cfg:1:aws-access-key-id',
      'src/job.py:3:openai-api-key',
    ]);
    const o = j.findings.find((f) => f.rule === 'openai-api-key');
    assert.equal(o.redacted, `${keys.openai.slice(0, 4)}...(${keys.openai.length} chars)`);
    assert.equal(o.length, keys.openai.length);
    assert.equal(o.column, 26);
    assert.match(o.fingerprint, /^[0-9a-f]{16}$/);
    assert.ok(j.stats.files >= 6 && j.stats.skipped_binary === 1, JSON.stringify(j.stats));
    fpAws = j.findings.find((f) => f.rule === 'aws-access-key-id').fingerprint;

    const t = await run(['scan', dir]);
    assert.equal(t.code, 1);
    noKeyIn(t.stdout + t.stderr, 'the text report');
    assert.match(t.stdout, /^src\/job\.py:3:26: blocked: OpenAI API key \(openai-api-key\): sk-p\.\.\.\(56 chars\) \[[0-9a-f]{16}\]$/m);
    assert.match(t.stdout, /^tier: blocked \(4 secrets, 2 paid call sites, 0 schema changes\)/m);
  });

  it('.fuseboxignore takes fingerprints and paths; the fingerprint is stable', async () => {
    writeFileSync(join(dir, '.fuseboxignore'), `# reviewed\n${fpAws}\nREADME.md\n.env.*\n`);
    const r = await run(['scan', dir, '--format', 'json']);
    const j = JSON.parse(r.stdout);
    assert.deepEqual(j.findings.filter((f) => f.kind === 'secret').map((f) => f.rule), ['openai-api-key']);
    rmSync(join(dir, '.fuseboxignore'));
  });

  it('paid calls and schema changes: tier high, with reasons; direct calls are called out', async () => {
    const d = mkdtempSync(join(tmpdir(), 'fusebox-scan-high-'));
    mkdirSync(join(d, 'jobs'));
    mkdirSync(join(d, 'db', 'migrate'), { recursive: true });
    writeFileSync(join(d, 'jobs', 'direct.py'), 'from openai import OpenAI\nclient = OpenAI()\n');
    writeFileSync(join(d, 'jobs', 'gated.js'),
      "import Anthropic from '@anthropic-ai/sdk';\nconst c = new Anthropic({ baseURL: process.env.ANTHROPIC_BASE_URL });\n");
    writeFileSync(join(d, 'db', 'migrate', '20261128_add_summary.rb'), 'class AddSummary < ActiveRecord::Migration[7.1]\nend\n');
    writeFileSync(join(d, 'jobs', 'report.py'), 'db.execute("ALTER TABLE reports ADD COLUMN summary TEXT")\n');
    const r = await run(['scan', d, '--format', 'json']);
    const j = JSON.parse(r.stdout);
    assert.equal(j.tier, 'high');
    assert.equal(r.code, 0, 'high is under the default --fail-on blocked');
    const paid = j.findings.filter((f) => f.kind === 'paid');
    assert.deepEqual([...new Set(paid.map((f) => `${f.file}:${f.via}`))].sort(),
      ['jobs/direct.py:direct', 'jobs/gated.js:fusebox']);
    assert.ok(j.findings.some((f) => f.kind === 'migration' && f.rule === 'rails'));
    assert.ok(j.findings.some((f) => f.kind === 'schema' && f.file === 'jobs/report.py'));
    assert.ok(j.reasons.some((x) => /paid API call site/.test(x)));
    assert.ok(j.reasons.some((x) => /directly, not through fusebox/.test(x)));
    assert.ok(j.reasons.some((x) => /apply the migration before the code/.test(x)));
    assert.equal((await run(['scan', d, '--fail-on', 'high'])).code, 1);
    assert.equal((await run(['scan', d, '--fail-on', 'blocked'])).code, 0);
    rmSync(d, { recursive: true, force: true });
  });

  it('SARIF 2.1.0 that validates against the schema, with rules, locations and fingerprints, and no secret', async () => {
    const validate = sarifValidator();
    const r = await run(['scan', dir, '--format', 'sarif']);
    assert.equal(r.code, 1);
    noKeyIn(r.stdout + r.stderr, 'the SARIF report');
    const doc = JSON.parse(r.stdout);
    const ok = validate(doc);
    assert.ok(ok, `SARIF schema: ${JSON.stringify(validate.errors?.slice(0, 3))}`);
    // The validator does bite: a result without a message is refused.
    const broken = JSON.parse(r.stdout);
    delete broken.runs[0].results[0].message;
    assert.equal(validate(broken), false);

    assert.equal(doc.version, '2.1.0');
    const run0 = doc.runs[0];
    assert.equal(run0.tool.driver.name, 'fusebox scan');
    const ids = run0.tool.driver.rules.map((x) => x.id);
    for (const res of run0.results) {
      assert.equal(ids[res.ruleIndex], res.ruleId);
      assert.match(res.partialFingerprints['fuseboxFingerprint/v1'], /^[0-9a-f]{16}$/);
      const loc = res.locations[0].physicalLocation;
      assert.ok(loc.artifactLocation.uri && loc.region.startLine >= 1);
    }
    const sec = run0.results.find((x) => x.ruleId === 'openai-api-key');
    assert.equal(sec.level, 'error');
    assert.equal(sec.locations[0].physicalLocation.artifactLocation.uri, 'src/job.py');
    assert.match(sec.message.text, /OpenAI API key: sk-p\.\.\.\(56 chars\)/);
    const paid = run0.results.find((x) => x.ruleId === 'openai-sdk');
    assert.equal(paid.level, 'warning');
    assert.equal(run0.properties.tier, 'blocked');
  });

  it('--diff BASE: only what changed; a new column and the code that uses it pair up', async () => {
    const d = mkdtempSync(join(tmpdir(), 'fusebox-scan-diff-'));
    const git = (...a) => execFileSync('git', ['-C', d, ...a], { stdio: 'pipe' });
    git('init', '-q');
    git('config', 'user.email', 't@example.invalid');
    git('config', 'user.name', 'test');
    mkdirSync(join(d, 'jobs'));
    mkdirSync(join(d, 'alembic', 'versions'), { recursive: true });
    const old = fake('sk-proj-', 48);
    writeFileSync(join(d, 'jobs', 'report.py'),
      `from openai import OpenAI\nclient = OpenAI(api_key="${old}")\n\ndef run(db):\n    return 1\n`);
    git('add', '-A');
    git('commit', '-q', '-m', 'base');
    // The change: a migration adding reports.summary, code writing it, a
    // new key in a new untracked file; the old key and client stay as they were.
    writeFileSync(join(d, 'alembic', 'versions', '3f2a_add_summary.py'),
      "def upgrade():\n    op.add_column('reports', sa.Column('summary', sa.Text()))\n");
    writeFileSync(join(d, 'jobs', 'report.py'),
      `from openai import OpenAI\nclient = OpenAI(api_key="${old}")\n\ndef run(db):\n` +
      '    db.execute("UPDATE reports SET summary = :s", {"s": text})\n    return 1\n');
    const fresh = fake('ghp_', 36);
    writeFileSync(join(d, 'jobs', 'notify.sh'), `curl -H "Authorization: token ${fresh}" https://api.github.com\n`);

    const r = await run(['scan', d, '--diff', 'HEAD', '--format', 'json']);
    const j = JSON.parse(r.stdout);
    const got = j.findings.map((f) => `${f.file}:${f.line}:${f.rule}`).sort();
    assert.deepEqual(got, ['alembic/versions/3f2a_add_summary.py:1:alembic', 'jobs/notify.sh:1:github-token'],
      'the old key and client are not part of the change');
    assert.equal(j.tier, 'blocked');
    const pair = j.reasons.find((x) => /uses column summary/.test(x));
    assert.ok(pair, JSON.stringify(j.reasons));
    assert.match(pair, /^jobs\/report\.py:5 uses column summary, which the migration alembic\/versions\/3f2a_add_summary\.py:2 adds/);
    assert.match(pair, /fusebox run --job JOB --preflight "psql \\"\$DATABASE_URL\\" -c 'SELECT summary FROM reports LIMIT 0'"/);
    noKeyIn(r.stdout, '--diff');
    assert.ok(!r.stdout.includes(fresh) && !r.stdout.includes(old));

    // Without the migration in the change, no pairing.
    git('add', '-A');
    git('commit', '-q', '-m', 'all of it');
    const none = JSON.parse((await run(['scan', d, '--diff', 'HEAD', '--format', 'json'])).stdout);
    assert.deepEqual(none.findings, []);
    assert.equal(none.tier, 'low');
    // Bad revisions: a name with shell in it is a usage error; an unknown one unreadable input.
    assert.equal((await run(['scan', d, '--diff', 'HEAD;true'])).code, 2);
    assert.equal((await run(['scan', d, '--diff', 'no-such-revision'])).code, 3);
    rmSync(d, { recursive: true, force: true });
  });

  it('--history finds a key that a later commit removed, once, with its commit', async () => {
    const d = mkdtempSync(join(tmpdir(), 'fusebox-scan-hist-'));
    const git = (...a) => execFileSync('git', ['-C', d, ...a], { stdio: 'pipe' }).toString();
    git('init', '-q');
    git('config', 'user.email', 't@example.invalid');
    git('config', 'user.name', 'test');
    const k = fake('sk-ant-api03-', 90);
    writeFileSync(join(d, 'job.py'), `import anthropic\n\nKEY = "${k}"\n`);
    git('add', '-A');
    git('commit', '-q', '-m', 'add a key');
    const leak = git('rev-parse', 'HEAD').trim();
    writeFileSync(join(d, 'job.py'), `import anthropic\n\nKEY = "${k}"\nprint(1)\n`);
    git('commit', '-q', '-am', 'touch');
    writeFileSync(join(d, 'job.py'), 'import anthropic\nimport os\nKEY = os.environ["ANTHROPIC_API_KEY"]\n');
    git('commit', '-q', '-am', 'move the key out');

    const now = JSON.parse((await run(['scan', d, '--format', 'json'])).stdout);
    assert.equal(now.findings.filter((f) => f.kind === 'secret').length, 0, 'the work tree is clean');
    const r = await run(['scan', d, '--history', '--format', 'json']);
    assert.equal(r.code, 1);
    assert.ok(!r.stdout.includes(k) && !r.stdout.includes(k.slice(10)), 'the history report holds the key');
    const j = JSON.parse(r.stdout);
    const old = j.findings.filter((f) => f.kind === 'secret');
    assert.deepEqual(old.map((f) => [f.file, f.line, f.rule, f.commit]),
      [['job.py', 3, 'anthropic-api-key', leak.slice(0, 12)]], 'once, in the commit that added it');
    assert.equal((await run(['scan', d, '--history', '--diff', 'HEAD'])).code, 2, '--history and --diff together');
    rmSync(d, { recursive: true, force: true });
  });

  it('awkward names and histories (found in review): spaces, subdirectories, links, rotated keys, bytes', async () => {
    const d = mkdtempSync(join(tmpdir(), 'fusebox-scan-odd-'));
    const git = (...a) => execFileSync('git', ['-C', d, ...a], { stdio: 'pipe' }).toString();
    git('init', '-q');
    git('config', 'user.email', 't@example.invalid');
    git('config', 'user.name', 'test');
    mkdirSync(join(d, 'sub'));
    writeFileSync(join(d, 'sub', 'base.txt'), 'nothing\n');
    git('add', '-A');
    git('commit', '-q', '-m', 'base');
    // --diff: a name with a blank, and PATH a subdirectory
    const k1 = fake('ghp_', 36);
    writeFileSync(join(d, 'sub', 'with space.txt'), 'x\n');
    git('add', '-A');
    git('commit', '-q', '-m', 'empty file');
    writeFileSync(join(d, 'sub', 'with space.txt'), `x\nGH=${k1}\n`);
    const sub = JSON.parse((await run(['scan', join(d, 'sub'), '--diff', 'HEAD', '--format', 'json'])).stdout);
    assert.deepEqual(sub.findings.map((f) => `${f.file}:${f.line}`), ['with space.txt:2']);
    // --history: a key rotated for another is two keys
    const k2 = fake('ghp_', 36);
    git('commit', '-q', '-am', 'k1');
    writeFileSync(join(d, 'sub', 'with space.txt'), `x\nGH=${k2}\n`);
    git('commit', '-q', '-am', 'k2');
    writeFileSync(join(d, 'sub', 'with space.txt'), 'x\n');
    git('commit', '-q', '-am', 'gone');
    const h = JSON.parse((await run(['scan', d, '--history', '--format', 'json'])).stdout);
    assert.equal(h.findings.filter((f) => f.rule === 'github-token').length, 2, JSON.stringify(h.findings));
    // A tracked link out of the repository is not followed.
    const outside = mkdtempSync(join(tmpdir(), 'fusebox-scan-outside-'));
    writeFileSync(join(outside, 'creds'), `token: ${fake('ghp_', 36)}\n`);
    execFileSync('ln', ['-s', join(outside, 'creds'), join(d, 'link')]);
    // A name that is not UTF-8 is still reported (with ? for its bad bytes).
    writeFileSync(Buffer.concat([Buffer.from(join(d, 'caf')), Buffer.from([0xe9]), Buffer.from('.env')]),
      `SECRET_KEY = "${fake('', 32, '0123456789abcdef')}"\n`);
    const w = JSON.parse((await run(['scan', d, '--format', 'json'])).stdout);
    const files = w.findings.filter((f) => f.kind === 'secret').map((f) => `${f.file}:${f.rule}`);
    assert.deepEqual(files, ['caf?.env:generic-secret'], 'a hex secret in a name that is not UTF-8; no link followed');
    rmSync(outside, { recursive: true, force: true });
    rmSync(d, { recursive: true, force: true });
  });

  it('exit statuses follow --fail-on; usage errors and unreadable input have their own', async () => {
    assert.equal((await run(['scan', dir, '--fail-on', 'never'])).code, 0);
    assert.equal((await run(['scan', dir, '--fail-on', 'high'])).code, 1);
    assert.equal((await run(['scan', dir, '--fail-on', 'blocked'])).code, 1);
    const clean = mkdtempSync(join(tmpdir(), 'fusebox-scan-clean-'));
    writeFileSync(join(clean, 'a.py'), 'print("hello")\napi_key = os.environ["OPENAI_API_KEY"]\n');
    const c = await run(['scan', clean, '--format', 'json']);
    assert.equal(c.code, 0, c.stdout);
    assert.equal(JSON.parse(c.stdout).tier, 'low');
    rmSync(clean, { recursive: true, force: true });
    for (const args of [['--format', 'xml'], ['--fail-on', 'sometimes'], ['a', 'b'], ['--nope'], [dir, '--diff', '--cached']]) {
      const u = await run(['scan', ...args]);
      assert.equal(u.code, 2, `${args.join(' ')}: ${u.code}`);
      assert.equal(u.stdout, '');
    }
    const missing = await run(['scan', join(dir, 'no-such-dir')]);
    assert.equal(missing.code, 3);
    assert.match(missing.stderr, /is not a directory/);
  });

  it('a directory outside git is walked; --rules adds rules and a bad file is refused', async () => {
    const p = await run(['scan', plain, '--format', 'json']);
    assert.equal(p.code, 1);
    assert.deepEqual(JSON.parse(p.stdout).findings.map((f) => f.rule), ['github-token']);
    const rules = join(plain, '..', `fusebox-scan-rules-${process.pid}`);
    writeFileSync(rules, 'secret internal-token kw=itk_ entropy=3 desc="internal token" re=(itk_[a-z0-9]{24})\n');
    writeFileSync(join(plain, 'svc.go'), `const t = "${fake('itk_', 24, 'abcdefghijklmnopqrstuvwxyz0123456789')}"\n`);
    const r = await run(['scan', plain, '--rules', rules, '--format', 'json']);
    assert.deepEqual(JSON.parse(r.stdout).findings.map((f) => f.rule).sort(), ['github-token', 'internal-token']);
    writeFileSync(rules, 'secret broken kw=xy re=(\n');
    const b = await run(['scan', plain, '--rules', rules]);
    assert.equal(b.code, 2);
    assert.match(b.stderr, /fusebox-scan-rules-\d+:1: bad pattern/);
    rmSync(rules, { force: true });
  });
});
