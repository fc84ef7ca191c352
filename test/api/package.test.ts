// The packed package as a user gets it: `npm pack` of this repository, installed into an empty
// directory by `npm ci --offline --ignore-scripts` from a lock file holding the tarball and the
// versions of this repository's own lock (npm reads every package from its local cache; nothing
// is downloaded), with this repository's compiled addon linked in place of the build that
// --ignore-scripts skips. An .mjs file imports it by the name `eqat` and runs Block-AP and an
// evaluation on the fixture the package ships; a TypeScript consumer is checked against the
// shipped declarations, and one that misuses the API must fail to compile. Where the npm cache
// lacks a dependency (ENOTCACHED), the tarball is extracted instead and this repository's
// node_modules linked beside it; the test says which way it went.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO } from '../golden.js';
import { fullTierOnly } from '../tier.js';

interface LockEntry {
  dev?: boolean;
  [k: string]: unknown;
}

function run(cmd: string, args: string[], cwd: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', env: { ...process.env, npm_config_update_notifier: 'false' } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Installs the tarball into `dir`; returns how. */
function install(dir: string, tarball: string): 'npm ci --offline' | 'extracted, node_modules linked' {
  const pkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as Record<string, unknown>;
  const lock = JSON.parse(readFileSync(join(REPO, 'package-lock.json'), 'utf8')) as { packages: Record<string, LockEntry> };
  const spec = `file:${tarball}`;
  const packages: Record<string, unknown> = {
    '': { name: 'consumer', version: '1.0.0', dependencies: { eqat: spec } },
    'node_modules/eqat': { version: pkg['version'], resolved: spec, license: pkg['license'], dependencies: pkg['dependencies'], engines: pkg['engines'], bin: pkg['bin'], hasInstallScript: true },
  };
  // the dependencies as this repository's lock pins them (its dev dependencies left out)
  for (const [k, v] of Object.entries(lock.packages)) if (k !== '' && !v.dev) packages[k] = v;
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true, type: 'module', dependencies: { eqat: spec } }));
  writeFileSync(join(dir, 'package-lock.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', lockfileVersion: 3, requires: true, packages }));
  const r = run('npm', ['ci', '--offline', '--no-audit', '--no-fund', '--ignore-scripts'], dir);
  if (r.status === 0) return 'npm ci --offline';
  assert.match(r.stderr, /ENOTCACHED/, `npm ci failed: ${r.stderr}`);
  const at = join(dir, 'node_modules', 'eqat');
  mkdirSync(at, { recursive: true });
  const x = run('tar', ['xzf', tarball, '-C', at, '--strip-components=1'], dir);
  assert.equal(x.status, 0, x.stderr);
  symlinkSync(join(REPO, 'node_modules'), join(at, 'node_modules'));
  return 'extracted, node_modules linked';
}

const CONSUMER_MJS = `
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { blockAp, evaluate, AbortedError } from 'eqat';
const root = dirname(fileURLToPath(import.meta.resolve('eqat/package.json')));
const r = await blockAp({ model: join(root, 'fixtures', 'llama-tiny'), out: process.argv[2], wbits: 4, epochs: 0 });
const e = await evaluate({ model: r.out, data: join(root, 'fixtures', 'text', 'eval-sample.txt'), seqlen: 64, maxWindows: 2 });
console.log(JSON.stringify({ resolved: fileURLToPath(import.meta.resolve('eqat')), blocks: r.blocks.length, ppl: e.perplexity.ppl, abortError: typeof AbortedError }));
`;

const CONSUMER_TS = `
import { quantize, blockAp, exportModel, AbortedError, type EqatEvent, type QuantizeResult, type GgufExportReport } from 'eqat';
const losses: number[] = [];
const onEvent = (e: EqatEvent): void => {
  if (e.type === 'e2e-step') losses.push(e.loss, e.lr);
  if (e.type === 'epoch' && e.valLoss !== null) losses.push(e.valLoss);
};
const controller = new AbortController();
export const run: Promise<QuantizeResult> = quantize({ model: 'm', calib: 'c', out: 'o', wbits: 2, blockAp: { epochs: 1 }, onEvent, signal: controller.signal });
export const rtn = blockAp({ model: 'm', out: 'o', wbits: 4, epochs: 0 }).then((r) => r.blocks.length);
export const gguf: Promise<GgufExportReport> = exportModel({ model: 'o', format: 'gguf', out: 'o.gguf' });
export const isAbort = (e: unknown): boolean => e instanceof AbortedError && e.kept.length > 0;
`;

// each line is one mistake the declarations must catch
const MISUSE_TS = `
import { blockAp, evaluate, type EqatEvent } from 'eqat';
export const a = blockAp({ model: 'm', wbits: 2 });
export const b = evaluate({ model: 'm', data: 'd', seqlen: '64' });
export const c = (e: EqatEvent): number => e.loss;
`;

test('the packed tarball installs into an empty directory, imports as `eqat` and type-checks', { skip: fullTierOnly('npm pack and install') }, (t) => {
  const tmp = realpathSync(mkdtempSync(join(tmpdir(), 'eqat-pack-')));
  try {
    const packed = run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', tmp], REPO);
    assert.equal(packed.status, 0, packed.stderr);
    const [info] = JSON.parse(packed.stdout) as { filename: string; files: { path: string }[] }[];
    const shipped = info!.files.map((f) => f.path);
    for (const f of ['dist/src/index.js', 'dist/src/index.d.ts', 'dist/src/pipeline/events.d.ts', 'package.json']) assert.ok(shipped.includes(f), `${f} is not in the tarball`);
    assert.deepEqual(shipped.filter((f) => f.startsWith('dist/test/') || f.startsWith('test/')), [], 'test files in the tarball');

    const consumer = join(tmp, 'consumer');
    mkdirSync(consumer);
    const how = install(consumer, join(tmp, info!.filename));
    t.diagnostic(`installed by ${how}`);
    // the addon: --ignore-scripts skipped its build
    symlinkSync(join(REPO, 'build'), join(consumer, 'node_modules', 'eqat', 'build'));

    writeFileSync(join(consumer, 'consumer.mjs'), CONSUMER_MJS);
    const r = run(process.execPath, ['consumer.mjs', join(consumer, 'rtn')], consumer);
    assert.equal(r.status, 0, r.stderr);
    const got = JSON.parse(r.stdout) as { resolved: string; blocks: number; ppl: number; abortError: string };
    assert.equal(got.resolved, join(consumer, 'node_modules', 'eqat', 'dist', 'src', 'index.js'));
    assert.equal(got.blocks, 4);
    assert.ok(Number.isFinite(got.ppl) && got.ppl > 1, `perplexity ${got.ppl}`);
    assert.equal(got.abortError, 'function');

    const tsc = join(REPO, 'node_modules', 'typescript', 'bin', 'tsc');
    const tsconfig = (file: string) => ({
      compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022', strict: true, noEmit: true, types: ['node'], typeRoots: [join(REPO, 'node_modules', '@types')] },
      files: [file],
    });
    writeFileSync(join(consumer, 'consumer.ts'), CONSUMER_TS);
    writeFileSync(join(consumer, 'tsconfig.json'), JSON.stringify(tsconfig('consumer.ts')));
    const ok = run(process.execPath, [tsc, '-p', 'tsconfig.json'], consumer);
    assert.equal(ok.status, 0, `the consumer does not type-check:\n${ok.stdout}${ok.stderr}`);
    writeFileSync(join(consumer, 'misuse.ts'), MISUSE_TS);
    writeFileSync(join(consumer, 'tsconfig.misuse.json'), JSON.stringify(tsconfig('misuse.ts')));
    const bad = run(process.execPath, [tsc, '-p', 'tsconfig.misuse.json'], consumer);
    assert.notEqual(bad.status, 0, 'the misuse type-checks');
    const lines = [...bad.stdout.matchAll(/misuse\.ts\((\d+),\d+\): error/g)].map((m) => Number(m[1]));
    assert.deepEqual([...new Set(lines)], [3, 4, 5], bad.stdout);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
