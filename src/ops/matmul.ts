// Matrix multiply, f32: the typed wrapper around the native kernel (native/cpu/matmul.cc).
//   out (M, N) = alpha * op(a) @ op(b) + beta * out
// op(a) is (M, K): a is (M, K), or (K, M) with transA. op(b) is (K, N): b is (K, N), or (N, K)
// with transB. All tensors are f32, contiguous row-major; tensors of rank > 2 are flattened to
// 2-D by merging all leading dims (x (B, T, C) is (B*T, C)). beta = 0 (the default) means out
// is overwritten and its old contents, even NaN, are ignored; alpha (default 1) = 0 means a and b
// are not read. out must not overlap a or b.
//
// In the model: linear forward y = x Wᵀ is matmul(y, x, W, { transB: true }); the input
// gradient dX += dY W is matmul(dX, dY, W, { beta: 1 }); the weight gradient dW += dYᵀ X is
// matmul(dW, dY, X, { transA: true, beta: 1 }).
// Twin: src/ops/ref/matmul.ts.
import { nativeFn } from '../engine/native.js';
import type { Tensor } from '../engine/tensor.js';

export interface MatmulOptions {
  transA?: boolean;
  transB?: boolean;
  alpha?: number;
  beta?: number;
}

/** A tensor as (rows, cols): all leading dims merged into rows. */
function as2d(t: Tensor, name: string): [number, number] {
  if (t.rank < 2) {
    throw new RangeError(`matmul: argument '${name}' must have rank >= 2, got shape [${t.shape.join(', ')}]`);
  }
  const cols = t.dim(-1);
  return [cols === 0 ? t.shape.slice(0, -1).reduce((p, d) => p * d, 1) : t.size / cols, cols];
}

function checkF32(t: Tensor, name: string): void {
  if (t.dtype !== 'f32') throw new TypeError(`matmul: argument '${name}' must be f32, got ${t.dtype}`);
}

function overlaps(x: Float32Array, y: Float32Array): boolean {
  if (x.buffer !== y.buffer || x.length === 0 || y.length === 0) return false;
  return x.byteOffset < y.byteOffset + y.byteLength && y.byteOffset < x.byteOffset + x.byteLength;
}

/**
 * Checks dtypes, shapes, options and aliasing of a matmul call; returns its (M, N, K).
 * Shared by the native wrapper and the twin so both reject the same calls.
 */
export function matmulShapes(out: Tensor, a: Tensor, b: Tensor, opts: MatmulOptions = {}): { M: number; N: number; K: number } {
  checkF32(out, 'out');
  checkF32(a, 'a');
  checkF32(b, 'b');
  for (const key of ['transA', 'transB'] as const) {
    const v = opts[key];
    if (v !== undefined && typeof v !== 'boolean') throw new TypeError(`matmul: option '${key}' must be a boolean`);
  }
  for (const key of ['alpha', 'beta'] as const) {
    const v = opts[key];
    if (v !== undefined && typeof v !== 'number') throw new TypeError(`matmul: option '${key}' must be a number`);
  }
  const [ar, ac] = as2d(a, 'a');
  const [br, bc] = as2d(b, 'b');
  const [M, Ka] = opts.transA ? [ac, ar] : [ar, ac];
  const [Kb, N] = opts.transB ? [bc, br] : [br, bc];
  const desc = (t: Tensor): string => `[${t.shape.join(', ')}]`;
  if (Ka !== Kb) {
    throw new RangeError(
      `matmul: argument 'b' ${desc(b)}${opts.transB ? ' (transB)' : ''} does not match argument 'a' ${desc(a)}` +
        `${opts.transA ? ' (transA)' : ''}: inner dimensions ${Ka} and ${Kb} differ`,
    );
  }
  const [or, oc] = as2d(out, 'out');
  if (or !== M || oc !== N) {
    throw new RangeError(`matmul: argument 'out' ${desc(out)} must hold (${M}, ${N}) = rows of op(a) x columns of op(b)`);
  }
  if (overlaps(out.f32, a.f32)) throw new RangeError("matmul: argument 'out' overlaps argument 'a'");
  if (overlaps(out.f32, b.f32)) throw new RangeError("matmul: argument 'out' overlaps argument 'b'");
  return { M, N, K: Ka };
}

type MatmulNative = (
  out: Float32Array,
  a: Float32Array,
  b: Float32Array,
  M: number,
  N: number,
  K: number,
  transA: boolean,
  transB: boolean,
  alpha: number,
  beta: number,
) => void;

let kernel: MatmulNative | undefined;

/** out (M, N) = alpha * op(a) @ op(b) + beta * out (see the file header). */
export function matmul(out: Tensor, a: Tensor, b: Tensor, opts: MatmulOptions = {}): void {
  const { M, N, K } = matmulShapes(out, a, b, opts);
  kernel ??= nativeFn<MatmulNative>('matmul');
  kernel(out.f32, a.f32, b.f32, M, N, K, opts.transA ?? false, opts.transB ?? false, opts.alpha ?? 1, opts.beta ?? 0);
}

/** Names of the native matmul kernels ('auto' selects by CPU features and EQAT_ISA). */
export type MatmulKernelName = 'auto' | 'avx512' | 'avx2' | 'scalar' | 'avx512-emulated';

/** The native kernel family in use: 'avx512', 'avx2', 'scalar' or 'avx512-emulated'. */
export function matmulKernel(): Exclude<MatmulKernelName, 'auto'> {
  return nativeFn<() => Exclude<MatmulKernelName, 'auto'>>('matmulKernel')();
}

/**
 * Debug knob for tests and benchmarks: force a kernel family for this process ('auto'
 * restores the run-time choice). 'avx512-emulated' runs the AVX-512 blocking (12 x 32 tiles)
 * on AVX2 hardware. Throws a RangeError when the CPU lacks the instructions.
 */
export function setMatmulKernel(name: MatmulKernelName): void {
  nativeFn<(name: string) => void>('matmulSetKernel')(name);
}
