// Reference of the BLAS-semantics GEMM that cuBLASLt performs (GemmArgs in src/engine/cuda.ts),
// on host arrays: C (m, n) = alpha * op(A) @ op(B) + beta * C, column-major with leading
// dimensions, sums in f64. Used by the CUDA emulator's gemm and to test the row-major mapping
// of src/ops/cuda/matmul.ts without a GPU.
import type { GemmArgs } from '../../../src/engine/cuda.js';

export type GemmShape = Omit<GemmArgs, 'A' | 'B' | 'C' | 'abType' | 'cType'>;

/** Elements a column-major operand occupies: (cols - 1) * ld + rows. */
export function gemmExtent(rows: number, cols: number, ld: number): number {
  return rows === 0 || cols === 0 ? 0 : (cols - 1) * ld + rows;
}

/** C = alpha * op(A) op(B) + beta * C; `store` rounds each result to the output type. */
export function gemmColMajorRef(
  g: GemmShape,
  A: ArrayLike<number>,
  B: ArrayLike<number>,
  C: { [i: number]: number },
  store: (x: number) => number = Math.fround,
): void {
  const { m, n, k, lda, ldb, ldc, alpha, beta } = g;
  // op(A)[i, l] = A[i * aRow + l * aStep], op(B)[l, j] = B[l * bStep + j * bCol]
  const aRow = g.opA === 0 ? 1 : lda, aStep = g.opA === 0 ? lda : 1;
  const bStep = g.opB === 0 ? 1 : ldb, bCol = g.opB === 0 ? ldb : 1;
  for (let j = 0; j < n; j++) {
    for (let i = 0; i < m; i++) {
      let s = 0;
      for (let l = 0, a = i * aRow, b = j * bCol; l < k; l++, a += aStep, b += bStep) s += A[a]! * B[b]!;
      const c = i + j * ldc;
      C[c] = store(beta === 0 ? alpha * s : alpha * s + beta * C[c]!);
    }
  }
}
