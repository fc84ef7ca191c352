// The Block-AP trainer on CUDA (see block-trainer.ts for the interface and the CPU twin). All
// of one block's training state lives on the device, allocated once for the whole run:
//   P, m_P, v_P      master parameters and AdamW moments (one arena each)
//   G                gradients of the norms and biases (a linear's weight gradient is never stored:
//                    its AdamW step runs inside the straight-through backward as it forms)
//   Q, dQ, m_Q, v_Q  step sizes and zero points with theirs, laid out as the host QuantParams
//   wTile, dwTile    one fake-quantized weight (f32 precision) and one weight gradient, the largest linear's size
//   keep             in bf16 precision, every linear's fake-quantized weight in bf16, formed by the
//                    forward and read by the backward; between steps, the bf16 weights of a pass
//                    over the caches (rounded once per pass, not at every batch)
//   lowp             bf16 copies of a GEMM's inputs (precision 'bf16', the default: bf16 products,
//                    f32 sums, f32 master weights, activations and optimiser state): the output
//                    gradient and weight copies (the workspace keeps the linears' inputs in bf16)
//   workspace        the block's activations for B × T tokens (and a batch-1 one for tails)
// Fake quantization is fused into the weight path (fakeQuantLinearsCuda): each linear quantizes
// its weight right before its forward GEMM (into its `keep` buffer in bf16, which its backward
// GEMMs read again; in f32 into wTile, quantized again before the backward GEMMs), and
// its weight gradient goes through the straight-through estimator into dQ, and into the weight's
// AdamW step, as soon as it is formed, so no fake-quantized copy of the block and no gradient of
// its weights ever exists. Frozen weights for the passes between blocks are held in m_P's linears
// (the moments are dead after freeze(); initQuant() zeroes them before the next block trains).
// A step (submit) uploads its batch from page-locked host staging and AdamW's scalars, and
// queues block forward → MSE → backward → AdamW on the device; finish() downloads one number,
// the loss. Between the two the host is free to read the next batch from the activation cache
// into the other staging buffer (x and y alternate between two), so the cache read overlaps
// the step. The device part is one CUDA graph, captured on
// the second step and replayed from then on (CudaStepGraphs; eager where graphs are unavailable). The host P and Wq are copied in when a pass over the caches
// starts and P, Q come back in freeze(), which then shares the CPU's host code.
import {
  allocDevice,
  allocHostStaging,
  CudaStepGraphs,
  DeviceAllocations,
  deviceView,
  downloadDevice,
  freeDevice,
  uploadDevice,
  zeroDevice,
  type DeviceArray,
} from '../engine/cuda.js';
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
  isBlockLinear,
  largestLinearSize,
  linearDims,
  linearRowWidth,
  uploadBlockParams,
  type BlockLinear,
  type BlockParams,
  type LinearImpl,
} from '../model/block.js';
import { cudaBackend } from '../backend/cuda.js';
import { fakeQuantBackwardAdamwCuda, fakeQuantBackwardCuda, fakeQuantForwardCuda } from '../ops/cuda/fakequant.js';
import { linearBackwardCuda, linearForwardCuda, type LowPrecisionScratch } from '../ops/cuda/linear.js';
import { f32ToBf16Cuda } from '../ops/cuda/elementwise.js';
import { ADAMW_SCALARS, adamwLaunchCuda, writeAdamWScalars } from '../ops/cuda/adamw.js';
import { allocReducePartials, mseBackwardCuda, mseQueueCuda, readMseCuda } from '../ops/cuda/reduce.js';
import type { FrozenLinears } from '../io/quant-checkpoint.js';
import type { ActivationCache } from './activation-cache.js';
import { freezeLinears, minMaxInitInto, QuantParams, withLinears, type BlockApTrainer, type PassWeights } from './block-trainer.js';

/** Step sizes and zero points on the device, as views into one allocation laid out as QuantParams. */
export class DeviceQuantParams {
  readonly all: DeviceArray;
  readonly scale = {} as Record<BlockLinear, DeviceArray>;
  readonly zero = {} as Record<BlockLinear, DeviceArray>;
  constructor(cfg: ModelConfig, G: number) {
    this.all = allocDevice('f32', QuantParams.count(cfg, G)); // released by free()
    let at = 0;
    for (const [key] of BLOCK_LINEARS) {
      const [O, I] = linearDims(cfg, key);
      const n = O * (I / G);
      this.scale[key] = deviceView(this.all, at, n);
      this.zero[key] = deviceView(this.all, at + n, n);
      at += 2 * n;
    }
  }
  free(): void {
    freeDevice(this.all);
  }
}

/** The AdamW step of the linears' weights, taken inside their backward (see fakeQuantLinearsCuda). */
export interface FusedWeightUpdate {
  m: BlockParams<DeviceArray>; // AdamW moments laid out as P
  v: BlockParams<DeviceArray>;
  scalars: DeviceArray; // (ADAMW_SCALARS) the step's scalars, written before the step
  enabled: boolean; // false: weights are not trained this step (only s and z get gradients)
}

/**
 * Linears that compute with fake-quantized weights: W̃ = fakequant(P, s, z) is formed in wTile
 * (in bf16, lowp.wb) right before each use, forward and backward; or, with `keep` (bf16 buffers
 * per linear), formed there by the forward and read again by the backward (P, s and z do not
 * change in between: a linear's weight update comes after its own backward GEMMs). The weight
 * gradient formed in dwTile goes through the STE into dQ (s, z) and, with `update` enabled, into
 * the weight's AdamW step at once (P and its moments change during the backward, after the
 * linear's last use); without it into Gr's linear when Gr has one, else nowhere. Biases are P's
 * and Gr's, as in the dense linears. With `lowp` scratch the GEMMs run in bf16 (f32 sums).
 */
export function fakeQuantLinearsCuda(
  cfg: ModelConfig,
  P: BlockParams<DeviceArray>,
  Gr: BlockParams<DeviceArray>,
  Q: DeviceQuantParams,
  dQ: DeviceQuantParams,
  bits: number,
  G: number,
  wTile: DeviceArray,
  dwTile: DeviceArray,
  lowp: LowPrecisionScratch | null = null,
  update: FusedWeightUpdate | null = null,
  keep: Record<BlockLinear, DeviceArray> | null = null,
): LinearImpl<DeviceArray> {
  const quantized = (key: BlockLinear, again: boolean): { w: DeviceArray; O: number; I: number } => {
    const [O, I] = linearDims(cfg, key);
    // bf16 GEMMs take the fake-quantized weight straight in bf16 (no f32 tile, no conversion)
    const w = keep ? keep[key] : deviceView(lowp ? lowp.wb : wTile, 0, O * I);
    if (again) fakeQuantForwardCuda(w, P[key], Q.scale[key], Q.zero[key], O, I, bits, G);
    return { w, O, I };
  };
  return {
    bf16Inputs: lowp !== null,
    forward(out, x, key, N) {
      const { w, O, I } = quantized(key, true);
      linearForwardCuda(out, x, w, P[BIAS_OF[key]], { N, O, I }, lowp);
    },
    backward(dx, dout, x, key, N, accumulateDx) {
      const { w, O, I } = quantized(key, keep === null);
      const dw = deviceView(dwTile, 0, O * I); // overwritten by the weight-gradient GEMM
      linearBackwardCuda(dx, dw, Gr[BIAS_OF[key]], dout, x, w, { N, O, I }, accumulateDx, lowp, false);
      if (update?.enabled) {
        fakeQuantBackwardAdamwCuda(P[key], update.m[key], update.v[key], update.scalars, dQ.scale[key], dQ.zero[key], dw, Q.scale[key], Q.zero[key], O, I, bits, G);
      } else {
        const grad = Gr[key].length > 0 ? Gr[key] : null;
        fakeQuantBackwardCuda(grad, dQ.scale[key], dQ.zero[key], dw, P[key], Q.scale[key], Q.zero[key], O, I, bits, G);
      }
    },
  };
}

/** The parameters that are not linear weights (norms, biases): their gradients live in G. */
const NON_LINEAR_PARAMS = BLOCK_PARAM_NAMES.filter((n) => !isBlockLinear(n));

export class BlockTrainerCuda implements BlockApTrainer {
  readonly device = 'cuda' as const;
  readonly P: BlockParams;
  readonly Wq: BlockParams;
  private readonly staging: { x: Tensor; y: Tensor }[]; // two batches' host staging, (B, T, C) each
  private current = 0; // the staging x and y show
  private pending = false; // a submitted step's loss is still to be read
  private readonly Qhost: QuantParams;
  // device state (see the file header)
  private readonly dP: BlockArena<DeviceArray>;
  private readonly dG: BlockArena<DeviceArray>; // norms and biases only
  private readonly mP: DeviceArray;
  private readonly vP: DeviceArray;
  private readonly moments: FusedWeightUpdate; // views of mP, vP as P; the linears' AdamW in the backward
  private readonly dQ: DeviceQuantParams;
  private readonly dQgrad: DeviceQuantParams;
  private readonly mQ: DeviceArray;
  private readonly vQ: DeviceArray;
  private readonly wTile: DeviceArray; // (largest O·I) fake-quantized weight of the linear at work (f32 precision)
  private readonly dwTile: DeviceArray; // (largest O·I) its gradient
  private readonly frozen: BlockParams<DeviceArray>; // frozen linears (in m_P's storage), norms and biases of P
  private readonly fakeQuant: LinearImpl<DeviceArray>; // P through fake quantization, gradients into G and dQ
  // bf16 per linear: a step's fake-quantized weights (forward to backward), a pass's bf16 weights
  private readonly keep: Record<BlockLinear, DeviceArray> | null = null;
  private readonly lowp: LowPrecisionScratch | null = null; // bf16 GEMM inputs (precision 'bf16')
  private readonly ws: BlockWorkspace<DeviceArray>;
  private ws1: BlockWorkspace<DeviceArray> | null = null;
  private readonly xd: DeviceArray; // (B, T, C)
  private readonly yd: DeviceArray; // (B, T, C)
  private readonly outd: DeviceArray; // (B, T, C)
  private readonly dOut: DeviceArray; // (B, T, C)
  private readonly partials: DeviceArray;
  private readonly scalarsQ: DeviceArray; // AdamW's per-step scalars for the step sizes and zero points
  private readonly scalarsP: DeviceArray; // and for the block's parameters
  private readonly mem = new DeviceAllocations(); // every device allocation above
  /** The training step's device work, replayed from CUDA graphs (one per set of updated groups). */
  readonly graphs = new CudaStepGraphs('the Block-AP step');

  constructor(
    readonly cfg: ModelConfig,
    readonly B: number,
    readonly T: number,
    readonly bits: number,
    readonly G: number,
    training: boolean,
    readonly precision: 'f32' | 'bf16' = 'bf16',
  ) {
    this.P = allocBlockParams(cfg).params;
    this.Wq = withLinears(this.P, allocBlockParams(cfg).params) as BlockParams;
    this.Qhost = new QuantParams(cfg, G);
    const C = cfg.hiddenSize;
    const page = (): Tensor => Tensor.fromF32(allocHostStaging(B * T * C), [B, T, C]);
    this.staging = training ? [{ x: page(), y: page() }, { x: page(), y: page() }] : [{ x: page(), y: page() }];
    const mem = this.mem;
    try {
      this.dP = mem.adopt(new BlockArena(cudaBackend, cfg));
      this.dG = mem.adopt(new BlockArena(cudaBackend, cfg, { linears: false }));
      this.mP = mem.alloc('f32', this.dP.all.length);
      this.vP = mem.alloc('f32', this.dP.all.length);
      this.scalarsQ = mem.alloc('f32', ADAMW_SCALARS);
      this.scalarsP = mem.alloc('f32', ADAMW_SCALARS);
      this.moments = { m: blockParamViews(cudaBackend, cfg, this.mP), v: blockParamViews(cudaBackend, cfg, this.vP), scalars: this.scalarsP, enabled: false };
      this.dQ = mem.adopt(new DeviceQuantParams(cfg, G));
      this.dQgrad = mem.adopt(new DeviceQuantParams(cfg, G));
      this.mQ = mem.alloc('f32', this.dQ.all.length);
      this.vQ = mem.alloc('f32', this.dQ.all.length);
      const largest = largestLinearSize(cfg);
      this.wTile = mem.alloc('f32', precision === 'f32' ? largest : 0); // bf16: lowp.wb holds the weight
      this.dwTile = mem.alloc('f32', training ? largest : 0);
      this.frozen = withLinears(this.dP.params, this.moments.m) as BlockParams<DeviceArray>;
      if (precision === 'bf16') {
        // the bf16 workspace hands every linear its input in bf16 already: no input copy (xb)
        const rows = B * T * linearRowWidth(cfg);
        this.lowp = { xb: mem.alloc('bf16', 0), doutb: mem.alloc('bf16', training ? rows : 0), wb: mem.alloc('bf16', largest) };
      }
      // bf16: the forward's fake-quantized weights are kept for the backward (2 bytes per weight)
      this.keep = precision === 'bf16' && training ? this.keepQuantized(cfg) : null;
      this.fakeQuant = fakeQuantLinearsCuda(cfg, this.dP.params, this.dG.params, this.dQ, this.dQgrad, bits, G, this.wTile, this.dwTile, this.lowp, this.moments, this.keep);
      this.ws = mem.adopt(new BlockWorkspace(cudaBackend, cfg, B, T, { training, precision }));
      this.xd = mem.alloc('f32', B * T * C);
      this.yd = mem.alloc('f32', B * T * C);
      this.outd = mem.alloc('f32', B * T * C);
      this.dOut = mem.alloc('f32', B * T * C);
      this.partials = mem.adopt(allocReducePartials());
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
  private keepQuantized(cfg: ModelConfig): Record<BlockLinear, DeviceArray> {
    const sizes = BLOCK_LINEARS.map(([key]) => {
      const [O, I] = linearDims(cfg, key);
      return [key, O * I] as const;
    });
    const all = this.mem.alloc('bf16', sizes.reduce((a, [, n]) => a + n, 0));
    const views = {} as Record<BlockLinear, DeviceArray>;
    let at = 0;
    for (const [key, n] of sizes) {
      views[key] = deviceView(all, at, n);
      at += n;
    }
    return views;
  }

  private workspace(n: number): BlockWorkspace<DeviceArray> {
    if (n === this.B) return this.ws;
    if (n !== 1) throw new Error('internal: workspace for batch ' + n);
    this.ws1 ??= this.mem.adopt(new BlockWorkspace(cudaBackend, this.cfg, 1, this.T, { training: false, precision: this.precision }));
    return this.ws1;
  }

  initQuant(): void {
    minMaxInitInto(this.Qhost, this.P, this.bits, this.G);
    uploadBlockParams(cudaBackend, this.dP.params, this.P);
    uploadDevice(this.dQ.all, this.Qhost.arena.buffer);
    for (const a of [this.mP, this.vP, this.mQ, this.vQ]) zeroDevice(a);
  }

  step(stepIndex: number, lrQuant: number, lrWeight: number, wd: number): number {
    this.submit(stepIndex, lrQuant, lrWeight, wd);
    return this.finish();
  }

  submit(stepIndex: number, lrQuant: number, lrWeight: number, wd: number): void {
    if (this.pending) throw new Error('internal: submit() before the previous step finished');
    const { xd, yd, outd, dOut } = this;
    uploadDevice(xd, this.x.f32);
    uploadDevice(yd, this.y.f32);
    const common = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: wd, step: stepIndex + 1 };
    const updateQ = lrQuant > 0, updateP = lrWeight > 0;
    if (updateQ) writeAdamWScalars(this.scalarsQ, { ...common, lr: lrQuant });
    if (updateP) writeAdamWScalars(this.scalarsP, { ...common, lr: lrWeight });
    this.moments.enabled = updateP; // the linears' AdamW runs inside their backward
    this.graphs.run(`q${+updateQ}p${+updateP}`, () => {
      blockForward(this.cfg, this.dP.params, this.ws, xd, outd, this.fakeQuant);
      mseQueueCuda(outd, yd, this.partials);
      zeroDevice(dOut);
      mseBackwardCuda(dOut, outd, yd);
      this.dG.zero();
      zeroDevice(this.dQgrad.all);
      blockBackward(this.cfg, this.dP.params, this.dG.params, this.ws, xd, dOut, null, this.fakeQuant);
      if (updateQ) adamwLaunchCuda(this.dQ.all, this.dQgrad.all, this.mQ, this.vQ, this.scalarsQ);
      if (updateP) {
        for (const name of NON_LINEAR_PARAMS) {
          const g = this.dG.params[name];
          if (g && g.length > 0) adamwLaunchCuda(this.dP.params[name]!, g, this.moments.m[name]!, this.moments.v[name]!, this.scalarsP);
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
    return readMseCuda(this.partials, this.outd.length);
  }

  freeze(): FrozenLinears {
    // the trained parameters come home; the host code freezes them as on the CPU
    downloadBlockParams(cudaBackend, this.P, this.dP.params);
    downloadDevice(this.dQ.all, this.Qhost.arena.buffer);
    const frozen = freezeLinears(this.P, this.Qhost, this.bits, this.G, this.Wq);
    return frozen;
  }

  forwardCache(weights: PassWeights, cache: ActivationCache, start: number, count: number): void {
    // the host copy is the truth at a pass's start: P just loaded, or Wq just frozen / read from a shard
    uploadBlockParams(cudaBackend, this.dP.params, this.P);
    if (weights === 'frozen') uploadBlockParams(cudaBackend, this.frozen, this.Wq);
    const p = weights === 'fp' ? this.dP.params : this.frozen;
    this.forwardBatches(p, denseLinears(cudaBackend, this.cfg, this.passWeights(p), null, this.lowp), cache, null, start, count);
  }

  /**
   * p with its linears as the pass's GEMMs take them: in bf16, rounded once into the kept
   * fake-quantized weights' buffers (free between steps) instead of at every batch.
   */
  private passWeights(p: BlockParams<DeviceArray>): BlockParams<DeviceArray> {
    if (!this.keep) return p;
    const q = { ...p };
    for (const [key] of BLOCK_LINEARS) {
      f32ToBf16Cuda(this.keep[key], p[key]);
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
  private forwardBatches(
    p: BlockParams<DeviceArray>,
    lin: LinearImpl<DeviceArray>,
    cache: ActivationCache,
    target: ActivationCache | null,
    start: number,
    count: number,
  ): number {
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
      const xd = deviceView(this.xd, 0, rows), yd = deviceView(this.yd, 0, rows), od = deviceView(this.outd, 0, rows);
      uploadDevice(xd, host(k, 'x'));
      blockForward(this.cfg, p, this.workspace(n), xd, od, lin);
      if (target) {
        uploadDevice(yd, host(k, 'y'));
        mseQueueCuda(od, yd, this.partials);
      }
      // the next batch goes into the other staging buffer while the device works on this one
      const overlap = slots > 1 && k + 1 < batches.length;
      if (overlap) read(k + 1);
      if (target) total += readMseCuda(this.partials, rows) * n;
      else {
        downloadDevice(od, host(k, 'x'));
        cache.write(start + s, n, host(k, 'x'));
      }
      if (!overlap && k + 1 < batches.length) read(k + 1);
    });
    return target ? (count > 0 ? total / count : NaN) : 0;
  }

  free(): void {
    this.graphs.free();
    this.mem.free();
  }
}
