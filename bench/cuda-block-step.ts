// The Block-AP training step on CUDA for one transformer block of a given shape, with random
// weights and activations: milliseconds per step, achieved TFLOP/s, and device memory. This is
// the inner step the anchors time for the official implementation (w2g64, batch
// 2 × 2048 tokens): one fake-quant forward of every linear, the block forward, the MSE loss, the
// backward, the straight-through estimator and AdamW over all block parameters.
//
// usage: node dist/bench/cuda-block-step.js [--shape 7b|70b|small] [--batch B] [--seqlen T]
//                                           [--steps N] [--wbits b] [--group-size G]
// Exits 0 with a message where no CUDA device is usable.
//
// FLOPs counted per step: linears 6 · tokens · (linear weights) (forward 2, backward 4);
// causal attention forward 2 · B · H · T² · D (QKᵀ and PV over the lower triangle), backward
// 2.5 × that (five products instead of two). Norms, RoPE, SwiGLU, fake quant and AdamW are
// memory-bound and not counted. Memory: the peak of eqat's device allocations, and the device
// memory in use by the process (total − free, which adds the CUDA context, cuBLASLt's
// workspace and the kernels) after the timed steps.
import { nativeFn } from '../src/engine/native.js';
import { deviceAllocStats, probeCuda, resetDevicePeak, synchronizeCuda } from '../src/engine/cuda.js';
import { Rng } from '../src/engine/random.js';
import type { ModelConfig } from '../src/model/config.js';
import { BLOCK_LINEARS, BLOCK_PARAM_NAMES } from '../src/model/block.js';
import { BlockTrainerCuda } from '../src/pipeline/block-trainer-cuda.js';
import { linearDims } from '../src/pipeline/block-trainer.js';

const SHAPES: Record<string, Pick<ModelConfig, 'hiddenSize' | 'intermediateSize' | 'numHeads' | 'numKvHeads' | 'headDim'>> = {
  '7b': { hiddenSize: 4096, intermediateSize: 11008, numHeads: 32, numKvHeads: 32, headDim: 128 },
  '70b': { hiddenSize: 8192, intermediateSize: 28672, numHeads: 64, numKvHeads: 8, headDim: 128 },
  small: { hiddenSize: 384, intermediateSize: 1024, numHeads: 6, numKvHeads: 2, headDim: 64 },
};

const argv = process.argv.slice(2);
const flag = (name: string, dflt: string): string => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1]! : dflt;
};
const shapeName = flag('--shape', '7b');
const shape = SHAPES[shapeName];
if (!shape) throw new Error(`bench/cuda-block-step: --shape must be one of ${Object.keys(SHAPES).join(', ')}, got ${shapeName}`);
const B = Number(flag('--batch', '2'));
const T = Number(flag('--seqlen', '2048'));
const steps = Number(flag('--steps', '20'));
const bits = Number(flag('--wbits', '2'));
const G = Number(flag('--group-size', '64'));

const probe = probeCuda();
if (!probe.available) {
  console.log(`bench/cuda-block-step: no CUDA device (${probe.reason}); skipping`);
  process.exit(0);
}
const dev = probe.devices[probe.device ?? 0]!;
const cfg: ModelConfig = {
  modelType: 'llama',
  vocabSize: 32000,
  numLayers: 1,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  ropeScaling: { type: 'default' },
  maxPositionEmbeddings: Math.max(4096, T),
  qkvBias: false,
  oBias: false,
  mlpBias: false,
  qkNorm: false,
  tieWordEmbeddings: false,
  slidingWindow: null,
  bosTokenId: 1,
  eosTokenIds: [2],
  storageDtype: 'f32',
  ...shape,
};

const memInfo = nativeFn<() => { free: number; total: number }>('cudaMemInfo');
const before = memInfo();
resetDevicePeak();
const t = new BlockTrainerCuda(cfg, B, T, bits, G, true);
try {
  const rng = new Rng(1);
  for (const name of BLOCK_PARAM_NAMES) {
    const p = t.P[name];
    if (!p) continue;
    if (name.endsWith('Norm')) p.f32.fill(1);
    else rng.fillNormal(p.f32, 0.02);
  }
  rng.fillNormal(t.x.f32, 1);
  rng.fillNormal(t.y.f32, 1);
  t.initQuant();
  for (let i = 0; i < 3; i++) t.step(i, 1e-4, 2e-5, 0); // warm-up: kernel compiles, cuBLASLt heuristics
  synchronizeCuda();
  const times: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    t.step(3 + i, 1e-4, 2e-5, 0); // returns after the loss is read back: the step has finished
    times.push(performance.now() - t0);
  }
  const after = memInfo();
  times.sort((a, b) => a - b);
  const median = times[Math.floor(times.length / 2)]!;
  let linearParams = 0;
  for (const [key] of BLOCK_LINEARS) {
    const [O, I] = linearDims(cfg, key);
    linearParams += O * I;
  }
  const tokens = B * T;
  const attnFwd = 2 * B * cfg.numHeads * T * T * cfg.headDim;
  const flops = 6 * tokens * linearParams + 3.5 * attnFwd;
  const gib = (b: number) => (b / 2 ** 30).toFixed(2);
  console.log(`# Block-AP step on CUDA: ${shapeName}-shaped block, w${bits}g${G}, batch ${B} × ${T} tokens (${dev.name}), ${new Date().toISOString()}`);
  console.log('| ms/step (median) | min | max | TFLOP/s | eqat allocations peak GiB | process device memory GiB |');
  console.log('|---|---|---|---|---|---|');
  console.log(
    `| ${median.toFixed(2)} | ${times[0]!.toFixed(2)} | ${times[times.length - 1]!.toFixed(2)} | ${(flops / (median / 1000) / 1e12).toFixed(1)} | ${gib(deviceAllocStats().peakBytes)} | ${gib(after.total - after.free)} (${gib(before.total - before.free)} before the trainer) |`,
  );
} finally {
  t.free();
}
