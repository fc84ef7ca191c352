// Matrix multiply on CUDA through cuBLASLt, with the row-major semantics of the CPU matmul
// (src/ops/matmul.ts):
//   out (M, N) = alpha * op(a) @ op(b) + beta * out
// op(a) is (M, K): a is (M, K), or (K, M) with transA; op(b) is (K, N): b is (K, N), or (N, K)
// with transB. a and b are both f32 or both bf16; out is f32, or bf16 for bf16 inputs;
// products accumulate in f32. beta = 0 ignores the old contents of out (even NaN); alpha = 0
// or K = 0 does not read a or b. out must not overlap a or b.
//
// cuBLASLt is column-major: a row-major (R, C) matrix is the column-major (C, R) matrix, its
// transpose. So out = op(a) op(b) is computed as outᵀ = op(b)ᵀ op(a)ᵀ with b as the first
// operand: rowMajorGemm() builds those BLAS arguments (tested against the twin without a GPU).
import {
  cudaBackend,
  deviceOverlaps,
  expectDeviceLength,
  type DeviceArray,
  type GemmArgs,
} from '../../engine/cuda.js';
import type { MatmulOptions } from '../matmul.js';
import { scaleCuda } from './elementwise.js';

/** The column-major GEMM that computes the row-major out (M, N) = op(a) (M, K) @ op(b) (K, N). */
export function rowMajorGemm(
  M: number,
  N: number,
  K: number,
  transA: boolean,
  transB: boolean,
): Pick<GemmArgs, 'opA' | 'opB' | 'm' | 'n' | 'k' | 'lda' | 'ldb' | 'ldc'> {
  // First operand: b. Stored row-major (K, N) it is column-major (N, K) = op(b)ᵀ with ld N;
  // stored (N, K) (transB) it is column-major (K, N) = op(b), so transpose it, ld K.
  // Second operand: a. Stored (M, K) it is column-major (K, M) = op(a)ᵀ with ld K; stored
  // (K, M) (transA) it is column-major (M, K) = op(a), so transpose it, ld M.
  return {
    opA: transB ? 1 : 0,
    opB: transA ? 1 : 0,
    m: N,
    n: M,
    k: K,
    lda: Math.max(1, transB ? K : N),
    ldb: Math.max(1, transA ? M : K),
    ldc: Math.max(1, N),
  };
}

/** out (M, N) = alpha * op(a) @ op(b) + beta * out (see the file header). */
export function matmulCuda(
  out: DeviceArray, // (M, N)
  a: DeviceArray, // (M, K) or (K, M) with transA
  b: DeviceArray, // (K, N) or (N, K) with transB
  M: number,
  N: number,
  K: number,
  opts: MatmulOptions = {},
): void {
  const op = 'matmulCuda';
  for (const [name, v] of [['M', M], ['N', N], ['K', K]] as const) {
    if (!Number.isInteger(v) || v < 0) throw new RangeError(`${op}: ${name} must be an integer >= 0, got ${v}`);
  }
  for (const key of ['transA', 'transB'] as const) {
    if (opts[key] !== undefined && typeof opts[key] !== 'boolean') throw new TypeError(`${op}: option '${key}' must be a boolean`);
  }
  for (const key of ['alpha', 'beta'] as const) {
    if (opts[key] !== undefined && typeof opts[key] !== 'number') throw new TypeError(`${op}: option '${key}' must be a number`);
  }
  if (a.dtype !== 'f32' && a.dtype !== 'bf16') throw new TypeError(`${op}: argument 'a' must be f32 or bf16, got ${a.dtype}`);
  if (b.dtype !== a.dtype) throw new TypeError(`${op}: argument 'b' must have a's dtype ${a.dtype}, got ${b.dtype}`);
  if (out.dtype !== 'f32' && !(out.dtype === 'bf16' && a.dtype === 'bf16')) {
    throw new TypeError(`${op}: argument 'out' must be f32${a.dtype === 'bf16' ? ' or bf16' : ''}, got ${out.dtype}`);
  }
  const transA = opts.transA ?? false, transB = opts.transB ?? false;
  expectDeviceLength(a, M * K, `${op}: a`, transA ? `(K=${K}, M=${M})` : `(M=${M}, K=${K})`);
  expectDeviceLength(b, K * N, `${op}: b`, transB ? `(N=${N}, K=${K})` : `(K=${K}, N=${N})`);
  expectDeviceLength(out, M * N, `${op}: out`, `(M=${M}, N=${N})`);
  if (deviceOverlaps(out, a)) throw new RangeError(`${op}: argument 'out' overlaps argument 'a'`);
  if (deviceOverlaps(out, b)) throw new RangeError(`${op}: argument 'out' overlaps argument 'b'`);
  const alpha = opts.alpha ?? 1, beta = opts.beta ?? 0;
  if (M === 0 || N === 0) return;
  if (K === 0 || alpha === 0) {
    // out = beta * out without reading a or b
    if (beta === 1) return;
    if (beta === 0) {
      cudaBackend().memset0(out.handle, out.bytes);
      return;
    }
    if (out.dtype !== 'f32') throw new RangeError(`${op}: K = 0 or alpha = 0 with beta = ${beta} needs an f32 'out'`);
    scaleCuda(out, out, beta);
    return;
  }
  const g = rowMajorGemm(M, N, K, transA, transB);
  cudaBackend().gemm({ ...g, alpha, beta, A: b.handle, B: a.handle, C: out.handle, abType: a.dtype, cType: out.dtype });
}
