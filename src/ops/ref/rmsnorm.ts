// Reference twin of src/ops/rmsnorm.ts (slow, obvious): plain loops, sums in f64, results
// rounded to f32 where torch's f32 LlamaRMSNorm rounds (mean, + eps, rsqrt, x * rstd, * weight).
import type { Tensor } from '../../engine/tensor.js';
import { rmsnormCheckBackward, rmsnormCheckForward } from '../rmsnorm.js';

const f = Math.fround;

export function rmsnormForwardRef(
  out: Tensor, // (N, C)
  rstd: Tensor, // (N)
  x: Tensor, // (N, C)
  weight: Tensor, // (C)
  eps: number,
): void {
  const { rows, C } = rmsnormCheckForward('rmsnormForwardRef', out, rstd, x, weight, eps);
  const xs = x.f32, w = weight.f32, o = out.f32, r = rstd.f32;
  for (let n = 0; n < rows; n++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += xs[n * C + c]! * xs[n * C + c]!;
    const variance = f(ss / C);
    const rs = f(1 / Math.sqrt(f(variance + f(eps))));
    r[n] = rs;
    for (let c = 0; c < C; c++) o[n * C + c] = f(w[c]! * f(xs[n * C + c]! * rs));
  }
}

export function rmsnormBackwardRef(
  dx: Tensor, // (N, C) +=
  dweight: Tensor, // (C) +=
  dout: Tensor, // (N, C)
  x: Tensor, // (N, C)
  weight: Tensor, // (C)
  rstd: Tensor, // (N)
): void {
  const { rows, C } = rmsnormCheckBackward('rmsnormBackwardRef', dx, dweight, dout, x, weight, rstd);
  const xs = x.f32, w = weight.f32, d = dout.f32, r = rstd.f32, g = dx.f32, gw = dweight.f32;
  for (let n = 0; n < rows; n++) {
    const rs = r[n]!;
    // y_c = w_c * x_c * rs with rs = (mean(x^2) + eps)^(-1/2), so d rs / d x_c = -rs^3 x_c / C.
    let dot = 0;
    for (let c = 0; c < C; c++) dot += d[n * C + c]! * w[c]! * xs[n * C + c]!;
    for (let c = 0; c < C; c++) {
      const xc = xs[n * C + c]!;
      const grad = rs * d[n * C + c]! * w[c]! - (rs * rs * rs * xc * dot) / C;
      g[n * C + c] = f(g[n * C + c]! + grad);
      gw[c] = f(gw[c]! + d[n * C + c]! * f(xc * rs));
    }
  }
}
