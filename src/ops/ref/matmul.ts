// Reference twin of the native matrix multiply (src/ops/matmul.ts): a plain triple loop with
// f64 accumulation, slow and obvious, used by the tests as ground truth.
//   out (M, N) = alpha * op(a) @ op(b) + beta * out
// op(a) = a (M, K), or aᵀ with a (K, M) when transA; op(b) = b (K, N), or bᵀ with b (N, K) when
// transB. Tensors of rank > 2 are read as 2-D by merging their leading dims. beta = 0 ignores
// the old contents of out (even NaN); alpha = 0 does not read a or b.
import type { Tensor } from '../../engine/tensor.js';
import { matmulShapes, type MatmulOptions } from '../matmul.js';

export function matmulRef(out: Tensor, a: Tensor, b: Tensor, opts: MatmulOptions = {}): void {
  const { M, N, K } = matmulShapes(out, a, b, opts);
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  const alpha = opts.alpha ?? 1;
  const beta = opts.beta ?? 0;
  const A = a.f32; // (M, K) or (K, M)
  const B = b.f32; // (K, N) or (N, K)
  const C = out.f32; // (M, N)
  // op(a)[i][k] = A[i * ai + k * ak]; op(b)[k][j] = B[k * bk + j * bj].
  const [ai, ak] = transA ? [1, M] : [K, 1];
  const [bk, bj] = transB ? [1, K] : [N, 1];
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = 0;
      if (alpha !== 0) for (let k = 0; k < K; k++) s += A[i * ai + k * ak]! * B[k * bk + j * bj]!;
      C[i * N + j] = beta === 0 ? alpha * s : alpha * s + beta * C[i * N + j]!;
    }
  }
}
