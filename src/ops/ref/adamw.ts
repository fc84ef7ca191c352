// TypeScript twins of the AdamW step, the global gradient norm and gradient clipping
// (src/ops/adamw.ts). The step follows torch's single-tensor AdamW in f32: every operation is
// rounded with Math.fround, and the fused multiply-add of torch's vectorised lerp is formed in
// f64 (the product of two f32 values is exact there) before one rounding to f32.
import type { Tensor } from '../../engine/tensor.js';
import type { AdamWHyper } from '../adamw.js';
import { scaleRef } from './elementwise.js';
import { sumSquaresRef } from './reduce.js';

const f = Math.fround;

export function adamwStepRef(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, h: AdamWHyper): void {
  const p = param.f32, g = grad.f32, mm = m.f32, vv = v.f32;
  const decay = f(1 - h.lr * h.weightDecay);
  const w1 = f(1 - h.beta1);
  const small = Math.abs(w1) < 0.5;
  const beta2 = f(h.beta2);
  const w2 = f(1 - h.beta2);
  const bc2Sqrt = f(Math.sqrt(1 - h.beta2 ** h.step));
  const eps = f(h.eps);
  const negStep = f(-(h.lr / (1 - h.beta1 ** h.step)));
  for (let i = 0; i < p.length; i++) {
    const gi = g[i]!;
    let pi = f(p[i]! * decay);
    const diff = f(gi - mm[i]!);
    // lerp(m, g, w1) = fma(w1, g - m, m) when |w1| < 0.5, else fma(w1 - 1, g - m, g)
    const mi = small ? f(w1 * diff + mm[i]!) : f(f(w1 - 1) * diff + gi);
    const vi = f(f(vv[i]! * beta2) + f(f(w2 * gi) * gi));
    const denom = f(f(f(Math.sqrt(vi)) / bc2Sqrt) + eps);
    pi = f(pi + f(f(negStep * mi) / denom));
    p[i] = pi;
    mm[i] = mi;
    vv[i] = vi;
  }
}

export function gradNormRef(grads: Tensor[]): number {
  let s = 0;
  for (const g of grads) s += sumSquaresRef(g);
  return Math.sqrt(s);
}

export function clipGradNormRef(grads: Tensor[], maxNorm: number): number {
  const norm = gradNormRef(grads);
  const coef = Math.min(1, maxNorm / (norm + 1e-6));
  if (coef !== 1) for (const g of grads) scaleRef(g, g, coef);
  return norm;
}
