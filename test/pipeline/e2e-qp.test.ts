// E2E-QP on the bundled llama-tiny (quantized by RTN in the test): the end-to-end step-size
// gradient against finite differences of the whole-model loss, a short run that keeps the
// integers and zero points and changes only the scales, and bad requests.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runBlockAp, blockApDefaults } from '../../src/pipeline/block-ap.js';
import { E2eTrainer, e2eQpDefaults, runE2eQp } from '../../src/pipeline/e2e-qp.js';
import { WeightSource } from '../../src/model/weights.js';
import { PackedModel } from '../../src/model/quantized.js';
import { BLOCK_LINEARS, type BlockLinear } from '../../src/model/block.js';
import { SafetensorsModel } from '../../src/io/safetensors.js';
import { Tensor } from '../../src/engine/tensor.js';
import { Rng } from '../../src/engine/random.js';
import { REPO, TINY } from '../golden.js';
import { checkGrad } from '../util.js';

process.env['EQAT_CACHE_DIR'] = mkdtempSync(join(tmpdir(), 'eqat-cache-'));
const CALIB = join(REPO, 'fixtures', 'text', 'calib-sample.txt');
const work = mkdtempSync(join(tmpdir(), 'eqat-e2e-'));
const rtn = join(work, 'rtn-w3g32');
await runBlockAp({ ...blockApDefaults(3), model: TINY, calib: null, out: rtn, wbits: 3, groupSize: 32, epochs: 0, quiet: true });

test('end-to-end step-size gradients match finite differences of the model loss', () => {
  const src = WeightSource.open(rtn);
  const model = PackedModel.load(src);
  src.close();
  const T = 12;
  const mb = 2;
  const dscales = model.blocks.map((b) => {
    const d = {} as Record<BlockLinear, Tensor>;
    for (const [key] of BLOCK_LINEARS) d[key] = Tensor.zeros(b.scales[key].shape);
    return d;
  });
  const trainer = new E2eTrainer(model, mb, T, dscales);
  const rng = new Rng(5);
  const ids = new Int32Array(mb * T).map(() => rng.int(0, model.cfg.vocabSize));
  const labels = new Int32Array(mb * T).map((_, i) => (i % T === T - 1 ? -100 : ids[i + 1]!));
  labels[3] = -100; // a masked position inside a sequence
  trainer.lossAndGrad(ids, labels);
  const loss = (): number => {
    const saved = dscales.map((d) => BLOCK_LINEARS.map(([k]) => d[k].f32.slice()));
    const v = trainer.lossAndGrad(ids, labels);
    dscales.forEach((d, i) => BLOCK_LINEARS.forEach(([k], j) => d[k].f32.set(saved[i]![j]!)));
    return v;
  };
  for (const [l, key] of [[0, 'q'], [1, 'down'], [3, 'v'], [2, 'gate']] as const) {
    const s = model.blocks[l]!.scales[key];
    // scales are ~1e-2; a relative step keeps the f32 loss noise small against the change
    checkGrad(loss, s.f32, dscales[l]![key].f32, { eps: 2e-4, atol: 2e-2, rtol: 5e-2, samples: 6, what: `block ${l} ${key} scales` });
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
  await assert.rejects(runE2eQp({ ...base, model: rtn, out: join(work, 'x2'), batchSize: 6, microBatchSize: 4 }), /--batch-size: must be a multiple of --micro-batch-size/);
});

test.after(() => rmSync(work, { recursive: true, force: true }));
