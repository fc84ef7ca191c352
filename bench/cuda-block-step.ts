// The Block-AP training step on CUDA for one transformer block of a given shape, with random
// weights and activations: milliseconds per step, achieved TFLOP/s, and device memory. This is
// the inner step the issue's anchors time for the official implementation (w2g64, batch
// 2 × 2048 tokens): one fake-quant forward of every linear, the block forward, the MSE loss, the
// backward, the straight-through estimator and AdamW over all block parameters.
//
// usage: node dist/bench/cuda-block-step.js [--shape 7b|70b|small] [--batch B] [--seqlen T]
//                                           [--steps N] [--wbits b] [--group-size G] [--precision bf16|f32]
//                                           [--profile]
// --profile: instead of timing whole steps, run them op by op with a synchronization around
// every kernel and GEMM (bench/cuda-profile.ts) and print where a step spends its time.
// Exits 0 with a message where no CUDA device is usable.
//
// FLOPs counted per step: linears 6 · tokens · (linear weights) (forward 2, backward 4);
// causal attention forward 2 · B · H · T² · D (QKᵀ and PV over the lower triangle), backward
// 2.5 × that (five products instead of two). Norms, RoPE, SwiGLU, fake quant and AdamW are
// memory-bound and not counted. Memory: the peak of eqat's device allocations, and the device
// memory in use by the process (total − free, which adds the CUDA context, cuBLASLt's
// workspace and the kernels) after the timed steps.
import { attentionPathCuda } from '../src/ops/cuda/attention-gemm.js';
import { deviceAllocStats, deviceMemInfo, resetDevicePeak, synchronizeCuda } from '../src/engine/cuda.js';
import { Rng } from '../src/engine/random.js';
import type { ModelConfig } from '../src/model/config.js';
import { BLOCK_LINEARS, BLOCK_PARAM_NAMES, linearDims } from '../src/model/block.js';
import { BlockTrainer } from '../src/pipeline/block-trainer.js';
import { cudaBackend } from '../src/backend/cuda.js';
import { installCudaProfiler, printProfile } from './cuda-profile.js';
import { cudaDeviceOrSkip, flagValue, shapeConfig } from './shapes.js';

const argv = process.argv.slice(2);
const shapeName = flagValue(argv, '--shape', '7b');
const B = Number(flagValue(argv, '--batch', '2'));
const T = Number(flagValue(argv, '--seqlen', '2048'));
const cfg: ModelConfig = { ...shapeConfig(shapeName, T, 'bench/cuda-block-step'), numLayers: 1 };
const steps = Number(flagValue(argv, '--steps', '20'));
const bits = Number(flagValue(argv, '--wbits', '2'));
const G = Number(flagValue(argv, '--group-size', '64'));
const precision = flagValue(argv, '--precision', 'bf16') as 'f32' | 'bf16';

const dev = cudaDeviceOrSkip('bench/cuda-block-step');
const profiler = argv.includes('--profile') ? installCudaProfiler() : null;
const before = deviceMemInfo();
resetDevicePeak();
const t = new BlockTrainer(cudaBackend, cfg, B, T, bits, G, true, precision);
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
  if (profiler) {
    profiler.reset();
    const n = Math.min(steps, 3);
    for (let i = 0; i < n; i++) t.step(3 + i, 1e-4, 2e-5, 0);
    console.log(`# ${shapeName}-shaped block, w${bits}g${G}, batch ${B} × ${T}, ${precision} GEMMs (${dev.name}), attention: ${attentionPathCuda()}`);
    printProfile(profiler.totals(), n);
    process.exit(0);
  }
  const times: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    t.step(3 + i, 1e-4, 2e-5, 0); // returns after the loss is read back: the step has finished
    times.push(performance.now() - t0);
  }
  const after = deviceMemInfo();
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
  console.log(`# Block-AP step on CUDA: ${shapeName}-shaped block, w${bits}g${G}, batch ${B} × ${T} tokens, ${precision} GEMMs (${dev.name}), ${new Date().toISOString()}`);
  console.log(`# steps ${t.capture.eagerReason === null ? 'replayed from a CUDA graph' : `run op by op (${t.capture.eagerReason})`}; attention: ${attentionPathCuda()}`);
  console.log('| ms/step (median) | min | max | TFLOP/s | eqat allocations peak GiB | process device memory GiB |');
  console.log('|---|---|---|---|---|---|');
  console.log(
    `| ${median.toFixed(2)} | ${times[0]!.toFixed(2)} | ${times[times.length - 1]!.toFixed(2)} | ${(flops / (median / 1000) / 1e12).toFixed(1)} | ${gib(deviceAllocStats().peakBytes)} | ${gib(after.total - after.free)} (${gib(before.total - before.free)} before the trainer) |`,
  );
} finally {
  t.free();
}
