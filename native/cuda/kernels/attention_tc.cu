// Causal grouped-query attention on tensor cores: the op of attention.cu (same layout, options,
// saved lse and accumulating backward; twin src/ops/ref/attention.ts) with every product on
// mma.sync bf16 tiles (mma.cuh) and no score matrix in memory, in the shape of FlashAttention-2:
//   q, out, dout (B, Tq, H, D) f32; k, v (B, Tk, Hkv, D) f32; lse, delta (B, H, Tq) f32
//   query head h reads kv head h / (H / Hkv); query row t sits at position qOffset + t and sees
//   keys j with pos - window < j <= pos (window 0: none); scale = 1 / sqrt(D)
// Inputs are read as f32 and rounded to bf16 (nearest even) as they are staged in shared memory;
// probabilities and score gradients are rounded to bf16 for their products; every sum is f32.
// That is the precision of attention-gemm.ts in bf16, so the same tolerances hold.
//
// Launches (128 threads = 4 warps; D = 64 or 128, one kernel per head dim; wrapper
// src/ops/cuda/attention-tc.ts):
//   forward  grid (ceil(Tq / 64), H, B). Each warp owns 16 query rows, keeps them as A fragments
//            and loops over the 64-key tiles its block can see: S = Q Kᵀ (f32), online softmax
//            in registers (row max and sum across the 4 lanes of a row), O += P V with P
//            repacked from the score registers. out = O / l (and, when out16 is given, its bf16
//            rounding for the o linear), lse = m + log l.
//   dq       grid (ceil(Tq / 64), H, B), same tiling: per 16 keys, S = Q Kᵀ and dP = dO Vᵀ,
//            P = exp(scale S - lse), dS = scale P (dP - delta), dq += dS K.
//   dkv      grid (ceil(Tk / 64), Hkv, B). Each warp owns 16 keys (K as A fragments, V read from
//            shared memory) and loops over the query heads of its group and their 32-row query
//            tiles that can see the block's keys: Sᵀ = K Qᵀ, dPᵀ = V dOᵀ, dv += Pᵀ dO,
//            dk += dSᵀ Q.
// Every output element is owned by one block (no atomics; results do not depend on scheduling).
// The forward and dq grids hand out the last query tiles (the most keys to visit) first, so the
// short causal tiles fill the tail of the launch.
// delta = rowsum(dout ∘ out) comes from eqat_attn_delta (attention_rows.cu).
// Shared-memory rows are D + 8 bf16 long: 16-byte aligned for ldmatrix, and the eight rows one
// ldmatrix reads fall in different banks.
#include "attention.cuh"
#include "bf16.cuh"
#include "mma.cuh"

namespace eqat_attn_tc {

constexpr int kThreads = 128;
constexpr int kRows = 64;    // query rows per forward / dq block (16 per warp), keys per dkv block
constexpr int kKeys = 64;    // keys per tile of the forward and dq loops
constexpr int kQTile = 32;   // query rows per tile of the dkv loop

using eqat::imax;
using eqat::imin;
using eqat::key_visible;
using eqat::neg_inf;

__device__ __forceinline__ long long row_index(int b, int t, int h, int T, int heads, int D) {
  return (((long long)b * T + t) * heads + h) * D;
}

// Rows [0, n) of a head slice (`stride` floats between rows) rounded to bf16 into dst[rows][D + 8];
// rows n.. zeroed. Pairs of floats per thread: coalesced, no alignment needed beyond a float's.
template <int D>
__device__ void stage_rows(unsigned short* dst, const float* src, long long stride, int n, int rows) {
  constexpr int pairs = D / 2;
  for (int e = threadIdx.x; e < rows * pairs; e += kThreads) {
    const int r = e / pairs, c = 2 * (e - r * pairs);
    float lo = 0.0f, hi = 0.0f;
    if (r < n) {
      lo = src[r * stride + c];
      hi = src[r * stride + c + 1];
    }
    *reinterpret_cast<unsigned*>(dst + r * (D + 8) + c) = eqat::pack_bf16x2(lo, hi);
  }
}

// A fragments of rows [row0, row0 + 16) of a staged tile, one per 16 columns: a[kk] covers
// columns 16 kk .. 16 kk + 15.
template <int D>
__device__ __forceinline__ void load_a(unsigned (*a)[4], const unsigned short* tile, int row0) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) eqat::ldmatrix_x4(a[kk], tile + (row0 + lane % 16) * (D + 8) + 16 * kk + (lane / 16) * 8);
}

// acc (16 x 16: two 8-column tiles) += A (16 x D) · Bᵀ where B is rows [n0, n0 + 16) of a staged
// (rows, D) tile: the columns of the product are B's rows (S = Q Kᵀ and its relatives).
template <int D>
__device__ __forceinline__ void mma_abt(float (*acc)[4], const unsigned (*a)[4], const unsigned short* tile, int n0) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    unsigned b[4];
    eqat::ldmatrix_x4(b, tile + (n0 + (lane / 16) * 8 + lane % 8) * (D + 8) + 16 * kk + ((lane / 8) % 2) * 8);
    eqat::mma_bf16_16816(acc[0], a[kk], b[0], b[1]);
    eqat::mma_bf16_16816(acc[1], a[kk], b[2], b[3]);
  }
}

// acc (16 x D) += P (16 x 16, the A fragment p) · rows [k0, k0 + 16) of a staged (rows, D) tile.
template <int D>
__device__ __forceinline__ void mma_ab(float (*acc)[4], const unsigned p[4], const unsigned short* tile, int k0) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int n = 0; n < D / 8; n += 2) {
    unsigned b[4];
    eqat::ldmatrix_x4_trans(b, tile + (k0 + ((lane / 8) % 2) * 8 + lane % 8) * (D + 8) + 8 * n + (lane / 16) * 8);
    eqat::mma_bf16_16816(acc[n], p, b[0], b[1]);
    eqat::mma_bf16_16816(acc[n + 1], p, b[2], b[3]);
  }
}

// The A fragment of a 16 x 16 product held as two accumulator tiles (columns 0-7 and 8-15).
__device__ __forceinline__ void to_a(unsigned a[4], const float (*c)[4]) {
  a[0] = eqat::pack_bf16x2(c[0][0], c[0][1]);
  a[1] = eqat::pack_bf16x2(c[0][2], c[0][3]);
  a[2] = eqat::pack_bf16x2(c[1][0], c[1][1]);
  a[3] = eqat::pack_bf16x2(c[1][2], c[1][3]);
}

// Row reductions across the four lanes that hold one accumulator row.
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// dst[row r of the 16 x D accumulator] (+)= acc for the rows below nrows: row r is `stride` floats
// after r - 1.
template <int D>
__device__ __forceinline__ void store_rows(float* dst, long long stride, int nrows, const float (*acc)[4], float mulA, float mulB,
                                           bool add) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = g + 8 * half;
    if (r >= nrows) continue;
    const float mul = half ? mulB : mulA;
    float* row = dst + r * stride;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const int c = 8 * n + 2 * t;
      const float x0 = acc[n][2 * half] * mul, x1 = acc[n][2 * half + 1] * mul;
      if (add) {
        row[c] += x0;
        row[c + 1] += x1;
      } else {
        row[c] = x0;
        row[c + 1] = x1;
      }
    }
  }
}

// out16 (optional): the same rows rounded to bf16 (to_bf16, as the conversion kernel), for the
// o linear's bf16 GEMMs.
template <int D>
__device__ __forceinline__ void store_rows_bf16(unsigned short* dst, long long stride, int nrows, const float (*acc)[4], float mulA,
                                                float mulB) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = g + 8 * half;
    if (r >= nrows) continue;
    const float mul = half ? mulB : mulA;
    unsigned short* row = dst + r * stride;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const int c = 8 * n + 2 * t;
      row[c] = eqat::to_bf16(acc[n][2 * half] * mul);
      row[c + 1] = eqat::to_bf16(acc[n][2 * half + 1] * mul);
    }
  }
}

template <int D>
__device__ void forward(float* out, unsigned short* out16, float* lse, const float* q, const float* k, const float* v, int Tq,
                        int Tk, int H, int Hkv, int window, int qOffset, float scale) {
  __shared__ __align__(16) unsigned short Ks[kKeys * (D + 8)];
  __shared__ __align__(16) unsigned short Vs[kKeys * (D + 8)];
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kRows, h = blockIdx.y, b = blockIdx.z, g = h / (H / Hkv);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t4 = lane % 4;
  const int nq = imin(kRows, Tq - q0);
  // the block's query rows, staged through Ks; each warp keeps its 16 as A fragments
  stage_rows<D>(Ks, q + row_index(b, q0, h, Tq, H, D), (long long)H * D, nq, kRows);
  __syncthreads();
  unsigned qa[D / 16][4];
  load_a<D>(qa, Ks, warp * 16);

  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m[2] = {neg_inf(), neg_inf()}, l[2] = {0.0f, 0.0f};
  const int row0 = q0 + warp * 16 + lane / 4;  // this lane's rows: row0 and row0 + 8
  const int pos[2] = {qOffset + row0, qOffset + row0 + 8};
  const int posFirst = qOffset + q0, posLast = qOffset + q0 + nq - 1;
  const int kBegin = window > 0 ? imax(0, posFirst - window + 1) : 0, kEnd = posLast + 1;
  for (int k0 = kBegin; k0 < kEnd; k0 += kKeys) {
    const int nk = imin(kKeys, kEnd - k0);
    __syncthreads();  // the previous tiles (and the staged queries) are no longer read
    stage_rows<D>(Ks, k + row_index(b, k0, g, Tk, Hkv, D), (long long)Hkv * D, nk, kKeys);
    stage_rows<D>(Vs, v + row_index(b, k0, g, Tk, Hkv, D), (long long)Hkv * D, nk, kKeys);
    __syncthreads();
    float s[kKeys / 8][4];
#pragma unroll
    for (int j = 0; j < kKeys / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int j = 0; j < kKeys / 8; j += 2) mma_abt<D>(&s[j], qa, Ks, 8 * j);
    // every key of the tile visible to every row of the block: no per-element mask
    const bool whole = nk == kKeys && k0 + kKeys - 1 <= posFirst && (window == 0 || k0 > posLast - window);
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int j = 0; j < kKeys / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + 8 * j + 2 * t4 + (e & 1);
        float x = s[j][e] * scale;
        if (!whole && !(key < k0 + nk && key_visible(pos[e / 2], key, window))) x = neg_inf();
        s[j][e] = x;
        mx[e / 2] = fmaxf(mx[e / 2], x);
      }
    }
    float corr[2], base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = quad_max(mx[r]);
      base[r] = mx[r] == neg_inf() ? 0.0f : mx[r];  // a row with nothing visible yet keeps p = 0
      corr[r] = expf(m[r] - base[r]);                // 0 while m is -inf (l and o are still 0)
      m[r] = mx[r];
      l[r] *= corr[r];
    }
#pragma unroll
    for (int j = 0; j < kKeys / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = expf(s[j][e] - base[e / 2]);
        s[j][e] = p;
        l[e / 2] += p;
      }
    }
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      o[n][0] *= corr[0];
      o[n][1] *= corr[0];
      o[n][2] *= corr[1];
      o[n][3] *= corr[1];
    }
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      unsigned pa[4];
      to_a(pa, &s[2 * kk]);
      mma_ab<D>(o, pa, Vs, 16 * kk);
    }
  }
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] = quad_sum(l[r]);
    inv[r] = 1.0f / l[r];
  }
  const int wrow0 = q0 + warp * 16;
  store_rows<D>(out + row_index(b, wrow0, h, Tq, H, D), (long long)H * D, Tq - wrow0, o, inv[0], inv[1], false);
  if (out16) store_rows_bf16<D>(out16 + row_index(b, wrow0, h, Tq, H, D), (long long)H * D, Tq - wrow0, o, inv[0], inv[1]);
  if (t4 == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int t = row0 + 8 * r;
      if (t < Tq) lse[((long long)b * H + h) * Tq + t] = m[r] + logf(l[r]);
    }
  }
}

template <int D>
__device__ void backward_dq(float* dq, const float* dout, const float* q, const float* k, const float* v, const float* lse,
                            const float* delta, int Tq, int Tk, int H, int Hkv, int window, int qOffset, float scale) {
  __shared__ __align__(16) unsigned short Ks[kKeys * (D + 8)];
  __shared__ __align__(16) unsigned short Vs[kKeys * (D + 8)];
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kRows, h = blockIdx.y, b = blockIdx.z, g = h / (H / Hkv);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t4 = lane % 4;
  const int nq = imin(kRows, Tq - q0);
  stage_rows<D>(Ks, q + row_index(b, q0, h, Tq, H, D), (long long)H * D, nq, kRows);
  stage_rows<D>(Vs, dout + row_index(b, q0, h, Tq, H, D), (long long)H * D, nq, kRows);
  __syncthreads();
  unsigned qa[D / 16][4], da[D / 16][4];
  load_a<D>(qa, Ks, warp * 16);
  load_a<D>(da, Vs, warp * 16);

  const int row0 = q0 + warp * 16 + lane / 4;
  const int pos[2] = {qOffset + row0, qOffset + row0 + 8};
  float rowLse[2], rowDelta[2];
  bool live[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int t = row0 + 8 * r;
    live[r] = t < Tq;
    rowLse[r] = live[r] ? lse[((long long)b * H + h) * Tq + t] : 0.0f;
    rowDelta[r] = live[r] ? delta[((long long)b * H + h) * Tq + t] : 0.0f;
  }
  float acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
  const int posFirst = qOffset + q0, posLast = qOffset + q0 + nq - 1;
  const int kBegin = window > 0 ? imax(0, posFirst - window + 1) : 0, kEnd = posLast + 1;
  for (int k0 = kBegin; k0 < kEnd; k0 += kKeys) {
    const int nk = imin(kKeys, kEnd - k0);
    __syncthreads();
    stage_rows<D>(Ks, k + row_index(b, k0, g, Tk, Hkv, D), (long long)Hkv * D, nk, kKeys);
    stage_rows<D>(Vs, v + row_index(b, k0, g, Tk, Hkv, D), (long long)Hkv * D, nk, kKeys);
    __syncthreads();
#pragma unroll 1
    for (int c0 = 0; c0 < nk; c0 += 16) {
      float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
      float dp[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
      mma_abt<D>(s, qa, Ks, c0);
      mma_abt<D>(dp, da, Vs, c0);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e / 2, c = c0 + 8 * j + 2 * t4 + (e & 1), key = k0 + c;
          const bool on = live[r] && c < nk && key_visible(pos[r], key, window);
          const float p = on ? expf(s[j][e] * scale - rowLse[r]) : 0.0f;
          s[j][e] = scale * p * (dp[j][e] - rowDelta[r]);  // dS
        }
      }
      unsigned dsa[4];
      to_a(dsa, s);
      mma_ab<D>(acc, dsa, Ks, c0);
    }
  }
  const int wrow0 = q0 + warp * 16;
  store_rows<D>(dq + row_index(b, wrow0, h, Tq, H, D), (long long)H * D, Tq - wrow0, acc, 1.0f, 1.0f, true);
}

template <int D>
__device__ void backward_dkv(float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v,
                             const float* lse, const float* delta, int Tq, int Tk, int H, int Hkv, int window, int qOffset,
                             float scale) {
  // Qs = QdO rows [0, 32), dOs = rows [32, 64); the block's keys are staged through all 64 first
  __shared__ __align__(16) unsigned short QdO[2 * kQTile * (D + 8)];
  __shared__ __align__(16) unsigned short Vs[kRows * (D + 8)];
  __shared__ float rowLse[kQTile], rowDelta[kQTile];
  unsigned short* Qs = QdO;
  unsigned short* dOs = QdO + kQTile * (D + 8);
  const int k0 = blockIdx.x * kRows, g = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t4 = lane % 4;
  const int nk = imin(kRows, Tk - k0), groupSize = H / Hkv;
  stage_rows<D>(QdO, k + row_index(b, k0, g, Tk, Hkv, D), (long long)Hkv * D, nk, kRows);
  stage_rows<D>(Vs, v + row_index(b, k0, g, Tk, Hkv, D), (long long)Hkv * D, nk, kRows);
  __syncthreads();
  unsigned ka[D / 16][4];
  load_a<D>(ka, QdO, warp * 16);

  float dkAcc[D / 8][4], dvAcc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    dkAcc[n][0] = dkAcc[n][1] = dkAcc[n][2] = dkAcc[n][3] = 0.0f;
    dvAcc[n][0] = dvAcc[n][1] = dvAcc[n][2] = dvAcc[n][3] = 0.0f;
  }
  const int key0 = k0 + warp * 16 + lane / 4;  // this lane's keys: key0 and key0 + 8
  // query rows that see some key of the block: k0 <= pos < k0 + nk - 1 + window
  const int tBegin = imax(0, k0 - qOffset);
  const int tEnd = window > 0 ? imin(Tq, k0 + nk - 1 + window - qOffset) : Tq;
#pragma unroll 1
  for (int hi = 0; hi < groupSize; ++hi) {
    const int h = g * groupSize + hi;
#pragma unroll 1
    for (int t0 = tBegin; t0 < tEnd; t0 += kQTile) {
      const int nt = imin(kQTile, tEnd - t0);
      __syncthreads();  // the previous query tile (and the staged keys) are no longer read
      stage_rows<D>(Qs, q + row_index(b, t0, h, Tq, H, D), (long long)H * D, nt, kQTile);
      stage_rows<D>(dOs, dout + row_index(b, t0, h, Tq, H, D), (long long)H * D, nt, kQTile);
      for (int i = threadIdx.x; i < kQTile; i += kThreads) {
        rowLse[i] = i < nt ? lse[((long long)b * H + h) * Tq + t0 + i] : 0.0f;
        rowDelta[i] = i < nt ? delta[((long long)b * H + h) * Tq + t0 + i] : 0.0f;
      }
      __syncthreads();
#pragma unroll 1
      for (int c0 = 0; c0 < nt; c0 += 16) {
        float st[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
        float dpt[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
        mma_abt<D>(st, ka, Qs, c0);  // Sᵀ = K Qᵀ
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {  // dPᵀ = V dOᵀ, V's fragments read as needed
          unsigned va[4], bd[4];
          eqat::ldmatrix_x4(va, Vs + (warp * 16 + lane % 16) * (D + 8) + 16 * kk + (lane / 16) * 8);
          eqat::ldmatrix_x4(bd, dOs + (c0 + (lane / 16) * 8 + lane % 8) * (D + 8) + 16 * kk + ((lane / 8) % 2) * 8);
          eqat::mma_bf16_16816(dpt[0], va, bd[0], bd[1]);
          eqat::mma_bf16_16816(dpt[1], va, bd[2], bd[3]);
        }
#pragma unroll
        for (int j = 0; j < 2; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = key0 + 8 * (e / 2), c = c0 + 8 * j + 2 * t4 + (e & 1);
            const bool on = c < nt && key < Tk && key_visible(qOffset + t0 + c, key, window);
            const float p = on ? expf(st[j][e] * scale - rowLse[c]) : 0.0f;
            st[j][e] = p;
            dpt[j][e] = scale * p * (dpt[j][e] - (on ? rowDelta[c] : 0.0f));  // dSᵀ
          }
        }
        unsigned pa[4], dsa[4];
        to_a(pa, st);
        to_a(dsa, dpt);
        mma_ab<D>(dvAcc, pa, dOs, c0);  // dv += Pᵀ dO
        mma_ab<D>(dkAcc, dsa, Qs, c0);  // dk += dSᵀ Q
      }
    }
  }
  const int wkey0 = k0 + warp * 16;
  store_rows<D>(dk + row_index(b, wkey0, g, Tk, Hkv, D), (long long)Hkv * D, Tk - wkey0, dkAcc, 1.0f, 1.0f, true);
  store_rows<D>(dv + row_index(b, wkey0, g, Tk, Hkv, D), (long long)Hkv * D, Tk - wkey0, dvAcc, 1.0f, 1.0f, true);
}

}  // namespace eqat_attn_tc

extern "C" __global__ __launch_bounds__(128) void eqat_attention_tc_forward_d64(
    float* out, unsigned short* out16, float* lse, const float* q, const float* k, const float* v, int Tq, int Tk, int H,
    int Hkv, int window, int qOffset, float scale) {
  eqat_attn_tc::forward<64>(out, out16, lse, q, k, v, Tq, Tk, H, Hkv, window, qOffset, scale);
}

extern "C" __global__ __launch_bounds__(128) void eqat_attention_tc_backward_dq_d64(
    float* dq, const float* dout, const float* q, const float* k, const float* v, const float* lse, const float* delta,
    int Tq, int Tk, int H, int Hkv, int window, int qOffset, float scale) {
  eqat_attn_tc::backward_dq<64>(dq, dout, q, k, v, lse, delta, Tq, Tk, H, Hkv, window, qOffset, scale);
}

extern "C" __global__ __launch_bounds__(128) void eqat_attention_tc_backward_dkv_d64(
    float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v, const float* lse,
    const float* delta, int Tq, int Tk, int H, int Hkv, int window, int qOffset, float scale) {
  eqat_attn_tc::backward_dkv<64>(dk, dv, dout, q, k, v, lse, delta, Tq, Tk, H, Hkv, window, qOffset, scale);
}

extern "C" __global__ __launch_bounds__(128) void eqat_attention_tc_forward_d128(
    float* out, unsigned short* out16, float* lse, const float* q, const float* k, const float* v, int Tq, int Tk, int H,
    int Hkv, int window, int qOffset, float scale) {
  eqat_attn_tc::forward<128>(out, out16, lse, q, k, v, Tq, Tk, H, Hkv, window, qOffset, scale);
}

extern "C" __global__ __launch_bounds__(128) void eqat_attention_tc_backward_dq_d128(
    float* dq, const float* dout, const float* q, const float* k, const float* v, const float* lse, const float* delta,
    int Tq, int Tk, int H, int Hkv, int window, int qOffset, float scale) {
  eqat_attn_tc::backward_dq<128>(dq, dout, q, k, v, lse, delta, Tq, Tk, H, Hkv, window, qOffset, scale);
}

extern "C" __global__ __launch_bounds__(128) void eqat_attention_tc_backward_dkv_d128(
    float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v, const float* lse,
    const float* delta, int Tq, int Tk, int H, int Hkv, int window, int qOffset, float scale) {
  eqat_attn_tc::backward_dkv<128>(dk, dv, dout, q, k, v, lse, delta, Tq, Tk, H, Hkv, window, qOffset, scale);
}
