// E2E-QP, the second phase of EfficientQAT: the integer weights stay frozen and packed; only
// the per-group step sizes of every linear are trained, end to end, on next-token loss.
//
// Recipe (official): AdamW (wd 0) over step sizes only, lr 2e-5 (2-bit) / 1e-5 (3/4-bit),
// cosine schedule with 3% linear warmup (transformers' get_cosine_schedule_with_warmup),
// global-norm gradient clipping at 0.3, global batch 32 by accumulating micro-batches, one
// epoch over train_size samples of seqlen tokens.
//
// Memory: per micro-batch only the hidden states at block boundaries are kept; each block's
// activations are recomputed during the backward (one block's workspace at a time), and the
// gradient w.r.t. a layer's dequantized weight only ever exists tile by tile inside the
// packed-linear kernel.
import { appendFileSync, copyFileSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Arena, Tensor } from '../engine/tensor.js';
import { WeightSource } from '../model/weights.js';
import { BLOCK_LINEARS, BLOCK_PARAM_NAMES, blockParamShapes, blockBackward, blockForward, BlockWorkspace, type BlockLinear, type BlockParams } from '../model/block.js';
import { PackedModel, packedLinears, type PackedBlock } from '../model/quantized.js';
import { ropeTables } from '../model/rope.js';
import { embeddingForward } from '../ops/embedding.js';
import { rmsnormBackward, rmsnormForward } from '../ops/rmsnorm.js';
import { matmul } from '../ops/matmul.js';
import { linearForward } from '../ops/linear.js';
import { crossEntropyForwardBackward } from '../ops/crossentropy.js';
import { fill } from '../ops/elementwise.js';
import { adamwStep, clipGradNorm } from '../ops/adamw.js';
import { scalesToF16 } from '../quant/primitives.js';
import { unpackQweight } from '../quant/gptq-pack.js';
import { writeSafetensors } from '../io/safetensors-write.js';
import {
  blockShardTensors,
  headShardTensors,
  shardCount,
  shardName,
  writeCheckpointMetadata,
  writeJsonAtomic,
  type FrozenLinears,
} from '../io/quant-checkpoint.js';
import { loadTokenizer } from '../io/tokenizer.js';
import { cachedTokenStream } from '../data/token-cache.js';
import { sampleWindows } from '../data/windows.js';
import { buildSupervisedSamples, detectDataFormat, loadChatTemplate, readInstructRecords } from '../data/instruct.js';
import { progress } from '../cli/progress.js';
import { eqatVersion } from '../engine/version.js';

export interface E2eQpRecipe {
  model: string;
  data: string;
  /** 'auto': .jsonl/.json records with instruction/messages → instruct, otherwise text. */
  dataFormat: 'auto' | 'text' | 'instruct';
  trainSize: number;
  seqlen: number;
  /** Global batch (samples per optimizer step). */
  batchSize: number;
  microBatchSize: number;
  epochs: number;
  lr: number;
  warmupRatio: number;
  maxGradNorm: number;
  weightDecay: number;
  seed: number;
}

export interface E2eQpOptions extends E2eQpRecipe {
  out: string;
  quiet?: boolean;
  /** Extra fields recorded in eqat-recipe.json (e.g. the Block-AP phase of `eqat quantize`). */
  record?: Record<string, unknown>;
}

export function e2eQpDefaults(wbits: number): Omit<E2eQpRecipe, 'model' | 'data'> {
  return {
    dataFormat: 'auto',
    trainSize: 4096,
    seqlen: 4096,
    batchSize: 32,
    microBatchSize: 1,
    epochs: 1,
    lr: wbits === 2 ? 2e-5 : 1e-5,
    warmupRatio: 0.03,
    maxGradNorm: 0.3,
    weightDecay: 0,
    seed: 2,
  };
}

export interface E2eQpStepLog {
  step: number;
  loss: number;
  lr: number;
  gradNorm: number;
  seconds: number;
}

export interface E2eQpResult {
  out: string;
  steps: number;
  firstLoss: number;
  lastLoss: number;
  seconds: number;
  packedBytes: number;
}

/** transformers' cosine schedule with linear warmup: the lr used at optimizer step `step` (0-based). */
export function warmupCosineLr(lr: number, step: number, totalSteps: number, warmupSteps: number): number {
  if (step < warmupSteps) return (lr * step) / Math.max(1, warmupSteps);
  const progressFrac = (step - warmupSteps) / Math.max(1, totalSteps - warmupSteps);
  return lr * Math.max(0, 0.5 * (1 + Math.cos(Math.PI * progressFrac)));
}

export function validateE2eQp(o: E2eQpOptions): void {
  const fail = (flag: string, msg: string): never => {
    throw new Error(`--${flag}: ${msg}`);
  };
  if (o.microBatchSize < 1) fail('micro-batch-size', 'must be >= 1');
  if (o.batchSize < o.microBatchSize || o.batchSize % o.microBatchSize !== 0) {
    fail('batch-size', `must be a multiple of --micro-batch-size (${o.microBatchSize}), got ${o.batchSize}`);
  }
  if (o.trainSize < o.batchSize) fail('train-size', `must be at least --batch-size (${o.batchSize})`);
  if (o.seqlen < 2) fail('seqlen', 'must be >= 2');
  if (!(o.lr >= 0)) fail('lr', 'must be >= 0');
  if (!(o.warmupRatio >= 0 && o.warmupRatio < 1)) fail('warmup-ratio', 'must be in [0, 1)');
  if (!(o.maxGradNorm > 0)) fail('max-grad-norm', 'must be > 0');
  if (o.epochs < 1) fail('epochs', 'must be >= 1');
}

/** Training samples: ids (count, T) and shifted labels (count, T) with -100 where no loss. */
interface Samples {
  ids: Int32Array;
  labels: Int32Array;
  count: number;
}

/** Text → next-token labels on every position; instruction data → loss on responses only. */
async function trainingSamples(o: E2eQpOptions): Promise<Samples> {
  const format = o.dataFormat === 'auto' ? detectDataFormat(o.data) : o.dataFormat;
  if (format === 'instruct') {
    const tok = loadTokenizer(o.model);
    const records = await readInstructRecords(o.data);
    const built = buildSupervisedSamples(records, tok, loadChatTemplate(o.model), { seqlen: o.seqlen, count: o.trainSize, seed: o.seed });
    const ids = new Int32Array(o.trainSize * o.seqlen);
    const labels = new Int32Array(o.trainSize * o.seqlen);
    built.forEach((smp, i) => {
      ids.set(smp.ids, i * o.seqlen);
      labels.set(smp.labels, i * o.seqlen);
    });
    return { ids, labels, count: built.length };
  }
  return textSamples(o);
}

async function textSamples(o: E2eQpOptions): Promise<Samples> {
  const tok = loadTokenizer(o.model);
  const stream = await cachedTokenStream(o.data, o.model, tok);
  const T = o.seqlen;
  const w = sampleWindows(stream, tok, { seqlen: T, trainSize: o.trainSize, valSize: 0, seed: o.seed }, `--data ${o.data}`);
  const labels = new Int32Array(w.train.length);
  for (let s = 0; s < o.trainSize; s++) {
    for (let t = 0; t < T - 1; t++) labels[s * T + t] = w.train[s * T + t + 1]!;
    labels[s * T + T - 1] = -100;
  }
  return { ids: w.train, labels, count: o.trainSize };
}

/** Step sizes of all blocks in one arena (so one fused AdamW call covers them), with grads and moments. */
class ScaleState {
  readonly params: Arena;
  readonly grads: Arena;
  readonly m: Arena;
  readonly v: Arena;
  readonly dscales: Record<BlockLinear, Tensor>[] = [];

  constructor(blocks: PackedBlock[]) {
    let n = 0;
    for (const b of blocks) for (const [key] of BLOCK_LINEARS) n += b.scales[key].size;
    this.params = new Arena(n);
    this.grads = new Arena(n);
    this.m = new Arena(n);
    this.v = new Arena(n);
    for (const b of blocks) {
      const d = {} as Record<BlockLinear, Tensor>;
      for (const [key] of BLOCK_LINEARS) {
        const t = this.params.take(b.scales[key].shape);
        t.f32.set(b.scales[key].f32);
        b.scales[key] = t; // the model now reads its step sizes from the arena
        d[key] = this.grads.take(t.shape);
      }
      this.dscales.push(d);
    }
  }
}

/**
 * Forward and backward of the whole packed model for one micro-batch, with activation
 * recomputation per block. Buffers are allocated once for (micro-batch, seqlen).
 */
export class E2eTrainer {
  private readonly ws: BlockWorkspace;
  private readonly hidden: Tensor[]; // L+1 block-boundary hidden states (mb, T, C)
  private readonly scratch: Tensor;
  private dH: Tensor;
  private dX: Tensor;
  private readonly normed: Tensor;
  private readonly rstd: Tensor;
  private readonly logits: Tensor;
  private readonly losses: Tensor;
  private readonly dNormed: Tensor;
  private readonly gNorms: BlockParams;
  private readonly dFinalNorm: Tensor;
  private readonly idsT: Tensor;
  private readonly labelsT: Tensor;

  constructor(
    readonly model: PackedModel,
    readonly mb: number,
    readonly T: number,
    /** Per block, where step-size gradients accumulate. */
    readonly dscales: Record<BlockLinear, Tensor>[],
  ) {
    const cfg = model.cfg;
    const C = cfg.hiddenSize;
    const N = mb * T;
    this.ws = new BlockWorkspace(cfg, mb, T, ropeTables(cfg, 0, T));
    this.hidden = Array.from({ length: cfg.numLayers + 1 }, () => Tensor.zeros([mb, T, C]));
    this.scratch = Tensor.zeros([mb, T, C]);
    this.dH = Tensor.zeros([mb, T, C]);
    this.dX = Tensor.zeros([mb, T, C]);
    this.normed = Tensor.zeros([N, C]);
    this.rstd = Tensor.zeros([N]);
    this.logits = Tensor.zeros([N, cfg.vocabSize]);
    this.losses = Tensor.zeros([N]);
    this.dNormed = Tensor.zeros([N, C]);
    // norm gradients come out of the block backward but are not trained: one throwaway struct
    const shapes = blockParamShapes(cfg);
    const g: Partial<Record<string, Tensor>> = {};
    for (const name of BLOCK_PARAM_NAMES) {
      const shape = shapes[name];
      if (shape) g[name] = name.endsWith('Norm') ? Tensor.zeros(shape) : Tensor.zeros([0]);
    }
    this.gNorms = g as BlockParams;
    this.dFinalNorm = Tensor.zeros([C]);
    this.idsT = Tensor.fromI32(new Int32Array(N));
    this.labelsT = Tensor.fromI32(new Int32Array(N));
  }

  /**
   * Mean next-token loss of one micro-batch (ids, labels: (mb, T); label -100 = no loss);
   * step-size gradients of loss / accum accumulate into dscales.
   */
  lossAndGrad(ids: Int32Array, labels: Int32Array, accum = 1): number {
    const { model, mb, T } = this;
    const cfg = model.cfg;
    const L = cfg.numLayers;
    const C = cfg.hiddenSize;
    const N = mb * T;
    this.idsT.i32.set(ids);
    this.labelsT.i32.set(labels);
    let valid = 0;
    for (const l of labels) if (l !== -100) valid++;
    const h = this.hidden;
    embeddingForward(h[0]!.view([N, C]), this.idsT, model.embedding);
    for (let l = 0; l < L; l++) {
      const b = model.blocks[l]!;
      blockForward(cfg, b.params, this.ws, h[l]!, h[l + 1]!, packedLinears(b));
    }
    rmsnormForward(this.normed, this.rstd, h[L]!.view([N, C]), model.finalNorm, cfg.rmsNormEps);
    linearForward(this.logits, this.normed, model.lmHead);
    // loss = mean over the micro-batch's predicted tokens, averaged over accumulated micro-batches
    crossEntropyForwardBackward(this.losses, this.logits, this.logits, this.labelsT, valid > 0 ? 1 / (valid * accum) : 0);
    let sum = 0;
    for (let t = 0; t < N; t++) sum += this.losses.f32[t]!;
    matmul(this.dNormed, this.logits, model.lmHead); // dlogits (N, V) @ lm_head (V, C)
    fill(this.dH, 0);
    rmsnormBackward(this.dH.view([N, C]), this.dFinalNorm, this.dNormed, h[L]!.view([N, C]), model.finalNorm, this.rstd);
    for (let l = L - 1; l >= 0; l--) {
      const b = model.blocks[l]!;
      blockForward(cfg, b.params, this.ws, h[l]!, this.scratch, packedLinears(b)); // recompute activations
      blockBackward(cfg, b.params, this.gNorms, this.ws, h[l]!, this.dH, l > 0 ? this.dX : null, packedLinears(b, this.dscales[l]!));
      [this.dH, this.dX] = [this.dX, this.dH];
    }
    return valid > 0 ? sum / valid : 0;
  }
}

export async function runE2eQp(o: E2eQpOptions): Promise<E2eQpResult> {
  const t0 = performance.now();
  const out = resolve(o.out);
  const partial = out + '.partial';
  if (existsSync(out)) throw new Error(`--out ${o.out}: already exists; choose another directory or remove it`);
  validateE2eQp(o);
  const src = WeightSource.open(o.model);
  try {
    if (!src.quant) throw new Error(`--model ${o.model}: not a quantized checkpoint; run block-ap first (or use eqat quantize)`);
    const samples = await trainingSamples(o);
    const cfg = src.cfg;
    const model = PackedModel.load(src);
    const state = new ScaleState(model.blocks);

    const trainer = new E2eTrainer(model, o.microBatchSize, o.seqlen, state.dscales);
    const mb = o.microBatchSize;
    const T = o.seqlen;
    const L = cfg.numLayers;
    const accum = o.batchSize / mb;
    const stepsPerEpoch = Math.floor(samples.count / o.batchSize);
    const totalSteps = stepsPerEpoch * o.epochs;
    const warmup = Math.ceil(o.warmupRatio * totalSteps);
    rmSync(partial, { recursive: true, force: true });
    mkdirSync(partial, { recursive: true });
    const logPath = join(partial, 'e2e-qp-log.jsonl');
    const bar = progress('e2e-qp', totalSteps, { quiet: o.quiet ?? false });
    let firstLoss = NaN;
    let lastLoss = NaN;
    const microStep = (sample: number): number =>
      trainer.lossAndGrad(samples.ids.subarray(sample * T, (sample + mb) * T), samples.labels.subarray(sample * T, (sample + mb) * T), accum);

    let step = 0;
    for (let epoch = 0; epoch < o.epochs; epoch++) {
      for (let s = 0; s < stepsPerEpoch; s++) {
        const ts = performance.now();
        state.grads.zero();
        let loss = 0;
        for (let a = 0; a < accum; a++) loss += microStep(s * o.batchSize + a * mb) / accum;
        if (!Number.isFinite(loss)) {
          throw new Error(`e2e-qp step ${step + 1}: loss is ${loss}; stopping (nothing written)`);
        }
        const gradNorm = clipGradNorm([Tensor.fromF32(state.grads.buffer)], o.maxGradNorm);
        const lr = warmupCosineLr(o.lr, step, totalSteps, warmup);
        adamwStep(Tensor.fromF32(state.params.buffer), Tensor.fromF32(state.grads.buffer), Tensor.fromF32(state.m.buffer), Tensor.fromF32(state.v.buffer), {
          lr,
          beta1: 0.9,
          beta2: 0.999,
          eps: 1e-8,
          weightDecay: o.weightDecay,
          step: step + 1,
        });
        if (step === 0) firstLoss = loss;
        lastLoss = loss;
        const entry: E2eQpStepLog = { step: step + 1, loss, lr, gradNorm, seconds: (performance.now() - ts) / 1000 };
        appendFileSync(logPath, JSON.stringify(entry) + '\n');
        step++;
        bar.update(step, { loss, lr });
      }
    }
    bar.stop();

    // write the checkpoint: same integers and zero points, trained step sizes (f16)
    const nShards = shardCount(cfg);
    const names: string[][] = [];
    const { bits, groupSize } = model.quant;
    for (let i = 0; i < L; i++) {
      const b = model.blocks[i]!;
      const frozen = {} as FrozenLinears;
      for (const [key] of BLOCK_LINEARS) {
        const w = b.weights[key];
        frozen[key] = { q: unpackQweight(w.qweight, w.O, w.I, bits), scaleF16: scalesToF16(b.scales[key].f32).f16, zero: w.zeros };
      }
      const tensors = blockShardTensors(i, cfg, frozen, b.params, bits, groupSize);
      writeSafetensors(join(partial, shardName(i, nShards)), tensors);
      names.push(tensors.map((t) => t.name));
    }
    const head = headShardTensors(src.safetensors, cfg);
    writeSafetensors(join(partial, shardName(L, nShards)), head);
    names.push(head.map((t) => t.name));
    writeCheckpointMetadata(partial, o.model, bits, groupSize, names);
    const previous = existsSync(join(o.model, 'eqat-recipe.json'))
      ? (JSON.parse(readFileSync(join(o.model, 'eqat-recipe.json'), 'utf8')) as Record<string, unknown>)
      : null;
    const seconds = (performance.now() - t0) / 1000;
    writeJsonAtomic(join(partial, 'eqat-recipe.json'), {
      eqat: eqatVersion(),
      phase: 'e2e-qp',
      previous,
      ...(o.record ?? {}),
      e2e_qp: { recipe: { ...recipeOf(o) }, steps: step, first_loss: firstLoss, last_loss: lastLoss, seconds },
    });
    if (existsSync(join(o.model, 'block-ap-log.jsonl'))) {
      copyFileSync(join(o.model, 'block-ap-log.jsonl'), join(partial, 'block-ap-log.jsonl'));
    }
    renameSync(partial, out);
    return { out, steps: step, firstLoss, lastLoss, seconds, packedBytes: model.packedBytes() };
  } finally {
    src.close();
  }
}

function recipeOf(o: E2eQpOptions): E2eQpRecipe {
  const { model, data, dataFormat, trainSize, seqlen, batchSize, microBatchSize, epochs, lr, warmupRatio, maxGradNorm, weightDecay, seed } = o;
  return { model, data, dataFormat, trainSize, seqlen, batchSize, microBatchSize, epochs, lr, warmupRatio, maxGradNorm, weightDecay, seed };
}
