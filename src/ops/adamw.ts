// The AdamW optimiser step (torch.optim.AdamW semantics: decoupled weight decay, bias-corrected
// moments, step counted from 1) as one fused native pass per parameter tensor, plus the global
// gradient norm and torch.nn.utils.clip_grad_norm_ for clipping. Used by Block-AP and E2E-QP for
// every parameter group at every step.
//
// Per element, in torch's order and f32 rounding (native/cpu/adamw.cc):
//   p = p * (1 - lr*wd)
//   m = lerp(m, g, 1 - beta1)
//   v = v * beta2 + (1 - beta2) * g * g
//   p = p + (-lr / (1 - beta1^step)) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
// Twin: src/ops/ref/adamw.ts.
import { nativeFn } from '../engine/native.js';
import { expectDtype, expectShape, type Tensor } from '../engine/tensor.js';
import { scale } from './elementwise.js';
import { sumSquares } from './reduce.js';

export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1 for the first step. */
  step: number;
}

type StepFn = (
  param: Float32Array,
  grad: Float32Array,
  m: Float32Array,
  v: Float32Array,
  n: number,
  lr: number,
  beta1: number,
  beta2: number,
  eps: number,
  weightDecay: number,
  step: number,
) => void;

/** Throws a RangeError naming the hyperparameter that is out of its domain. */
export function checkAdamWHyper(op: string, h: AdamWHyper): void {
  const bad = (name: string, want: string, v: unknown): never => {
    throw new RangeError(`${op}: hyperparameter '${name}' must be ${want}, got ${String(v)}`);
  };
  if (typeof h !== 'object' || h === null) throw new TypeError(`${op}: argument 'h' must be an AdamWHyper object`);
  if (!(typeof h.lr === 'number' && Number.isFinite(h.lr) && h.lr >= 0)) bad('lr', 'a finite number >= 0', h.lr);
  if (!(typeof h.beta1 === 'number' && h.beta1 >= 0 && h.beta1 < 1)) bad('beta1', 'in [0, 1)', h.beta1);
  if (!(typeof h.beta2 === 'number' && h.beta2 >= 0 && h.beta2 < 1)) bad('beta2', 'in [0, 1)', h.beta2);
  if (!(typeof h.eps === 'number' && Number.isFinite(h.eps) && h.eps >= 0)) bad('eps', 'a finite number >= 0', h.eps);
  if (!(typeof h.weightDecay === 'number' && Number.isFinite(h.weightDecay) && h.weightDecay >= 0)) {
    bad('weightDecay', 'a finite number >= 0', h.weightDecay);
  }
  if (!(Number.isInteger(h.step) && h.step >= 1)) bad('step', 'an integer >= 1', h.step);
}

/**
 * One AdamW step in place on param, m and v.
 * param, grad, m, v: same shape, f32 (m and v start at zero before step 1)
 */
export function adamwStep(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, h: AdamWHyper): void {
  const op = 'adamwStep';
  const names = ['param', 'grad', 'm', 'v'];
  [param, grad, m, v].forEach((t, i) => {
    expectDtype(t, 'f32', `${op}: argument '${names[i]}'`);
    expectShape(t, param.shape, `${op}: argument '${names[i]}'`);
  });
  const bufs = [param.data, grad.data, m.data, v.data];
  for (let i = 0; i < 4; i++) {
    for (let j = i + 1; j < 4; j++) {
      if (bufs[i]!.buffer === bufs[j]!.buffer) {
        const a = bufs[i]!, b = bufs[j]!;
        if (a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength) {
          throw new RangeError(`${op}: arguments '${names[i]}' and '${names[j]}' share storage`);
        }
      }
    }
  }
  checkAdamWHyper(op, h);
  nativeFn<StepFn>('adamwStep')(param.f32, grad.f32, m.f32, v.f32, param.size, h.lr, h.beta1, h.beta2, h.eps, h.weightDecay, h.step);
}

/** sqrt of the sum over all tensors of their sums of squares (the global L2 norm). */
export function gradNorm(grads: Tensor[]): number {
  let s = 0;
  for (const g of grads) s += sumSquares(g);
  return Math.sqrt(s);
}

/**
 * torch.nn.utils.clip_grad_norm_: grads *= min(1, maxNorm / (norm + 1e-6)) in place (skipped when
 * that factor is 1), and returns the norm before clipping. A non-finite norm makes the factor 0
 * or NaN, which is applied as torch does (the caller should check the returned norm).
 */
export function clipGradNorm(grads: Tensor[], maxNorm: number): number {
  if (typeof maxNorm !== 'number' || !(maxNorm >= 0)) {
    throw new RangeError(`clipGradNorm: argument 'maxNorm' must be a number >= 0, got ${String(maxNorm)}`);
  }
  const norm = gradNorm(grads);
  const coef = Math.min(1, maxNorm / (norm + 1e-6));
  if (coef !== 1) for (const g of grads) scale(g, g, coef);
  return norm;
}
