// The CUDA backend: device memory as DeviceArrays (src/engine/cuda.ts: the live allocation
// table, one stream, the driver or its CPU emulator behind setCudaBackend) and the ops of
// src/ops/cuda/*.ts. Attention has three paths, picked once per workspace by attentionScratch
// from EQAT_CUDA_ATTENTION (attentionPathCuda): through cuBLASLt GEMMs (the default), the
// tensor-core flash kernels (bf16 GEMMs and the head dims they take), or the plain flash
// kernels (no scratch; also the path of decoding over a kv cache, which takes any key count).
// Packed linears keep the GPTQ integers and zero points on the device and dequantize each
// weight into a tile (f32, or bf16 for bf16 GEMMs) right before its GEMM.
import { allocDevice, CudaStepGraphs, DeviceAllocations, deviceView, downloadDevice, freeDevice, uploadDevice, zeroDevice, type DeviceArray } from '../engine/cuda.js';
import type { DType, Storage } from '../engine/dtype.js';
import { addCuda, copyCuda, f32ToBf16Cuda, scaleCuda } from '../ops/cuda/elementwise.js';
import { rmsnormBackwardCuda, rmsnormForwardCuda } from '../ops/cuda/rmsnorm.js';
import { ropeBackwardCuda, ropeForwardCuda } from '../ops/cuda/rope.js';
import { swigluBackwardCuda, swigluForwardCuda } from '../ops/cuda/swiglu.js';
import { linearBackwardCuda, linearForwardCuda, uploadFrozenWeight, type LowPrecisionScratch } from '../ops/cuda/linear.js';
import { dequantizeGptqCuda, freePackedWeightCuda, gptqScaleGradCuda, uploadPackedWeight, type PackedWeightCuda } from '../quant/cuda/gptq.js';
import { embeddingForwardCuda } from '../ops/cuda/embedding.js';
import { allocLossScale, crossEntropyForwardBackwardCuda, crossEntropyForwardCuda, writeLossScale } from '../ops/cuda/crossentropy.js';
import { allocReducePartials, sumSquaresCuda } from '../ops/cuda/reduce.js';
import { attentionBackwardCuda, attentionForwardCuda } from '../ops/cuda/attention.js';
import { AttentionGemmScratch, attentionGemmBackwardCuda, attentionGemmForwardCuda, attentionPathCuda } from '../ops/cuda/attention-gemm.js';
import { AttentionTcScratch, attentionTcBackwardCuda, attentionTcForwardCuda, attentionTcUnsupported } from '../ops/cuda/attention-tc.js';
import { ADAMW_SCALARS, adamwLaunchCuda, writeAdamWScalars } from '../ops/cuda/adamw.js';
import { allocHostStaging, expectDeviceLength } from '../engine/cuda.js';
import { fakeQuantBackwardAdamwCuda, fakeQuantBackwardCuda, fakeQuantForwardCuda } from '../quant/cuda/fakequant.js';
import { mseBackwardCuda, mseQueueCuda, readMseCuda } from '../ops/cuda/reduce.js';
import { checkTokensAs, type AttentionScratch, type Backend, type PackedArray, type StepCapture } from './backend.js';

/** The (O, I) weight of a packed linear dequantized into the tile its GEMM reads: lowp's bf16 copy with bf16 GEMMs, else the f32 tile. */
function dequantized(w: PackedArray, scales: DeviceArray, tile: DeviceArray | null, lowp: LowPrecisionScratch | null): DeviceArray {
  const into = lowp ? lowp.wb : tile;
  if (!into) throw new Error('packed linear on CUDA: no weight tile given (packedTiles)');
  const wt = deviceView(into, 0, w.O * w.I);
  dequantizeGptqCuda(wt, w as PackedWeightCuda, scales);
  return wt;
}

export const cudaBackend: Backend<DeviceArray> = {
  name: 'cuda',

  alloc: (dtype: DType, length: number) => allocDevice(dtype, length),
  view: (a, offset, length) => deviceView(a, offset, length),
  length: (a) => a.length,
  dtype: (a) => a.dtype,
  upload: (dst, src: Storage) => uploadDevice(dst, src),
  share(data) {
    const a = allocDevice(data instanceof Int32Array ? 'i32' : 'f32', data.length);
    uploadDevice(a, data);
    return { value: a, free: () => freeDevice(a) };
  },
  download(src, dst: Storage) {
    downloadDevice(src, dst);
  },
  zero: (a) => zeroDevice(a),
  free: (a) => freeDevice(a),

  copy: (dst, src) => copyCuda(dst, src),
  add: (out, a, b) => addCuda(out, a, b),

  rmsnormForward: (out, rstd, x, weight, rows, C, eps) => rmsnormForwardCuda(out, rstd, x, weight, rows, C, eps),
  rmsnormBackward: (dx, dweight, dout, x, weight, rstd, rows, C) => rmsnormBackwardCuda(dx, dweight, dout, x, weight, rstd, rows, C),

  ropeForward: (out, x, cos, sin, B, T, H, D) => ropeForwardCuda(out, x, cos, sin, B, T, H, D),
  ropeBackward: (dx, dout, cos, sin, B, T, H, D) => ropeBackwardCuda(dx, dout, cos, sin, B, T, H, D),

  swigluForward: (out, gate, up) => swigluForwardCuda(out, gate, up),
  swigluBackward: (dgate, dup, dout, gate, up) => swigluBackwardCuda(dgate, dup, dout, gate, up),

  linearForward(out, x, w, bias, d, lowp) {
    linearForwardCuda(out, x, w, bias, d, lowp as LowPrecisionScratch | null);
  },
  linearBackward(dx, dw, dbias, dout, x, w, d, accumulateDx, lowp) {
    linearBackwardCuda(dx, dw, dbias, dout, x, w, d, accumulateDx, lowp as LowPrecisionScratch | null);
  },

  linearScratch({ x, dout, w }) {
    const mem = new DeviceAllocations();
    try {
      const lowp: LowPrecisionScratch = { xb: mem.alloc('bf16', x), doutb: mem.alloc('bf16', dout), wb: mem.alloc('bf16', w) };
      return { value: lowp, free: () => mem.free() };
    } catch (e) {
      mem.free();
      throw e;
    }
  },
  uploadFrozen: (w, precision) => uploadFrozenWeight(new DeviceAllocations(), w, precision), // the caller frees it

  uploadPacked(w) {
    const d = uploadPackedWeight(w);
    return { value: d, free: () => freePackedWeightCuda(d) };
  },
  packedTiles(largest, { precision, training }) {
    const mem = new DeviceAllocations();
    try {
      const w = mem.alloc('f32', precision === 'f32' ? largest : 0); // bf16: lowp.wb holds the weight
      const dw = training ? mem.alloc('f32', largest) : null;
      return { w, dw, free: () => mem.free() };
    } catch (e) {
      mem.free();
      throw e;
    }
  },
  packedLinearForward(out, x, w, scales, bias, N, tile, lowp) {
    const lp = lowp as LowPrecisionScratch | null;
    linearForwardCuda(out, x, dequantized(w, scales, tile, lp), bias, { N, O: w.O, I: w.I }, lp);
  },
  packedLinearBackward(dx, dscales, dout, x, w, scales, N, accumulateDx, tile, dwTile, lowp) {
    const lp = lowp as LowPrecisionScratch | null;
    const wt = dequantized(w, scales, tile, lp);
    let dw: DeviceArray | null = null;
    if (dscales) {
      if (!dwTile) throw new Error('packedLinearBackward on CUDA: step-size gradients need a weight-gradient tile (packedTiles training)');
      dw = deviceView(dwTile, 0, w.O * w.I); // overwritten by the weight-gradient GEMM
    }
    linearBackwardCuda(dx, dw, null, dout, x, wt, { N, O: w.O, I: w.I }, accumulateDx, lp, false);
    if (dscales) gptqScaleGradCuda(dscales, dw!, w as PackedWeightCuda);
  },

  embeddingForward: (out, ids, table, N, V, C, opts) => embeddingForwardCuda(out, ids, table, N, V, C, opts),
  crossEntropyForward: (losses, logits, targets, N, V, { check }) => crossEntropyForwardCuda(losses, logits, targets, N, V, { check }),

  attentionScratch(shape, { precision, training, cacheOnly }): AttentionScratch | null {
    const path = cacheOnly ? 'flash' : attentionPathCuda();
    if (path === 'flash') return null;
    if (path === 'tc' && precision === 'bf16' && attentionTcUnsupported(shape) === null) return new AttentionTcScratch(shape, { training });
    return new AttentionGemmScratch(shape, precision, { training });
  },
  attentionForward(out, lse, q, k, v, shape, opts, scratch, outLowp) {
    if (scratch instanceof AttentionTcScratch) {
      attentionTcForwardCuda(out, lse, q, k, v, shape, opts, outLowp); // writes the bf16 copy too
      return;
    }
    if (scratch instanceof AttentionGemmScratch) attentionGemmForwardCuda(out, lse, q, k, v, shape, opts, scratch);
    else attentionForwardCuda(out, lse, q, k, v, shape, opts);
    if (outLowp) f32ToBf16Cuda(outLowp, out);
  },
  attentionBackward(dq, dk, dv, dout, q, k, v, out, lse, shape, opts, scratch) {
    if (scratch instanceof AttentionTcScratch) attentionTcBackwardCuda(dq, dk, dv, dout, q, k, v, out, lse, shape, opts, scratch);
    else if (scratch instanceof AttentionGemmScratch) attentionGemmBackwardCuda(dq, dk, dv, dout, q, k, v, out, lse, shape, opts, scratch);
    else attentionBackwardCuda(dq, dk, dv, dout, q, k, v, out, lse, shape, opts);
  },

  adamwScalars() {
    const scalars = allocDevice('f32', ADAMW_SCALARS);
    return { value: scalars, free: () => freeDevice(scalars) };
  },
  writeAdamWScalars: (scalars, h) => writeAdamWScalars(scalars as DeviceArray, h),
  adamwStep: (param, grad, m, v, scalars) => adamwLaunchCuda(param, grad, m, v, scalars as DeviceArray),

  stepCapture(what): StepCapture {
    const graphs = new CudaStepGraphs(what);
    return {
      capture: (key, queue) => graphs.run(key, queue),
      noteIfEager: (quiet) => graphs.noteIfEager(quiet),
      get eagerReason() {
        return graphs.eagerReason;
      },
      get graphs() {
        return graphs.graphs;
      },
      free: () => graphs.free(),
    };
  },

  // ---- E2E-QP training: ids and targets checked where they come from (the device check would synchronise)
  checkTrainingTokens(ids, targets, V) {
    checkTokensAs({ embedding: 'embeddingForwardCuda', crossEntropy: 'crossEntropyForwardBackwardCuda' }, ids, targets, V);
  },
  lossScale() {
    const record = allocLossScale();
    return { value: record, free: () => freeDevice(record) };
  },
  writeLossScale: (record, scale) => writeLossScale(record as DeviceArray, scale),
  crossEntropyForwardBackward: (losses, dlogits, logits, targets, N, V, scale, { check }) =>
    crossEntropyForwardBackwardCuda(losses, dlogits, logits, targets, N, V, scale as DeviceArray, { check }),
  sumSquaresScratch() {
    const partials = allocReducePartials();
    return { value: partials, free: () => freeDevice(partials) };
  },
  sumSquares: (a, scratch) => sumSquaresCuda(a, scratch as DeviceArray),
  scale: (out, a, alpha) => scaleCuda(out, a, alpha),

  // ---- Block-AP training: the fake-quant kernels (the weight's AdamW fused into the
  // straight-through backward, so no weight gradient is kept), the MSE as a queued sum read after
  fakeQuantForward: (out, w, scale, zero, O, I, bits, G) => fakeQuantForwardCuda(out, w, scale, zero, O, I, bits, G),
  fakeQuantBackward: (dw, dscale, dzero, dout, w, scale, zero, O, I, bits, G) => fakeQuantBackwardCuda(dw, dscale, dzero, dout, w, scale, zero, O, I, bits, G),
  fakeQuantBackwardAdamw: (w, m, v, adamwScalars, dscale, dzero, dout, scale, zero, O, I, bits, G) =>
    fakeQuantBackwardAdamwCuda(w, m, v, adamwScalars as DeviceArray, dscale, dzero, dout, scale, zero, O, I, bits, G),
  fakeQuantScratch() {
    return { value: null, free() {} };
  },
  linearBackwardIntoTile(dx, dw, dbias, dout, x, w, d, accumulateDx, lowp) {
    linearBackwardCuda(dx, dw, dbias, dout, x, w, d, accumulateDx, lowp as LowPrecisionScratch | null, false);
  },
  mseRecord() {
    const partials = allocReducePartials();
    return { value: partials, free: () => freeDevice(partials) };
  },
  mseQueue(a, b, n, record) {
    expectDeviceLength(a, n, 'mseQueue: a');
    mseQueueCuda(a, b, record as DeviceArray);
  },
  mseRead: (record, n) => readMseCuda(record as DeviceArray, n),
  mseBackward(da, a, b, n) {
    expectDeviceLength(a, n, 'mseBackward: a');
    mseBackwardCuda(da, a, b);
  },
  roundToBf16: (out, x) => f32ToBf16Cuda(out, x),
  hostStaging: (length) => allocHostStaging(length),
};
