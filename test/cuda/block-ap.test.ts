// Block-AP with --device cuda on the bundled llama-tiny against the same run on the CPU, on
// the CUDA backends of backends.ts (the GPU where present, the CPU emulator of the kernel
// sources elsewhere): the per-block losses agree to rounding, the checkpoints hold the same
// frozen integers except where a weight sits on a rounding boundary, the norms agree, and the
// CUDA run releases every device allocation it made. And the trainers themselves, step by step,
// for every family variant (biases, q/k norm, sliding window), since llama-tiny has none of them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deviceAllocStats, freeDevice, setCudaBackend, setDeviceMemoryBudget } from '../../src/engine/cuda.js';
import { ADAMW_SCALARS } from '../../src/ops/cuda/adamw.js';
import { allocReducePartials } from '../../src/ops/cuda/reduce.js';
import { QuantParams } from '../../src/pipeline/block-trainer.js';
import { runBlockAp, blockApDefaults, type BlockApOptions } from '../../src/pipeline/block-ap.js';
import { WeightSource } from '../../src/model/weights.js';
import { allocBlockParams, blockArenaLength, BLOCK_LINEARS, BlockWorkspace, largestLinearSize, linearRowWidth } from '../../src/model/block.js';
import { cudaBackend } from '../../src/backend/cuda.js';
import { REPO, TINY } from '../golden.js';
import { assertClose } from '../util.js';
import { backendCases, testOnBackends } from './backends.js';
import { AttentionTcScratch } from '../../src/ops/cuda/attention-tc.js';
import { Rng } from '../../src/engine/random.js';
import { BLOCK_PARAM_NAMES } from '../../src/model/block.js';
import { BlockTrainer } from '../../src/pipeline/block-trainer.js';
import { cpuBackend } from '../../src/backend/cpu.js';
import type { DeviceArray } from '../../src/engine/cuda.js';
import { BLOCK_VARIANTS, randomBlockParams, tinyConfig } from '../model/tiny-config.js';
import { EmulatorBackend } from './emu/backend.js';
import { pipelineSkip } from '../tier.js';

process.env['EQAT_CACHE_DIR'] ??= mkdtempSync(join(tmpdir(), 'eqat-cache-'));

const CALIB = join(REPO, 'fixtures', 'text', 'calib-sample.txt');

function opts(out: string, device: 'cpu' | 'cuda', precision?: 'f32' | 'bf16'): BlockApOptions {
  // small enough for the kernel emulator: 4 blocks × 2 epochs × 2 steps
  return {
    ...blockApDefaults(2),
    model: TINY,
    calib: CALIB,
    out,
    wbits: 2,
    groupSize: 32,
    trainSize: 4,
    valSize: 3, // odd: the evaluation's batch-1 tail runs too
    seqlen: 16,
    batchSize: 2,
    epochs: 2,
    quiet: true,
    device,
    precision,
  };
}

const dir = mkdtempSync(join(tmpdir(), 'eqat-bap-cuda-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
let cpuRun: Promise<Awaited<ReturnType<typeof runBlockAp>>> | null = null;

for (const bc of backendCases()) {
  test(`cuda Block-AP --device cuda --precision f32 matches the CPU run on llama-tiny [${bc.name}]`, { skip: pipelineSkip(bc) }, async () => {
    cpuRun ??= runBlockAp(opts(join(dir, 'cpu'), 'cpu'));
    const cpu = await cpuRun;
    const b = bc.backend();
    const live = b instanceof EmulatorBackend ? b.liveAllocations : 0;
    setCudaBackend(b);
    let gpu;
    try {
      gpu = await runBlockAp(opts(join(dir, `cuda-${bc.name}`), 'cuda', 'f32'));
    } finally {
      setCudaBackend(null);
    }
    if (b instanceof EmulatorBackend) assert.equal(b.liveAllocations, live, 'device allocations leaked');

    assert.equal(gpu.blocks.length, cpu.blocks.length);
    for (let i = 0; i < cpu.blocks.length; i++) {
      const c = cpu.blocks[i]!, g = gpu.blocks[i]!;
      for (const k of ['valLossInit', 'trainLoss', 'valLoss'] as const) {
        assertClose([g[k]!], [c[k]!], { atol: 0, rtol: 2e-3, what: `block ${i} ${k}` });
      }
    }
    const recipe = JSON.parse(readFileSync(join(gpu.out, 'eqat-recipe.json'), 'utf8')) as { device: string; precision: string };
    assert.deepEqual([recipe.device, recipe.precision], ['cuda', 'f32']);

    const qc = WeightSource.open(cpu.out), qg = WeightSource.open(gpu.out);
    const pc = allocBlockParams(qc.cfg).params, pg = allocBlockParams(qc.cfg).params;
    let weights = 0, differ = 0;
    for (let i = 0; i < qc.cfg.numLayers; i++) {
      qc.loadBlock(i, pc);
      qg.loadBlock(i, pg);
      for (const [key] of BLOCK_LINEARS) {
        const a = pc[key].f32, g = pg[key].f32;
        weights += a.length;
        for (let j = 0; j < a.length; j++) if (a[j] !== g[j]) differ++;
      }
      assertClose(pg.inputNorm.f32, pc.inputNorm.f32, { atol: 1e-6, rtol: 1e-4, what: `block ${i} input norm` });
      assertClose(pg.postNorm.f32, pc.postNorm.f32, { atol: 1e-6, rtol: 1e-4, what: `block ${i} post norm` });
    }
    qc.close();
    qg.close();
    assert.ok(differ <= weights * 1e-3, `${differ} of ${weights} dequantized weights differ (rounding-boundary flips only)`);
  });
}

// bf16 GEMM inputs carry 8 significant bits: losses then agree to about 1%, and parameters to
// within what three AdamW steps of lr 1e-3 can move them apart (each step moves an element by
// at most about lr, whichever way its gradient's noise points).
const PRECISIONS = [
  ['f32', { loss: 1e-5, atol: 1e-6, rtol: 1e-5 }],
  ['bf16', { loss: 2e-2, atol: 6e-3, rtol: 0 }],
] as const;

type Tolerance = (typeof PRECISIONS)[number][1];

/**
 * The CPU and CUDA trainers from the same parameters through the same batches, one step per
 * entry of lrWeights (weight learning rate; step sizes and zero points take 1e-3): equal losses
 * at every step and equal trained parameters, to `tol`. `check` sees the CUDA trainer first.
 */
function compareTrainerSteps(
  cfg: ReturnType<typeof tinyConfig>,
  B: number,
  T: number,
  precision: 'f32' | 'bf16',
  tol: Tolerance,
  seed: number,
  lrWeights: readonly number[],
  check: (gpu: BlockTrainer<DeviceArray>) => void = () => {},
): void {
  const bits = 2, G = 16;
  const cpu = new BlockTrainer(cpuBackend, cfg, B, T, bits, G, true);
  const gpu = new BlockTrainer(cudaBackend, cfg, B, T, bits, G, true, precision);
  try {
    check(gpu);
    const rng = new Rng(seed);
    randomBlockParams(rng, cpu.P, gpu.P);
    cpu.initQuant();
    gpu.initQuant();
    lrWeights.forEach((lrWeight, step) => {
      rng.fillNormal(cpu.x.f32, 1);
      rng.fillNormal(cpu.y.f32, 1);
      gpu.x.f32.set(cpu.x.f32);
      gpu.y.f32.set(cpu.y.f32);
      const lc = cpu.step(step, 1e-3, lrWeight, 0.01), lg = gpu.step(step, 1e-3, lrWeight, 0.01);
      assertClose([lg], [lc], { atol: 0, rtol: tol.loss, what: `loss at step ${step}` });
    });
    cpu.freeze();
    gpu.freeze();
    for (const k of BLOCK_PARAM_NAMES) {
      if (cpu.P[k]) assertClose(gpu.P[k]!.f32, cpu.P[k]!.f32, { atol: tol.atol, rtol: tol.rtol, what: `trained ${k}` });
    }
  } finally {
    cpu.free();
    gpu.free();
  }
}

// The tensor-core attention (EQAT_CUDA_ATTENTION=tc) takes head dims 64 and 128 in bf16: the
// same comparison on a block with head dim 64 (T = 70 crosses its 64-row tiles).
testOnBackends('Block-AP trainer steps (bf16, EQAT_CUDA_ATTENTION=tc, head dim 64) match the CPU trainer', () => {
  const saved = process.env['EQAT_CUDA_ATTENTION'];
  process.env['EQAT_CUDA_ATTENTION'] = 'tc';
  try {
    const cfg = tinyConfig({ hiddenSize: 64, intermediateSize: 48, numHeads: 2, numKvHeads: 1, headDim: 64 });
    compareTrainerSteps(cfg, 1, 70, 'bf16', PRECISIONS[1][1], 6, [1e-3, 1e-3, 1e-3], (gpu) => {
      assert.ok(gpu['ws'].attention instanceof AttentionTcScratch, 'the workspace runs the tensor-core attention');
    });
  } finally {
    if (saved === undefined) delete process.env['EQAT_CUDA_ATTENTION'];
    else process.env['EQAT_CUDA_ATTENTION'] = saved;
  }
});

for (const [name, over] of BLOCK_VARIANTS) for (const [precision, tol] of PRECISIONS) {
  testOnBackends(`Block-AP trainer steps (${precision}) match the CPU trainer: ${name}`, () => {
    // hidden 64 and head dim 8 so that group size 16 divides every linear's input
    const cfg = tinyConfig({ ...over, hiddenSize: 64, intermediateSize: 48, numHeads: 4, numKvHeads: 2, headDim: 8 });
    // the last step trains step sizes and zero points alone (weight lr 0)
    compareTrainerSteps(cfg, 2, 9, precision, tol, 5, [1e-3, 1e-3, 1e-3, 0]);
  });
}

for (const bc of backendCases()) {
  test(`cuda Block-AP --device cuda (bf16 GEMMs, the default) stays close to the CPU run on llama-tiny [${bc.name}]`, { skip: pipelineSkip(bc) }, async () => {
    cpuRun ??= runBlockAp(opts(join(dir, 'cpu'), 'cpu'));
    const cpu = await cpuRun;
    setCudaBackend(bc.backend());
    let gpu;
    try {
      gpu = await runBlockAp(opts(join(dir, `cuda-bf16-${bc.name}`), 'cuda'));
    } finally {
      setCudaBackend(null);
    }
    const recipe = JSON.parse(readFileSync(join(gpu.out, 'eqat-recipe.json'), 'utf8')) as { precision: string };
    assert.equal(recipe.precision, 'bf16');
    for (let i = 0; i < cpu.blocks.length; i++) {
      const c = cpu.blocks[i]!, g = gpu.blocks[i]!;
      for (const k of ['valLossInit', 'valLoss'] as const) assertClose([g[k]!], [c[k]!], { atol: 0, rtol: 3e-2, what: `block ${i} ${k}` });
    }
  });
}

test('--precision bf16 on the CPU is refused before anything is written', async () => {
  const out = join(dir, 'refused');
  await assert.rejects(runBlockAp(opts(out, 'cpu', 'bf16')), /--precision: bf16 needs --device cuda/);
  assert.equal(existsSync(out), false);
  assert.equal(existsSync(out + '.partial'), false);
});

for (const bc of backendCases()) {
  test(`cuda Block-AP over the GPU memory budget stops before anything is written, leaking nothing [${bc.name}]`, { skip: bc.skip }, async () => {
    const b = bc.backend();
    const live = b instanceof EmulatorBackend ? b.liveAllocations : 0;
    const out = join(dir, `over-budget-${bc.name}`);
    setCudaBackend(b);
    setDeviceMemoryBudget(2 ** 20, '--max-gpu-memory 0.0009765625');
    try {
      await assert.rejects(runBlockAp(opts(out, 'cuda')), /^Error: --max-gpu-memory 0\.0009765625: allocating [\d.]+ MiB more on the GPU \([\d.]+ MiB held\) would exceed 1\.0 MiB/);
    } finally {
      setDeviceMemoryBudget(null);
      setCudaBackend(null);
    }
    if (b instanceof EmulatorBackend) assert.equal(b.liveAllocations, live, 'device allocations leaked');
    assert.equal(existsSync(out), false);
    assert.equal(existsSync(out + '.partial'), false);
  });
}

testOnBackends('the Block-AP trainer holds its parameter state once and no weight gradients (the linears take AdamW inside the backward)', () => {
  // byte for byte: a gradient buffer for the linears (4 bytes per weight) would show here
  const cfg = tinyConfig({ hiddenSize: 16, intermediateSize: 24, numHeads: 2, numKvHeads: 1, headDim: 8 });
  const B = 2, T = 8, G = 8, C = cfg.hiddenSize;
  const bytesOf = (make: () => { free(): void }): number => {
    const before = deviceAllocStats().liveBytes;
    const x = make();
    const bytes = deviceAllocStats().liveBytes - before;
    x.free();
    return bytes;
  };
  for (const precision of ['f32', 'bf16'] as const) {
    const trainer = bytesOf(() => new BlockTrainer(cudaBackend, cfg, B, T, 2, G, true, precision));
    const workspace = bytesOf(() => new BlockWorkspace(cudaBackend, cfg, B, T, { training: true, precision }));
    const partials = bytesOf(() => {
      const a = allocReducePartials();
      return { free: () => freeDevice(a) };
    });
    const n = blockArenaLength(cfg), normsAndBiases = blockArenaLength(cfg, false), q = QuantParams.count(cfg, G);
    const largest = largestLinearSize(cfg), rows = B * T * linearRowWidth(cfg);
    const expected =
      4 * 3 * n + // P, AdamW m and v
      4 * normsAndBiases + // gradients of norms and biases only
      4 * 4 * q + // step sizes and zero points, their gradients, m and v
      2 * 4 * ADAMW_SCALARS +
      (precision === 'f32' ? 4 * largest : 2 * (rows + largest)) + // f32 weight tile, or bf16 copies of a GEMM's dout and weight
      (precision === 'f32' ? 0 : 2 * (n - normsAndBiases)) + // bf16: the forward's fake-quantized weights, kept for the backward
      4 * largest + // the weight gradient of the linear at work
      workspace +
      4 * 4 * B * T * C + // x, y, output, output gradient
      partials;
    assert.equal(trainer, expected, `${precision}: trainer device bytes`);
  }
});
