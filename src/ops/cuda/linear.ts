// Linear layer y = x Wᵀ + b on CUDA, composed from cuBLASLt matmuls and the bias kernels, with
// the semantics of src/ops/linear.ts. W is (O, I) as Hugging Face stores it.
//
// Precision: with `lowp` scratch given, every GEMM reads bf16 copies of its two inputs (made
// here by round-to-nearest-even conversion into the scratch, or the input itself when the
// caller produced it in bf16, e.g. a weight dequantized straight to bf16) and accumulates and
// writes f32,
// as mixed-precision training does: f32 master weights and activations, bf16 tensor-core
// products, f32 sums. Without it the GEMMs are f32 throughout.
import type { DeviceAllocations, DeviceArray } from '../../engine/cuda.js';
import { deviceView, freeDevice, toDevice } from '../../engine/cuda.js';
import { matmulCuda } from './matmul.js';
import { addBiasCuda, biasBackwardCuda, f32ToBf16Cuda } from './elementwise.js';

/** Sizes of one linear application: N rows through an (O, I) weight. */
export interface LinearDims {
  N: number;
  O: number;
  I: number;
}

/** bf16 scratch for mixed-precision GEMMs: at least N·max(I) (x), N·max(O) (dout), max(O·I) (w) elements. */
export interface LowPrecisionScratch {
  xb: DeviceArray; // bf16
  doutb: DeviceArray; // bf16
  wb: DeviceArray; // bf16
}

/**
 * A frozen weight uploaded once as the GEMMs of `precision` take it: f32, or its bf16 rounding
 * (converted on the device through a transient f32 copy), so no GEMM converts it again.
 */
export function uploadFrozenWeight(mem: DeviceAllocations, w: Float32Array, precision: 'f32' | 'bf16'): DeviceArray {
  if (precision === 'f32') return mem.upload(w);
  const f32 = toDevice(w);
  try {
    const out = mem.alloc('bf16', w.length);
    f32ToBf16Cuda(out, f32);
    return out;
  } finally {
    freeDevice(f32);
  }
}

/** A bf16 copy of a (first n elements) in scratch s; a itself when it is already bf16. */
function bf16(s: DeviceArray, a: DeviceArray, n: number): DeviceArray {
  if (a.dtype === 'bf16') return n === a.length ? a : deviceView(a, 0, n);
  const v = deviceView(s, 0, n);
  f32ToBf16Cuda(v, n === a.length ? a : deviceView(a, 0, n));
  return v;
}

// out (N, O) = x (N, I) @ w (O, I)ᵀ + bias (O)
export function linearForwardCuda(
  out: DeviceArray,
  x: DeviceArray,
  w: DeviceArray,
  bias: DeviceArray | null | undefined,
  d: LinearDims,
  lowp: LowPrecisionScratch | null = null,
): void {
  if (lowp) matmulCuda(out, bf16(lowp.xb, x, d.N * d.I), bf16(lowp.wb, w, d.O * d.I), d.N, d.O, d.I, { transB: true });
  else matmulCuda(out, x, w, d.N, d.O, d.I, { transB: true });
  if (bias) addBiasCuda(out, bias, d.O);
}

/**
 * dx (N, I) = dout (N, O) @ w (O, I), overwritten unless accumulateDx;
 * dw (O, I) += doutᵀ @ x, or = with accumulateDw false (no zeroing pass, C not read);
 * dbias (O) += column sums of dout (f32). dx/dw/dbias may be null.
 */
export function linearBackwardCuda(
  dx: DeviceArray | null,
  dw: DeviceArray | null,
  dbias: DeviceArray | null | undefined,
  dout: DeviceArray,
  x: DeviceArray,
  w: DeviceArray,
  d: LinearDims,
  accumulateDx = false,
  lowp: LowPrecisionScratch | null = null,
  accumulateDw = true,
): void {
  const doutIn = lowp && (dx || dw) ? bf16(lowp.doutb, dout, d.N * d.O) : dout;
  if (dx) matmulCuda(dx, doutIn, lowp ? bf16(lowp.wb, w, d.O * d.I) : w, d.N, d.I, d.O, { beta: accumulateDx ? 1 : 0 });
  if (dw) matmulCuda(dw, doutIn, lowp ? bf16(lowp.xb, x, d.N * d.I) : x, d.O, d.I, d.N, { transA: true, beta: accumulateDw ? 1 : 0 });
  if (dbias) biasBackwardCuda(dbias, dout, d.O);
}
