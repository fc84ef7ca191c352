// Whole-tensor reductions returning JS numbers (sum, sum of squares, max |x|, dot product, a
// non-finite check), and the mean-squared-error loss with its backward (the Block-AP
// reconstruction loss, as torch.nn.MSELoss with mean reduction).
//
// Sums accumulate in f64 in native/cpu/reduce.cc; the tensor is split into parts fixed by its
// size and the thread count and the parts are added in order, so a result is reproducible for
// a given thread count. Empty tensors: sum 0, maxAbs 0, mseForward NaN (a mean over nothing).
// Twin: src/ops/ref/reduce.ts.
import { nativeFn } from '../engine/native.js';
import { expectDtype, expectShape, type Tensor } from '../engine/tensor.js';

type UnaryFn<R> = (x: Float32Array, n: number) => R;
type PairFn = (a: Float32Array, b: Float32Array, n: number) => number;
type MseBackwardFn = (da: Float32Array, a: Float32Array, b: Float32Array, coef: number, n: number) => void;

function unary<R>(op: string, nativeName: string, x: Tensor): R {
  expectDtype(x, 'f32', `${op}: argument 'x'`);
  return nativeFn<UnaryFn<R>>(nativeName)(x.f32, x.size);
}

function pair(op: string, nativeName: string, a: Tensor, b: Tensor): number {
  expectDtype(a, 'f32', `${op}: argument 'a'`);
  expectDtype(b, 'f32', `${op}: argument 'b'`);
  expectShape(b, a.shape, `${op}: argument 'b'`);
  return nativeFn<PairFn>(nativeName)(a.f32, b.f32, a.size);
}

/** Sum of all elements (f64 accumulation). */
export function sum(x: Tensor): number {
  return unary<number>('sum', 'reduceSum', x);
}

/** Sum of squares of all elements (f64 accumulation). */
export function sumSquares(x: Tensor): number {
  return unary<number>('sumSquares', 'reduceSumSquares', x);
}

/** Largest absolute value; NaN if any element is NaN; 0 for an empty tensor. */
export function maxAbs(x: Tensor): number {
  return unary<number>('maxAbs', 'reduceMaxAbs', x);
}

/** Whether any element is +inf, -inf or NaN. */
export function hasNonFinite(x: Tensor): boolean {
  return unary<boolean>('hasNonFinite', 'reduceHasNonFinite', x);
}

/** Index of the first NaN or infinity of x, -1 when every element is finite (the native check, then a scan). */
export function firstNonFinite(x: Tensor): number {
  return hasNonFinite(x) ? x.f32.findIndex((v) => !Number.isFinite(v)) : -1;
}

/** Sum of a[i] * b[i] (f64 accumulation).   a, b: same shape */
export function dot(a: Tensor, b: Tensor): number {
  return pair('dot', 'reduceDot', a, b);
}

/** Mean over all elements of (a - b)^2, as torch.nn.MSELoss().   a, b: same shape */
export function mseForward(a: Tensor, b: Tensor): number {
  return pair('mseForward', 'reduceMseForward', a, b);
}

/**
 * da += scale * 2 * (a - b) / numel   (accumulates; `scale` folds in loss scaling or averaging).
 * The factor scale * 2 / numel is rounded to f32 once.   da, a, b: same shape
 */
export function mseBackward(da: Tensor, a: Tensor, b: Tensor, scale = 1): void {
  const op = 'mseBackward';
  expectDtype(da, 'f32', `${op}: argument 'da'`);
  expectDtype(a, 'f32', `${op}: argument 'a'`);
  expectDtype(b, 'f32', `${op}: argument 'b'`);
  expectShape(b, a.shape, `${op}: argument 'b'`);
  expectShape(da, a.shape, `${op}: argument 'da'`);
  if (typeof scale !== 'number') throw new TypeError(`${op}: argument 'scale' must be a number, got ${typeof scale}`);
  if (a.size === 0) return;
  nativeFn<MseBackwardFn>('reduceMseBackward')(da.f32, a.f32, b.f32, (scale * 2) / a.size, a.size);
}
