// One E2E-QP optimizer step on CUDA for a whole model of a given shape with random packed
// weights (nothing is downloaded): the model stays packed on the GPU, and the step is `accum`
// micro-batches of mb × T tokens (forward, head, backward with per-block recomputation,
// step-size gradients) plus gradient clipping and AdamW over every step size. Reports seconds
// per micro-batch and per optimizer step, tokens/s, and device memory. The issue's question:
// does a 2-bit 70B-shaped model train end to end on one 80 GB GPU, and how fast.
//
// usage: node dist/bench/cuda-e2e-step.js [--shape 70b|7b|small] [--layers L] [--micro-batch mb]
//                                         [--seqlen T] [--accum n] [--wbits b] [--group-size G]
//                                         [--precision bf16|f32]
// Exits 0 with a message where no CUDA device is usable. Host memory: the packed weights and
// the f32 step-size state (params, grads, moments) are built on the host first (≈ 40 GB for 70B).
import { attentionPathCuda } from '../src/ops/cuda/attention-gemm.js';
import { deviceAllocStats, deviceMemInfo, resetDevicePeak } from '../src/engine/cuda.js';
import { Rng } from '../src/engine/random.js';
import { Tensor } from '../src/engine/tensor.js';
import { BLOCK_LINEARS, BLOCK_PARAM_NAMES, blockParamShapes, type BlockLinear, type BlockParams } from '../src/model/block.js';
import { PackedModel, type PackedBlock } from '../src/model/quantized.js';
import { gptqFormat, packedWords } from '../src/quant/formats.js';
import type { PackedWeight } from '../src/quant/packed-linear.js';
import { ScaleState } from '../src/pipeline/e2e-qp.js';
import { E2eTrainer } from '../src/pipeline/e2e-trainer.js';
import { cudaBackend } from '../src/backend/cuda.js';
import { cudaDeviceOrSkip, flagValue, shapeConfig } from './shapes.js';

const argv = process.argv.slice(2);
const shapeName = flagValue(argv, '--shape', '70b');
const T = Number(flagValue(argv, '--seqlen', '2048'));
const cfg = shapeConfig(shapeName, T, 'bench/cuda-e2e-step');
cfg.numLayers = Number(flagValue(argv, '--layers', String(cfg.numLayers)));
const mb = Number(flagValue(argv, '--micro-batch', '1'));
const accum = Number(flagValue(argv, '--accum', '4'));
const bits = Number(flagValue(argv, '--wbits', '2'));
const G = Number(flagValue(argv, '--group-size', '64'));
const precision = flagValue(argv, '--precision', 'bf16') as 'f32' | 'bf16';

const dev = cudaDeviceOrSkip('bench/cuda-e2e-step');

// random packed blocks: any int32 word is a valid packing of 32/bits codes
const rng = new Rng(1);
const shapes = blockParamShapes(cfg);
const qmax = 2 ** bits - 1;
const blocks: PackedBlock[] = [];
for (let l = 0; l < cfg.numLayers; l++) {
  const params: Partial<Record<string, Tensor>> = {};
  for (const name of BLOCK_PARAM_NAMES) {
    const shape = shapes[name];
    if (shape) params[name] = name.endsWith('Norm') ? Tensor.fromF32(new Float32Array(shape[0]!).fill(1), shape) : Tensor.zeros([0]);
  }
  const weights = {} as Record<BlockLinear, PackedWeight>;
  const scales = {} as Record<BlockLinear, Tensor>;
  for (const [key] of BLOCK_LINEARS) {
    const [O, I] = shapes[key] as [number, number];
    const qweight = new Int32Array(packedWords(gptqFormat(bits), I) * O);
    for (let i = 0; i < qweight.length; i++) qweight[i] = rng.nextU32() | 0;
    const zeros = new Uint8Array(O * (I / G)).map(() => rng.int(0, qmax + 1));
    weights[key] = { O, I, bits, G, qweight, zeros };
    scales[key] = Tensor.fromF32(new Float32Array(O * (I / G)).fill(0.02 / qmax), [O, I / G]);
  }
  blocks.push({ params: params as BlockParams, weights, scales });
}
const C = cfg.hiddenSize;
const embedding = Tensor.zeros([cfg.vocabSize, C]);
rng.fillNormal(embedding.f32, 0.02);
const lmHead = Tensor.zeros([cfg.vocabSize, C]);
rng.fillNormal(lmHead.f32, 0.02);
const model = PackedModel.fromParts(cfg, { bits, groupSize: G, checkpointFormat: 'gptq_v2', sym: false, descAct: false }, embedding, blocks, Tensor.fromF32(new Float32Array(C).fill(1)), lmHead);
const state = new ScaleState(model.blocks);

resetDevicePeak();
const stepper = new E2eTrainer(cudaBackend, model, state, mb, T, precision);
try {
  stepper.fromHost();
  const N = mb * T;
  const ids = new Int32Array(N).map(() => rng.int(0, cfg.vocabSize));
  const labels = new Int32Array(N).map((_, i) => (i % T === T - 1 ? -100 : ids[i + 1]!));
  const step = (k: number): number[] => {
    const micro: number[] = [];
    stepper.zeroGrads();
    for (let a = 0; a < accum; a++) {
      const t0 = performance.now();
      stepper.microStep(ids, labels, accum); // returns after its losses are read back
      micro.push(performance.now() - t0);
    }
    stepper.clip(0.3);
    stepper.adamw({ lr: 2e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: k });
    return micro;
  };
  step(1); // warm-up: kernel compiles, cuBLASLt heuristics
  const t0 = performance.now();
  const micro = step(2);
  stepper.clip(0); // the norm read back: every queued kernel has finished
  const stepMs = performance.now() - t0;
  const after = deviceMemInfo();
  micro.sort((a, b) => a - b);
  const gib = (b: number) => (b / 2 ** 30).toFixed(2);
  console.log(
    `# E2E-QP step on CUDA: ${shapeName}-shaped model (${cfg.numLayers} layers), w${bits}g${G} packed, ${accum} micro-batches of ${mb} × ${T} tokens, ${precision} GEMMs (${dev.name}), ${new Date().toISOString()}`,
  );
  console.log(`# micro-batches ${stepper.capture.eagerReason === null ? 'replayed from a CUDA graph' : `run op by op (${stepper.capture.eagerReason})`}; attention: ${attentionPathCuda()}`);
  console.log('| s / micro-batch (median) | s / optimizer step | tokens/s | eqat allocations peak GiB | process device memory GiB |');
  console.log('|---|---|---|---|---|');
  console.log(
    `| ${(micro[Math.floor(micro.length / 2)]! / 1000).toFixed(2)} | ${(stepMs / 1000).toFixed(2)} | ${((accum * N) / (stepMs / 1000)).toFixed(0)} | ${gib(deviceAllocStats().peakBytes)} | ${gib(after.total - after.free)} |`,
  );
} finally {
  stepper.free();
}
