// One block's Block-AP training state and its operations, behind one interface with a CPU
// implementation (here) and a CUDA one (block-trainer-cuda.ts). src/pipeline/block-ap.ts drives
// it: load a block's weights into P, forward the caches, initialise s and z, train, freeze.
//
// Host tensors P (master parameters) and Wq (frozen weights) are where the pipeline reads and
// writes a block: it loads P from the model, loads Wq from a finished shard on resume, and
// writes shards from Wq. A device implementation copies them to the device when a pass starts
// (forwardCache 'fp' / 'frozen') and brings trained parameters back in freeze().
//
// The quantization math shared by both (min-max init, the freeze onto the f16 / integer grid)
// lives in this file once; the arithmetic of a step is the engine's ops on each device.
import { Tensor, Arena } from '../engine/tensor.js';
import type { ModelConfig } from '../model/config.js';
import {
  allocBlockParams,
  blockBackward,
  blockForward,
  BlockWorkspace,
  BLOCK_LINEARS,
  linearDims,
  type BlockLinear,
  type BlockParams,
} from '../model/block.js';
import { cpuBackend } from '../backend/cpu.js';
import { fill } from '../ops/elementwise.js';
import { mseBackward, mseForward } from '../ops/reduce.js';
import { adamwStep } from '../ops/adamw.js';
import { fakeQuantBackward, fakeQuantForward, quantizeNative } from '../quant/fakequant.js';
import { dequantize, minMaxInit, scalesToF16, zerosToInt } from '../quant/primitives.js';
import type { FrozenLinears } from '../io/quant-checkpoint.js';
import type { ActivationCache } from './activation-cache.js';

/** Which weights a forward pass uses: the full-precision P, or the frozen (q − z)·s in Wq. */
export type PassWeights = 'fp' | 'frozen';

/** What block-ap.ts needs from a trainer, on any device. */
export interface BlockApTrainer {
  readonly device: 'cpu' | 'cuda';
  /** Host master parameters: the pipeline loads a block's weights here. */
  readonly P: BlockParams;
  /** Host frozen weights (linears) with P's norms and biases: shards are written from here. */
  readonly Wq: BlockParams;
  /**
   * Host staging for the batch the next submit() trains on: inputs and targets, (B, T, C) each.
   * Right after submit() they are free for the following batch, which can then be read from the
   * activation cache while the device runs the step (CUDA: two page-locked buffers, alternating).
   */
  readonly x: Tensor;
  readonly y: Tensor;
  /** Min-max s and z from P; clears the optimiser state. */
  initQuant(): void;
  /** Starts one training step on the batch in x (inputs) and y (targets). */
  submit(stepIndex: number, lrQuant: number, lrWeight: number, wd: number): void;
  /** Waits for the submitted step and returns its loss. */
  finish(): number;
  /** submit() then finish(). */
  step(stepIndex: number, lrQuant: number, lrWeight: number, wd: number): number;
  /** Mean MSE over cache samples [start, start+count) of the fake-quantized block against targets. */
  evalFakeQuantLoss(xq: ActivationCache, target: ActivationCache, start: number, count: number): number;
  /** Freezes the block (see freezeLinears); P then holds the trained parameters, Wq the frozen weights. */
  freeze(): FrozenLinears;
  /** cache[start, start+count) ← block(cache) with the given weights (forward only). */
  forwardCache(weights: PassWeights, cache: ActivationCache, start: number, count: number): void;
  /** Releases device memory (no-op on the CPU). */
  free(): void;
}

/** Per-linear step sizes and zero points of a block, (O, I/G) each, in one arena. */
export class QuantParams {
  readonly arena: Arena;
  readonly scale = {} as Record<BlockLinear, Tensor>;
  readonly zero = {} as Record<BlockLinear, Tensor>;
  constructor(cfg: ModelConfig, G: number) {
    this.arena = new Arena(QuantParams.count(cfg, G));
    for (const [key] of BLOCK_LINEARS) {
      const [O, I] = linearDims(cfg, key);
      this.scale[key] = this.arena.take([O, I / G]);
      this.zero[key] = this.arena.take([O, I / G]);
    }
  }
  /** Elements of the arena: scale then zero of each linear, in BLOCK_LINEARS order. */
  static count(cfg: ModelConfig, G: number): number {
    let n = 0;
    for (const [key] of BLOCK_LINEARS) {
      const [O, I] = linearDims(cfg, key);
      n += 2 * O * (I / G);
    }
    return n;
  }
  get all(): Tensor {
    return Tensor.fromF32(this.arena.buffer);
  }
}

/** Q ← min-max step sizes and zero points of every linear weight in P. */
export function minMaxInitInto(Q: QuantParams, P: BlockParams, bits: number, G: number): void {
  for (const [key] of BLOCK_LINEARS) {
    const w = P[key];
    const [O, I] = w.shape as [number, number];
    const { scale, zero } = minMaxInit(w.f32, O, I, bits, G);
    Q.scale[key].f32.set(scale);
    Q.zero[key].f32.set(zero);
  }
}

/**
 * Freezes a block: s → nearest f16 inside [1e-4, 1e4], z → integer in [0, qmax], q =
 * quantize(W) on that grid, and the linears of Wq become exactly (q − z)·s_f16.
 */
export function freezeLinears(P: BlockParams, Q: QuantParams, bits: number, G: number, Wq: BlockParams): FrozenLinears {
  const frozen = {} as FrozenLinears;
  for (const [key] of BLOCK_LINEARS) {
    const w = P[key];
    const [O, I] = w.shape as [number, number];
    // round to the nearest point of the grid the checkpoint stores (f16 step sizes); from
    // here on the block computes with exactly what the checkpoint holds
    const { f16: scaleF16, f32: s16 } = scalesToF16(Q.scale[key].f32);
    const zero = zerosToInt(Q.zero[key].f32, bits);
    const zf = Float32Array.from(zero);
    const q = new Uint8Array(O * I);
    quantizeNative(q, w.f32, s16, zf, O, I, bits, G);
    dequantize(q, s16, zf, O, I, bits, G, Wq[key].f32);
    frozen[key] = { q, scaleF16, zero };
  }
  return frozen;
}

/** Linears of `own`, everything else (norms, biases) of `base`: views, no copies. */
export function withLinears<T>(base: Record<string, T>, own: Record<string, T>): Record<string, T> {
  const out = { ...base };
  for (const [key] of BLOCK_LINEARS) out[key] = own[key]!;
  return out;
}

/** The CPU trainer: everything one block's training needs, allocated once and reused for every block. */
export class BlockTrainerCpu implements BlockApTrainer {
  readonly device = 'cpu' as const;
  readonly P: BlockParams; // master parameters (f32)
  readonly Pa: Arena;
  readonly Gp: BlockParams; // their gradients
  readonly Ga: Arena;
  readonly mP: Arena;
  readonly vP: Arena;
  readonly Wq: BlockParams; // fake-quantized (training) or frozen weights for the linears; norms alias P
  readonly dWq: BlockParams; // gradients w.r.t. fake-quantized weights; norms alias Gp
  readonly Q: QuantParams;
  readonly dQ: QuantParams;
  readonly mQ: QuantParams;
  readonly vQ: QuantParams;
  readonly ws: BlockWorkspace<Tensor>;
  private ws1: BlockWorkspace<Tensor> | null = null;
  readonly x: Tensor; // (B, T, C)
  readonly y: Tensor; // (B, T, C)
  readonly out: Tensor; // (B, T, C)
  readonly dOut: Tensor; // (B, T, C)

  constructor(
    readonly cfg: ModelConfig,
    readonly B: number,
    readonly T: number,
    readonly bits: number,
    readonly G: number,
    training: boolean,
  ) {
    ({ params: this.P, arena: this.Pa } = allocBlockParams(cfg));
    ({ params: this.Gp, arena: this.Ga } = allocBlockParams(cfg));
    this.mP = allocBlockParams(cfg).arena;
    this.vP = allocBlockParams(cfg).arena;
    this.Wq = withLinears(this.P, allocBlockParams(cfg).params) as BlockParams;
    this.dWq = withLinears(this.Gp, allocBlockParams(cfg).params) as BlockParams;
    this.Q = new QuantParams(cfg, G);
    this.dQ = new QuantParams(cfg, G);
    this.mQ = new QuantParams(cfg, G);
    this.vQ = new QuantParams(cfg, G);
    const C = cfg.hiddenSize;
    this.ws = new BlockWorkspace(cpuBackend, cfg, B, T, { training });
    this.x = Tensor.zeros([B, T, C]);
    this.y = Tensor.zeros([B, T, C]);
    this.out = Tensor.zeros([B, T, C]);
    this.dOut = Tensor.zeros([B, T, C]);
  }

  private workspace(n: number): BlockWorkspace<Tensor> {
    if (n === this.B) return this.ws;
    if (n !== 1) throw new Error('internal: workspace for batch ' + n);
    this.ws1 ??= new BlockWorkspace(cpuBackend, this.cfg, 1, this.T, { training: false });
    return this.ws1;
  }

  initQuant(): void {
    minMaxInitInto(this.Q, this.P, this.bits, this.G);
    this.mP.zero();
    this.vP.zero();
    this.mQ.arena.zero();
    this.vQ.arena.zero();
  }

  private fakeQuantize(): void {
    for (const [key] of BLOCK_LINEARS) {
      fakeQuantForward(this.Wq[key], this.P[key], this.Q.scale[key], this.Q.zero[key], this.bits, this.G);
    }
  }

  step(stepIndex: number, lrQuant: number, lrWeight: number, wd: number): number {
    this.submit(stepIndex, lrQuant, lrWeight, wd);
    return this.finish();
  }

  finish(): number {
    if (this.submitted === null) throw new Error('internal: finish() without submit()');
    const loss = this.submitted;
    this.submitted = null;
    return loss;
  }

  /** The step runs here, synchronously; finish() returns its loss. */
  submit(stepIndex: number, lrQuant: number, lrWeight: number, wd: number): void {
    this.submitted = this.train(stepIndex, lrQuant, lrWeight, wd);
  }

  private submitted: number | null = null;

  private train(stepIndex: number, lrQuant: number, lrWeight: number, wd: number): number {
    const { x, y, out, dOut } = this;
    this.fakeQuantize();
    blockForward(this.cfg, this.Wq, this.ws, x, out);
    const loss = mseForward(out, y);
    if (!Number.isFinite(loss)) return loss;
    fill(dOut, 0);
    mseBackward(dOut, out, y);
    this.Ga.zero();
    for (const [key] of BLOCK_LINEARS) fill(this.dWq[key], 0);
    this.dQ.arena.zero();
    blockBackward(this.cfg, this.Wq, this.dWq, this.ws, x, dOut, null);
    for (const [key] of BLOCK_LINEARS) {
      fakeQuantBackward(
        this.Gp[key],
        this.dQ.scale[key],
        this.dQ.zero[key],
        this.dWq[key],
        this.P[key],
        this.Q.scale[key],
        this.Q.zero[key],
        this.bits,
        this.G,
      );
    }
    const common = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: wd, step: stepIndex + 1 };
    if (lrQuant > 0) adamwStep(this.Q.all, this.dQ.all, this.mQ.all, this.vQ.all, { ...common, lr: lrQuant });
    if (lrWeight > 0) {
      adamwStep(Tensor.fromF32(this.Pa.buffer), Tensor.fromF32(this.Ga.buffer), Tensor.fromF32(this.mP.buffer), Tensor.fromF32(this.vP.buffer), {
        ...common,
        lr: lrWeight,
      });
    }
    return loss;
  }

  freeze(): FrozenLinears {
    return freezeLinears(this.P, this.Q, this.bits, this.G, this.Wq);
  }

  forwardCache(weights: PassWeights, cache: ActivationCache, start: number, count: number): void {
    const p = weights === 'fp' ? this.P : this.Wq;
    for (let s = 0; s < count; ) {
      const n = count - s >= this.B ? this.B : 1;
      const ws = this.workspace(n);
      const x = n === this.B ? this.x : this.x.rows(0, 1);
      const o = n === this.B ? this.out : this.out.rows(0, 1);
      cache.read(start + s, n, x.f32);
      blockForward(this.cfg, p, ws, x, o);
      cache.write(start + s, n, o.f32);
      s += n;
    }
  }

  evalFakeQuantLoss(xq: ActivationCache, target: ActivationCache, start: number, count: number): number {
    this.fakeQuantize();
    let total = 0;
    for (let s = 0; s < count; ) {
      const n = count - s >= this.B ? this.B : 1;
      const ws = this.workspace(n);
      const x = n === this.B ? this.x : this.x.rows(0, 1);
      const y = n === this.B ? this.y : this.y.rows(0, 1);
      const o = n === this.B ? this.out : this.out.rows(0, 1);
      xq.read(start + s, n, x.f32);
      target.read(start + s, n, y.f32);
      blockForward(this.cfg, this.Wq, ws, x, o);
      total += mseForward(o, y) * n;
      s += n;
    }
    return count > 0 ? total / count : NaN;
  }

  free(): void {}
}
