// TypeScript twins of the reductions and the MSE loss (src/ops/reduce.ts): one sequential f64
// loop each. mseBackwardRef rounds like the native kernel: f32 (a - b), times the f32 factor,
// added to da in f32.
import type { Tensor } from '../../engine/tensor.js';

export function sumRef(x: Tensor): number {
  let s = 0;
  for (const v of x.f32) s += v;
  return s;
}

export function sumSquaresRef(x: Tensor): number {
  let s = 0;
  for (const v of x.f32) s += v * v;
  return s;
}

export function maxAbsRef(x: Tensor): number {
  let m = 0;
  for (const v of x.f32) {
    if (Number.isNaN(v)) return NaN;
    m = Math.max(m, Math.abs(v));
  }
  return m;
}

export function dotRef(a: Tensor, b: Tensor): number {
  const x = a.f32, y = b.f32;
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i]! * y[i]!;
  return s;
}

export function hasNonFiniteRef(x: Tensor): boolean {
  for (const v of x.f32) if (!Number.isFinite(v)) return true;
  return false;
}

export function mseForwardRef(a: Tensor, b: Tensor): number {
  const x = a.f32, y = b.f32;
  let s = 0;
  for (let i = 0; i < x.length; i++) s += (x[i]! - y[i]!) ** 2;
  return s / x.length;
}

export function mseBackwardRef(da: Tensor, a: Tensor, b: Tensor, scale = 1): void {
  const d = da.f32, x = a.f32, y = b.f32;
  if (x.length === 0) return;
  const coef = Math.fround((scale * 2) / x.length);
  for (let i = 0; i < x.length; i++) d[i] = d[i]! + Math.fround(coef * Math.fround(x[i]! - y[i]!));
}
