// Causal grouped-query attention on CUDA, forward and backward, flash-style: scores live only
// in shared-memory tiles (no Tq x Tk matrix in global memory); the forward keeps an online
// softmax per query row over key tiles and saves the natural-log log-sum-exp of each row's
// scaled scores; the backward recomputes the probabilities from it. Same layout and semantics
// as the CPU op (src/ops/attention.ts, native/cpu/attention.cc) and its twin
// (src/ops/ref/attention.ts):
//   q, out, dout (B, Tq, H, D); k, v (B, Tk, Hkv, D); lse (B, H, Tq)
//   query head h reads kv head h / (H / Hkv); query row t sits at position qOffset + t and sees
//   keys j with pos - window < j <= pos (window 0: no sliding window); scale = 1 / sqrt(D)
//   the backward ACCUMULATES (+=) into dq, dk, dv, like the CPU op.
// Wrapper: src/ops/cuda/attention.ts.
//
// Launches (128 threads per block; DMAX = 64, 128 or 256 is the smallest supported head-dim
// bound >= D, one kernel per bound; tiles of BQ = BK = 2048 / DMAX rows keep every tile of one
// block in 2048 floats, so each kernel's static shared memory stays under 48 KiB):
//   forward  grid (ceil(Tq / BQ), H, B): one query tile of one head; loops over the key tiles it
//            can see (causal and window bounds), K/V tiles staged in shared memory.
//   dq       grid (ceil(Tq / BQ), H, B): the same loop, recomputing P and dS = P (dP - delta),
//            delta = rowsum(dout * out); dq += scale * dS K.
//   dk, dv   grid (ceil(Tk / BK), Hkv, B): one key tile of one kv head; loops over the query
//            heads of its group and their query tiles (BQ / 2 rows) that can see it;
//            dv += Pᵀ dout, dk += scale * dSᵀ q.
// Every output element is owned by one block, so there are no atomics and results do not depend
// on scheduling. Products are summed in f32 over D in order (compiled with --fmad=false); the
// twin sums in f64, so results agree to the CPU tests' tolerances, not bit for bit.
// Correctness first: the tile products are plain loops over shared memory, not tensor-core MMA.

#include "attention.cuh"

namespace eqat_attn {

using eqat::imax;
using eqat::imin;
using eqat::key_visible;
using eqat::neg_inf;

__device__ __forceinline__ long long q_index(int b, int t, int h, int Tq, int H, int D) {
  return (((long long)b * Tq + t) * H + h) * D;
}
__device__ __forceinline__ long long kv_index(int b, int j, int g, int Tk, int Hkv, int D) {
  return (((long long)b * Tk + j) * Hkv + g) * D;
}

// Copies rows [0, n) of a (rows, D) head slice with row stride `stride` into dst[R][DMAX]
// (rows n..R-1 zeroed); the head's rows are `stride` floats apart in global memory.
template <int DMAX, int R>
__device__ void load_rows(float (*dst)[DMAX], const float* src, long long stride, int n, int D) {
  for (int e = threadIdx.x; e < R * D; e += blockDim.x) {
    const int r = e / D, d = e - r * D;
    dst[r][d] = r < n ? src[r * stride + d] : 0.0f;
  }
}

template <int DMAX>
__device__ void forward(float* out, float* lse, const float* q, const float* k, const float* v, int Tq, int Tk, int H,
                        int Hkv, int D, int window, int qOffset, float scale) {
  constexpr int BQ = 2048 / DMAX, BK = 2048 / DMAX;
  __shared__ float Qs[BQ][DMAX];
  __shared__ float Ks[BK][DMAX];
  __shared__ float Vs[BK][DMAX];
  __shared__ float Acc[BQ][DMAX];
  __shared__ float S[BQ][BK];
  __shared__ float rowMax[BQ], rowSum[BQ], rowCorr[BQ];

  const int q0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z;
  const int g = h / (H / Hkv);
  const int nq = imin(BQ, Tq - q0);
  load_rows<DMAX, BQ>(Qs, q + q_index(b, q0, h, Tq, H, D), (long long)H * D, nq, D);
  for (int e = threadIdx.x; e < BQ * D; e += blockDim.x) Acc[e / D][e % D] = 0.0f;
  for (int r = threadIdx.x; r < BQ; r += blockDim.x) {
    rowMax[r] = neg_inf();
    rowSum[r] = 0.0f;
  }
  // Keys any row of the tile can see: [kBegin, kEnd).
  const int posFirst = qOffset + q0, posLast = qOffset + q0 + nq - 1;
  const int kBegin = window > 0 ? imax(0, posFirst - window + 1) : 0;
  const int kEnd = posLast + 1;
  for (int k0 = kBegin; k0 < kEnd; k0 += BK) {
    const int nk = imin(BK, kEnd - k0);
    __syncthreads();  // the previous tile's Vs and S are no longer read
    load_rows<DMAX, BK>(Ks, k + kv_index(b, k0, g, Tk, Hkv, D), (long long)Hkv * D, nk, D);
    load_rows<DMAX, BK>(Vs, v + kv_index(b, k0, g, Tk, Hkv, D), (long long)Hkv * D, nk, D);
    __syncthreads();
    for (int e = threadIdx.x; e < BQ * BK; e += blockDim.x) {
      const int r = e / BK, c = e - r * BK;
      float s = neg_inf();
      if (r < nq && c < nk && key_visible(qOffset + q0 + r, k0 + c, window)) {
        float dot = 0.0f;
        for (int d = 0; d < D; ++d) dot += Qs[r][d] * Ks[c][d];
        s = dot * scale;
      }
      S[r][c] = s;
    }
    __syncthreads();
    // Online softmax: fold the tile into each row's running max and sum; S becomes exp(S - max).
    for (int r = threadIdx.x; r < BQ; r += blockDim.x) {
      const float mOld = rowMax[r];
      float m = mOld;
      for (int c = 0; c < BK; ++c) m = fmaxf(m, S[r][c]);
      float corr = 1.0f, sum = 0.0f;
      if (m == neg_inf()) {
        for (int c = 0; c < BK; ++c) S[r][c] = 0.0f;  // nothing visible yet
      } else {
        corr = expf(mOld - m);  // 0 when mOld is -inf
        for (int c = 0; c < BK; ++c) {
          const float p = expf(S[r][c] - m);
          S[r][c] = p;
          sum += p;
        }
      }
      rowSum[r] = rowSum[r] * corr + sum;
      rowMax[r] = m;
      rowCorr[r] = corr;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < BQ * D; e += blockDim.x) {
      const int r = e / D, d = e - r * D;
      float acc = Acc[r][d] * rowCorr[r];
      for (int c = 0; c < nk; ++c) acc += S[r][c] * Vs[c][d];
      Acc[r][d] = acc;
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < nq * D; e += blockDim.x) {
    const int r = e / D, d = e - r * D;
    out[q_index(b, q0 + r, h, Tq, H, D) + d] = Acc[r][d] / rowSum[r];
  }
  for (int r = threadIdx.x; r < nq; r += blockDim.x) lse[((long long)b * H + h) * Tq + q0 + r] = rowMax[r] + logf(rowSum[r]);
}

// delta[r] = dout_r . out_r for the rows [0, n) of a query tile (threads over rows).
template <int R>
__device__ void row_deltas(float* delta, float* rowLse, const float* dout, const float* out, const float* lse, int b, int t0,
                           int h, int n, int Tq, int H, int D) {
  for (int r = threadIdx.x; r < R; r += blockDim.x) {
    float acc = 0.0f, l = 0.0f;
    if (r < n) {
      const long long at = q_index(b, t0 + r, h, Tq, H, D);
      for (int d = 0; d < D; ++d) acc += dout[at + d] * out[at + d];
      l = lse[((long long)b * H + h) * Tq + t0 + r];
    }
    delta[r] = acc;
    rowLse[r] = l;
  }
}

template <int DMAX>
__device__ void backward_dq(float* dq, const float* dout, const float* q, const float* k, const float* v, const float* out,
                            const float* lse, int Tq, int Tk, int H, int Hkv, int D, int window, int qOffset, float scale) {
  constexpr int BQ = 2048 / DMAX, BK = 2048 / DMAX;
  __shared__ float Qs[BQ][DMAX];
  __shared__ float dOs[BQ][DMAX];
  __shared__ float dQs[BQ][DMAX];
  __shared__ float Ks[BK][DMAX];
  __shared__ float Vs[BK][DMAX];
  __shared__ float dS[BQ][BK];
  __shared__ float delta[BQ], rowLse[BQ];

  const int q0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z;
  const int g = h / (H / Hkv);
  const int nq = imin(BQ, Tq - q0);
  load_rows<DMAX, BQ>(Qs, q + q_index(b, q0, h, Tq, H, D), (long long)H * D, nq, D);
  load_rows<DMAX, BQ>(dOs, dout + q_index(b, q0, h, Tq, H, D), (long long)H * D, nq, D);
  for (int e = threadIdx.x; e < BQ * D; e += blockDim.x) dQs[e / D][e % D] = 0.0f;
  row_deltas<BQ>(delta, rowLse, dout, out, lse, b, q0, h, nq, Tq, H, D);
  const int posFirst = qOffset + q0, posLast = qOffset + q0 + nq - 1;
  const int kBegin = window > 0 ? imax(0, posFirst - window + 1) : 0;
  const int kEnd = posLast + 1;
  for (int k0 = kBegin; k0 < kEnd; k0 += BK) {
    const int nk = imin(BK, kEnd - k0);
    __syncthreads();
    load_rows<DMAX, BK>(Ks, k + kv_index(b, k0, g, Tk, Hkv, D), (long long)Hkv * D, nk, D);
    load_rows<DMAX, BK>(Vs, v + kv_index(b, k0, g, Tk, Hkv, D), (long long)Hkv * D, nk, D);
    __syncthreads();
    for (int e = threadIdx.x; e < BQ * BK; e += blockDim.x) {
      const int r = e / BK, c = e - r * BK;
      float ds = 0.0f;
      if (r < nq && c < nk && key_visible(qOffset + q0 + r, k0 + c, window)) {
        float s = 0.0f, dp = 0.0f;
        for (int d = 0; d < D; ++d) {
          s += Qs[r][d] * Ks[c][d];
          dp += dOs[r][d] * Vs[c][d];
        }
        const float p = expf(s * scale - rowLse[r]);
        ds = p * (dp - delta[r]);
      }
      dS[r][c] = ds;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < BQ * D; e += blockDim.x) {
      const int r = e / D, d = e - r * D;
      float acc = 0.0f;
      for (int c = 0; c < nk; ++c) acc += dS[r][c] * Ks[c][d];
      dQs[r][d] += scale * acc;
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < nq * D; e += blockDim.x) {
    const int r = e / D, d = e - r * D;
    const long long at = q_index(b, q0 + r, h, Tq, H, D) + d;
    dq[at] = dq[at] + dQs[r][d];
  }
}

template <int DMAX>
__device__ void backward_dkv(float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v,
                             const float* out, const float* lse, int Tq, int Tk, int H, int Hkv, int D, int window,
                             int qOffset, float scale) {
  constexpr int BK = 2048 / DMAX, BQ = 1024 / DMAX;
  __shared__ float Ks[BK][DMAX];
  __shared__ float Vs[BK][DMAX];
  __shared__ float dKs[BK][DMAX];
  __shared__ float dVs[BK][DMAX];
  __shared__ float Qs[BQ][DMAX];
  __shared__ float dOs[BQ][DMAX];
  __shared__ float P[BQ][BK];
  __shared__ float dS[BQ][BK];
  __shared__ float delta[BQ], rowLse[BQ];

  const int k0 = blockIdx.x * BK, g = blockIdx.y, b = blockIdx.z;
  const int group = H / Hkv;
  const int nk = imin(BK, Tk - k0);
  load_rows<DMAX, BK>(Ks, k + kv_index(b, k0, g, Tk, Hkv, D), (long long)Hkv * D, nk, D);
  load_rows<DMAX, BK>(Vs, v + kv_index(b, k0, g, Tk, Hkv, D), (long long)Hkv * D, nk, D);
  for (int e = threadIdx.x; e < BK * D; e += blockDim.x) {
    dKs[e / D][e % D] = 0.0f;
    dVs[e / D][e % D] = 0.0f;
  }
  // Query rows that can see a key of [k0, k0 + nk): qOffset + t >= k0, and within the window
  // qOffset + t < k0 + nk - 1 + window.
  const int tBegin = imax(0, k0 - qOffset);
  const int tEnd = window > 0 ? imin(Tq, k0 + nk - 1 + window - qOffset) : Tq;
  for (int hh = 0; hh < group; ++hh) {
    const int h = g * group + hh;
    for (int t0 = tBegin; t0 < tEnd; t0 += BQ) {
      const int nq = imin(BQ, Tq - t0);
      __syncthreads();  // the previous tile's Qs, dOs, P and dS are no longer read
      load_rows<DMAX, BQ>(Qs, q + q_index(b, t0, h, Tq, H, D), (long long)H * D, nq, D);
      load_rows<DMAX, BQ>(dOs, dout + q_index(b, t0, h, Tq, H, D), (long long)H * D, nq, D);
      row_deltas<BQ>(delta, rowLse, dout, out, lse, b, t0, h, nq, Tq, H, D);
      __syncthreads();
      for (int e = threadIdx.x; e < BQ * BK; e += blockDim.x) {
        const int r = e / BK, c = e - r * BK;
        float p = 0.0f, ds = 0.0f;
        if (r < nq && c < nk && key_visible(qOffset + t0 + r, k0 + c, window)) {
          float s = 0.0f, dp = 0.0f;
          for (int d = 0; d < D; ++d) {
            s += Qs[r][d] * Ks[c][d];
            dp += dOs[r][d] * Vs[c][d];
          }
          p = expf(s * scale - rowLse[r]);
          ds = p * (dp - delta[r]);
        }
        P[r][c] = p;
        dS[r][c] = ds;
      }
      __syncthreads();
      for (int e = threadIdx.x; e < BK * D; e += blockDim.x) {
        const int c = e / D, d = e - c * D;
        float accV = 0.0f, accK = 0.0f;
        for (int r = 0; r < nq; ++r) {
          accV += P[r][c] * dOs[r][d];
          accK += dS[r][c] * Qs[r][d];
        }
        dVs[c][d] += accV;
        dKs[c][d] += scale * accK;
      }
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < nk * D; e += blockDim.x) {
    const int c = e / D, d = e - c * D;
    const long long at = kv_index(b, k0 + c, g, Tk, Hkv, D) + d;
    dk[at] = dk[at] + dKs[c][d];
    dv[at] = dv[at] + dVs[c][d];
  }
}

}  // namespace eqat_attn

// One extern "C" entry per head-dim bound (DMAX >= D); the wrapper picks the smallest.

extern "C" __global__ __launch_bounds__(128) void eqat_attention_forward_d64(
    float* out, float* lse, const float* q, const float* k, const float* v, int Tq, int Tk, int H, int Hkv, int D,
    int window, int qOffset, float scale) {
  eqat_attn::forward<64>(out, lse, q, k, v, Tq, Tk, H, Hkv, D, window, qOffset, scale);
}

extern "C" __global__ __launch_bounds__(128) void eqat_attention_backward_dq_d64(
    float* dq, const float* dout, const float* q, const float* k, const float* v, const float* out, const float* lse,
    int Tq, int Tk, int H, int Hkv, int D, int window, int qOffset, float scale) {
  eqat_attn::backward_dq<64>(dq, dout, q, k, v, out, lse, Tq, Tk, H, Hkv, D, window, qOffset, scale);
}

extern "C" __global__ __launch_bounds__(128) void eqat_attention_backward_dkv_d64(
    float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v, const float* out,
    const float* lse, int Tq, int Tk, int H, int Hkv, int D, int window, int qOffset, float scale) {
  eqat_attn::backward_dkv<64>(dk, dv, dout, q, k, v, out, lse, Tq, Tk, H, Hkv, D, window, qOffset, scale);
}

extern "C" __global__ __launch_bounds__(128) void eqat_attention_forward_d128(
    float* out, float* lse, const float* q, const float* k, const float* v, int Tq, int Tk, int H, int Hkv, int D,
    int window, int qOffset, float scale) {
  eqat_attn::forward<128>(out, lse, q, k, v, Tq, Tk, H, Hkv, D, window, qOffset, scale);
}

extern "C" __global__ __launch_bounds__(128) void eqat_attention_backward_dq_d128(
    float* dq, const float* dout, const float* q, const float* k, const float* v, const float* out, const float* lse,
    int Tq, int Tk, int H, int Hkv, int D, int window, int qOffset, float scale) {
  eqat_attn::backward_dq<128>(dq, dout, q, k, v, out, lse, Tq, Tk, H, Hkv, D, window, qOffset, scale);
}

extern "C" __global__ __launch_bounds__(128) void eqat_attention_backward_dkv_d128(
    float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v, const float* out,
    const float* lse, int Tq, int Tk, int H, int Hkv, int D, int window, int qOffset, float scale) {
  eqat_attn::backward_dkv<128>(dk, dv, dout, q, k, v, out, lse, Tq, Tk, H, Hkv, D, window, qOffset, scale);
}

extern "C" __global__ __launch_bounds__(128) void eqat_attention_forward_d256(
    float* out, float* lse, const float* q, const float* k, const float* v, int Tq, int Tk, int H, int Hkv, int D,
    int window, int qOffset, float scale) {
  eqat_attn::forward<256>(out, lse, q, k, v, Tq, Tk, H, Hkv, D, window, qOffset, scale);
}

extern "C" __global__ __launch_bounds__(128) void eqat_attention_backward_dq_d256(
    float* dq, const float* dout, const float* q, const float* k, const float* v, const float* out, const float* lse,
    int Tq, int Tk, int H, int Hkv, int D, int window, int qOffset, float scale) {
  eqat_attn::backward_dq<256>(dq, dout, q, k, v, out, lse, Tq, Tk, H, Hkv, D, window, qOffset, scale);
}

extern "C" __global__ __launch_bounds__(128) void eqat_attention_backward_dkv_d256(
    float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v, const float* out,
    const float* lse, int Tq, int Tk, int H, int Hkv, int D, int window, int qOffset, float scale) {
  eqat_attn::backward_dkv<256>(dk, dv, dout, q, k, v, out, lse, Tq, Tk, H, Hkv, D, window, qOffset, scale);
}
