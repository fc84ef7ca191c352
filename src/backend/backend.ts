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
import { embeddingIdError } from '../ops/embedding.js';
import { crossEntropyTargetError, IGNORE_INDEX } from '../ops/crossentropy.js';

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
  /**
   * Host data the caller keeps alive and unchanged while the array is in use (weights read by
   * the ops): the host memory itself on the CPU (no copy), a device copy on CUDA.
   */
  share(data: Float32Array | Int32Array): Owned<A>;
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
  /**
   * A frozen weight as the GEMMs of `precision` take it: f32, or its bf16 rounding (CUDA). The
   * CPU computes on `w` itself, which must then stay unchanged while the array is in use.
   */
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
  embeddingForward(out: A, ids: A, table: A, N: number, V: number, C: number, opts?: { check: boolean }): void;
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

  // ---- E2E-QP training: the model's ends of a micro-batch over host-checked tokens, the
  // global gradient norm and clipping
  /**
   * Checks a micro-batch's token ids and targets (N each, host memory) against a vocabulary of
   * V before they are uploaded, so the step's embedding and cross-entropy run with check false
   * (a captured step cannot synchronise): throws the RangeError this backend's embedding op
   * would raise for the first bad id, else its fused cross-entropy for the first bad target.
   */
  checkTrainingTokens(ids: Int32Array, targets: Int32Array, V: number): void;
  /** The record of the fused cross-entropy's gradient scale (device memory on CUDA, so a captured micro-batch reads each replay's scale). */
  lossScale(): Owned<unknown>;
  writeLossScale(record: unknown, scale: number): void;
  /**
   * crossEntropyForward and its backward in one pass: losses (N); dlogits (N, V) OVERWRITTEN
   * with scale · (softmax(logits) − onehot(targets)), scale read from the lossScale record;
   * dlogits may be logits (in place).
   */
  crossEntropyForwardBackward(losses: A, dlogits: A, logits: A, targets: A, N: number, V: number, scale: unknown, opts: { check: boolean }): void;
  /** Scratch of sumSquares (CUDA: the per-block partial sums). */
  sumSquaresScratch(): Owned<unknown>;
  /** Σ a² over the whole f32 array with f64 sums (a device-to-host transfer on CUDA). */
  sumSquares(a: A, scratch: unknown): number;
  /** out = alpha · a over equally long f32 arrays (in place allowed). */
  scale(out: A, a: A, alpha: number): void;

  // ---- Block-AP training: fake quantization of an (O, I) weight in groups of G (G consecutive
  // inputs) over per-group step sizes and zero points (O, I/G) with its straight-through
  // backward, the MSE reconstruction loss, and host staging for the batches
  /** out (O, I) = fakequant(w) (src/quant/primitives.ts); an f32 out gets the values, a bf16 one (CUDA) their bf16 rounding. */
  fakeQuantForward(out: A, w: A, scale: A, zero: A, O: number, I: number, bits: number, G: number): void;
  /**
   * Straight-through backward of fakeQuantForward given dout (O, I): dscale and dzero ACCUMULATE,
   * and so does dw (O, I) when given; with dw null only they are formed (the CPU kernel forms a
   * weight gradient all the same, in `scratch` from fakeQuantScratch).
   */
  fakeQuantBackward(dw: A | null, dscale: A, dzero: A, dout: A, w: A, scale: A, zero: A, O: number, I: number, bits: number, G: number, scratch: unknown): void;
  /**
   * fakeQuantBackward into a zeroed weight gradient followed by the weight's AdamW step (w, m, v
   * (O, I) updated with the scalars last written to `adamwScalars`); dscale and dzero ACCUMULATE.
   * CUDA fuses the two (no gradient buffer); the CPU composes them through `scratch`.
   */
  fakeQuantBackwardAdamw(w: A, m: A, v: A, adamwScalars: unknown, dscale: A, dzero: A, dout: A, scale: A, zero: A, O: number, I: number, bits: number, G: number, scratch: unknown): void;
  /** The scratch of fakeQuantBackward* for weights up to `largest` elements: a weight gradient on the CPU, nothing on CUDA. */
  fakeQuantScratch(largest: number): Owned<unknown>;
  /** linearBackward with dw (O, I) OVERWRITTEN: one linear's weight gradient formed in a tile and read once. */
  linearBackwardIntoTile(dx: A | null, dw: A, dbias: A | null | undefined, dout: A, x: A, w: A, d: LinearDims, accumulateDx: boolean, lowp: unknown): void;
  /** The record a queued MSE leaves its sums in (CUDA: per-block partial sums in device memory). */
  mseRecord(): Owned<unknown>;
  /** Queues mean((a − b)²) of a and b (n elements each, n > 0, f64 sums) into `record`; mseRead gives it once the work has run. */
  mseQueue(a: A, b: A, n: number, record: unknown): void;
  /** The MSE the last mseQueue of n elements left in `record` (CUDA: a device-to-host transfer). */
  mseRead(record: unknown, n: number): number;
  /** da += 2 (a − b) / n over n elements, the factor rounded to f32 once. */
  mseBackward(da: A, a: A, b: A, n: number): void;
  /** out (bf16) = x (f32) rounded to bf16, equally long: a pass's weights for bf16 GEMMs (CUDA only). */
  roundToBf16(out: A, x: A): void;
  /** Host memory for batches that are uploaded (CUDA: page-locked where the driver grants it, so uploads run at bus speed). */
  hostStaging(length: number): Float32Array;
}

/** What Backend.stepCapture gives: replayable sequences of queued ops. */
export interface StepCapture {
  capture(key: string, queue: () => void): void;
  /** One line on stderr when captures were asked for but the device ran them op by op (CUDA). */
  noteIfEager(quiet: boolean): void;
  /** Why captures run op by op (CUDA: graphs off or a capture failed), or null (graphs in use; the CPU). */
  readonly eagerReason: string | null;
  /** Sequences recorded so far (CUDA graphs; 0 on the CPU). */
  readonly graphs: number;
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

  /** Host data as the backend reads it in place (Backend.share): no copy on the CPU. */
  share(data: Float32Array | Int32Array): A {
    return this.adopt(this.be.share(data)).value;
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

// ---- E2E-QP training: the host check behind Backend.checkTrainingTokens

/**
 * The check of Backend.checkTrainingTokens under the ops' names: every id first (the embedding
 * runs first), then every target other than the ignore index (-100).
 */
export function checkTokensAs(ops: { embedding: string; crossEntropy: string }, ids: Int32Array, targets: Int32Array, V: number): void {
  if (targets.length !== ids.length) throw new RangeError(`checkTrainingTokens: ${ids.length} ids but ${targets.length} targets`);
  for (let row = 0; row < ids.length; row++) {
    const id = ids[row]!;
    if (!(id >= 0 && id < V)) throw embeddingIdError(ops.embedding, row, id, V);
  }
  for (let row = 0; row < targets.length; row++) {
    const target = targets[row]!;
    if (target !== IGNORE_INDEX && !(target >= 0 && target < V)) throw crossEntropyTargetError(ops.crossEntropy, row, target, V);
  }
}
