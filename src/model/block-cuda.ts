// The decoder block of src/model/block.ts on CUDA: the same forward / backward composition, op
// for op, over device arrays (src/ops/cuda/*). Parameters, gradients and activations live in
// device allocations made once (DeviceBlockArena, DeviceBlockWorkspace), so a training step
// allocates nothing and crosses to the host only where its caller asks (the loss).
//
// Device arrays carry no shapes; the config and the workspace's B and T give every size, and
// shape comments name them as in block.ts. Tested against the CPU block (which is tested
// against its TypeScript twins) on the CUDA backends of test/cuda/backends.ts.
import { allocDevice, deviceView, downloadDevice, freeDevice, uploadDevice, zeroDevice, type DeviceArray } from '../engine/cuda.js';
import type { ModelConfig } from './config.js';
import { ropeTables } from './rope.js';
import { BIAS_OF, BLOCK_PARAM_NAMES, blockParamShapes, isBlockLinear, linearDims, type BlockLinear, type BlockParamName, type BlockParams } from './block.js';
import { linearBackwardCuda, linearForwardCuda, type LinearDims, type LowPrecisionScratch } from '../ops/cuda/linear.js';
import { rmsnormBackwardCuda, rmsnormForwardCuda } from '../ops/cuda/rmsnorm.js';
import { ropeBackwardCuda, ropeForwardCuda } from '../ops/cuda/rope.js';
import { attentionBackwardCuda, attentionForwardCuda } from '../ops/cuda/attention.js';
import { AttentionGemmScratch, attentionGemmBackwardCuda, attentionGemmForwardCuda, attentionPathCuda } from '../ops/cuda/attention-gemm.js';
import { AttentionTcScratch, attentionTcBackwardCuda, attentionTcForwardCuda, attentionTcUnsupported } from '../ops/cuda/attention-tc.js';
import { swigluBackwardCuda, swigluForwardCuda } from '../ops/cuda/swiglu.js';
import { addCuda, copyCuda, f32ToBf16Cuda } from '../ops/cuda/elementwise.js';

/** One block's parameters (or gradients) on the device; optional entries as in BlockParams. */
export type DeviceBlockParams = { [K in BlockParamName]?: DeviceArray } & {
  inputNorm: DeviceArray; // (C)
  q: DeviceArray; // (H*D, C)
  k: DeviceArray; // (Hkv*D, C)
  v: DeviceArray; // (Hkv*D, C)
  o: DeviceArray; // (C, H*D)
  postNorm: DeviceArray; // (C)
  gate: DeviceArray; // (F, C)
  up: DeviceArray; // (F, C)
  down: DeviceArray; // (C, F)
};

/**
 * A block's parameters as views into one f32 device allocation, laid out as allocBlockParams.
 * With `linears: false` the linear weights are empty views (a packed block keeps its weights
 * elsewhere) and only norms and biases take memory.
 */
export class DeviceBlockArena {
  readonly all: DeviceArray; // (blockParamCount), or norms and biases only
  readonly params: DeviceBlockParams;

  constructor(cfg: ModelConfig, { linears = true }: { linears?: boolean } = {}) {
    this.all = allocDevice('f32', blockArenaLength(cfg, linears));
    this.params = blockParamViews(cfg, this.all, { linears });
  }

  zero(): void {
    zeroDevice(this.all);
  }

  free(): void {
    freeDevice(this.all);
  }
}

/** Each parameter the config has and its elements in a block arena (0 for a linear left out). */
function arenaEntries(cfg: ModelConfig, linears: boolean): [BlockParamName, number][] {
  const shapes = blockParamShapes(cfg);
  const out: [BlockParamName, number][] = [];
  for (const name of BLOCK_PARAM_NAMES) {
    const shape = shapes[name];
    if (shape) out.push([name, !linears && isBlockLinear(name) ? 0 : shape.reduce((a, b) => a * b, 1)]);
  }
  return out;
}

/** Elements of a block arena: every parameter, or (linears false) the norms and biases only. */
export function blockArenaLength(cfg: ModelConfig, linears = true): number {
  return arenaEntries(cfg, linears).reduce((total, [, n]) => total + n, 0);
}

/**
 * The block's parameters as views into `all` (at least blockArenaLength(cfg, linears) elements),
 * in BLOCK_PARAM_NAMES order; with linears false the linears are empty views. Buffers laid out
 * like a parameter arena (gradients, AdamW moments) get their per-parameter views this way.
 */
export function blockParamViews(cfg: ModelConfig, all: DeviceArray, { linears = true }: { linears?: boolean } = {}): DeviceBlockParams {
  const p: Partial<Record<BlockParamName, DeviceArray>> = {};
  let at = 0;
  for (const [name, n] of arenaEntries(cfg, linears)) {
    p[name] = deviceView(all, at, n);
    at += n;
  }
  return p as DeviceBlockParams;
}

/** Copies every parameter of host block `src` into device block `dst` (same config; empty entries of either side are skipped). */
export function uploadBlockParams(dst: DeviceBlockParams, src: BlockParams): void {
  for (const name of BLOCK_PARAM_NAMES) {
    const d = dst[name], s = src[name];
    if (!d !== !s) throw new Error(`uploadBlockParams: parameter ${name} exists on one side only`);
    if (d && s && d.length > 0 && s.size > 0) uploadDevice(d, s.f32);
  }
}

/** Copies every parameter of device block `src` into host block `dst` (same config). */
export function downloadBlockParams(dst: BlockParams, src: DeviceBlockParams): void {
  for (const name of BLOCK_PARAM_NAMES) {
    const d = dst[name], s = src[name];
    if (!d !== !s) throw new Error(`downloadBlockParams: parameter ${name} exists on one side only`);
    if (d && s) downloadDevice(s, d.f32);
  }
}

/** Activations and scratch of one block for B sequences of T tokens (N = B*T rows), on the device. */
export class DeviceBlockWorkspace {
  readonly B: number;
  readonly T: number;
  readonly ln1!: DeviceArray; // (N, C), bf16 with bf16 GEMMs (read by the q, k, v linears only)
  readonly rstd1!: DeviceArray; // (N)
  readonly qLin!: DeviceArray; // (N, H*D) q projection (before qk-norm)
  readonly kLin!: DeviceArray; // (N, Hkv*D)
  readonly qNormed!: DeviceArray; // (N, H*D) after qk-norm (aliases qLin without qk-norm)
  readonly kNormed!: DeviceArray; // (N, Hkv*D)
  readonly qRstd!: DeviceArray; // (N*H)
  readonly kRstd!: DeviceArray; // (N*Hkv)
  readonly qRot!: DeviceArray; // (B, T, H, D)
  readonly kRot!: DeviceArray; // (B, T, Hkv, D)
  readonly v!: DeviceArray; // (B, T, Hkv, D)
  readonly att!: DeviceArray; // (B, T, H, D)
  /** (B, T, H, D) bf16 rounding of att, the o linear's input, with bf16 GEMMs; else null. */
  readonly attIn: DeviceArray | null = null;
  readonly lse!: DeviceArray; // (B, H, T)
  readonly h!: DeviceArray; // (N, C) residual after attention
  readonly ln2!: DeviceArray; // (N, C), bf16 with bf16 GEMMs (gate and up only)
  readonly rstd2!: DeviceArray; // (N)
  readonly gate!: DeviceArray; // (N, F)
  readonly up!: DeviceArray; // (N, F)
  readonly act!: DeviceArray; // (N, F), bf16 with bf16 GEMMs (down only)
  readonly tmpC!: DeviceArray; // (N, C)
  readonly dh!: DeviceArray; // (N, C)
  readonly dln!: DeviceArray; // (N, C)
  readonly dAct!: DeviceArray; // (N, F)
  readonly dGate!: DeviceArray; // (N, F)
  readonly dUp!: DeviceArray; // (N, F)
  readonly dAtt!: DeviceArray; // (B, T, H, D)
  readonly dq!: DeviceArray; // (B, T, H, D)
  readonly dk!: DeviceArray; // (B, T, Hkv, D)
  readonly dv!: DeviceArray; // (B, T, Hkv, D)
  readonly dqLin!: DeviceArray; // (N, H*D)
  readonly dkLin!: DeviceArray; // (N, Hkv*D)
  readonly dqNormed!: DeviceArray; // (N, H*D) qk-norm families only
  readonly dkNormed!: DeviceArray; // (N, Hkv*D)
  readonly cos!: DeviceArray; // (T, D/2)
  readonly sin!: DeviceArray; // (T, D/2)
  /**
   * Scratch of the attention path (attentionPathCuda): through GEMMs, or the tensor-core kernels
   * (EQAT_CUDA_ATTENTION=tc with bf16 GEMMs and a head dim they take); null: the flash kernels.
   */
  readonly attention: AttentionGemmScratch | AttentionTcScratch | null;
  private readonly arena: DeviceArray;
  private readonly lowpArena: DeviceArray | null; // bf16 ln1, ln2, act, attIn (precision 'bf16')

  /**
   * `precision` is that of the GEMMs (attention's included), as in linearForwardCuda's `lowp`.
   * `kvOnly`: the workspace serves only blockForwardCuda with a kv cache, whose attention runs
   * the flash kernels, so the GEMM-attention scratch is left out (a forward without a cache
   * then runs the flash kernels as well).
   */
  constructor(
    readonly cfg: ModelConfig,
    B: number,
    T: number,
    { training = true, precision = 'f32', kvOnly = false }: { training?: boolean; precision?: 'f32' | 'bf16'; kvOnly?: boolean } = {},
  ) {
    this.B = B;
    this.T = T;
    const N = B * T;
    const C = cfg.hiddenSize;
    const F = cfg.intermediateSize;
    const H = cfg.numHeads;
    const Hkv = cfg.numKvHeads;
    const D = cfg.headDim;
    const qk = cfg.qkNorm;
    const g = training ? 1 : 0;
    // with bf16 GEMMs, the norm outputs and the SwiGLU output (read by linears only) are
    // produced in bf16 in an arena of their own instead of in f32, and the attention output gets
    // a bf16 copy there for the o linear (written by the tensor-core kernel, else converted once)
    const f = precision === 'bf16' ? 0 : 1;
    // every buffer in one allocation, carved in declaration order
    const sizes: [string, number][] = [
      ['ln1', f * N * C], ['rstd1', N], ['qLin', N * H * D], ['kLin', N * Hkv * D],
      ['qNormed', qk ? N * H * D : 0], ['kNormed', qk ? N * Hkv * D : 0],
      ['qRstd', qk ? N * H : 0], ['kRstd', qk ? N * Hkv : 0],
      ['qRot', N * H * D], ['kRot', N * Hkv * D], ['v', N * Hkv * D], ['att', N * H * D], ['lse', B * H * T],
      ['h', N * C], ['ln2', f * N * C], ['rstd2', N], ['gate', N * F], ['up', N * F], ['act', f * N * F], ['tmpC', N * C],
      ['dh', g * N * C], ['dln', g * N * C], ['dAct', g * N * F], ['dGate', g * N * F], ['dUp', g * N * F],
      ['dAtt', g * N * H * D], ['dq', g * N * H * D], ['dk', g * N * Hkv * D], ['dv', g * N * Hkv * D],
      ['dqLin', g * N * H * D], ['dkLin', g * N * Hkv * D],
      ['dqNormed', qk ? g * N * H * D : 0], ['dkNormed', qk ? g * N * Hkv * D : 0],
      ['cos', (T * D) / 2], ['sin', (T * D) / 2],
    ];
    this.arena = allocDevice('f32', sizes.reduce((a, [, n]) => a + n, 0));
    const views: Record<string, DeviceArray> = {};
    let at = 0;
    for (const [name, n] of sizes) {
      views[name] = deviceView(this.arena, at, n);
      at += n;
    }
    try {
      this.lowpArena = f ? null : allocDevice('bf16', 2 * N * C + N * F + N * H * D);
    } catch (e) {
      freeDevice(this.arena);
      throw e;
    }
    if (this.lowpArena) {
      views['ln1'] = deviceView(this.lowpArena, 0, N * C);
      views['ln2'] = deviceView(this.lowpArena, N * C, N * C);
      views['act'] = deviceView(this.lowpArena, 2 * N * C, N * F);
      this.attIn = deviceView(this.lowpArena, 2 * N * C + N * F, N * H * D);
    }
    Object.assign(this, views); // every field marked ! above is one of these views
    if (!qk) {
      this.qNormed = this.qLin;
      this.kNormed = this.kLin;
    }
    const rope = ropeTables(cfg, 0, T); // positions 0..T-1, as the CPU workspace's tables
    uploadDevice(this.cos, rope.cos.f32);
    uploadDevice(this.sin, rope.sin.f32);
    try {
      const shape = { B, Tq: T, Tk: T, H, Hkv, D };
      const path = kvOnly ? 'flash' : attentionPathCuda();
      const tc = path === 'tc' && precision === 'bf16' && attentionTcUnsupported(shape) === null;
      this.attention =
        path === 'flash' ? null : tc ? new AttentionTcScratch(shape, { training }) : new AttentionGemmScratch(shape, precision, { training });
    } catch (e) {
      freeDevice(this.arena);
      if (this.lowpArena) freeDevice(this.lowpArena);
      throw e;
    }
  }

  free(): void {
    this.attention?.free();
    freeDevice(this.arena);
    if (this.lowpArena) freeDevice(this.lowpArena);
  }
}

/** How a block's linear layers compute on the device (dense here; packed for E2E-QP). */
export interface LinearImplCuda {
  // whether the GEMMs take bf16 inputs (then x may be given in bf16, as a bf16 workspace holds it)
  readonly bf16Inputs: boolean;
  // out (N, O) = x (N, I) Wᵀ + b
  forward(out: DeviceArray, x: DeviceArray, key: BlockLinear, N: number): void;
  // dx (N, I) = dout W (overwritten, or accumulated when accumulateDx); parameter gradients accumulate
  backward(dx: DeviceArray | null, dout: DeviceArray, x: DeviceArray, key: BlockLinear, N: number, accumulateDx: boolean): void;
}

/** The widest activation a linear of this config reads or writes, per row: max(C, F, H·D, Hkv·D). */
export function linearRowWidth(cfg: ModelConfig): number {
  return Math.max(cfg.hiddenSize, cfg.intermediateSize, cfg.numHeads * cfg.headDim, cfg.numKvHeads * cfg.headDim);
}

/**
 * Dense linears reading W and b from p; gradients (when g is given) accumulate into g. With
 * `lowp` scratch the GEMMs take bf16 copies of their inputs (see src/ops/cuda/linear.ts).
 */
export function denseLinearsCuda(
  cfg: ModelConfig,
  p: DeviceBlockParams,
  g: DeviceBlockParams | null = null,
  lowp: LowPrecisionScratch | null = null,
): LinearImplCuda {
  const dims = {} as Record<BlockLinear, [number, number]>;
  const dimsOf = (key: BlockLinear) => (dims[key] ??= linearDims(cfg, key));
  const d = (key: BlockLinear, N: number): LinearDims => {
    const [O, I] = dimsOf(key);
    return { N, O, I };
  };
  return {
    bf16Inputs: lowp !== null,
    forward(out, x, key, N) {
      linearForwardCuda(out, x, p[key], p[BIAS_OF[key]], d(key, N), lowp);
    },
    backward(dx, dout, x, key, N, accumulateDx) {
      linearBackwardCuda(dx, g ? g[key] : null, g ? g[BIAS_OF[key]] : null, dout, x, p[key], d(key, N), accumulateDx, lowp);
    },
  };
}

/**
 * One block's keys (after rope) and values for decoding one sequence on the device, and the rope
 * tables of every position the cache can hold: rows [0, pos) hold the positions already run,
 * where pos is what the caller passes to blockForwardCuda next. Every block of a model may share
 * one pair of tables.
 */
export interface DeviceKvCache {
  k: DeviceArray; // (Tmax, Hkv, D)
  v: DeviceArray; // (Tmax, Hkv, D)
  cos: DeviceArray; // (Tmax, D/2) rope tables of positions 0 .. Tmax-1
  sin: DeviceArray; // (Tmax, D/2)
}

/**
 * y (B, T, C) = block(x (B, T, C)) on the device; keeps what the backward needs in ws. y may not alias x.
 * With `kv` (decoding, B = 1; forward only): x holds positions pos .. pos+T-1, which take their
 * rope rows from kv.cache's tables; their keys and values are written to cache rows
 * [pos, pos+T) and the queries attend over rows [0, pos+T) with the flash kernels
 * (attentionForwardCuda, any key count, no scratch).
 */
export function blockForwardCuda(
  cfg: ModelConfig,
  p: DeviceBlockParams,
  ws: DeviceBlockWorkspace,
  x: DeviceArray,
  y: DeviceArray,
  lin: LinearImplCuda = denseLinearsCuda(cfg, p),
  kv?: { cache: DeviceKvCache; pos: number },
): void {
  const { B, T } = ws;
  const N = B * T;
  const C = cfg.hiddenSize;
  const H = cfg.numHeads;
  const Hkv = cfg.numKvHeads;
  const D = cfg.headDim;
  const eps = cfg.rmsNormEps;
  const att = { B, Tq: T, Tk: T, H, Hkv, D };
  const window = cfg.slidingWindow;
  if (ws.ln1.dtype === 'bf16' && !lin.bf16Inputs) {
    throw new Error('blockForwardCuda: the workspace was made for bf16 GEMMs but the linears run f32 GEMMs');
  }

  // attention
  rmsnormForwardCuda(ws.ln1, ws.rstd1, x, p.inputNorm, N, C, eps);
  lin.forward(ws.qLin, ws.ln1, 'q', N);
  lin.forward(ws.kLin, ws.ln1, 'k', N);
  lin.forward(ws.v, ws.ln1, 'v', N);
  if (cfg.qkNorm) {
    rmsnormForwardCuda(ws.qNormed, ws.qRstd, ws.qLin, p.qNorm!, N * H, D, eps);
    rmsnormForwardCuda(ws.kNormed, ws.kRstd, ws.kLin, p.kNorm!, N * Hkv, D, eps);
  }
  if (kv) {
    const { cache, pos } = kv;
    const Tk = pos + T;
    const rowKv = Hkv * D;
    const Tmax = cache.k.length / rowKv;
    if (B !== 1) throw new RangeError(`blockForwardCuda: a kv cache holds one sequence, got B = ${B}`);
    if (!(Number.isInteger(pos) && pos >= 0 && Tk <= Tmax)) {
      throw new RangeError(`blockForwardCuda: positions ${pos}..${Tk - 1} do not fit a kv cache of ${Tmax} positions`);
    }
    const cos = deviceView(cache.cos, (pos * D) / 2, (T * D) / 2), sin = deviceView(cache.sin, (pos * D) / 2, (T * D) / 2);
    ropeForwardCuda(ws.qRot, ws.qNormed, cos, sin, 1, T, H, D);
    ropeForwardCuda(deviceView(cache.k, pos * rowKv, T * rowKv), ws.kNormed, cos, sin, 1, T, Hkv, D);
    copyCuda(deviceView(cache.v, pos * rowKv, T * rowKv), ws.v);
    const keys = deviceView(cache.k, 0, Tk * rowKv), values = deviceView(cache.v, 0, Tk * rowKv);
    attentionForwardCuda(ws.att, ws.lse, ws.qRot, keys, values, { ...att, Tk }, { window, qOffset: pos });
    if (ws.attIn) f32ToBf16Cuda(ws.attIn, ws.att);
  } else {
    ropeForwardCuda(ws.qRot, ws.qNormed, ws.cos, ws.sin, B, T, H, D);
    ropeForwardCuda(ws.kRot, ws.kNormed, ws.cos, ws.sin, B, T, Hkv, D);
    if (ws.attention instanceof AttentionTcScratch) {
      attentionTcForwardCuda(ws.att, ws.lse, ws.qRot, ws.kRot, ws.v, att, { window }, ws.attIn); // writes attIn too
    } else {
      if (ws.attention) attentionGemmForwardCuda(ws.att, ws.lse, ws.qRot, ws.kRot, ws.v, att, { window }, ws.attention);
      else attentionForwardCuda(ws.att, ws.lse, ws.qRot, ws.kRot, ws.v, att, { window });
      if (ws.attIn) f32ToBf16Cuda(ws.attIn, ws.att);
    }
  }
  lin.forward(ws.tmpC, ws.attIn ?? ws.att, 'o', N);
  addCuda(ws.h, x, ws.tmpC);

  // MLP
  rmsnormForwardCuda(ws.ln2, ws.rstd2, ws.h, p.postNorm, N, C, eps);
  lin.forward(ws.gate, ws.ln2, 'gate', N);
  lin.forward(ws.up, ws.ln2, 'up', N);
  swigluForwardCuda(ws.act, ws.gate, ws.up);
  lin.forward(ws.tmpC, ws.act, 'down', N);
  addCuda(y, ws.h, ws.tmpC);
}

/**
 * Backward of blockForwardCuda (which must have run on the same ws, x and linears). Norm
 * gradients (and, with the dense linears, weight and bias gradients) accumulate into g; dx
 * (B, T, C) is overwritten when given.
 */
export function blockBackwardCuda(
  cfg: ModelConfig,
  p: DeviceBlockParams,
  g: DeviceBlockParams,
  ws: DeviceBlockWorkspace,
  x: DeviceArray,
  dy: DeviceArray,
  dx: DeviceArray | null,
  lin: LinearImplCuda = denseLinearsCuda(cfg, p, g),
): void {
  const { B, T } = ws;
  const N = B * T;
  const C = cfg.hiddenSize;
  const H = cfg.numHeads;
  const Hkv = cfg.numKvHeads;
  const D = cfg.headDim;
  const att = { B, Tq: T, Tk: T, H, Hkv, D };
  const window = cfg.slidingWindow;

  // MLP: y = h + down(act)
  lin.backward(ws.dAct, dy, ws.act, 'down', N, false);
  zeroDevice(ws.dGate);
  zeroDevice(ws.dUp);
  swigluBackwardCuda(ws.dGate, ws.dUp, ws.dAct, ws.gate, ws.up);
  lin.backward(ws.dln, ws.dGate, ws.ln2, 'gate', N, false);
  lin.backward(ws.dln, ws.dUp, ws.ln2, 'up', N, true);
  // dh = dy + rmsnorm backward
  copyCuda(ws.dh, dy);
  rmsnormBackwardCuda(ws.dh, g.postNorm, ws.dln, ws.h, p.postNorm, ws.rstd2, N, C);

  // attention: h = x + o(att)
  lin.backward(ws.dAtt, ws.dh, ws.attIn ?? ws.att, 'o', N, false);
  zeroDevice(ws.dq);
  zeroDevice(ws.dk);
  zeroDevice(ws.dv);
  if (ws.attention instanceof AttentionTcScratch) {
    attentionTcBackwardCuda(ws.dq, ws.dk, ws.dv, ws.dAtt, ws.qRot, ws.kRot, ws.v, ws.att, ws.lse, att, { window }, ws.attention);
  } else if (ws.attention) {
    attentionGemmBackwardCuda(ws.dq, ws.dk, ws.dv, ws.dAtt, ws.qRot, ws.kRot, ws.v, ws.att, ws.lse, att, { window }, ws.attention);
  } else attentionBackwardCuda(ws.dq, ws.dk, ws.dv, ws.dAtt, ws.qRot, ws.kRot, ws.v, ws.att, ws.lse, att, { window });
  zeroDevice(ws.dqLin);
  zeroDevice(ws.dkLin);
  if (cfg.qkNorm) {
    // rope backward into the normed-q/k gradients, then the per-head norm backward
    zeroDevice(ws.dqNormed);
    zeroDevice(ws.dkNormed);
    ropeBackwardCuda(ws.dqNormed, ws.dq, ws.cos, ws.sin, B, T, H, D);
    ropeBackwardCuda(ws.dkNormed, ws.dk, ws.cos, ws.sin, B, T, Hkv, D);
    rmsnormBackwardCuda(ws.dqLin, g.qNorm!, ws.dqNormed, ws.qLin, p.qNorm!, ws.qRstd, N * H, D);
    rmsnormBackwardCuda(ws.dkLin, g.kNorm!, ws.dkNormed, ws.kLin, p.kNorm!, ws.kRstd, N * Hkv, D);
  } else {
    ropeBackwardCuda(ws.dqLin, ws.dq, ws.cos, ws.sin, B, T, H, D);
    ropeBackwardCuda(ws.dkLin, ws.dk, ws.cos, ws.sin, B, T, Hkv, D);
  }
  lin.backward(ws.dln, ws.dqLin, ws.ln1, 'q', N, false);
  lin.backward(ws.dln, ws.dkLin, ws.ln1, 'k', N, true);
  lin.backward(ws.dln, ws.dv, ws.ln1, 'v', N, true);
  if (dx) {
    copyCuda(dx, ws.dh);
    rmsnormBackwardCuda(dx, g.inputNorm, ws.dln, x, p.inputNorm, ws.rstd1, N, C);
  } else {
    // parameter gradient of the input norm only: route dx into scratch
    zeroDevice(ws.tmpC);
    rmsnormBackwardCuda(ws.tmpC, g.inputNorm, ws.dln, x, p.inputNorm, ws.rstd1, N, C);
  }
}
