// The f32 GEMM of native/cpu/matmul.cc, for reuse by other kernels that build their own
// operands tile by tile (e.g. native/cpu/qlinear.cc, which dequantizes packed low-bit weights
// straight into the micro-panel layout the micro-kernel reads).
//
// A kernel family is one ISA's micro-kernel, its operand packers and its cache blocking:
//   kernel(kc, ap, bp, ldb, c, ldc, alpha, beta)
//       the mr x nr tile c (row stride ldc) = alpha * sum_k ap[k] (x) bp[k] + beta * c, where ap
//       is a packed A micro-panel (kc groups of mr values, one per row) and bp holds kc rows of
//       nr values, ldb apart (ldb = nr for a packed panel); beta == 0 never reads c.
//   pack_a / pack_b(src, s_w, s_k, w, kc, dst)
//       pack one micro-panel of mr / nr lanes: dst[k * P + j] = src[j * s_w + k * s_k] for j < w,
//       and 0 for w <= j < P (so edge tiles can be computed whole).
//   mc x kc: the A block kept in L2; kc x nc: the B block; kc x nr: the B micro-panel kept in L1.
// The family in use follows the run-time choice (CPU features, EQAT_ISA) or the one forced
// by matmulSetKernel, so callers stay in step with the matmul op.
#pragma once
#include <cstdint>

namespace eqat {

using GemmKernelFn = void (*)(int64_t kc, const float* ap, const float* bp, int64_t ldb, float* c, int64_t ldc,
                              float alpha, float beta);
using GemmPackFn = void (*)(const float* src, int64_t s_w, int64_t s_k, int w, int64_t kc, float* dst);
using GemmDotFn = void (*)(int64_t K, const float* a, int64_t lda, int rm, const float* b, int64_t ldb, int rn,
                           float* c, int64_t ldc, float alpha, float beta);
using GemmProbeFn = float (*)(int64_t iters);

struct GemmFamily {
  const char* name;
  int mr, nr;          // micro-tile (rows x columns of C)
  int64_t mc, kc, nc;  // cache blocks: A block mc x kc (L2), B block kc x nc (L3), B panel kc x nr (L1)
  int dot_rm, dot_rn;  // dot-product tile of the few-rows transB path
  GemmKernelFn kernel;
  GemmPackFn pack_a, pack_b;  // panels of mr and nr lanes
  GemmDotFn dot;
  GemmProbeFn probe;   // FMA throughput probe: probe_flops flops per step
  int probe_flops;
};

// The kernel family the matmul op uses right now.
const GemmFamily& gemm_family();

// C (M, N) = alpha * op(A) @ op(B) + beta * C, contiguous row-major, threaded with
// parallel_for (safe to call from inside a parallel region: it then runs on the calling thread).
// op(A) = A (M, K) or, with trans_a, A^T of A (K, M); op(B) = B (K, N) or B^T of B (N, K).
// Throws std::bad_alloc when a packing buffer cannot be allocated.
void sgemm(int64_t M, int64_t N, int64_t K, const float* a, const float* b, float* c, bool trans_a, bool trans_b,
           float alpha, float beta);

}  // namespace eqat
