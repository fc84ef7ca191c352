// The Backend interface: what the model, the trainers, evaluation and generation need from a
// device, at the level they use it, so each of them is written once. A backend is memory
// (alloc / view / upload / download / zero / free) plus the ops with explicit sizes (the
// block's, the model's embedding and cross-entropy, and packed low-bit linears); an array
// handle `A` carries no shape (a CPU Tensor of any shape with the right element count, or a
// CUDA DeviceArray), and every op is told its sizes, as the CUDA wrappers always were.
//
// Backends (src/backend/cpu.ts, src/backend/cuda.ts) only check sizes and hand over to the op
// wrappers (src/ops/*.ts over the native addon, src/ops/cuda/*.ts over NVRTC kernels and
// cuBLASLt); the arithmetic and its rounding points are the wrappers', so a composition written
// against this interface computes bit for bit what the same composition computed on either
// device before it existed. (The emulator of the CUDA kernels sits behind the CUDA backend as
// a driver: src/engine/cuda.ts setCudaBackend.)
import type { DType, Storage } from '../engine/dtype.js';
import type { AttentionOptions } from '../ops/attention.js';
import type { AdamWHyper } from '../ops/adamw.js';

// q (B, Tq, H, D), k and v (B, Tk, Hkv, D); and N rows through an (O, I) weight
export type { AttentionShape } from '../ops/cuda/attention.js';
export type { LinearDims } from '../ops/cuda/linear.js';
import type { AttentionShape } from '../ops/cuda/attention.js';
import type { LinearDims } from '../ops/cuda/linear.js';
import type { PackedWeight } from '../quant/packed-linear.js';

/** GEMM input precision: f32 throughout, or bf16 inputs with f32 sums (CUDA only). */
export type Precision = 'f32' | 'bf16';

/** Scratch an attention path keeps between calls (score chunks, bf16 copies); freed with free(). */
export interface AttentionScratch {
  free(): void;
}

/**
 * A packed low-bit weight held by a backend (uploadPacked): W_hat[o, i] = (q[o, i] − z[o, g]) ·
 * scales[o, g] over an (O, I) weight in groups of G, the integers in b bits (src/quant/packed-linear.ts).
 */
export interface PackedArray {
  readonly O: number;
  readonly I: number;
  readonly bits: number;
  readonly G: number;
}

/** Something a backend allocated that frees itself (a packed weight, a scratch). */
export interface Owned<T> {
  readonly value: T;
  free(): void;
}

export interface Backend<A> {
  readonly name: 'cpu' | 'cuda';

  // ---- memory: every allocation is zeroed; views share their allocation
  alloc(dtype: DType, length: number): A;
  view(a: A, offset: number, length: number): A;
  length(a: A): number;
  dtype(a: A): DType;
  upload(dst: A, src: Storage): void;
  download(src: A, dst: Storage): void;
  zero(a: A): void;
  /** Frees an allocation made by alloc (not a view). */
  free(a: A): void;

  // ---- elementwise (same element count everywhere)
  copy(dst: A, src: A): void;
  add(out: A, a: A, b: A): void;

  // ---- RMSNorm over rows of C: out, x (rows, C); weight (C); rstd (rows)
  rmsnormForward(out: A, rstd: A, x: A, weight: A, rows: number, C: number, eps: number): void;
  /** dx (rows, C) and dweight (C) ACCUMULATE. */
  rmsnormBackward(dx: A, dweight: A, dout: A, x: A, weight: A, rstd: A, rows: number, C: number): void;

  // ---- rotary embedding: x, out (B, T, H, D); cos, sin (T, D/2); the backward ACCUMULATES into dx
  ropeForward(out: A, x: A, cos: A, sin: A, B: number, T: number, H: number, D: number): void;
  ropeBackward(dx: A, dout: A, cos: A, sin: A, B: number, T: number, H: number, D: number): void;

  // ---- SwiGLU: out = silu(gate) * up, all (rows, F); the backward ACCUMULATES
  swigluForward(out: A, gate: A, up: A, rows: number, F: number): void;
  swigluBackward(dgate: A, dup: A, dout: A, gate: A, up: A, rows: number, F: number): void;

  // ---- linear: out (N, O) = x (N, I) w (O, I)ᵀ + bias (O); `lowp` is the backend's GEMM scratch
  // for bf16 inputs (linearScratch), null for f32 GEMMs
  linearForward(out: A, x: A, w: A, bias: A | null | undefined, d: LinearDims, lowp: unknown): void;
  /** dx (N, I) overwritten unless accumulateDx; dw and dbias accumulate; any may be null. */
  linearBackward(dx: A | null, dw: A | null, dbias: A | null | undefined, dout: A, x: A, w: A, d: LinearDims, accumulateDx: boolean, lowp: unknown): void;
  /**
   * The `lowp` scratch of GEMMs with bf16 inputs: bf16 copies of inputs up to x elements, of
   * output gradients up to dout and of weights up to w (CUDA only).
   */
  linearScratch(sizes: { x: number; dout: number; w: number }): Owned<unknown>;
  /** A frozen weight as the GEMMs of `precision` take it: f32, or its bf16 rounding (CUDA). */
  uploadFrozen(w: Float32Array, precision: Precision): A;

  // ---- packed low-bit linears: out (N, O) = x (N, I) W_hatᵀ + bias (O), scales (O, I/G) f32.
  // A backend that dequantizes before a GEMM (CUDA) does it into `tile` (f32, ≥ O·I elements,
  // from packedTiles), or into lowp's weight copy with bf16 GEMMs; the CPU runs the fused
  // kernel and needs no tile.
  uploadPacked(w: PackedWeight): Owned<PackedArray>;
  /** Weight tiles for packed linears up to `largest` elements: `w` for the dequantized weight, `dw` (training) for its gradient. */
  packedTiles(largest: number, opts: { precision: Precision; training: boolean }): { w: A | null; dw: A | null; free(): void };
  packedLinearForward(out: A, x: A, w: PackedArray, scales: A, bias: A | null | undefined, N: number, tile: A | null, lowp: unknown): void;
  /**
   * dx (N, I) = dout W_hat, overwritten unless accumulateDx; dscales (O, I/G) += Σ_{i in g}
   * (q − z)·dW_hat[o, i] with dW_hat = doutᵀ x (formed in dwTile where the backend needs it);
   * either may be null.
   */
  packedLinearBackward(dx: A | null, dscales: A | null, dout: A, x: A, w: PackedArray, scales: A, N: number, accumulateDx: boolean, tile: A | null, dwTile: A | null, lowp: unknown): void;

  // ---- the model's ends: out (N, C) = table (V, C) rows of ids (N) i32; losses (N) of logits
  // (N, V) against targets (N) i32 (0 where a target is -100). Invalid ids are refused before
  // anything is written unless `check` is false (CUDA: the check is a synchronisation).
  embeddingForward(out: A, ids: A, table: A, N: number, V: number, C: number): void;
  crossEntropyForward(losses: A, logits: A, targets: A, N: number, V: number, opts: { check: boolean }): void;

  // ---- causal GQA attention: out (B, Tq, H, D), lse (B, H, Tq). `scratch` from attentionScratch
  // picks the path; `outLowp`, when given, receives out rounded to bf16 (the o linear's input).
  attentionScratch(shape: AttentionShape, opts: { precision: Precision; training: boolean; cacheOnly: boolean }): AttentionScratch | null;
  attentionForward(out: A, lse: A, q: A, k: A, v: A, shape: AttentionShape, opts: AttentionOptions, scratch: AttentionScratch | null, outLowp: A | null): void;
  /** dq, dk, dv ACCUMULATE. */
  attentionBackward(dq: A, dk: A, dv: A, dout: A, q: A, k: A, v: A, out: A, lse: A, shape: AttentionShape, opts: AttentionOptions, scratch: AttentionScratch | null): void;

  // ---- training: AdamW over equally long f32 ranges (param, grad, m, v), in place. A step's
  // scalars live in a record of the backend's (device memory on CUDA), written before the step
  // and read by it, so a captured step picks up each replay's learning rate.
  adamwScalars(): Owned<unknown>;
  writeAdamWScalars(scalars: unknown, h: AdamWHyper): void;
  adamwStep(param: A, grad: A, m: A, v: A, scalars: unknown): void;

  /**
   * Step capture for `what` (e.g. 'the Block-AP step'): capture(key, queue) runs queue's ops;
   * CUDA records a graph per key on the second run and replays it from the third (nothing may
   * allocate, copy or synchronise inside), the CPU calls queue. See CudaStepGraphs.
   */
  stepCapture(what: string): StepCapture;
}

/** What Backend.stepCapture gives: replayable sequences of queued ops. */
export interface StepCapture {
  capture(key: string, queue: () => void): void;
  /** One line on stderr when captures were asked for but the device ran them op by op (CUDA). */
  noteIfEager(quiet: boolean): void;
  free(): void;
}

/** Allocations on one backend (arrays, or anything with a free()) released together, newest first. */
export class BackendAllocations<A> {
  private readonly releases: (() => void)[] = [];

  constructor(readonly be: Backend<A>) {}

  alloc(dtype: DType, length: number): A {
    const a = this.be.alloc(dtype, length);
    this.releases.push(() => this.be.free(a));
    return a;
  }

  /** A new array holding `data` (f32 or i32). */
  upload(data: Float32Array | Int32Array): A {
    const a = this.alloc(data instanceof Int32Array ? 'i32' : 'f32', data.length);
    this.be.upload(a, data);
    return a;
  }

  /** Takes over an allocation of the backend made elsewhere. */
  own(a: A): A {
    this.releases.push(() => this.be.free(a));
    return a;
  }

  /** Takes over anything with a free() of its own. */
  adopt<T extends { free(): void }>(owned: T): T {
    this.releases.push(() => owned.free());
    return owned;
  }

  free(): void {
    for (const release of this.releases.splice(0).reverse()) release();
  }
}
