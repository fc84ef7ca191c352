// The Block-AP trainer: one block's training state and its operations, written once over a
// Backend (src/backend/): the CPU (host Tensors, the native addon) or CUDA (device arrays).
// src/pipeline/block-ap.ts drives it: load a block's weights into P, forward the caches,
// initialise s and z, train, freeze.
//
// Host tensors P (master parameters) and Wq (frozen weights) are where the pipeline reads and
// writes a block: it loads P from the model, loads Wq from a finished shard on resume, and
// writes shards from Wq. The trainer's own state lives on the backend, allocated once for the
// whole run (on the CPU these are host Tensors too, and the copies between them exact):
//   P, m_P, v_P      master parameters and AdamW moments (one arena each)
//   G                gradients of the norms and biases (a linear's weight gradient is never kept:
//                    its AdamW step runs inside the straight-through backward as it forms)
//   Q, dQ, m_Q, v_Q  step sizes and zero points with theirs, laid out as the host QuantParams
//   wTile, dwTile    one fake-quantized weight (f32 precision) and one weight gradient, the largest linear's size
//   keep             in bf16 precision (CUDA), every linear's fake-quantized weight in bf16, formed
//                    by the forward and read by the backward; between steps, the bf16 weights of
//                    a pass over the caches (rounded once per pass, not at every batch)
//   lowp             bf16 copies of a GEMM's inputs (precision 'bf16': bf16 products, f32 sums,
//                    f32 master weights, activations and optimiser state): the output gradient
//                    and weight copies (the workspace keeps the linears' inputs in bf16)
//   workspace        the block's activations for B × T tokens (and a batch-1 one for tails)
// Fake quantization is fused into the weight path (fakeQuantLinears): each linear quantizes its
// weight right before its forward GEMM (into its `keep` buffer in bf16, which its backward GEMMs
// read again; in f32 into wTile, quantized again before the backward GEMMs), and its weight
// gradient goes through the straight-through estimator into dQ, and into the weight's AdamW
// step, as soon as it is formed (Backend.fakeQuantBackwardAdamw: one kernel on CUDA, the
// kernel's gradient then AdamW on the CPU), so no fake-quantized copy of the block and no
// gradient of its weights is kept. Frozen weights for the passes between blocks are held in
// m_P's linears (the moments are dead after freeze(); initQuant() zeroes them before the next
// block trains).
//
// A step (submit) uploads its batch from host staging and AdamW's scalars, and queues block
// forward → MSE → backward → AdamW; finish() reads one number, the loss. Between the two the
// host is free to read the next batch from the activation cache into the other staging buffer
// (x and y alternate between two: page-locked on CUDA), so the cache read overlaps the step.
// The queued part is one captured step (Backend.stepCapture: a CUDA graph captured on the
// second step and replayed from then on; a plain call on the CPU). The host P and Wq are copied
// in when a pass over the caches starts, and P, Q come back in freeze(), whose quantization
// math (with the min-max init) is the host code below, the same for every backend.
import { Tensor } from '../engine/tensor.js';
import type { ModelConfig } from '../model/config.js';
import {
  allocBlockParams,
  BIAS_OF,
  BLOCK_LINEARS,
  BLOCK_PARAM_NAMES,
  blockBackward,
  blockForward,
  BlockArena,
  blockParamViews,
  BlockWorkspace,
  denseLinears,
  downloadBlockParams,
  HF_PARAM_NAME,
  isBlockLinear,
  largestLinearSize,
  linearDims,
  linearRowWidth,
  uploadBlockParams,
  type BlockLinear,
  type BlockParams,
  type LinearImpl,
} from '../model/block.js';
import { cpuBackend } from '../backend/cpu.js';
import { BackendAllocations, type Backend, type Precision, type StepCapture } from '../backend/backend.js';
import { quantizeNative } from '../quant/fakequant.js';
import { firstNonFinite } from '../ops/reduce.js';
import { dequantize, minMaxInit, scalesToF16, zerosToInt } from '../quant/primitives.js';
import type { FrozenLinears } from '../io/quant-checkpoint.js';
import type { ActivationCache } from './activation-cache.js';

/** Which weights a forward pass uses: the full-precision P, or the frozen (q − z)·s in Wq. */
export type PassWeights = 'fp' | 'frozen';

/** What block-ap.ts needs from a trainer, whatever its backend. */
export interface BlockApTrainer {
  /** Host master parameters: the pipeline loads a block's weights here. */
  readonly P: BlockParams;
  /** Host frozen weights (linears) with P's norms and biases: shards are written from here. */
  readonly Wq: BlockParams;
  /**
   * Host staging for the batch the next submit() trains on: inputs and targets, (B, T, C) each.
   * Right after submit() they are free for the following batch, which can then be read from the
   * activation cache while the device runs the step (two buffers, alternating).
   */
  readonly x: Tensor;
  readonly y: Tensor;
  /** The training step's capture (CUDA graphs): says once when steps ran op by op. */
  readonly capture: StepCapture;
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
  /**
   * After a step whose loss is not finite: the first NaN/Inf among that step's inputs x and
   * targets y, the block's parameters P and its step sizes / zero points, in words ("step
   * size s of self_attn.q_proj holds NaN at element 3"); null when all are finite. P then holds
   * the parameters as that step left them (the run stops).
   */
  firstNonFinite(): string | null;
  /** Freezes the block (see freezeLinears); P then holds the trained parameters, Wq the frozen weights. */
  freeze(): FrozenLinears;
  /** cache[start, start+count) ← block(cache) with the given weights (forward only). */
  forwardCache(weights: PassWeights, cache: ActivationCache, start: number, count: number): void;
  /** Releases the backend memory. */
  free(): void;
}

/** Per-linear step sizes and zero points of a block, (O, I/G) each, as views into one f32 allocation of a backend. */
export class QuantParams<A = Tensor> {
  readonly all: A; // scale then zero of each linear, in BLOCK_LINEARS order
  readonly scale = {} as Record<BlockLinear, A>;
  readonly zero = {} as Record<BlockLinear, A>;
  constructor(
    readonly be: Backend<A>,
    cfg: ModelConfig,
    G: number,
  ) {
    this.all = be.alloc('f32', QuantParams.count(cfg, G));
    let at = 0;
    for (const [key] of BLOCK_LINEARS) {
      const [O, I] = linearDims(cfg, key);
      const n = O * (I / G);
      this.scale[key] = be.view(this.all, at, n);
      this.zero[key] = be.view(this.all, at + n, n);
      at += 2 * n;
    }
  }
  /** Elements of the allocation. */
  static count(cfg: ModelConfig, G: number): number {
    let n = 0;
    for (const [key] of BLOCK_LINEARS) {
      const [O, I] = linearDims(cfg, key);
      n += 2 * O * (I / G);
    }
    return n;
  }
  free(): void {
    this.be.free(this.all);
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

/** The parameters that are not linear weights (norms, biases): their gradients live in G. */
const NON_LINEAR_PARAMS = BLOCK_PARAM_NAMES.filter((n) => !isBlockLinear(n));

/** The AdamW step of the linears' weights, taken inside their backward (see fakeQuantLinears). */
interface FusedWeightUpdate<A> {
  m: BlockParams<A>; // AdamW moments laid out as P
  v: BlockParams<A>;
  enabled: boolean; // false: weights are not trained this step (only s and z get gradients)
}

export class BlockTrainer<A> implements BlockApTrainer {
  readonly P: BlockParams;
  readonly Wq: BlockParams;
  private readonly staging: { x: Tensor; y: Tensor }[]; // two batches' host staging (one without training), (B, T, C) each
  private current = 0; // the staging x and y show
  private pending = false; // a submitted step's loss is still to be read
  private readonly Qhost: QuantParams;
  // backend state (see the file header)
  private readonly dP: BlockArena<A>;
  private readonly dG: BlockArena<A>; // norms and biases only
  private readonly mP: A;
  private readonly vP: A;
  private readonly moments: FusedWeightUpdate<A>; // views of mP, vP as P; the linears' AdamW in the backward
  private readonly Q: QuantParams<A>;
  private readonly dQ: QuantParams<A>;
  private readonly mQ: A;
  private readonly vQ: A;
  private readonly wTile: A; // (largest O·I) fake-quantized weight of the linear at work (f32 precision)
  private readonly dwTile: A; // (largest O·I) its gradient
  private readonly frozen: BlockParams<A>; // frozen linears (in m_P's storage), norms and biases of P
  private readonly fakeQuant: LinearImpl<A>; // P through fake quantization, gradients into G and dQ
  // bf16 per linear: a step's fake-quantized weights (forward to backward), a pass's bf16 weights
  private readonly keep: Record<BlockLinear, A> | null = null;
  private readonly lowp: unknown = null; // bf16 GEMM inputs (precision 'bf16'), Backend.linearScratch
  private readonly ws: BlockWorkspace<A>;
  private ws1: BlockWorkspace<A> | null = null;
  private readonly xd: A; // (B, T, C)
  private readonly yd: A; // (B, T, C)
  private readonly outd: A; // (B, T, C)
  private readonly dOut: A; // (B, T, C)
  private readonly mse: unknown; // Backend.mseRecord
  private readonly scalarsQ: unknown; // AdamW's per-step scalars for the step sizes and zero points
  private readonly scalarsP: unknown; // and for the block's parameters
  private readonly fqScratch: unknown; // Backend.fakeQuantScratch
  private readonly mem: BackendAllocations<A>; // every backend allocation above
  /** The training step's queued work, captured per set of updated parameter groups. */
  readonly capture: StepCapture;

  constructor(
    readonly be: Backend<A>,
    readonly cfg: ModelConfig,
    readonly B: number,
    readonly T: number,
    readonly bits: number,
    readonly G: number,
    training: boolean,
    readonly precision: Precision = 'f32',
  ) {
    this.capture = be.stepCapture('the Block-AP step');
    this.mem = new BackendAllocations(be);
    this.P = allocBlockParams(cfg).params;
    this.Wq = withLinears(this.P, allocBlockParams(cfg).params) as BlockParams;
    this.Qhost = new QuantParams(cpuBackend, cfg, G);
    const C = cfg.hiddenSize;
    const page = (): Tensor => Tensor.fromF32(be.hostStaging(B * T * C), [B, T, C]);
    this.staging = training ? [{ x: page(), y: page() }, { x: page(), y: page() }] : [{ x: page(), y: page() }];
    const mem = this.mem;
    try {
      this.dP = mem.adopt(new BlockArena(be, cfg));
      this.dG = mem.adopt(new BlockArena(be, cfg, { linears: false }));
      this.mP = mem.alloc('f32', be.length(this.dP.all));
      this.vP = mem.alloc('f32', be.length(this.dP.all));
      this.scalarsQ = mem.adopt(be.adamwScalars()).value;
      this.scalarsP = mem.adopt(be.adamwScalars()).value;
      this.moments = { m: blockParamViews(be, cfg, this.mP), v: blockParamViews(be, cfg, this.vP), enabled: false };
      this.Q = mem.adopt(new QuantParams(be, cfg, G));
      this.dQ = mem.adopt(new QuantParams(be, cfg, G));
      this.mQ = mem.alloc('f32', be.length(this.Q.all));
      this.vQ = mem.alloc('f32', be.length(this.Q.all));
      const largest = largestLinearSize(cfg);
      this.wTile = mem.alloc('f32', precision === 'f32' ? largest : 0); // bf16: the kept weights
      this.dwTile = mem.alloc('f32', training ? largest : 0);
      this.frozen = withLinears(this.dP.params, this.moments.m) as BlockParams<A>;
      if (precision === 'bf16') {
        // the bf16 workspace hands every linear its input in bf16 already: no input copy
        const rows = B * T * linearRowWidth(cfg);
        this.lowp = mem.adopt(be.linearScratch({ x: 0, dout: training ? rows : 0, w: largest })).value;
      }
      // bf16: the forward's fake-quantized weights are kept for the backward (2 bytes per weight)
      this.keep = precision === 'bf16' && training ? this.keepQuantized(cfg) : null;
      this.ws = mem.adopt(new BlockWorkspace(be, cfg, B, T, { training, precision }));
      this.xd = mem.alloc('f32', B * T * C);
      this.yd = mem.alloc('f32', B * T * C);
      this.outd = mem.alloc('f32', B * T * C);
      this.dOut = mem.alloc('f32', B * T * C);
      this.mse = mem.adopt(be.mseRecord()).value;
      this.fqScratch = mem.adopt(be.fakeQuantScratch(training ? largest : 0)).value;
      this.fakeQuant = this.fakeQuantLinears();
    } catch (e) {
      this.free();
      throw e;
    }
  }

  /** Inputs of the batch the next submit() trains on (see BlockApTrainer). */
  get x(): Tensor {
    return this.staging[this.current]!.x;
  }

  /** Targets of that batch. */
  get y(): Tensor {
    return this.staging[this.current]!.y;
  }

  /** One bf16 buffer per linear, carved from one allocation: the forward's fake-quantized weights. */
  private keepQuantized(cfg: ModelConfig): Record<BlockLinear, A> {
    const sizes = BLOCK_LINEARS.map(([key]) => {
      const [O, I] = linearDims(cfg, key);
      return [key, O * I] as const;
    });
    const all = this.mem.alloc('bf16', sizes.reduce((a, [, n]) => a + n, 0));
    const views = {} as Record<BlockLinear, A>;
    let at = 0;
    for (const [key, n] of sizes) {
      views[key] = this.be.view(all, at, n);
      at += n;
    }
    return views;
  }

  /**
   * Linears that compute with fake-quantized weights: W̃ = fakequant(P, s, z) is formed in wTile
   * right before each use, forward and backward (f32); or, with `keep` (bf16: every training
   * trainer; a bf16 trainer without training never runs these linears), formed there by the
   * forward and read again by the backward (P, s and z do not change in between: a linear's
   * weight update comes after its own backward GEMMs). The weight gradient
   * formed in dwTile goes through the STE into dQ (s, z) and, while the moments' update is
   * enabled, into the weight's AdamW step at once (P and its moments change during the
   * backward, after the linear's last use). Biases are P's, their gradients G's.
   */
  private fakeQuantLinears(): LinearImpl<A> {
    const { be, cfg, bits, G, keep, lowp } = this;
    const P = this.dP.params, Gr = this.dG.params, update = this.moments;
    const quantized = (key: BlockLinear, again: boolean): { w: A; O: number; I: number } => {
      const [O, I] = linearDims(cfg, key);
      // bf16 GEMMs take the fake-quantized weight straight in bf16 (no f32 tile, no conversion)
      const w = keep ? keep[key] : be.view(this.wTile, 0, O * I);
      if (again) be.fakeQuantForward(w, P[key], this.Q.scale[key], this.Q.zero[key], O, I, bits, G);
      return { w, O, I };
    };
    return {
      bf16Inputs: lowp !== null,
      forward: (out, x, key, N) => {
        const { w, O, I } = quantized(key, true);
        be.linearForward(out, x, w, P[BIAS_OF[key]], { N, O, I }, lowp);
      },
      backward: (dx, dout, x, key, N, accumulateDx) => {
        const { w, O, I } = quantized(key, keep === null);
        const dw = be.view(this.dwTile, 0, O * I);
        be.linearBackwardIntoTile(dx, dw, Gr[BIAS_OF[key]], dout, x, w, { N, O, I }, accumulateDx, lowp);
        const { scale, zero } = this.Q, dQ = this.dQ;
        if (update.enabled) {
          be.fakeQuantBackwardAdamw(P[key], update.m[key], update.v[key], this.scalarsP, dQ.scale[key], dQ.zero[key], dw, scale[key], zero[key], O, I, bits, G, this.fqScratch);
        } else {
          be.fakeQuantBackward(null, dQ.scale[key], dQ.zero[key], dw, P[key], scale[key], zero[key], O, I, bits, G, this.fqScratch);
        }
      },
    };
  }

  private workspace(n: number): BlockWorkspace<A> {
    if (n === this.B) return this.ws;
    if (n !== 1) throw new Error('internal: workspace for batch ' + n);
    this.ws1 ??= this.mem.adopt(new BlockWorkspace(this.be, this.cfg, 1, this.T, { training: false, precision: this.precision }));
    return this.ws1;
  }

  initQuant(): void {
    minMaxInitInto(this.Qhost, this.P, this.bits, this.G);
    uploadBlockParams(this.be, this.dP.params, this.P);
    this.be.upload(this.Q.all, this.Qhost.all.f32);
    for (const a of [this.mP, this.vP, this.mQ, this.vQ]) this.be.zero(a);
  }

  step(stepIndex: number, lrQuant: number, lrWeight: number, wd: number): number {
    this.submit(stepIndex, lrQuant, lrWeight, wd);
    return this.finish();
  }

  submit(stepIndex: number, lrQuant: number, lrWeight: number, wd: number): void {
    if (this.pending) throw new Error('internal: submit() before the previous step finished');
    const { be, xd, yd, outd, dOut } = this;
    be.upload(xd, this.x.f32);
    be.upload(yd, this.y.f32);
    const common = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: wd, step: stepIndex + 1 };
    const updateQ = lrQuant > 0, updateP = lrWeight > 0;
    if (updateQ) be.writeAdamWScalars(this.scalarsQ, { ...common, lr: lrQuant });
    if (updateP) be.writeAdamWScalars(this.scalarsP, { ...common, lr: lrWeight });
    this.moments.enabled = updateP; // the linears' AdamW runs inside their backward
    const n = be.length(outd);
    this.capture.capture(`q${+updateQ}p${+updateP}`, () => {
      blockForward(this.cfg, this.dP.params, this.ws, xd, outd, this.fakeQuant);
      be.mseQueue(outd, yd, n, this.mse);
      be.zero(dOut);
      be.mseBackward(dOut, outd, yd, n);
      this.dG.zero();
      be.zero(this.dQ.all);
      blockBackward(this.cfg, this.dP.params, this.dG.params, this.ws, xd, dOut, null, this.fakeQuant);
      if (updateQ) be.adamwStep(this.Q.all, this.dQ.all, this.mQ, this.vQ, this.scalarsQ);
      if (updateP) {
        for (const name of NON_LINEAR_PARAMS) {
          const g = this.dG.params[name];
          if (g && be.length(g) > 0) be.adamwStep(this.dP.params[name]!, g, this.moments.m[name]!, this.moments.v[name]!, this.scalarsP);
        }
      }
    });
    // The other staging buffer takes the next batch. The one just uploaded is written again only
    // after the next submit, by which time finish() has waited for this step (and its copies).
    this.current = (this.current + 1) % this.staging.length;
    this.pending = true;
  }

  finish(): number {
    if (!this.pending) throw new Error('internal: finish() without submit()');
    this.pending = false;
    // The loss is read after the update (the step's one transfer back). A non-finite loss stops
    // the run before this block is written, so the update it made is never used.
    return this.be.mseRead(this.mse, this.be.length(this.outd));
  }

  firstNonFinite(): string | null {
    const { be } = this;
    const found = (what: string, t: Tensor): string | null => {
      const at = firstNonFinite(t);
      return at < 0 ? null : `${what} holds ${t.f32[at]} at element ${at}`;
    };
    const batch = Tensor.zeros([be.length(this.xd)]);
    for (const [what, a] of [['the batch input x', this.xd], ['the batch target y', this.yd]] as const) {
      be.download(a, batch.f32);
      const r = found(what, batch);
      if (r) return r;
    }
    downloadBlockParams(be, this.P, this.dP.params);
    for (const name of BLOCK_PARAM_NAMES) {
      const t = this.P[name];
      const r = t ? found(`parameter ${HF_PARAM_NAME[name]}`, t) : null;
      if (r) return r;
    }
    be.download(this.Q.all, this.Qhost.all.f32);
    for (const [key, module] of BLOCK_LINEARS) {
      const r = found(`step size s of ${module}`, this.Qhost.scale[key]) ?? found(`zero point z of ${module}`, this.Qhost.zero[key]);
      if (r) return r;
    }
    return null;
  }

  freeze(): FrozenLinears {
    // the trained parameters come home; the host code freezes them
    downloadBlockParams(this.be, this.P, this.dP.params);
    this.be.download(this.Q.all, this.Qhost.all.f32);
    return freezeLinears(this.P, this.Qhost, this.bits, this.G, this.Wq);
  }

  forwardCache(weights: PassWeights, cache: ActivationCache, start: number, count: number): void {
    // the host copy is the truth at a pass's start: P just loaded, or Wq just frozen / read from a shard
    uploadBlockParams(this.be, this.dP.params, this.P);
    if (weights === 'frozen') uploadBlockParams(this.be, this.frozen, this.Wq);
    const p = weights === 'fp' ? this.dP.params : this.frozen;
    this.forwardBatches(p, denseLinears(this.be, this.cfg, this.passWeights(p), null, this.lowp), cache, null, start, count);
  }

  /**
   * p with its linears as the pass's GEMMs take them: in bf16, rounded once into the kept
   * fake-quantized weights' buffers (free between steps) instead of at every batch.
   */
  private passWeights(p: BlockParams<A>): BlockParams<A> {
    if (!this.keep) return p;
    const q = { ...p };
    for (const [key] of BLOCK_LINEARS) {
      this.be.roundToBf16(this.keep[key], p[key]);
      q[key] = this.keep[key];
    }
    return q;
  }

  evalFakeQuantLoss(xq: ActivationCache, target: ActivationCache, start: number, count: number): number {
    return this.forwardBatches(this.dP.params, this.fakeQuant, xq, target, start, count);
  }

  /**
   * Forwards cache samples [start, start+count) in batches of B (then singles) with norms and
   * biases from p and the linears of lin.
   * Without a target the outputs are written back to the cache; with one, returns the mean MSE.
   * With two staging buffers (a training trainer), the next batch is read from the cache while
   * the device runs the current one.
   */
  private forwardBatches(p: BlockParams<A>, lin: LinearImpl<A>, cache: ActivationCache, target: ActivationCache | null, start: number, count: number): number {
    const { be } = this;
    const C = this.cfg.hiddenSize;
    const batches: { s: number; n: number }[] = [];
    for (let s = 0; s < count; ) {
      const n = count - s >= this.B ? this.B : 1;
      batches.push({ s, n });
      s += n;
    }
    const slots = this.staging.length;
    const host = (k: number, which: 'x' | 'y'): Float32Array => {
      const a = this.staging[k % slots]![which].f32;
      return a.subarray(0, batches[k]!.n * this.T * C);
    };
    const read = (k: number): void => {
      const { s, n } = batches[k]!;
      cache.read(start + s, n, host(k, 'x'));
      if (target) target.read(start + s, n, host(k, 'y'));
    };
    let total = 0;
    if (batches.length > 0) read(0);
    batches.forEach(({ s, n }, k) => {
      const rows = n * this.T * C;
      const xd = be.view(this.xd, 0, rows), yd = be.view(this.yd, 0, rows), od = be.view(this.outd, 0, rows);
      be.upload(xd, host(k, 'x'));
      blockForward(this.cfg, p, this.workspace(n), xd, od, lin);
      if (target) {
        be.upload(yd, host(k, 'y'));
        be.mseQueue(od, yd, rows, this.mse);
      }
      // the next batch goes into the other staging buffer while the device works on this one
      const overlap = slots > 1 && k + 1 < batches.length;
      if (overlap) read(k + 1);
      if (target) total += be.mseRead(this.mse, rows) * n;
      else {
        be.download(od, host(k, 'x'));
        cache.write(start + s, n, host(k, 'x'));
      }
      if (!overlap && k + 1 < batches.length) read(k + 1);
    });
    return target ? (count > 0 ? total / count : NaN) : 0;
  }

  free(): void {
    this.capture.free();
    this.mem.free();
  }
}
