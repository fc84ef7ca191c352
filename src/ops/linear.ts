// Linear layer y = x Wᵀ + b as a forward/backward pair composed from matmul and bias ops.
// W is (O, I) as Hugging Face stores it (out_features, in_features).
import { Tensor } from '../engine/tensor.js';
import { matmul } from './matmul.js';
import { addBias, biasBackward } from './elementwise.js';

// out (N, O) = x (N, I) @ w (O, I)ᵀ + bias (O)
export function linearForward(out: Tensor, x: Tensor, w: Tensor, bias?: Tensor | null): void {
  matmul(out, x, w, { transB: true });
  if (bias) addBias(out, bias);
}

/**
 * dx (N, I) = dout (N, O) @ w (O, I), overwritten unless accumulateDx;
 * dw (O, I) += doutᵀ @ x; dbias (O) += column sums of dout. dx/dw may be null when not needed.
 */
export function linearBackward(
  dx: Tensor | null,
  dw: Tensor | null,
  dbias: Tensor | null | undefined,
  dout: Tensor,
  x: Tensor,
  w: Tensor,
  accumulateDx = false,
): void {
  if (dx) matmul(dx, dout, w, { beta: accumulateDx ? 1 : 0 });
  if (dw) matmul(dw, dout, x, { transA: true, beta: 1 });
  if (dbias) biasBackward(dbias, dout);
}
