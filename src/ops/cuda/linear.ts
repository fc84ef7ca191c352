// Linear layer y = x Wᵀ + b on CUDA, composed from cuBLASLt matmuls and the bias kernels, with
// the semantics of src/ops/linear.ts. W is (O, I) as Hugging Face stores it.
import type { DeviceArray } from '../../engine/cuda.js';
import { matmulCuda } from './matmul.js';
import { addBiasCuda, biasBackwardCuda } from './elementwise.js';

/** Sizes of one linear application: N rows through an (O, I) weight. */
export interface LinearDims {
  N: number;
  O: number;
  I: number;
}

// out (N, O) = x (N, I) @ w (O, I)ᵀ + bias (O)
export function linearForwardCuda(out: DeviceArray, x: DeviceArray, w: DeviceArray, bias: DeviceArray | null | undefined, d: LinearDims): void {
  matmulCuda(out, x, w, d.N, d.O, d.I, { transB: true });
  if (bias) addBiasCuda(out, bias, d.O);
}

/**
 * dx (N, I) = dout (N, O) @ w (O, I), overwritten unless accumulateDx;
 * dw (O, I) += doutᵀ @ x; dbias (O) += column sums of dout. dx/dw/dbias may be null.
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
): void {
  if (dx) matmulCuda(dx, dout, w, d.N, d.I, d.O, { beta: accumulateDx ? 1 : 0 });
  if (dw) matmulCuda(dw, dout, x, d.O, d.I, d.N, { transA: true, beta: 1 });
  if (dbias) biasBackwardCuda(dbias, dout, d.O);
}
