// Fault injection: eqat never destroys a file, never mixes two runs, and fails clearly. On the
// bundled llama-tiny at tiny settings, through the CLI as a user runs it:
// - outputs: an existing output is refused unless --force (then replaced once the new one is
//   complete), nothing is written into an input (a GGUF over a shard of its own checkpoint);
// - the lock: a second run on the same output is refused naming the first, a stale lock (dead
//   pid, or a pid reused by another process) is taken over, and no lock outlives a run;
// - SIGINT / SIGTERM exit 130 / 143 saying what was kept, and the rerun resumes byte for byte;
// - an interrupted run's state of other data is refused, and --restart discards it and finishes
//   (quantize reusing its Block-AP checkpoint, which does not read e2e_qp.data);
// - disk full, read-only and permission errors (simulated by test/fault/fs-fault.ts) name the
//   path and the way out, nothing partial is published, and a rerun after a full disk (in any
//   phase of quantize) or a file system turned read-only mid-run finishes the same checkpoint;
// - exit codes: usage errors 2, everything else 1;
// - kill -9 at seeded random times of block-ap, e2e-qp and quantize (three trials each, timed
//   from the output lock), each rerun finishing a checkpoint identical to an uninterrupted run's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO, TINY } from '../golden.js';
import { Rng } from '../../src/engine/random.js';
import { runBlockAp, blockApDefaults } from '../../src/pipeline/block-ap.js';
import { exportGguf } from '../../src/export/gguf.js';
import { exportOnnx } from '../../src/export/onnx.js';
import { runKillable } from '../util.js';

process.env['EQAT_CACHE_DIR'] = mkdtempSync(join(tmpdir(), 'eqat-cache-'));

const CLI = join(REPO, 'dist', 'src', 'cli', 'main.js');
const FS_FAULT = join(REPO, 'dist', 'test', 'fault', 'fs-fault.js');
const CALIB = join(REPO, 'fixtures', 'text', 'calib-sample.txt');
const WORK = mkdtempSync(join(tmpdir(), 'eqat-faults-'));

/** Block-AP with training, a few seconds on llama-tiny (one thread: the same bytes every run). */
const bapArgs = (out: string): string[] => ['block-ap', '--model', TINY, '--calib', CALIB, '--out', out, '--wbits', '2', '--group-size', '32',
  '--train-size', '8', '--val-size', '2', '--seqlen', '32', '--batch-size', '2', '--epochs', '2', '--threads', '1', '--quiet'];
const rtnArgs = (out: string): string[] => ['block-ap', '--model', TINY, '--out', out, '--wbits', '4', '--group-size', '32', '--epochs', '0', '--threads', '1', '--quiet'];
const e2eArgs = (model: string, out: string): string[] => ['e2e-qp', '--model', model, '--data', CALIB, '--out', out, '--train-size', '16',
  '--seqlen', '32', '--batch-size', '2', '--micro-batch-size', '1', '--save-every', '1', '--threads', '1', '--quiet'];
const quantizeArgs = (out: string): string[] => ['quantize', '--model', TINY, '--calib', CALIB, '--out', out, '--wbits', '2', '--group-size', '32',
  '--block-ap-train-size', '8', '--block-ap-val-size', '2', '--block-ap-seqlen', '32', '--block-ap-batch-size', '2', '--block-ap-epochs', '1',
  '--e2e-qp-train-size', '8', '--e2e-qp-seqlen', '32', '--e2e-qp-batch-size', '2', '--e2e-qp-micro-batch-size', '1', '--save-every', '1', '--threads', '1', '--quiet'];

interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  pid: number;
}

/**
 * Runs `eqat ...args`; `fault` arms test/fault/fs-fault.ts in it; `during(child, stderr)` is
 * polled every 5 ms while it runs (to signal it at the right moment).
 */
function runCli(args: string[], opts: { fault?: object | object[]; during?: (child: ChildProcess, stderr: string) => void } = {}): Promise<CliResult> {
  const env = { ...process.env, ...(opts.fault ? { EQAT_TEST_FS_FAULT: JSON.stringify(opts.fault) } : {}) };
  const node = opts.fault ? ['--import', FS_FAULT, CLI] : [CLI];
  return new Promise((resolveP, reject) => {
    const child = spawn(process.execPath, [...node, ...args], { stdio: ['ignore', 'ignore', 'pipe'], env });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = opts.during ? setInterval(() => opts.during!(child, stderr), 5) : undefined;
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      if (timer) clearInterval(timer);
      resolveP({ code, signal, stderr, pid: child.pid! });
    });
  });
}

/**
 * The files of a checkpoint that must be identical between runs: all but the logs,
 * eqat-recipe.json and report.html (they carry seconds and peak memory); quantize's recipe.json
 * without its `out`.
 */
function checkpointBytes(dir: string): Map<string, Buffer> {
  const m = new Map<string, Buffer>();
  for (const f of readdirSync(dir).sort()) {
    if (f.endsWith('.jsonl') || f === 'eqat-recipe.json' || f === 'report.html') continue;
    const bytes = readFileSync(join(dir, f));
    if (f !== 'recipe.json') m.set(f, bytes);
    else m.set(f, Buffer.from(JSON.stringify({ ...(JSON.parse(bytes.toString()) as object), out: null })));
  }
  return m;
}

function assertSameCheckpoint(got: string, want: string, what: string): void {
  const a = checkpointBytes(got);
  const b = checkpointBytes(want);
  assert.deepEqual([...a.keys()], [...b.keys()], `${what}: files`);
  for (const [f, bytes] of b) assert.ok(a.get(f)!.equals(bytes), `${what}: ${f} differs`);
}

/** Nothing of a run is left next to `out` but `out` itself and `kept` (no lock, partial, temporary or replaced copy). */
function assertOnlyOutput(out: string, what: string, kept: string[] = []): void {
  const dir = join(out, '..');
  const base = out.slice(dir.length + 1);
  const extra = readdirSync(dir).filter((f) => f.startsWith(base + '.') && !kept.includes(f.slice(base.length)));
  assert.deepEqual(extra, [], `${what}: left next to the output`);
}

/** Waits until `cond` holds (polled every 5 ms), at most `seconds`. */
async function until(cond: () => boolean, seconds: number, what: string): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > seconds * 1000) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function procStart(pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]!;
}

function finishedBlocks(out: string): number {
  try {
    return (JSON.parse(readFileSync(join(out + '.partial', 'state.json'), 'utf8')) as { finishedBlocks: number }).finishedBlocks;
  } catch {
    return 0;
  }
}

// reference checkpoints of uninterrupted runs, made once
let refBap: Promise<string> | null = null;
function referenceBlockAp(): Promise<string> {
  refBap ??= (async () => {
    const out = join(WORK, 'ref-bap');
    const r = await runCli(bapArgs(out));
    assert.equal(r.code, 0, r.stderr);
    return out;
  })();
  return refBap;
}

let refE2e: Promise<string> | null = null;
function referenceE2e(): Promise<string> {
  refE2e ??= (async () => {
    const out = join(WORK, 'ref-e2e');
    const r = await runCli(e2eArgs(await referenceBlockAp(), out));
    assert.equal(r.code, 0, r.stderr);
    return out;
  })();
  return refE2e;
}

/** The calibration text with its lines in reverse order: other contents, the same size. */
const otherText = (): string => readFileSync(CALIB, 'utf8').split('\n').reverse().join('\n');

/** A `during` for runCli that sends `signal` once `cond` holds. */
function signalWhen(cond: () => boolean, signal: NodeJS.Signals): (child: ChildProcess) => void {
  let sent = false;
  return (child) => {
    if (!sent && cond()) {
      sent = true;
      child.kill(signal);
    }
  };
}

test('exit codes: usage errors 2, everything else 1', () => {
  const existing = join(WORK, 'exists');
  mkdirSync(existing, { recursive: true });
  const badValue = join(WORK, 'bad-value.yaml');
  writeFileSync(badValue, `model: ${TINY}\nwbits: 9\n`);
  const badYaml = join(WORK, 'bad-yaml.yaml');
  writeFileSync(badYaml, 'model: [\n');
  const cases: [string, string[], number, RegExp][] = [
    ['a recipe value out of range', ['quantize', '--recipe', badValue, '--out', join(WORK, 'x')], 2, /bad-value\.yaml: wbits: must be 2, 3, 4 or 8, got 9/],
    ['a recipe that is not YAML', ['quantize', '--recipe', badYaml, '--out', join(WORK, 'x')], 2, /bad-yaml\.yaml: not valid YAML/],
    ['a recipe file that does not exist', ['quantize', '--recipe', join(WORK, 'none.yaml'), '--out', join(WORK, 'x')], 2, /none\.yaml: recipe file not found/],
    ['unknown command', ['bogus'], 2, /unknown command 'bogus'/],
    ['unknown flag', ['block-ap', '--model', TINY, '--out', join(WORK, 'x'), '--bogus', '1'], 2, /^eqat block-ap: unknown flag '--bogus' \(eqat block-ap --help lists the flags\)$/m],
    ['missing required flag', ['block-ap', '--model', TINY, '--wbits', '2'], 2, /missing required flag --out/],
    ['value out of range', ['block-ap', '--model', TINY, '--out', join(WORK, 'x'), '--wbits', '9'], 2, /--wbits must be 2, 3, 4 or 8, got 9/],
    ['value not a choice', ['export', '--model', TINY, '--format', 'xyz', '--out', join(WORK, 'x')], 2, /--format must be one of gguf, onnx/],
    ['group size against the model', ['block-ap', '--model', TINY, '--out', join(WORK, 'x'), '--wbits', '2', '--group-size', '7', '--epochs', '0'], 2, /--group-size: 7 does not divide/],
    ['flags that contradict', ['block-ap', '--model', TINY, '--out', join(WORK, 'x'), '--wbits', '2', '--precision', 'bf16', '--epochs', '0'], 2, /--precision: bf16 needs --device cuda/],
    ['generate --precision on the CPU', ['generate', '--model', TINY, '--prompt', 'a', '--precision', 'bf16'], 2, /--precision: bf16 needs --device cuda/],
    ['quantize without a calibration file', ['quantize', '--model', TINY, '--wbits', '2', '--out', join(WORK, 'x')], 2, /calib: missing/],
    ['a model that does not exist', ['block-ap', '--model', join(WORK, 'nope'), '--out', join(WORK, 'x'), '--wbits', '2', '--epochs', '0'], 1, /nope/],
    ['an existing output', ['block-ap', '--model', TINY, '--out', existing, '--wbits', '2', '--epochs', '0'], 1, /already exists.*--force/],
  ];
  for (const [what, args, code, message] of cases) {
    const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
    assert.equal(r.status, code, `${what}: exit ${r.status}, expected ${code}: ${r.stderr}`);
    assert.match(r.stderr, message, what);
  }
  assert.ok(!existsSync(join(WORK, 'x')) && !existsSync(join(WORK, 'x.lock')), 'nothing written');
});

test('GGUF and ONNX exports refuse an existing output unless --force, and never write into the source checkpoint', async () => {
  const ckpt = join(WORK, 'export-src');
  await runBlockAp({ ...blockApDefaults(4), model: TINY, calib: null, out: ckpt, wbits: 4, groupSize: 32, epochs: 0, quiet: true });
  const shard = join(ckpt, 'model-00001-of-00005.safetensors');
  const shardBytes = readFileSync(shard);
  // over a shard of the checkpoint being exported: refused even with force, the shard intact
  await assert.rejects(exportGguf(ckpt, shard), /--out .*model-00001-of-00005\.safetensors: already exists and lies inside the --model input/);
  await assert.rejects(exportGguf(ckpt, shard, { force: true }), /lies inside the --model input/);
  await assert.rejects(exportOnnx(ckpt, join(ckpt, 'onnx-out')), /lies inside the --model input/);
  assert.ok(readFileSync(shard).equals(shardBytes), 'the shard is untouched');
  assert.deepEqual(readdirSync(ckpt).filter((f) => f.includes('.lock') || f.includes('onnx') || f.includes('.partial')), []);
  // over an existing file: refused, then replaced with --force
  const gguf = join(WORK, 'model.gguf');
  writeFileSync(gguf, 'precious');
  await assert.rejects(exportGguf(ckpt, gguf), /--out .*model\.gguf: already exists; .*--force/);
  assert.equal(readFileSync(gguf, 'utf8'), 'precious');
  await exportGguf(ckpt, gguf, { force: true });
  assert.equal(readFileSync(gguf).subarray(0, 4).toString(), 'GGUF');
  assertOnlyOutput(gguf, 'gguf --force');
  // the CLI: the same refusal, exit 1
  const r = spawnSync(process.execPath, [CLI, 'export', '--model', ckpt, '--format', 'gguf', '--out', shard], { encoding: 'utf8' });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /lies inside the --model input/);
  assert.ok(readFileSync(shard).equals(shardBytes));
  // ONNX: an existing directory is refused, replaced with --force
  const onnx = join(WORK, 'onnx');
  mkdirSync(onnx);
  await assert.rejects(exportOnnx(ckpt, onnx), /already exists; .*--force/);
  writeFileSync(join(onnx, 'keep.txt'), 'x');
  await assert.rejects(exportOnnx(ckpt, onnx), /is not empty; refusing to overwrite \(pass --force/);
  await exportOnnx(ckpt, onnx, { force: true });
  assert.ok(!existsSync(join(onnx, 'keep.txt')) && existsSync(join(onnx, 'config.json')));
  assertOnlyOutput(onnx, 'onnx --force');
});

test('Block-AP refuses an output among its inputs, and --force replaces an existing output only when the new one is complete', async () => {
  const base = { ...blockApDefaults(4), model: TINY, calib: null, wbits: 4, groupSize: 32, epochs: 0, quiet: true };
  await assert.rejects(runBlockAp({ ...base, out: join(TINY, 'q') }), /--out .*: lies inside the --model input/);
  await assert.rejects(runBlockAp({ ...base, out: join(TINY, '..'), force: true }), /contains the --model input/);
  const calibCopy = join(WORK, 'calib.txt');
  cpSync(CALIB, calibCopy);
  await assert.rejects(runBlockAp({ ...base, calib: calibCopy, epochs: 1, trainSize: 4, valSize: 0, seqlen: 16, batchSize: 2, out: calibCopy, force: true }), /is the --calib input itself/);
  assert.ok(readFileSync(calibCopy).equals(readFileSync(CALIB)));
  assert.ok(!existsSync(join(TINY, 'q')) && !existsSync(join(TINY, 'q.lock')) && !existsSync(join(TINY, 'q.partial')));

  const out = join(WORK, 'forced');
  mkdirSync(out);
  writeFileSync(join(out, 'old.txt'), 'old');
  await assert.rejects(runBlockAp({ ...base, out }), /already exists/);
  // a --force run that fails leaves the old output as it was
  await assert.rejects(runBlockAp({ ...base, out, groupSize: 7, force: true }), /--group-size/);
  assert.equal(readFileSync(join(out, 'old.txt'), 'utf8'), 'old');
  await runBlockAp({ ...base, out, force: true });
  assert.ok(!existsSync(join(out, 'old.txt')) && existsSync(join(out, 'config.json')));
  assertOnlyOutput(out, '--force');
});

test('the output lock: a live holder is refused by name, a dead or reused pid is taken over, and the lock goes with the run', async () => {
  const base = { ...blockApDefaults(4), model: TINY, calib: null, wbits: 4, groupSize: 32, epochs: 0, quiet: true };
  const out = join(WORK, 'locked');
  const holder = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)'], { stdio: 'ignore' });
  try {
    await until(() => existsSync(`/proc/${holder.pid}/stat`), 5, 'the holder');
    const lock = { pid: holder.pid, start: procStart(holder.pid!), host: hostname(), command: 'eqat block-ap', since: '2024-01-01T00:00:00.000Z' };
    writeFileSync(out + '.lock', JSON.stringify(lock));
    await assert.rejects(runBlockAp({ ...base, out }), new RegExp(`another eqat run is writing it \\(pid ${holder.pid}, \`eqat block-ap\`, since 2024-01-01`));
    assert.ok(!existsSync(out) && !existsSync(out + '.partial'), 'nothing written');
    assert.deepEqual(JSON.parse(readFileSync(out + '.lock', 'utf8')), lock, 'the holder keeps its lock');
    // the same pid with another start time: a process that reused a dead run's pid
    writeFileSync(out + '.lock', JSON.stringify({ ...lock, start: '1' }));
  } finally {
    holder.kill('SIGKILL');
  }
  const notes: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((s: string) => (notes.push(String(s)), true)) as typeof process.stderr.write;
  try {
    await runBlockAp({ ...base, out });
    // a pid that no longer exists (the holder, now dead)
    await until(() => !existsSync(`/proc/${holder.pid}/stat`), 5, 'the holder to exit');
    writeFileSync(out + '2.lock', JSON.stringify({ pid: holder.pid, start: null, host: hostname(), command: 'eqat block-ap', since: 'then' }));
    await runBlockAp({ ...base, out: out + '2' });
  } finally {
    process.stderr.write = write;
  }
  assert.equal(notes.filter((n) => /was left by a run that is gone .*taking it over/.test(n)).length, 2, notes.join(''));
  assertOnlyOutput(out, 'reused pid');
  assertOnlyOutput(out + '2', 'dead pid');
});

/**
 * Runs `args` writing `out` twice at once: the first run is held stopped (SIGSTOP) from the moment
 * it takes its lock while the second starts and ends, so that the second meets it mid-run however
 * fast the machine is; then the first continues. Returns both results.
 */
async function twoRunsOnOneOutput(args: string[], out: string, what: string): Promise<{ first: CliResult; second: CliResult }> {
  let second: CliResult | null = null;
  let started = false;
  const first = await runCli(args, {
    during: (child) => {
      if (started || !existsSync(out + '.lock')) return;
      started = true;
      child.kill('SIGSTOP');
      void runCli(args).then((r) => {
        second = r;
        child.kill('SIGCONT');
      });
    },
  });
  await until(() => second !== null, 30, `the second ${what} run`);
  return { first, second: second as unknown as CliResult };
}

test('two runs on one output: the second is refused naming the first, which finishes unharmed', async () => {
  const ref = await referenceBlockAp();
  const out = join(WORK, 'concurrent');
  const { first, second: r } = await twoRunsOnOneOutput(bapArgs(out), out, 'block-ap');
  assert.equal(first.code, 0, first.stderr);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`--out .*concurrent: another eqat run is writing it \\(pid ${first.pid}, \`eqat block-ap\``));
  assertSameCheckpoint(out, ref, 'the first run');
  assertOnlyOutput(out, 'two runs');
});

test('e2e-qp, quantize and export share the output rules: an existing output, one inside the model and a second run are refused; --force replaces', async () => {
  const bap = await referenceBlockAp();
  const commands: [string, (out: string) => string[], RegExp][] = [
    ['e2e-qp', (out) => e2eArgs(bap, out), /--out .*: already exists; .*--force/],
    ['quantize', quantizeArgs, /out \(--out\) .*: already exists; .*--force/], // the recipe's key and its flag
    ['export', (out) => ['export', '--model', bap, '--format', 'gguf', '--out', out], /--out .*: already exists; .*--force/],
  ];
  for (const [name, args, existsMessage] of commands) {
    // an existing output: refused, kept as it was; --force replaces it with a whole new one
    const out = join(WORK, `rules-${name}`);
    if (name === 'export') writeFileSync(out, 'precious');
    else {
      mkdirSync(out);
      writeFileSync(join(out, 'precious.txt'), 'precious');
    }
    const refused = await runCli(args(out));
    assert.equal(refused.code, 1, `${name}: ${refused.stderr}`);
    assert.match(refused.stderr, existsMessage, name);
    assert.equal(readFileSync(name === 'export' ? out : join(out, 'precious.txt'), 'utf8'), 'precious', `${name}: the existing output is kept`);
    const forced = await runCli([...args(out), '--force']);
    assert.equal(forced.code, 0, `${name} --force: ${forced.stderr}`);
    assert.ok(name === 'export' ? readFileSync(out).subarray(0, 4).toString() === 'GGUF' : existsSync(join(out, 'config.json')) && !existsSync(join(out, 'precious.txt')), `${name}: replaced`);
    assertOnlyOutput(out, `${name} --force`, name === 'quantize' ? ['.block-ap'] : []);
    // inside the model directory it reads: refused even with --force, nothing written there
    const model = name === 'quantize' ? TINY : bap;
    const before = readdirSync(model);
    const inside = await runCli([...args(join(model, 'q')), '--force']);
    assert.equal(inside.code, 1, `${name} inside: ${inside.stderr}`);
    assert.match(inside.stderr, /lies inside the (--model|model \(--model\)) input/, `${name} inside`); // quantize names the recipe key too
    assert.deepEqual(readdirSync(model), before, `${name}: nothing written into the model`);
    // a second run on the output of a running one (held stopped): refused naming it
    const busy = join(WORK, `busy-${name}`);
    const { first, second: r } = await twoRunsOnOneOutput(args(busy), busy, name);
    assert.equal(first.code, 0, `${name} first: ${first.stderr}`);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`another eqat run is writing it \\(pid ${first.pid}, \`eqat ${name}`), name);
    assertOnlyOutput(busy, `${name}: two runs`, name === 'quantize' ? ['.block-ap'] : []);
  }
});

test('SIGINT stops Block-AP with exit 130 saying which blocks were kept; the rerun resumes to the same checkpoint', async () => {
  const ref = await referenceBlockAp();
  const out = join(WORK, 'sigint');
  let sent = false;
  const r = await runCli(bapArgs(out), {
    during: (child) => {
      if (!sent && finishedBlocks(out) >= 1) {
        sent = true;
        child.kill('SIGINT');
      }
    },
  });
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /^eqat: interrupted by SIGINT; kept blocks? 1(–\d)? finished in .*sigint\.partial\/; rerunning the same command resumes\n$/);
  assert.ok(!existsSync(out) && !existsSync(out + '.lock') && existsSync(out + '.partial'));
  const again = await runCli(bapArgs(out));
  assert.equal(again.code, 0, again.stderr);
  assertSameCheckpoint(out, ref, 'resumed after SIGINT');
  assertOnlyOutput(out, 'after SIGINT');
});

test('SIGTERM stops E2E-QP with exit 143 saying which step was kept; the rerun resumes to the same checkpoint', async () => {
  const model = await referenceBlockAp();
  const ref = await referenceE2e();
  const out = join(WORK, 'sigterm');
  let sent = false;
  const r = await runCli(e2eArgs(model, out), {
    during: (child) => {
      if (!sent && existsSync(join(out + '.partial', 'e2e-qp-state.safetensors'))) {
        sent = true;
        child.kill('SIGTERM');
      }
    },
  });
  assert.equal(r.code, 143, r.stderr);
  assert.match(r.stderr, /eqat: interrupted by SIGTERM; kept the E2E-QP state after step \d+ of 8 in .*sigterm\.partial\/; rerunning the same command resumes/);
  assert.ok(!existsSync(out + '.lock'));
  const again = await runCli(e2eArgs(model, out));
  assert.equal(again.code, 0, again.stderr);
  assertSameCheckpoint(out, ref, 'resumed after SIGTERM');
  assertOnlyOutput(out, 'after SIGTERM');
});

test('quantize: SIGINT exits 130 saying what was kept and the rerun resumes; an E2E-QP state of other e2e_qp.data is refused while OUT.block-ap is reused; --restart finishes', async () => {
  // E2E-QP reads its own copy of the text, so that it can change while Block-AP's stays
  const data = join(WORK, 'q-data.txt');
  cpSync(CALIB, data);
  const args = (out: string): string[] => [...withFlag(quantizeArgs(out), '--e2e-qp-train-size', '16'), '--e2e-qp-data', data];
  const ref = join(WORK, 'q-ref');
  const clean = await runCli(args(ref));
  assert.equal(clean.code, 0, clean.stderr);
  const stateOf = (out: string) => (): boolean => existsSync(join(out + '.partial', 'e2e-qp-state.safetensors'));

  // SIGINT in the E2E-QP phase: both phases' work kept, named; the rerun finishes the same checkpoint
  const out = join(WORK, 'q-sigint');
  const r = await runCli(args(out), { during: signalWhen(stateOf(out), 'SIGINT') });
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /^eqat: interrupted by SIGINT; kept the Block-AP checkpoint in .*q-sigint\.block-ap\/; the E2E-QP state after step \d of 8 in .*q-sigint\.partial\/; rerunning the same command resumes\n$/);
  assert.ok(!existsSync(out) && !existsSync(out + '.lock'));
  const again = await runCli(args(out));
  assert.equal(again.code, 0, again.stderr);
  assertSameCheckpoint(out, ref, 'quantize resumed after SIGINT');
  assertSameCheckpoint(out + '.block-ap', ref + '.block-ap', 'its Block-AP checkpoint');
  assertOnlyOutput(out, 'quantize after SIGINT', ['.block-ap']);

  // interrupted on other e2e_qp.data (same path and size, other contents), rerun on the first:
  // Block-AP never reads e2e_qp.data, so its checkpoint is reused as it is; E2E-QP's state is refused
  const changed = join(WORK, 'q-changed');
  writeFileSync(data, otherText());
  const other = await runCli(args(changed), { during: signalWhen(stateOf(changed), 'SIGTERM') }); // SIGTERM says the same
  assert.equal(other.code, 143, other.stderr);
  assert.match(other.stderr, /^eqat: interrupted by SIGTERM; kept the Block-AP checkpoint in .*q-changed\.block-ap\/; the E2E-QP state after step \d of 8 in .*q-changed\.partial\/; rerunning the same command resumes\n$/);
  writeFileSync(data, readFileSync(CALIB));
  const shard = join(changed + '.block-ap', 'model-00001-of-00005.safetensors');
  const written = statSync(shard).mtimeMs;
  const refused = await runCli(args(changed));
  assert.equal(refused.code, 1, refused.stderr);
  assert.match(refused.stderr, /^eqat: .*q-changed\.partial: holds an interrupted E2E-QP run with other inputs: the training data .*q-data\.txt has changed \(\d+ bytes, sha256 \S+ in the saved state; \d+ bytes, sha256 \S+ now\); .*pass --restart to discard it/);
  assert.ok(!existsSync(changed) && existsSync(join(changed + '.partial', 'e2e-qp-state.safetensors')), 'the refused state is kept');
  // --restart discards the E2E-QP state, keeps the Block-AP checkpoint (same recipe and inputs) and finishes
  const restarted = await runCli([...args(changed), '--restart']);
  assert.equal(restarted.code, 0, restarted.stderr);
  assert.equal(statSync(shard).mtimeMs, written, 'Block-AP was not run again');
  assertSameCheckpoint(changed, ref, 'quantize --restart');
  assertOnlyOutput(changed, 'quantize --restart', ['.block-ap']);
});

test('--restart through the command line: block-ap and e2e-qp refuse an interrupted run of other data, and --restart discards it and finishes', async () => {
  const bap = await referenceBlockAp();
  const e2e = await referenceE2e();
  const data = join(WORK, 'restart-data.txt');
  // each interrupted by the signal the other tests do not send it: SIGTERM (143) to block-ap, SIGINT (130) to e2e-qp
  const cases: [string, (out: string) => string[], (out: string) => () => boolean, NodeJS.Signals, number, RegExp, RegExp][] = [
    ['block-ap', (out) => withFlag(bapArgs(out), '--calib', data), (out) => () => finishedBlocks(out) >= 1, 'SIGTERM', 143, /kept blocks? 1(–\d)? finished in/,
      /Block-AP run with other inputs: the calibration data .*restart-data\.txt has changed/],
    ['e2e-qp', (out) => withFlag(e2eArgs(bap, out), '--data', data), (out) => () => existsSync(join(out + '.partial', 'e2e-qp-state.safetensors')), 'SIGINT', 130, /kept the E2E-QP state after step \d of 8 in/,
      /E2E-QP run with other inputs: the training data .*restart-data\.txt has changed/],
  ];
  for (const [name, args, started, signal, code, kept, message] of cases) {
    // interrupted on other contents of the data file, which is then put back
    const out = join(WORK, `restart-${name}`);
    writeFileSync(data, otherText());
    const r = await runCli(args(out), { during: signalWhen(started(out), signal) });
    assert.equal(r.code, code, `${name}: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`^eqat: interrupted by ${signal}; ${kept.source} .*restart-${name}\\.partial/; rerunning the same command resumes\n$`), name);
    writeFileSync(data, readFileSync(CALIB));
    const refused = await runCli(args(out));
    assert.equal(refused.code, 1, `${name}: ${refused.stderr}`);
    assert.match(refused.stderr, new RegExp(`^eqat: .*restart-${name}\\.partial: holds an interrupted ${message.source}.*; rerun with the same settings to resume it, or pass --restart to discard it and start over\n$`), name);
    assert.ok(!existsSync(out) && existsSync(out + '.partial'), `${name}: the refused state is kept`);
    const restarted = await runCli([...args(out), '--restart']);
    assert.equal(restarted.code, 0, `${name} --restart: ${restarted.stderr}`);
    assertSameCheckpoint(out, name === 'block-ap' ? bap : e2e, `${name} --restart`);
    assertOnlyOutput(out, `${name} --restart`);
  }
});

test('disk full, read-only and permission errors name the path and the way out; a rerun after a full disk finishes the checkpoint', async () => {
  const ref = join(WORK, 'rtn-ref');
  const clean = await runCli(rtnArgs(ref));
  assert.equal(clean.code, 0, clean.stderr);
  const dir = join(WORK, 'disk');
  mkdirSync(dir);
  const out = join(dir, 'rtn');
  // the disk fills in the middle of the shards
  const full = await runCli(rtnArgs(out), { fault: { code: 'ENOSPC', under: dir, afterBytes: 60_000 } });
  assert.equal(full.code, 1, full.stderr);
  assert.match(full.stderr, /^eqat: cannot write .*disk\/rtn[^:]*: no space left on device; free space there and rerun the same command: it resumes from what was finished, or choose an output on another disk and start over\n$/);
  assert.ok(!existsSync(out) && !existsSync(out + '.lock'));
  const again = await runCli(rtnArgs(out));
  assert.equal(again.code, 0, again.stderr);
  assertSameCheckpoint(out, ref, 'rerun after a full disk');
  // read-only and forbidden: refused before any work, nothing created
  for (const [code, text] of [['EROFS', 'read-only file system'], ['EACCES', 'permission denied']] as const) {
    const o = join(dir, `ro-${code}`);
    const r = await runCli(rtnArgs(o), { fault: { code, under: dir } });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`cannot write .*ro-${code}\\.lock[^:]*: ${text}; [^;]* rerun the same command: it resumes from what was finished, or choose an output`));
    assert.deepEqual(readdirSync(dir).filter((f) => f.startsWith('ro-')), [], `${code}: nothing created`);
  }
  // the activation caches on disk (--max-ram 0) fill it: the cache file is named, and --max-ram
  const cacheOut = join(WORK, 'cache-full');
  const r = await runCli([...bapArgs(cacheOut), '--max-ram', '0'], { fault: { code: 'ENOSPC', under: join(cacheOut + '.partial', 'cache'), afterBytes: 4096 } });
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /cannot write .*cache-full\.partial\/cache\/x_(fp|q)\.f32: no space left on device; .*rerun the same command: it resumes .*a larger --max-ram keeps them in RAM/);
  assert.ok(!existsSync(cacheOut + '.lock'));
});

test('disk full in E2E-QP\'s state save, in its checkpoint and in the GGUF and ONNX exports: the path and the way out, nothing partial published; E2E-QP\'s rerun finishes the same checkpoint', async () => {
  const model = await referenceBlockAp();
  const ref = await referenceE2e();
  // llama-tiny's E2E-QP state is about 300 kB a save (one every step, 8 steps), its checkpoint
  // about 2.4 MB: the disk fills during the third save; the rerun resumes after step 2 and the
  // disk fills 120 kB into the checkpoint (after 6 more saves); the next rerun finishes
  const STATE = 297_640;
  const out = join(WORK, 'e2e-full');
  const cases: [string, number, RegExp][] = [
    ['the state', Math.round(2.5 * STATE), /e2e-full\.partial\/e2e-qp-state\.safetensors/],
    ['the checkpoint', 6 * STATE + 120_000, /e2e-full\.partial\/model-0000[1-5]-of-00005\.safetensors/],
  ];
  for (const [what, afterBytes, path] of cases) {
    const full = await runCli(e2eArgs(model, out), { fault: { code: 'ENOSPC', under: out + '.partial', afterBytes } });
    assert.equal(full.code, 1, `${what}: ${full.stderr}`);
    assert.match(full.stderr, new RegExp(`^eqat: cannot write .*${path.source}: no space left on device; free space there and rerun the same command: it resumes from what was finished, or choose an output on another disk and start over\n$`), what);
    assert.ok(!existsSync(out) && !existsSync(out + '.lock'), `${what}: nothing published, no lock`);
    assert.ok(existsSync(join(out + '.partial', 'e2e-qp-state.safetensors')), `${what}: the last saved state is kept`);
  }
  const again = await runCli(e2eArgs(model, out));
  assert.equal(again.code, 0, again.stderr);
  assertSameCheckpoint(out, ref, 'rerun after a full disk');
  assertOnlyOutput(out, 'rerun after a full disk');
  // the exports fill the disk 100 kB in: no output, no partial one, no lock
  for (const [format, name] of [['gguf', 'model.gguf'], ['onnx', 'model-onnx']]) {
    const dir = join(WORK, `${format}-disk`);
    mkdirSync(dir);
    const r = await runCli(['export', '--model', model, '--format', format, '--out', join(dir, name)], { fault: { code: 'ENOSPC', under: dir, afterBytes: 100_000 } });
    assert.equal(r.code, 1, `${format}: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`^eqat: cannot write .*${format}-disk/${name.replace('.', '\\.')}[^:]*: no space left on device; free space there or choose an output on another disk\n$`), format);
    assert.deepEqual(readdirSync(dir), [], `${format}: nothing left in the output directory`);
  }
});

test('disk full inside quantize, in its Block-AP phase and then in its final checkpoint: the file and the way out, nothing published; each rerun resumes, the last finishing the same checkpoint', async () => {
  const ref = join(WORK, 'qd-ref');
  const clean = await runCli(quantizeArgs(ref));
  assert.equal(clean.code, 0, clean.stderr);
  const dir = join(WORK, 'q-disk');
  mkdirSync(dir);
  const out = join(dir, 'q');
  const fullMessage = (file: string): RegExp =>
    new RegExp(`^eqat: cannot write .*q-disk/${file}: no space left on device; free space there and rerun the same command: it resumes from what was finished, or choose an output on another disk and start over\n$`);
  // 180 kB into the run: after Block-AP's lock, state and the shards of blocks 1 and 2 (71 592 bytes each), in block 3's
  const inBlockAp = await runCli(quantizeArgs(out), { fault: { code: 'ENOSPC', under: dir, afterBytes: 180_000 } });
  assert.equal(inBlockAp.code, 1, inBlockAp.stderr);
  assert.match(inBlockAp.stderr, fullMessage('q\\.block-ap\\.partial/model-00003-of-00005\\.safetensors'));
  assert.deepEqual(readdirSync(dir), ['q.block-ap.partial'], 'in Block-AP: no OUT, no OUT.block-ap, no lock');
  assert.equal(finishedBlocks(out + '.block-ap'), 2);
  const firstShard = statSync(join(out + '.block-ap.partial', 'model-00001-of-00005.safetensors')).mtimeMs;
  // the rerun resumes Block-AP, whose published checkpoint takes no byte more (it is whole when
  // renamed into place); its E2E-QP phase saves its state after each of its 4 steps (297 816
  // bytes each), then the disk fills 120 kB into the final checkpoint
  const inCheckpoint = await runCli(quantizeArgs(out), {
    fault: [{ code: 'ENOSPC', under: out + '.block-ap', afterBytes: 0 }, { code: 'ENOSPC', under: out + '.partial', afterBytes: 4 * 297_816 + 120_000 }],
  });
  assert.equal(inCheckpoint.code, 1, inCheckpoint.stderr);
  assert.match(inCheckpoint.stderr, fullMessage('q\\.partial/model-00002-of-00005\\.safetensors'));
  assert.deepEqual(readdirSync(dir).sort(), ['q.block-ap', 'q.partial'], 'in the final checkpoint: no OUT, no lock; the Block-AP checkpoint published');
  assert.equal(statSync(join(out + '.block-ap', 'model-00001-of-00005.safetensors')).mtimeMs, firstShard, 'Block-AP resumed after block 2');
  assert.ok(existsSync(join(out + '.partial', 'e2e-qp-state.safetensors')), 'the last saved state is kept');
  // the last rerun resumes E2E-QP and finishes: OUT too is whole when renamed into place (no byte written into it after)
  const again = await runCli(quantizeArgs(out), { fault: { code: 'ENOSPC', under: out, afterBytes: 0 } });
  assert.equal(again.code, 0, again.stderr);
  assertSameCheckpoint(out, ref, 'quantize after a full disk, twice');
  assertSameCheckpoint(out + '.block-ap', ref + '.block-ap', 'its Block-AP checkpoint');
  assertOnlyOutput(out, 'quantize after a full disk', ['.block-ap']);
});

test('quantize with an evaluation, disk full once its output is published: the output is complete and the message gives the eqat eval command, which then runs', async () => {
  const dir = join(WORK, 'qe-disk');
  mkdirSync(dir);
  const out = join(dir, 'q');
  const args = [...quantizeArgs(out), '--eval-ppl', CALIB, '--eval-ppl-seqlen', '32', '--no-eval-baseline'];
  // nothing can be written into the published OUT (its rename takes no space)
  const r = await runCli(args, { fault: { code: 'ENOSPC', under: out, afterBytes: 0 } });
  assert.equal(r.code, 1, r.stderr);
  const command = `eqat eval --model ${out} --data ${CALIB} --seqlen 32`;
  assert.equal(r.stderr, `eqat: cannot write ${join(out, 'eqat-eval.json')}: no space left on device; the quantized model in ${out}/ is complete; free space there; to evaluate it: ${command}\n`);
  assert.deepEqual(readdirSync(dir).sort(), ['q', 'q.block-ap'], 'OUT published, no partial, no lock');
  assert.ok(existsSync(join(out, 'recipe.json')) && !existsSync(join(out, 'eqat-eval.json')));
  // the command it gives evaluates the output
  const evalRun = await runCli([...command.split(' ').slice(1), '--quiet']);
  assert.equal(evalRun.code, 0, evalRun.stderr);
});

test('a file system turned read-only in the middle of block-ap: the shard and the way out, the finished blocks kept; the rerun resumes to the same checkpoint', async () => {
  const ref = await referenceBlockAp();
  const dir = join(WORK, 'ro-mid');
  mkdirSync(dir);
  const out = join(dir, 'bap');
  // read-only 180 kB in: after the lock, the state and the shards of blocks 1 and 2, in block 3's
  const r = await runCli(bapArgs(out), { fault: { code: 'EROFS', under: dir, afterBytes: 180_000 } });
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /^eqat: cannot write .*ro-mid\/bap\.partial\/model-00003-of-00005\.safetensors: read-only file system; make it writable and rerun the same command: it resumes from what was finished, or choose an output on a writable file system and start over\n$/);
  assert.deepEqual(readdirSync(dir), ['bap.partial'], 'no OUT, no lock');
  assert.equal(finishedBlocks(out), 2);
  const firstShard = statSync(join(out + '.partial', 'model-00001-of-00005.safetensors')).mtimeMs;
  const again = await runCli(bapArgs(out));
  assert.equal(again.code, 0, again.stderr);
  assert.equal(statSync(join(out, 'model-00001-of-00005.safetensors')).mtimeMs, firstShard, 'resumed after block 2');
  assertSameCheckpoint(out, ref, 'block-ap after a read-only file system');
  assertOnlyOutput(out, 'block-ap after a read-only file system');
});

/** `args` with the value after `flag` replaced by `value`. */
function withFlag(args: string[], flag: string, value: string): string[] {
  const i = args.indexOf(flag);
  assert.ok(i >= 0, `${flag} among the arguments`);
  return [...args.slice(0, i + 1), value, ...args.slice(i + 2)];
}

// kill -9 at seeded random times: each interrupted run, rerun, finishes the checkpoint of an
// uninterrupted (timed) run of the same arguments. Times count from the moment the run takes
// its output lock (start-up before it varies with the machine's load) and spread over the
// first 70% of the timed run's work; the runs train longer than the other tests' (about a second)
// so that the kill points fall inside the work however busy the machine is.
async function killTrials(name: string, args: (out: string) => string[], seed: number, kept: string[] = []): Promise<string> {
  const lockedAt = (out: string): (() => number | null) => {
    let at: number | null = null;
    return () => (at ??= existsSync(out + '.lock') ? Date.now() : null);
  };
  const ref = join(WORK, `${name}-timed`);
  const timedLock = lockedAt(ref);
  const full = await runCli(args(ref), { during: () => void timedLock() });
  assert.equal(full.code, 0, full.stderr);
  assert.ok(timedLock() !== null, `${name}: the timed run's lock was seen`);
  const seconds = (Date.now() - timedLock()!) / 1000; // an upper bound of the work (exit seen later)
  const rng = new Rng(seed);
  const killed: string[] = [];
  for (let trial = 0; trial < 3; trial++) {
    const out = join(WORK, `${name}-kill-${trial}`);
    const at = seconds * 0.7 * rng.next();
    const locked = lockedAt(out);
    const how = await runKillable([CLI, ...args(out)], { killWhen: () => locked() !== null && Date.now() - locked()! > at * 1000 });
    if (how === 'SIGKILL') killed.push(`${at.toFixed(2)} s`);
    if (!existsSync(out)) {
      const again = await runCli(args(out));
      assert.equal(again.code, 0, `${name} trial ${trial} (killed ${how} at ${at.toFixed(2)} s): ${again.stderr}`);
    }
    assertSameCheckpoint(out, ref, `${name} trial ${trial} (killed at ${at.toFixed(2)} s)`);
    assertOnlyOutput(out, `${name} trial ${trial}`, kept);
  }
  assert.ok(killed.length >= 2, `${name}: only ${killed.length} of 3 runs were still running when killed`);
  return `${name}: a run takes ${seconds.toFixed(2)} s, killed at ${killed.join(', ')}, each rerun identical`;
}

test('kill -9 at random points of block-ap, e2e-qp and quantize: every rerun finishes the uninterrupted checkpoint', async (t) => {
  const bap = await referenceBlockAp();
  t.diagnostic(await killTrials('block-ap', (out) => withFlag(withFlag(bapArgs(out), '--epochs', '4'), '--train-size', '32'), 1));
  t.diagnostic(await killTrials('e2e-qp', (out) => withFlag(e2eArgs(bap, out), '--train-size', '96'), 2));
  const quantize = (out: string): string[] => withFlag(withFlag(quantizeArgs(out), '--block-ap-train-size', '32'), '--e2e-qp-train-size', '48');
  t.diagnostic(await killTrials('quantize', quantize, 3, ['.block-ap'])); // quantize keeps its Block-AP checkpoint
});

test('cleanup', () => {
  rmSync(WORK, { recursive: true, force: true });
});
