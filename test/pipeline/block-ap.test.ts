// Block-AP on the bundled llama-tiny: RTN (--epochs 0) equals direct min-max fake
// quantization and loads back bit-identically; training beats RTN's block reconstruction loss;
// a run killed mid-block (SIGKILL) resumes to a byte-identical checkpoint; bad recipes fail
// before any output is written; a resume on changed inputs (calibration data, model files, at the
// same path) or from damaged state is refused naming it, and --restart starts over.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runBlockAp, blockApDefaults, type BlockApOptions } from '../../src/pipeline/block-ap.js';
import { WeightSource } from '../../src/model/weights.js';
import { allocBlockParams, BLOCK_LINEARS } from '../../src/model/block.js';
import { dequantize, minMaxInit, quantize } from '../../src/quant/primitives.js';
import { fromF32, toF32 } from '../../src/engine/dtype.js';
import { REPO, TINY } from '../golden.js';
import { runKillable } from '../util.js';

// keep the token-stream cache inside the test's own temp space
process.env['EQAT_CACHE_DIR'] = mkdtempSync(join(tmpdir(), 'eqat-cache-'));

const CALIB = join(REPO, 'fixtures', 'text', 'calib-sample.txt');
const CLI = join(REPO, 'dist', 'src', 'cli', 'main.js');

function tmp(): string {
  return mkdtempSync(join(tmpdir(), 'eqat-bap-'));
}

function opts(out: string, over: Partial<BlockApOptions> = {}): BlockApOptions {
  return {
    ...blockApDefaults(2),
    model: TINY,
    calib: CALIB,
    out,
    wbits: 2,
    groupSize: 32,
    trainSize: 16,
    valSize: 4,
    seqlen: 64,
    batchSize: 2,
    epochs: 2,
    quiet: true,
    ...over,
  };
}

test('RTN (--epochs 0): checkpoint holds min-max integers with f16 scales, loads back exactly', async () => {
  const dir = tmp();
  const out = join(dir, 'rtn');
  await runBlockAp(opts(out, { epochs: 0, calib: null, wbits: 3, groupSize: 64 }));
  const fp = WeightSource.open(TINY);
  const q = WeightSource.open(out);
  assert.deepEqual(q.quant && [q.quant.bits, q.quant.groupSize, q.quant.checkpointFormat], [3, 64, 'gptq_v2']);
  const { params: pf } = allocBlockParams(fp.cfg);
  const { params: pq } = allocBlockParams(fp.cfg);
  for (let i = 0; i < fp.cfg.numLayers; i++) {
    fp.loadBlock(i, pf);
    q.loadBlock(i, pq);
    for (const [key] of BLOCK_LINEARS) {
      const [O, I] = pf[key].shape as [number, number];
      const { scale, zero } = minMaxInit(pf[key].f32, O, I, 3, 64);
      const s16 = toF32('f16', fromF32('f16', scale));
      const want = dequantize(quantize(pf[key].f32, s16, zero, O, I, 3, 64), s16, zero, O, I, 3, 64);
      assert.deepEqual(pq[key].f32, want, `block ${i} ${key}`);
    }
    assert.deepEqual(pq.inputNorm.f32, pf.inputNorm.f32);
  }
  fp.close();
  q.close();
  for (const f of ['config.json', 'quantize_config.json', 'tokenizer.json', 'model.safetensors.index.json', 'block-ap-log.jsonl']) {
    assert.ok(existsSync(join(out, f)), f);
  }
  assert.ok(!existsSync(out + '.partial'));
  rmSync(dir, { recursive: true });
});

test('Block-AP training beats RTN block reconstruction loss on every block', async () => {
  const dir = tmp();
  const r = await runBlockAp(opts(join(dir, 'bap')));
  assert.equal(r.blocks.length, 4);
  for (const b of r.blocks) {
    assert.ok(b.valLoss! < b.valLossInit!, `block ${b.block}: val ${b.valLoss} !< RTN ${b.valLossInit}`);
  }
  // the phase breakdown: every phase ran, and together they fit in the run's time
  const phases = Object.entries(r.phases);
  assert.deepEqual(phases.map(([k]) => k).sort(), ['embed', 'fpPass', 'frozenPass', 'load', 'train', 'valPass', 'write']);
  for (const [k, v] of phases) assert.ok(v > 0, `phase ${k}: ${v} s`);
  const sum = phases.reduce((a, [, v]) => a + v, 0);
  assert.ok(sum <= r.seconds, `phases sum to ${sum} s, above the run's ${r.seconds} s`);
  assert.ok(r.phases.train > 0.5 * sum, `training took ${r.phases.train} of ${sum} s`);
  rmSync(dir, { recursive: true });
});

function cliArgs(out: string): string[] {
  return [CLI, 'block-ap', '--model', TINY, '--calib', CALIB, '--out', out, '--wbits', '2', '--group-size', '32',
    '--train-size', '48', '--val-size', '4', '--seqlen', '128', '--batch-size', '2', '--epochs', '2', '--quiet'];
}

test('a run killed mid-block (SIGKILL) resumes to a byte-identical checkpoint', async () => {
  const dir = tmp();
  const a = join(dir, 'a');
  const b = join(dir, 'b');
  assert.equal(await runKillable(cliArgs(a)), 0);
  // kill once block 1 has started training (its initial val loss is logged)
  const midBlock1 = (partial: string): boolean => {
    try {
      return readFileSync(join(partial, 'block-ap-log.jsonl'), 'utf8').includes('"block":1,"epoch":0');
    } catch {
      return false;
    }
  };
  assert.equal(await runKillable(cliArgs(b), { killWhen: () => midBlock1(b + '.partial') }), 'SIGKILL');
  assert.ok(!existsSync(b), 'no finished checkpoint after the kill');
  const state = JSON.parse(readFileSync(join(b + '.partial', 'state.json'), 'utf8')) as { finishedBlocks: number };
  assert.equal(state.finishedBlocks, 1);
  assert.equal(await runKillable(cliArgs(b)), 0);
  const [x, y] = [checkpointFiles(a), checkpointFiles(b)];
  assert.deepEqual([...y.keys()], [...x.keys()]);
  for (const [f, bytes] of x) assert.ok(bytes.equals(y.get(f)!), `${f} differs`);
  rmSync(dir, { recursive: true });
});

/**
 * The files of a checkpoint by name, but those that differ from run to run: the log and
 * report.html (seconds), and in eqat-recipe.json the process's peak memory.
 */
function checkpointFiles(dir: string): Map<string, Buffer> {
  const m = new Map<string, Buffer>();
  for (const f of readdirSync(dir).sort()) {
    if (f === 'block-ap-log.jsonl' || f === 'report.html') continue;
    const bytes = readFileSync(join(dir, f));
    m.set(f, f === 'eqat-recipe.json' ? Buffer.from(bytes.toString().replace(/"peak_rss_bytes": ?[0-9]+/g, '"peak_rss_bytes":_')) : bytes);
  }
  return m;
}

test('activation caches on disk (--max-ram 0) give the same checkpoint as in RAM, and are removed', async () => {
  const dir = tmp();
  const ram = await runBlockAp(opts(join(dir, 'ram'), { trainSize: 8, valSize: 2, epochs: 1 }));
  const disk = await runBlockAp(opts(join(dir, 'disk'), { trainSize: 8, valSize: 2, epochs: 1, maxRamBytes: 0 }));
  assert.equal(ram.cachesOnDisk, false);
  assert.equal(disk.cachesOnDisk, true);
  const a = checkpointFiles(join(dir, 'ram'));
  const b = checkpointFiles(join(dir, 'disk'));
  assert.deepEqual([...b.keys()], [...a.keys()]);
  for (const [f, bytes] of a) assert.ok(bytes.equals(b.get(f)!), `${f} differs`);
  assert.ok(!existsSync(join(dir, 'disk', 'cache')) && !existsSync(join(dir, 'disk.partial')));
  rmSync(dir, { recursive: true });
});

test('a non-finite loss stops the run naming block and step, and leaves no finished checkpoint', async () => {
  const dir = tmp();
  const out = join(dir, 'nan');
  await assert.rejects(
    runBlockAp(opts(out, { trainSize: 8, valSize: 2, epochs: 1, quantLr: 1e38, weightLr: 1e38 })),
    /block 1\/4, epoch 1, step \d+: loss is (NaN|Infinity)/,
  );
  assert.ok(!existsSync(out), 'no checkpoint at --out');
  rmSync(dir, { recursive: true });
});

test('bad recipes fail before writing anything', async () => {
  const dir = tmp();
  const out = join(dir, 'x');
  const openFiles = (): number => readdirSync('/proc/self/fd').length;
  const before = openFiles();
  await assert.rejects(runBlockAp(opts(out, { groupSize: 48 })), /--group-size: 48 does not divide hidden_size = 128/);
  await assert.rejects(runBlockAp(opts(out, { wbits: 5 })), /--wbits: must be 2, 3, 4 or 8/);
  await assert.rejects(runBlockAp(opts(out, { calib: null })), /--calib: is required when --epochs > 0/);
  await assert.rejects(runBlockAp(opts(out, { calib: join(dir, 'missing.txt') })), /missing\.txt/);
  await assert.rejects(runBlockAp(opts(out, { trainSize: 100000 })), /tokens/);
  assert.equal(openFiles(), before, 'the refused runs left no file open (the model files are closed)');
  assert.deepEqual(readdirSync(dir), []);
  await assert.rejects(runBlockAp(opts(TINY)), /already exists/);
  rmSync(dir, { recursive: true });
});

// ---------------------------------------------------------------------------------------------
// Resume: only the same run on the same inputs resumes

class Interrupt extends Error {}

/** A 4-block run of 4 steps per block, interrupted at step 2 of block 1 (block 0 finished). */
async function interruptedInBlock1(o: BlockApOptions): Promise<void> {
  const stop = (block: number, step: number): void => {
    if (block === 1 && step === 2) throw new Interrupt('stopped in block 1');
  };
  await assert.rejects(runBlockAp({ ...o, onStep: stop }), Interrupt);
  assert.equal((JSON.parse(readFileSync(join(o.out + '.partial', 'state.json'), 'utf8')) as { finishedBlocks: number }).finishedBlocks, 1);
}

const short = { trainSize: 8, valSize: 2, epochs: 1 };

/** Rewrites `path` with `bytes`, keeping its modification time (a size and time check sees nothing). */
function rewriteKeepingTime(path: string, bytes: Uint8Array | string): void {
  const { atime, mtime } = statSync(path);
  writeFileSync(path, bytes);
  utimesSync(path, atime, mtime);
}

test('a resume after the calibration data or a model file changed at the same path is refused naming it; --restart starts over', async () => {
  const dir = tmp();
  const calib = join(dir, 'calib.txt');
  const text = readFileSync(CALIB, 'utf8');
  writeFileSync(calib, text);
  const model = join(dir, 'model');
  cpSync(TINY, model, { recursive: true });
  for (const f of readdirSync(model)) chmodSync(join(model, f), 0o644);
  const out = join(dir, 'out');
  const partial = out + '.partial';
  const o = opts(out, { ...short, model, calib });
  await interruptedInBlock1(o);
  const state = readFileSync(join(partial, 'state.json'));
  const refused = (what: RegExp) => (e: Error) => {
    assert.ok(e.message.startsWith(`${partial}: holds an interrupted Block-AP run with other inputs: `), e.message);
    assert.match(e.message, what);
    assert.match(e.message, /; rerun with the same settings to resume it, or pass --restart to discard it and start over$/);
    return true;
  };
  rewriteKeepingTime(calib, text.replace('e', 'E')); // same size, same time, other contents
  await assert.rejects(runBlockAp(o), refused(/the calibration data .*calib\.txt has changed \(\d+ bytes, sha256 [0-9a-f]{12}… in the saved state; \d+ bytes, sha256 [0-9a-f]{12}… now\)/));
  rewriteKeepingTime(calib, text);
  const weights = join(model, 'model.safetensors');
  const original = readFileSync(weights);
  const changed = Buffer.from(original);
  changed[changed.length - 2]! ^= 0x40; // a bit of the last tensor
  rewriteKeepingTime(weights, changed);
  await assert.rejects(runBlockAp(o), refused(/the model file .*model\/model\.safetensors has changed/));
  await assert.rejects(runBlockAp(opts(out, { ...short, model, calib, seed: 3 })), refused(/seed \(--seed\) is 2 in the saved state, 3 now/));
  assert.ok(readFileSync(join(partial, 'state.json')).equals(state), 'a refused resume leaves the state alone');
  assert.ok(!existsSync(out));
  const r = await runBlockAp({ ...o, restart: true });
  assert.equal(r.resumedFrom, 0);
  assert.ok(existsSync(out) && !existsSync(partial));
  rmSync(dir, { recursive: true });
});

/** The (block, epoch) of each line of a Block-AP log. */
function logEntries(dir: string): string[] {
  return readFileSync(join(dir, 'block-ap-log.jsonl'), 'utf8').trim().split('\n').map((l) => {
    const e = JSON.parse(l) as { block: number; epoch: number };
    return `${e.block}/${e.epoch}`;
  });
}

test('after a resume the log holds each block and epoch once, as an uninterrupted run writes it', async () => {
  const dir = tmp();
  const a = join(dir, 'a');
  const b = join(dir, 'b');
  await runBlockAp(opts(a, short));
  await interruptedInBlock1(opts(b, short));
  assert.ok(logEntries(b + '.partial').includes('1/0'), 'the interrupted block had logged');
  const r = await runBlockAp(opts(b, short));
  assert.equal(r.resumedFrom, 1);
  assert.deepEqual(logEntries(b), logEntries(a));
  const [x, y] = [checkpointFiles(a), checkpointFiles(b)];
  for (const [f, bytes] of x) assert.ok(bytes.equals(y.get(f)!), `${f} differs`);
  rmSync(dir, { recursive: true });
});

test('damaged resume state (state.json, a finished shard) is an error naming the file and --restart', async () => {
  const dir = tmp();
  const out = join(dir, 'out');
  const o = opts(out, short);
  await interruptedInBlock1(o);
  const statePath = join(out + '.partial', 'state.json');
  const good = readFileSync(statePath, 'utf8');
  const unusable = (path: string, why: RegExp) => (e: Error) => {
    assert.ok(e.message.startsWith(`${path}: cannot resume from this Block-AP state (`), e.message);
    assert.match(e.message, why);
    assert.match(e.message, /\); pass --restart to discard it and start over$/);
    return true;
  };
  const cases: [string, RegExp][] = [
    [good.slice(0, good.length / 2), /JSON/],
    ['[]', /no recipe in it/],
    [JSON.stringify({ ...JSON.parse(good), finishedBlocks: 99 }), /finishedBlocks is 99, not a block count from 0 to 4/],
  ];
  for (const [text, why] of cases) {
    writeFileSync(statePath, text);
    await assert.rejects(runBlockAp(o), unusable(statePath, why));
  }
  // a state written before inputs were recorded cannot show that they are the same
  const { inputs: _, ...withoutInputs } = JSON.parse(good) as Record<string, unknown>;
  writeFileSync(statePath, JSON.stringify(withoutInputs));
  await assert.rejects(runBlockAp(o), /holds an interrupted Block-AP run with other inputs: no fingerprint of the model and data is recorded in the saved state; .*pass --restart/);
  writeFileSync(statePath, good);
  const shard = join(out + '.partial', 'model-00001-of-00005.safetensors');
  writeFileSync(shard, 'not a shard');
  await assert.rejects(runBlockAp(o), unusable(shard, /./));
  const r = await runBlockAp({ ...o, restart: true });
  assert.equal(r.resumedFrom, 0);
  rmSync(dir, { recursive: true });
});

test('--restart is a flag of every resumable command', () => {
  for (const command of ['block-ap', 'e2e-qp', 'quantize']) {
    const r = spawnSync(process.execPath, [CLI, command, '--help'], { encoding: 'utf8' });
    assert.match(r.stdout + r.stderr, /--restart\b.*discard/, command);
  }
});
