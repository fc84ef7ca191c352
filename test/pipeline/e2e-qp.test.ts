// E2E-QP on the bundled llama-tiny (quantized by RTN in the test): the end-to-end step-size
// gradient against finite differences of the whole-model loss, a short run that keeps the
// integers and zero points and changes only the scales, bad requests, and resume: a run killed
// (SIGKILL) after a save resumes to a byte-identical checkpoint, a resume with other inputs
// (settings, or the data or a model file changed at the same path) is refused naming what
// differs, and an unreadable state file is an error naming the file.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { E2E_QP_STATE_FILE, e2eQpDefaults, runE2eQp, ScaleState, type E2eQpOptions } from '../../src/pipeline/e2e-qp.js';
import { E2eTrainer } from '../../src/pipeline/e2e-trainer.js';
import { cpuBackend } from '../../src/backend/cpu.js';
import { WeightSource } from '../../src/model/weights.js';
import { PackedModel } from '../../src/model/quantized.js';
import { SafetensorsFile, SafetensorsModel } from '../../src/io/safetensors.js';
import { Rng } from '../../src/engine/random.js';
import { REPO, TINY, writeRtn } from '../golden.js';
import { checkGrad, runKillable } from '../util.js';

process.env['EQAT_CACHE_DIR'] = mkdtempSync(join(tmpdir(), 'eqat-cache-'));
const CALIB = join(REPO, 'fixtures', 'text', 'calib-sample.txt');
const CLI = join(REPO, 'dist', 'src', 'cli', 'main.js');
const work = mkdtempSync(join(tmpdir(), 'eqat-e2e-'));
const rtn = join(work, 'rtn-w3g32');
await writeRtn(TINY, rtn, 3, 32);

test('end-to-end step-size gradients match finite differences of the model loss', () => {
  const src = WeightSource.open(rtn);
  const model = PackedModel.load(src);
  src.close();
  const T = 12;
  const mb = 2;
  const state = new ScaleState(model.blocks);
  const trainer = new E2eTrainer(cpuBackend, model, state, mb, T);
  const rng = new Rng(5);
  const ids = new Int32Array(mb * T).map(() => rng.int(0, model.cfg.vocabSize));
  const labels = new Int32Array(mb * T).map((_, i) => (i % T === T - 1 ? -100 : ids[i + 1]!));
  labels[3] = -100; // a masked position inside a sequence
  trainer.fromHost();
  trainer.zeroGrads();
  trainer.microStep(ids, labels, 1);
  const grads = new Float32Array(state.params.buffer.length); // the ScaleState layout
  cpuBackend.download(trainer.grads, grads);
  // the loss at the host step sizes as the finite differences set them (gradients accumulate unread)
  const loss = (): number => {
    trainer.fromHost();
    return trainer.microStep(ids, labels, 1);
  };
  for (const [l, key] of [[0, 'q'], [1, 'down'], [3, 'v'], [2, 'gate']] as const) {
    const s = model.blocks[l]!.scales[key]; // a view into state.params
    const at = s.f32.byteOffset / 4 - state.params.buffer.byteOffset / 4;
    // scales are ~1e-2; a relative step keeps the f32 loss noise small against the change
    checkGrad(loss, s.f32, grads.subarray(at, at + s.size), { eps: 2e-4, atol: 2e-2, rtol: 5e-2, samples: 6, what: `block ${l} ${key} scales` });
  }
});

test('a short E2E-QP run trains the scales only and writes a loadable checkpoint', async () => {
  const out = join(work, 'e2e');
  const r = await runE2eQp({
    ...e2eQpDefaults(3),
    model: rtn,
    data: CALIB,
    out,
    trainSize: 16,
    seqlen: 64,
    batchSize: 8,
    microBatchSize: 4,
    lr: 1e-3,
    quiet: true,
  });
  assert.equal(r.steps, 2);
  assert.ok(Number.isFinite(r.firstLoss) && Number.isFinite(r.lastLoss));
  const a = SafetensorsModel.open(rtn);
  const b = SafetensorsModel.open(out);
  let changed = 0;
  for (const name of a.names()) {
    const same = Buffer.from(a.readRaw(name)).equals(Buffer.from(b.readRaw(name)));
    if (name.endsWith('.scales')) changed += same ? 0 : 1;
    else assert.ok(same, `${name} must not change`);
  }
  assert.ok(changed > 0, 'some scales must change');
  a.close();
  b.close();
});

test('E2E-QP refuses a full-precision model and an inconsistent batch', async () => {
  const base = { ...e2eQpDefaults(2), data: CALIB, trainSize: 16, seqlen: 32, batchSize: 8, microBatchSize: 4, quiet: true };
  await assert.rejects(runE2eQp({ ...base, model: TINY, out: join(work, 'x1') }), /not a quantized checkpoint/);
  await assert.rejects(runE2eQp({ ...base, model: rtn, out: join(work, 'x2'), batchSize: 6, microBatchSize: 4 }), /--batch-size: 6 is not a multiple of --micro-batch-size = 4/);
  await assert.rejects(runE2eQp({ ...base, model: rtn, out: join(work, 'x3'), saveEvery: -1 }), /--save-every: must be a non-negative integer, got -1/);
});

// ---------------------------------------------------------------------------------------------
// Resume

/** Step count of the training state saved in `partial` (its metadata, as the run wrote it). */
function savedStep(partial: string): number {
  const st = SafetensorsFile.open(join(partial, E2E_QP_STATE_FILE));
  const meta = JSON.parse(st.metadata['eqat_e2e_qp_state']!) as { nextStep: number };
  st.close();
  return meta.nextStep;
}

/** Log and record text with the timing fields ("seconds") and peak memory blanked: all that may differ on resume. */
function withoutTiming(text: string): string {
  return text.replace(/"seconds": ?[-+0-9.eE]+/g, '"seconds":_').replace(/"peak_rss_bytes": ?[0-9]+/g, '"peak_rss_bytes":_');
}

const TIMED = new Set(['e2e-qp-log.jsonl', 'eqat-recipe.json']);

/** Asserts that two checkpoints hold the same files with the same bytes, timing fields aside. */
function assertSameCheckpoint(a: string, b: string): void {
  const files = readdirSync(a).filter((f) => f !== 'report.html').sort(); // the report shows the seconds
  assert.deepEqual(readdirSync(b).filter((f) => f !== 'report.html').sort(), files);
  for (const f of files) {
    const [x, y] = [readFileSync(join(a, f)), readFileSync(join(b, f))];
    if (TIMED.has(f)) assert.equal(withoutTiming(y.toString()), withoutTiming(x.toString()), `${f} differs beyond timing`);
    else assert.ok(x.equals(y), `${f} differs`);
  }
}

function cliArgs(out: string): string[] {
  return [CLI, 'e2e-qp', '--model', rtn, '--data', CALIB, '--out', out, '--train-size', '48', '--seqlen', '32',
    '--batch-size', '4', '--micro-batch-size', '2', '--lr', '1e-3', '--save-every', '2', '--quiet'];
}

test('a run killed (SIGKILL) after a save resumes to a byte-identical checkpoint', async () => {
  const a = join(work, 'whole');
  const b = join(work, 'killed');
  assert.equal(await runKillable(cliArgs(a)), 0);
  // 12 steps, a save every 2: kill once the first save is there
  assert.equal(await runKillable(cliArgs(b), { killWhen: () => existsSync(join(b + '.partial', E2E_QP_STATE_FILE)) }), 'SIGKILL');
  assert.ok(!existsSync(b), 'no finished checkpoint after the kill');
  const saved = savedStep(b + '.partial');
  assert.ok(saved >= 2 && saved < 12, `killed after a save and before the end (saved at step ${saved})`);
  assert.equal(await runKillable(cliArgs(b)), 0);
  assertSameCheckpoint(a, b);
  assert.ok(!existsSync(b + '.partial'));
  const steps = readFileSync(join(b, 'e2e-qp-log.jsonl'), 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { step: number }).step);
  assert.deepEqual(steps, Array.from({ length: 12 }, (_, i) => i + 1));
});

/** A 4-step run (a save after every step) with the given changes. */
function small(out: string, over: Partial<E2eQpOptions> = {}): E2eQpOptions {
  return { ...e2eQpDefaults(3), model: rtn, data: CALIB, out, trainSize: 16, seqlen: 32, batchSize: 4, microBatchSize: 2, lr: 1e-3, saveEvery: 1, quiet: true, ...over };
}

class Interrupt extends Error {}

/** Starts a run and interrupts it after `steps` optimizer steps (their state saved). */
async function interrupted(o: E2eQpOptions, steps = 2): Promise<void> {
  const stop = (s: number): void => {
    if (s === steps) throw new Interrupt(`stopped after step ${s}`);
  };
  await assert.rejects(runE2eQp({ ...o, onStep: stop }), Interrupt);
  assert.equal(savedStep(o.out + '.partial'), steps);
}

test('a resume with other inputs is refused, naming what differs; --restart starts over', async () => {
  const data = join(work, 'calib-copy.txt');
  copyFileSync(CALIB, data);
  const out = join(work, 'changed');
  const partial = out + '.partial';
  await interrupted(small(out, { data }));
  const refused = (what: RegExp) => (e: Error) => {
    assert.match(e.message, what);
    assert.ok(e.message.startsWith(`${partial}: holds an interrupted E2E-QP run`), e.message);
    assert.match(e.message, /pass --restart to discard it and start over/);
    return true;
  };
  await assert.rejects(runE2eQp(small(out, { data, lr: 2e-3 })), refused(/lr \(--lr\) is 0\.001 in the saved state, 0\.002 now/));
  await assert.rejects(runE2eQp(small(out, { data, seed: 3 })), refused(/seed \(--seed\) is 2 in the saved state, 3 now/));
  await assert.rejects(runE2eQp(small(out, { data, warmupRatio: 0.5 })), refused(/warmupRatio \(--warmup-ratio\) is 0\.03 in the saved state, 0\.5 now/));
  await assert.rejects(runE2eQp(small(out)), refused(/the training data is ".*calib-copy\.txt" in the saved state, ".*calib-sample\.txt" now/));
  // the data by content: other bytes of the same size at the same time are refused
  const text = readFileSync(data, 'utf8');
  rewriteKeepingTime(data, text.replace('e', 'E'));
  await assert.rejects(runE2eQp(small(out, { data })), refused(/the training data .*calib-copy\.txt has changed \(\d+ bytes, sha256 [0-9a-f]{12}… in the saved state; \d+ bytes, sha256 [0-9a-f]{12}… now\)/));
  rewriteKeepingTime(data, text);
  assert.equal(savedStep(partial), 2, 'a refused resume leaves the state alone');
  const r = await runE2eQp(small(out, { data, restart: true }));
  assert.equal(r.resumedFrom, 0);
  assert.equal(r.steps, 4);
});

/** Rewrites `path` with `bytes`, keeping its modification time (a size and time check sees nothing). */
function rewriteKeepingTime(path: string, bytes: Uint8Array | string): void {
  const { atime, mtime } = statSync(path);
  writeFileSync(path, bytes);
  utimesSync(path, atime, mtime);
}

test('a resume after a model file changed at the same path is refused naming it; restored, the run resumes', async () => {
  const model = join(work, 'rtn-copy');
  cpSync(rtn, model, { recursive: true });
  const out = join(work, 'model-changed');
  await interrupted(small(out, { model }));
  const shard = join(model, readdirSync(model).filter((f) => f.endsWith('.safetensors')).sort()[0]!);
  const original = readFileSync(shard);
  const changed = Buffer.from(original);
  changed[changed.length - 2]! ^= 0x40;
  rewriteKeepingTime(shard, changed);
  await assert.rejects(runE2eQp(small(out, { model })), (e: Error) => {
    assert.ok(e.message.startsWith(`${out}.partial: holds an interrupted E2E-QP run with other inputs: the model file ${shard} has changed (`), e.message);
    assert.match(e.message, /pass --restart to discard it and start over$/);
    return true;
  });
  rewriteKeepingTime(shard, original);
  assert.equal((await runE2eQp(small(out, { model }))).resumedFrom, 2);
});

test('an unreadable state file is an error naming the file; intact, the run resumes', async () => {
  const whole = await runE2eQp(small(join(work, 'small-whole')));
  const out = join(work, 'corrupt');
  await interrupted(small(out));
  const statePath = join(out + '.partial', E2E_QP_STATE_FILE);
  const good = readFileSync(statePath);
  const unreadable = (e: Error) => {
    assert.ok(e.message.startsWith(`${statePath}: cannot resume from this E2E-QP state (`), e.message);
    assert.match(e.message, /pass --restart to discard it and start over$/);
    return true;
  };
  writeFileSync(statePath, 'not a state file');
  await assert.rejects(runE2eQp(small(out)), unreadable);
  writeFileSync(statePath, good.subarray(0, good.length - 100)); // header intact, data cut short
  await assert.rejects(runE2eQp(small(out)), unreadable);
  writeFileSync(statePath, good);
  const r = await runE2eQp(small(out));
  assert.equal(r.resumedFrom, 2);
  assert.equal(r.steps, 4);
  assert.equal(r.lastLoss, whole.lastLoss);
  assertSameCheckpoint(join(work, 'small-whole'), out);
});

test.after(() => rmSync(work, { recursive: true, force: true }));

test('--max-grad-norm 0 turns clipping off (same bytes as a clip no gradient reaches); negative is refused', async () => {
  const off = join(work, 'clip-off');
  const loose = join(work, 'clip-loose');
  const tight = join(work, 'clip-tight');
  await runE2eQp(small(off, { maxGradNorm: 0, saveEvery: 0 }));
  await runE2eQp(small(loose, { maxGradNorm: 1e30, saveEvery: 0 }));
  await runE2eQp(small(tight, { maxGradNorm: 1e-6, saveEvery: 0 }));
  const shards = (d: string): Buffer[] => readdirSync(d).filter((f) => f.endsWith('.safetensors')).sort().map((f) => readFileSync(join(d, f)));
  const [a, b, c] = [shards(off), shards(loose), shards(tight)];
  assert.ok(a.length > 0 && a.every((x, i) => x.equals(b[i]!)), 'no clipping differs from an unreachable clip');
  assert.ok(!a.every((x, i) => x.equals(c[i]!)), 'a tight clip must change the result (the check can fail)');
  await assert.rejects(runE2eQp(small(join(work, 'clip-neg'), { maxGradNorm: -1 })), /--max-grad-norm: must be >= 0/);
});
