// Elementwise ops on f32 tensors: add, accumulate (axpy), scale, multiply, broadcast bias add and
// its backward (column sums), copy and fill. They glue the forward and backward passes of the
// decoder together (residual adds, gradient accumulation, bias terms).
//
// Each wrapper checks dtypes and shapes (operands of add/mul/accumulate/copy/scale must have
// identical shapes; use Tensor.view to reshape) and calls native/cpu/elementwise.cc. An output
// may be the very same storage as an input (out === a); a view that overlaps an input only in
// part is rejected, except by copy, which has memmove semantics.
// Twin: src/ops/ref/elementwise.ts (bit-identical: all paths use plain f32 arithmetic).
import { nativeFn } from '../engine/native.js';
import { expectDtype, expectShape, type Tensor } from '../engine/tensor.js';

type BinaryFn = (out: Float32Array, a: Float32Array, b: Float32Array, n: number) => void;
type AxpyFn = (dst: Float32Array, src: Float32Array, alpha: number, n: number) => void;
type CopyFn = (dst: Float32Array, src: Float32Array, n: number) => void;
type FillFn = (t: Float32Array, value: number, n: number) => void;
type BiasFn = (out: Float32Array, bias: Float32Array, N: number, C: number) => void;

/** Throws unless every tensor is f32; `names` labels them in the error. */
function expectF32(op: string, names: readonly string[], ts: readonly Tensor[]): void {
  ts.forEach((t, i) => expectDtype(t, 'f32', `${op}: argument '${names[i]}'`));
}

/** Throws when `out` and `x` share storage in part (exactly the same storage is fine). */
function expectNoPartialOverlap(op: string, outName: string, out: Tensor, xName: string, x: Tensor): void {
  const a = out.data;
  const b = x.data;
  if (a.buffer !== b.buffer || (a.byteOffset === b.byteOffset && a.length === b.length)) return;
  const aEnd = a.byteOffset + a.byteLength;
  const bEnd = b.byteOffset + b.byteLength;
  if (a.byteOffset < bEnd && b.byteOffset < aEnd) {
    throw new RangeError(`${op}: argument '${outName}' overlaps '${xName}' in part; use the same tensor or disjoint storage`);
  }
}

function checkNumber(op: string, name: string, v: unknown): number {
  if (typeof v !== 'number') throw new TypeError(`${op}: argument '${name}' must be a number, got ${typeof v}`);
  return v;
}

function binary(op: 'add' | 'mul', nativeName: string, out: Tensor, a: Tensor, b: Tensor): void {
  expectF32(op, ['out', 'a', 'b'], [out, a, b]);
  expectShape(b, a.shape, `${op}: argument 'b'`);
  expectShape(out, a.shape, `${op}: argument 'out'`);
  expectNoPartialOverlap(op, 'out', out, 'a', a);
  expectNoPartialOverlap(op, 'out', out, 'b', b);
  nativeFn<BinaryFn>(nativeName)(out.f32, a.f32, b.f32, a.size);
}

/** out = a + b (out may be a or b). */
export function add(out: Tensor, a: Tensor, b: Tensor): void {
  binary('add', 'ewAdd', out, a, b);
}

/** out = a * b elementwise (out may be a or b). */
export function mul(out: Tensor, a: Tensor, b: Tensor): void {
  binary('mul', 'ewMul', out, a, b);
}

/** dst += alpha * src (alpha rounded to f32; default 1). */
export function accumulate(dst: Tensor, src: Tensor, alpha = 1): void {
  const op = 'accumulate';
  expectF32(op, ['dst', 'src'], [dst, src]);
  expectShape(src, dst.shape, `${op}: argument 'src'`);
  expectNoPartialOverlap(op, 'dst', dst, 'src', src);
  checkNumber(op, 'alpha', alpha);
  nativeFn<AxpyFn>('ewAccumulate')(dst.f32, src.f32, alpha, dst.size);
}

/** out = alpha * a (alpha rounded to f32; out may be a). */
export function scale(out: Tensor, a: Tensor, alpha: number): void {
  const op = 'scale';
  expectF32(op, ['out', 'a'], [out, a]);
  expectShape(out, a.shape, `${op}: argument 'out'`);
  expectNoPartialOverlap(op, 'out', out, 'a', a);
  checkNumber(op, 'alpha', alpha);
  nativeFn<AxpyFn>('ewScale')(out.f32, a.f32, alpha, a.size);
}

/** out[n, :] += bias.   out: (..., C)  bias: (C) */
export function addBias(out: Tensor, bias: Tensor): void {
  const op = 'addBias';
  expectF32(op, ['out', 'bias'], [out, bias]);
  if (out.rank < 1) throw new RangeError(`${op}: argument 'out' must have rank >= 1, got shape [${out.shape.join(', ')}]`);
  const C = out.dim(-1);
  expectShape(bias, [C], `${op}: argument 'bias'`);
  expectNoPartialOverlap(op, 'out', out, 'bias', bias);
  nativeFn<BiasFn>('ewAddBias')(out.f32, bias.f32, C === 0 ? 0 : out.size / C, C);
}

/** dbias += column sums of dout (summed in f64).   dbias: (C)  dout: (..., C) */
export function biasBackward(dbias: Tensor, dout: Tensor): void {
  const op = 'biasBackward';
  expectF32(op, ['dbias', 'dout'], [dbias, dout]);
  if (dout.rank < 1) throw new RangeError(`${op}: argument 'dout' must have rank >= 1, got shape [${dout.shape.join(', ')}]`);
  const C = dout.dim(-1);
  expectShape(dbias, [C], `${op}: argument 'dbias'`);
  expectNoPartialOverlap(op, 'dbias', dbias, 'dout', dout);
  nativeFn<BiasFn>('ewBiasBackward')(dbias.f32, dout.f32, C === 0 ? 0 : dout.size / C, C);
}

/** dst = src (same shape; overlapping views behave like memmove). */
export function copy(dst: Tensor, src: Tensor): void {
  const op = 'copy';
  expectF32(op, ['dst', 'src'], [dst, src]);
  expectShape(src, dst.shape, `${op}: argument 'src'`);
  nativeFn<CopyFn>('ewCopy')(dst.f32, src.f32, dst.size);
}

/** Sets every element of t to value (rounded to f32). */
export function fill(t: Tensor, value: number): void {
  const op = 'fill';
  expectF32(op, ['t'], [t]);
  checkNumber(op, 'value', value);
  nativeFn<FillFn>('ewFill')(t.f32, value, t.size);
}
