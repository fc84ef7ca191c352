// CUDA graphs (CudaStepGraphs): a Block-AP step replayed from its captured graph gives the same
// losses and parameters, bit for bit, as the same steps run op by op (the replayed trainer driven
// as the pipeline drives it, the next batch staged while a step runs); a sequence that does
// something a graph cannot hold (a host copy) falls back to eager runs without losing the run;
// EQAT_CUDA_GRAPHS=0 turns replay off and another value than 0/1 is refused; nothing is left
// behind on the device.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CudaStepGraphs, toDevice, uploadDevice, downloadDevice, freeDevice } from '../../src/engine/cuda.js';
import { Rng } from '../../src/engine/random.js';
import { BLOCK_PARAM_NAMES } from '../../src/model/block.js';
import { BlockTrainer } from '../../src/pipeline/block-trainer.js';
import { cudaBackend as cuda } from '../../src/backend/cuda.js';
import { scaleCuda } from '../../src/ops/cuda/elementwise.js';
import { randomBlockParams, tinyConfig } from '../model/tiny-config.js';
import { assertBitExact, testOnBackends } from './backends.js';
import { cudaBackend } from '../../src/engine/cuda.js';
import { EmulatorBackend } from './emu/backend.js';

/** Runs fn with EQAT_CUDA_GRAPHS set to value (undefined: unset), restoring it after. */
function withGraphsEnv<T>(value: string | undefined, fn: () => T): T {
  const saved = process.env['EQAT_CUDA_GRAPHS'];
  if (value === undefined) delete process.env['EQAT_CUDA_GRAPHS'];
  else process.env['EQAT_CUDA_GRAPHS'] = value;
  try {
    return fn();
  } finally {
    if (saved === undefined) delete process.env['EQAT_CUDA_GRAPHS'];
    else process.env['EQAT_CUDA_GRAPHS'] = saved;
  }
}

testOnBackends('graph replay of the Block-AP step equals the eager steps bit for bit', () => {
  const cfg = tinyConfig({ hiddenSize: 64, intermediateSize: 48, numHeads: 4, numKvHeads: 2, headDim: 8 });
  const B = 2, T = 9, bits = 2, G = 16;
  const b = cudaBackend();
  const launchesBefore = b instanceof EmulatorBackend ? b.graphLaunches : 0;
  const graphsBefore = b instanceof EmulatorBackend ? b.liveGraphs : 0;
  const replayed = withGraphsEnv(undefined, () => new BlockTrainer(cuda, cfg, B, T, bits, G, true, 'f32'));
  const eager = withGraphsEnv('0', () => new BlockTrainer(cuda, cfg, B, T, bits, G, true, 'f32'));
  try {
    assert.equal(replayed.capture.eagerReason, null);
    assert.equal(eager.capture.eagerReason, 'EQAT_CUDA_GRAPHS=0');
    const rng = new Rng(11);
    randomBlockParams(rng, replayed.P, eager.P);
    replayed.initQuant();
    eager.initQuant();
    // learning rates change every step (they reach the graph through device memory); steps 3
    // and 4 leave the weights alone, which is a second graph
    const lrs: [number, number][] = [[1e-3, 2e-4], [9e-4, 1.5e-4], [7e-4, 1e-4], [5e-4, 0], [3e-4, 0], [1e-4, 2e-5]];
    const C = cfg.hiddenSize;
    const batches = lrs.map(() => {
      const x = new Float32Array(B * T * C), y = new Float32Array(B * T * C);
      rng.fillNormal(x, 1);
      rng.fillNormal(y, 1);
      return { x, y };
    });
    // the replayed trainer as the pipeline drives it: the next batch goes into the staging while
    // the step runs; the eager one step by step
    replayed.x.f32.set(batches[0]!.x);
    replayed.y.f32.set(batches[0]!.y);
    lrs.forEach(([lrQ, lrW], step) => {
      const staged = replayed.x;
      replayed.submit(step, lrQ, lrW, 0.01);
      assert.notEqual(replayed.x, staged, 'x alternates between two staging buffers');
      const next = batches[step + 1];
      if (next) {
        replayed.x.f32.set(next.x);
        replayed.y.f32.set(next.y);
      }
      const lr = replayed.finish();
      eager.x.f32.set(batches[step]!.x);
      eager.y.f32.set(batches[step]!.y);
      const le = eager.step(step, lrQ, lrW, 0.01);
      assertBitExact([lr], [le], `loss at step ${step}`);
    });
    assert.throws(() => replayed.finish(), /internal: finish\(\) without submit\(\)/);
    assert.equal(replayed.capture.eagerReason, null, 'no capture failed');
    assert.equal(replayed.capture.graphs, 2, 'one graph per set of updated groups');
    assert.equal(eager.capture.graphs, 0);
    if (b instanceof EmulatorBackend) assert.equal(b.graphLaunches - launchesBefore, 4, 'steps 2, 3, 5 and 6 were graph launches');
    replayed.freeze();
    eager.freeze();
    for (const k of BLOCK_PARAM_NAMES) if (replayed.P[k]) assertBitExact(replayed.P[k]!.f32, eager.P[k]!.f32, `trained ${k}`);
  } finally {
    replayed.free();
    eager.free();
  }
  if (b instanceof EmulatorBackend) assert.equal(b.liveGraphs, graphsBefore, 'graphs released');
});

testOnBackends('a sequence a graph cannot hold runs eagerly, and says why', (s) => {
  const x = s.upload(new Float32Array([1, 2, 3]));
  const graphs = withGraphsEnv(undefined, () => new CudaStepGraphs('a test sequence'));
  try {
    let value = 10;
    const sequence = (): void => {
      uploadDevice(x, new Float32Array([value, value, value])); // a host copy: not allowed in a graph
      scaleCuda(x, x, 2);
    };
    for (let run = 0; run < 3; run++, value++) {
      graphs.run('k', sequence);
      assert.deepEqual(Array.from(downloadDevice<Float32Array>(x)), [2 * value, 2 * value, 2 * value], `run ${run} took effect`);
    }
    assert.match(graphs.eagerReason!, /^capturing a CUDA graph of a test sequence failed: uploadDevice: not allowed while a CUDA graph of a test sequence is being captured$/);
    assert.equal(graphs.graphs, 0);
    // the device is usable afterwards: a fresh allocation and copy work (no capture left open)
    const y = toDevice(new Float32Array([4]));
    freeDevice(y);
  } finally {
    graphs.free();
  }
});

test('EQAT_CUDA_GRAPHS other than 0 or 1 is refused naming the variable, before any device work', () => {
  for (const value of ['yes', 'off', '2']) {
    assert.throws(
      () => withGraphsEnv(value, () => new CudaStepGraphs('a test sequence')),
      new RegExp(`^Error: EQAT_CUDA_GRAPHS=${value}: must be 0 \\(op by op\\) or 1 \\(graphs, the default\\)$`),
    );
  }
});
