// The row-wise half of attention through GEMMs (src/ops/cuda/attention-gemm.ts): the products
// Q Kᵀ, P V and their gradients run as strided-batched cuBLASLt GEMMs (tensor cores in bf16) over
// a chunk of query rows, and these kernels turn a chunk of scores into probabilities and back.
//
// A chunk holds `groups` × `rows` score rows of `n` keys: row r of group g is at
// S + g·groupStride + r·ld, its key c is key jlo + c, its query sits at position pos0 + r. A key
// is visible when eqat::key_visible(pos0 + r, jlo + c, window) (attention.cuh, the rule of
// src/ops/attention.ts). lse and delta of row r of group g are at lse[g·lseGroup + r] (views of the
// (B, H, Tq) arrays). One block per row (grid-stride), blockDim.x a multiple of 32; exp and the
// row sums in f64, rounded once, like the cross-entropy kernel.
#include "attention.cuh"
#include "bf16.cuh"
#include "reduce.cuh"

namespace eqat_rows {

// Stores x at i of whichever output is given (f32 or bf16).
__device__ __forceinline__ void put(float* o32, unsigned short* o16, long long i, float x) {
  if (o32) o32[i] = x;
  else o16[i] = eqat::to_bf16(x);
}

}  // namespace eqat_rows

// P = softmax(scale · S) over each row's visible keys (0 elsewhere); lse = the natural-log
// log-sum-exp of the row's scaled visible scores (-inf for a row with none, whose P is 0).
extern "C" __global__ void eqat_attn_rows_forward(const float* S, float* P32, unsigned short* P16, float* lse, long long groupStride,
                                                  int ld, long long lseGroup, int rows, int groups, int n, int pos0, int jlo,
                                                  int window, float scale) {
  for (int row = blockIdx.x; row < rows * groups; row += gridDim.x) {
    const int g = row / rows, r = row - g * rows;
    const long long base = g * groupStride + (long long)r * ld;
    const int pos = pos0 + r;
    float m = eqat::neg_inf();
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
      if (eqat::key_visible(pos, jlo + c, window)) m = eqat::max_nan(m, scale * S[base + c]);
    }
    m = eqat::block_max(m);
    const bool none = m == eqat::neg_inf();
    double sum = 0.0;
    if (!none) {
      for (int c = threadIdx.x; c < n; c += blockDim.x) {
        if (eqat::key_visible(pos, jlo + c, window)) sum += exp((double)(scale * S[base + c]) - (double)m);
      }
    }
    sum = eqat::block_sum(sum);
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
      const bool vis = !none && eqat::key_visible(pos, jlo + c, window);
      eqat_rows::put(P32, P16, base + c, vis ? (float)(exp((double)(scale * S[base + c]) - (double)m) / sum) : 0.0f);
    }
    if (threadIdx.x == 0) lse[g * lseGroup + r] = none ? m : (float)((double)m + log(sum));
  }
}

// From the scores S and dP = dO Vᵀ of the chunk: P = exp(scale · S - lse) on visible keys (0
// elsewhere) and dS = scale · P · (dP - delta), delta = rowsum(dO ∘ O); both stored for the
// gradient GEMMs (f32 or bf16, like P32 / P16 and dS32 / dS16).
extern "C" __global__ void eqat_attn_rows_backward(const float* S, const float* dP, float* P32, unsigned short* P16, float* dS32,
                                                   unsigned short* dS16, const float* lse, const float* delta,
                                                   long long groupStride, int ld, long long lseGroup, int rows, int groups, int n,
                                                   int pos0, int jlo, int window, float scale) {
  for (int row = blockIdx.x; row < rows * groups; row += gridDim.x) {
    const int g = row / rows, r = row - g * rows;
    const long long base = g * groupStride + (long long)r * ld;
    const int pos = pos0 + r;
    const float rowLse = lse[g * lseGroup + r], rowDelta = delta[g * lseGroup + r];
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
      const bool vis = eqat::key_visible(pos, jlo + c, window) && rowLse != eqat::neg_inf();
      const float p = vis ? (float)exp((double)(scale * S[base + c]) - (double)rowLse) : 0.0f;
      eqat_rows::put(P32, P16, base + c, p);
      eqat_rows::put(dS32, dS16, base + c, scale * (p * (dP[base + c] - rowDelta)));
    }
  }
}

// delta[b, h, t] = sum over d of dout[b, t, h, d] · out[b, t, h, d] (f64 sum), for the
// backward's rows. One block per (b, t, h) row of the (B, Tq, H, D) arrays.
extern "C" __global__ void eqat_attn_delta(float* delta, const float* dout, const float* out, int B, int Tq, int H, int D) {
  const long long rowsTotal = (long long)B * Tq * H;
  for (long long row = blockIdx.x; row < rowsTotal; row += gridDim.x) {
    double s = 0.0;
    for (int d = threadIdx.x; d < D; d += blockDim.x) s += (double)dout[row * D + d] * (double)out[row * D + d];
    s = eqat::block_sum(s);
    if (threadIdx.x == 0) {
      const long long h = row % H, bt = row / H, t = bt % Tq, b = bt / Tq;
      delta[(b * H + h) * Tq + t] = (float)s;
    }
  }
}
