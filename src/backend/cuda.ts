// The CUDA backend: device memory as DeviceArrays (src/engine/cuda.ts: the live allocation
// table, one stream, the driver or its CPU emulator behind setCudaBackend) and the ops of
// src/ops/cuda/*.ts. Attention has three paths, picked once per workspace by attentionScratch
// from EQAT_CUDA_ATTENTION (attentionPathCuda): through cuBLASLt GEMMs (the default), the
// tensor-core flash kernels (bf16 GEMMs and the head dims they take), or the plain flash
// kernels (no scratch; also the path of decoding over a kv cache, which takes any key count).
import { allocDevice, deviceView, downloadDevice, freeDevice, uploadDevice, zeroDevice, type DeviceArray } from '../engine/cuda.js';
import type { DType, Storage } from '../engine/dtype.js';
import { addCuda, copyCuda, f32ToBf16Cuda } from '../ops/cuda/elementwise.js';
import { rmsnormBackwardCuda, rmsnormForwardCuda } from '../ops/cuda/rmsnorm.js';
import { ropeBackwardCuda, ropeForwardCuda } from '../ops/cuda/rope.js';
import { swigluBackwardCuda, swigluForwardCuda } from '../ops/cuda/swiglu.js';
import { linearBackwardCuda, linearForwardCuda, type LowPrecisionScratch } from '../ops/cuda/linear.js';
import { attentionBackwardCuda, attentionForwardCuda } from '../ops/cuda/attention.js';
import { AttentionGemmScratch, attentionGemmBackwardCuda, attentionGemmForwardCuda, attentionPathCuda } from '../ops/cuda/attention-gemm.js';
import { AttentionTcScratch, attentionTcBackwardCuda, attentionTcForwardCuda, attentionTcUnsupported } from '../ops/cuda/attention-tc.js';
import type { AttentionScratch, Backend } from './backend.js';

export const cudaBackend: Backend<DeviceArray> = {
  name: 'cuda',

  alloc: (dtype: DType, length: number) => allocDevice(dtype, length),
  view: (a, offset, length) => deviceView(a, offset, length),
  length: (a) => a.length,
  dtype: (a) => a.dtype,
  upload: (dst, src: Storage) => uploadDevice(dst, src),
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
};
