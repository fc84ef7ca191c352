// The CPU backend: host memory as Tensors (an allocation is a flat Tensor; a view is a Tensor
// over a subarray of it) and the ops of src/ops/*.ts over the native addon. Each op views its
// flat arguments in the shapes the wrapper checks, so the wrapper's checks and kernels run as
// they always did, bit for bit. Packed linears run the fused low-bit kernel on the host
// PackedWeight itself (no upload, no tile).
import { Tensor } from '../engine/tensor.js';
import { allocStorage, type DType, type Storage } from '../engine/dtype.js';
import { add, copy, scale } from '../ops/elementwise.js';
import { rmsnormBackward, rmsnormForward } from '../ops/rmsnorm.js';
import { ropeBackward, ropeForward } from '../ops/rope.js';
import { swigluBackward, swigluForward } from '../ops/swiglu.js';
import { linearBackward, linearForward } from '../ops/linear.js';
import { attentionBackward, attentionForward, type AttentionOptions } from '../ops/attention.js';
import { embeddingForward } from '../ops/embedding.js';
import { crossEntropyForward, crossEntropyForwardBackward } from '../ops/crossentropy.js';
import { mseBackward, mseForward, sumSquares } from '../ops/reduce.js';
import { fakeQuantBackward, fakeQuantForward } from '../quant/fakequant.js';
import { checkGroupLayout } from '../quant/primitives.js';
import { packedLinearBackward, packedLinearForward, type PackedWeight } from '../quant/packed-linear.js';
import { BF16_NEEDS_CUDA } from '../engine/cuda.js';
import { adamwStep, checkAdamWHyper, type AdamWHyper } from '../ops/adamw.js';
import { checkTokensAs, type AttentionScratch, type AttentionShape, type Backend, type LinearDims, type PackedArray, type StepCapture } from './backend.js';

const flat = (t: Tensor): Tensor => (t.rank === 1 ? t : t.view([t.size]));

function noLowPrecision(op: string, lowp: unknown): void {
  if (lowp !== null && lowp !== undefined) throw new Error(`${op}: the CPU computes in f32 (no bf16 GEMM scratch)`);
}

export const cpuBackend: Backend<Tensor> = {
  name: 'cpu',

  alloc(dtype: DType, length: number): Tensor {
    return new Tensor([length], dtype, allocStorage(dtype, length));
  },
  view(a: Tensor, offset: number, length: number): Tensor {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0 || offset + length > a.size) {
      throw new RangeError(`view: range [${offset}, ${offset + length}) is outside the array of ${a.size} elements`);
    }
    return new Tensor([length], a.dtype, a.data.subarray(offset, offset + length) as Storage);
  },
  length: (a) => a.size,
  dtype: (a) => a.dtype,
  upload(dst: Tensor, src: Storage): void {
    if (src.length !== dst.size) throw new RangeError(`upload: ${src.length} elements into an array of ${dst.size}`);
    dst.data.set(src as never);
  },
  share(data) {
    return { value: new Tensor([data.length], data instanceof Int32Array ? 'i32' : 'f32', data), free() {} };
  },
  download(src: Tensor, dst: Storage): void {
    if (dst.length !== src.size) throw new RangeError(`download: an array of ${src.size} elements into ${dst.length}`);
    dst.set(src.data as never);
  },
  zero(a: Tensor): void {
    a.data.fill(0);
  },
  free(): void {
    // garbage collected
  },

  copy(dst, src) {
    copy(flat(dst), flat(src));
  },
  add(out, a, b) {
    add(flat(out), flat(a), flat(b));
  },

  rmsnormForward(out, rstd, x, weight, rows, C, eps) {
    rmsnormForward(out.view([rows, C]), rstd.view([rows]), x.view([rows, C]), weight.view([C]), eps);
  },
  rmsnormBackward(dx, dweight, dout, x, weight, rstd, rows, C) {
    rmsnormBackward(dx.view([rows, C]), dweight.view([C]), dout.view([rows, C]), x.view([rows, C]), weight.view([C]), rstd.view([rows]));
  },

  ropeForward(out, x, cos, sin, B, T, H, D) {
    ropeForward(out.view([B, T, H, D]), x.view([B, T, H, D]), cos.view([T, D / 2]), sin.view([T, D / 2]));
  },
  ropeBackward(dx, dout, cos, sin, B, T, H, D) {
    ropeBackward(dx.view([B, T, H, D]), dout.view([B, T, H, D]), cos.view([T, D / 2]), sin.view([T, D / 2]));
  },

  swigluForward(out, gate, up, rows, F) {
    const s = [rows, F];
    swigluForward(out.view(s), gate.view(s), up.view(s));
  },
  swigluBackward(dgate, dup, dout, gate, up, rows, F) {
    const s = [rows, F];
    swigluBackward(dgate.view(s), dup.view(s), dout.view(s), gate.view(s), up.view(s));
  },

  linearForward(out, x, w, bias, { N, O, I }: LinearDims, lowp) {
    noLowPrecision('linearForward', lowp);
    linearForward(out.view([N, O]), x.view([N, I]), w.view([O, I]), bias ? bias.view([O]) : null);
  },
  linearBackward(dx, dw, dbias, dout, x, w, { N, O, I }: LinearDims, accumulateDx, lowp) {
    noLowPrecision('linearBackward', lowp);
    linearBackward(
      dx ? dx.view([N, I]) : null, dw ? dw.view([O, I]) : null, dbias ? dbias.view([O]) : null,
      dout.view([N, O]), x.view([N, I]), w.view([O, I]), accumulateDx,
    );
  },

  linearScratch() {
    throw new Error(`linearScratch: ${BF16_NEEDS_CUDA}`);
  },
  uploadFrozen(w, precision) {
    if (precision !== 'f32') throw new Error(`uploadFrozen: ${BF16_NEEDS_CUDA}`);
    return Tensor.fromF32(w);
  },

  uploadPacked(w: PackedWeight) {
    return { value: w, free() {} }; // the host layout is the kernel's
  },
  packedTiles() {
    return { w: null, dw: null, free() {} }; // the fused kernel dequantizes on the fly
  },
  packedLinearForward(out, x, w: PackedArray, scales, bias, N, _tile, lowp) {
    noLowPrecision('packedLinearForward', lowp);
    const { O, I, G } = w;
    packedLinearForward(out.view([N, O]), x.view([N, I]), w as PackedWeight, scales.view([O, I / G]), bias ? bias.view([O]) : null);
  },
  packedLinearBackward(dx, dscales, dout, x, w: PackedArray, scales, N, accumulateDx, _tile, _dwTile, lowp) {
    noLowPrecision('packedLinearBackward', lowp);
    const { O, I, G } = w;
    packedLinearBackward(
      dx ? dx.view([N, I]) : null, dscales ? dscales.view([O, I / G]) : null,
      dout.view([N, O]), x.view([N, I]), w as PackedWeight, scales.view([O, I / G]), accumulateDx,
    );
  },

  embeddingForward(out, ids, table, N, V, C) {
    embeddingForward(out.view([N, C]), ids.view([N]), table.view([V, C])); // the check is free on the host: always made
  },
  crossEntropyForward(losses, logits, targets, N, V) {
    crossEntropyForward(losses.view([N]), logits.view([N, V]), targets.view([N])); // the check is free on the host: always made
  },

  attentionScratch(): AttentionScratch | null {
    return null; // one path, no scratch
  },
  attentionForward(out, lse, q, k, v, s: AttentionShape, opts: AttentionOptions, scratch, outLowp) {
    if (scratch !== null || outLowp !== null) throw new Error('attentionForward: the CPU has one f32 attention path (no scratch, no bf16 copy)');
    const { B, Tq, Tk, H, Hkv, D } = s;
    attentionForward(out.view([B, Tq, H, D]), lse.view([B, H, Tq]), q.view([B, Tq, H, D]), k.view([B, Tk, Hkv, D]), v.view([B, Tk, Hkv, D]), opts);
  },
  attentionBackward(dq, dk, dv, dout, q, k, v, out, lse, s: AttentionShape, opts: AttentionOptions, scratch) {
    if (scratch !== null) throw new Error('attentionBackward: the CPU has one attention path (no scratch)');
    const { B, Tq, Tk, H, Hkv, D } = s;
    const qs = [B, Tq, H, D], ks = [B, Tk, Hkv, D];
    attentionBackward(dq.view(qs), dk.view(ks), dv.view(ks), dout.view(qs), q.view(qs), k.view(ks), v.view(ks), out.view(qs), lse.view([B, H, Tq]), opts);
  },

  // the CPU op takes the hyperparameters themselves (in f64): the record holds them
  adamwScalars() {
    return { value: { h: null as AdamWHyper | null }, free() {} };
  },
  writeAdamWScalars(scalars, h) {
    checkAdamWHyper('adamwStep', h);
    (scalars as { h: AdamWHyper | null }).h = { ...h };
  },
  adamwStep(param, grad, m, v, scalars) {
    const h = (scalars as { h: AdamWHyper | null }).h;
    if (!h) throw new Error('adamwStep: no scalars written for this step (writeAdamWScalars)');
    adamwStep(flat(param), flat(grad), flat(m), flat(v), h);
  },

  stepCapture(): StepCapture {
    return { capture: (_key, queue) => queue(), noteIfEager() {}, eagerReason: null, graphs: 0, free() {} };
  },

  // ---- E2E-QP training: the ops check ids and targets natively as well (free on the host)
  checkTrainingTokens(ids, targets, V) {
    checkTokensAs({ embedding: 'embeddingForward', crossEntropy: 'crossEntropyForwardBackward' }, ids, targets, V);
  },
  // the CPU op takes the scale itself (in f64): the record holds it
  lossScale() {
    return { value: { scale: null as number | null }, free() {} };
  },
  writeLossScale(record, scale) {
    if (typeof scale !== 'number' || !Number.isFinite(scale)) throw new TypeError(`writeLossScale: scale must be a finite number, got ${scale}`);
    (record as { scale: number | null }).scale = scale;
  },
  crossEntropyForwardBackward(losses, dlogits, logits, targets, N, V, record) {
    const scale = (record as { scale: number | null }).scale;
    if (scale === null) throw new Error('crossEntropyForwardBackward: no scale written (writeLossScale)');
    crossEntropyForwardBackward(losses.view([N]), dlogits.view([N, V]), logits.view([N, V]), targets.view([N]), scale); // always checked
  },
  sumSquaresScratch() {
    return { value: null, free() {} }; // the native sum needs none
  },
  sumSquares: (a) => sumSquares(flat(a)),
  scale(out, a, alpha) {
    scale(flat(out), flat(a), alpha);
  },

  // ---- Block-AP training: the native fake-quant kernels on (O, I) views; the fused backward
  // composes the kernel's weight gradient (in scratch) with the AdamW step; the MSE record holds
  // the loss itself
  fakeQuantForward(out, w, scale, zero, O, I, bits, G) {
    checkGroupLayout(O, I, G, 'fakeQuantForward');
    fakeQuantForward(out.view([O, I]), w.view([O, I]), scale.view([O, I / G]), zero.view([O, I / G]), bits, G);
  },
  fakeQuantBackward(dw, dscale, dzero, dout, w, scale, zero, O, I, bits, G, scratch) {
    checkGroupLayout(O, I, G, 'fakeQuantBackward');
    const grad = dw ?? weightGradient('fakeQuantBackward', scratch, O * I);
    const groups = [O, I / G];
    fakeQuantBackward(grad.view([O, I]), dscale.view(groups), dzero.view(groups), dout.view([O, I]), w.view([O, I]), scale.view(groups), zero.view(groups), bits, G);
  },
  fakeQuantBackwardAdamw(w, m, v, adamwScalars, dscale, dzero, dout, scale, zero, O, I, bits, G, scratch) {
    const grad = weightGradient('fakeQuantBackwardAdamw', scratch, O * I);
    grad.data.fill(0);
    cpuBackend.fakeQuantBackward(grad, dscale, dzero, dout, w, scale, zero, O, I, bits, G, null);
    cpuBackend.adamwStep(w, grad, m, v, adamwScalars);
  },
  fakeQuantScratch(largest) {
    return { value: Tensor.zeros([largest]), free() {} };
  },
  linearBackwardIntoTile(dx, dw, dbias, dout, x, w, d, accumulateDx, lowp) {
    dw.data.fill(0); // the CPU GEMM accumulates its weight gradient
    cpuBackend.linearBackward(dx, dw, dbias, dout, x, w, d, accumulateDx, lowp);
  },
  mseRecord() {
    return { value: { loss: NaN }, free() {} };
  },
  mseQueue(a, b, n, record) {
    if (n <= 0) throw new RangeError('mseQueue: empty arrays have no mean');
    (record as { loss: number }).loss = mseForward(a.view([n]), b.view([n]));
  },
  mseRead: (record) => (record as { loss: number }).loss,
  mseBackward(da, a, b, n) {
    mseBackward(da.view([n]), a.view([n]), b.view([n]));
  },
  roundToBf16() {
    throw new Error(`roundToBf16: ${BF16_NEEDS_CUDA}`);
  },
  hostStaging: (length) => new Float32Array(length),
};

/** The first n elements of a fakeQuantScratch weight gradient. */
function weightGradient(op: string, scratch: unknown, n: number): Tensor {
  if (!(scratch instanceof Tensor) || scratch.size < n) throw new Error(`${op}: no weight-gradient scratch of ${n} elements (fakeQuantScratch)`);
  return scratch.size === n ? scratch : cpuBackend.view(scratch, 0, n);
}
