// Block-AP on the bundled llama-tiny: RTN (--epochs 0) equals direct min-max fake
// quantization and loads back bit-identically; training beats RTN's block reconstruction loss;
// a run killed mid-block (SIGKILL) resumes to a byte-identical checkpoint; bad recipes fail
// before any output is written.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
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
  const files = readdirSync(a).filter((f) => f !== 'block-ap-log.jsonl').sort();
  assert.deepEqual(readdirSync(b).filter((f) => f !== 'block-ap-log.jsonl').sort(), files);
  for (const f of files) assert.ok(readFileSync(join(a, f)).equals(readFileSync(join(b, f))), `${f} differs`);
  rmSync(dir, { recursive: true });
});

function checkpointFiles(dir: string): Map<string, Buffer> {
  const m = new Map<string, Buffer>();
  for (const f of readdirSync(dir).sort()) if (f !== 'block-ap-log.jsonl') m.set(f, readFileSync(join(dir, f)));
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
    /block 0, epoch 1, step \d+: loss is (NaN|Infinity)/,
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
