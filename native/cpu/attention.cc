// Causal self-attention with grouped-query heads, forward and backward, computed flash-style:
// query rows are processed in tiles against key tiles, so no T x T score matrix ever exists;
// each thread holds one (query tile x key tile) block of scores, O(T) row statistics and (in
// the forward) a packed copy of one kv head's keys and values, O(T * D). The forward
// keeps a running (online) softmax per query row and saves only the natural-log
// log-sum-exp of the scaled scores per row; the backward recomputes the probabilities from it.
// Twin: src/ops/ref/attention.ts; wrapper: src/ops/attention.ts.
//
// Layout (no transposes): q, out, dout (B, Tq, H, D); k, v (B, Tk, Hkv, D); lse (B, H, Tq).
// Query head h reads kv head h / (H / Hkv). Query row i sits at position qOffset + i and sees
// keys j with pos - window < j <= pos (window = Tk when there is no sliding window).
//
// All inner work is small GEMM blocks, C (+)= A * B with a register-blocked micro-kernel, plus
// row passes (max, exp, sum). The kernels are written once against a small vector type `Vec`
// and compiled three times: this file includes itself (the part guarded by
// EQAT_ATTENTION_KERNEL_BODY) inside a scalar, an AVX2+FMA and an AVX-512 namespace, the latter
// two under `#pragma GCC target`, so every function of that copy, lambdas included, is built for
// that instruction set. The path is chosen at run time from eqat::cpu_has_avx512()/avx2().
//
// Threads: the forward splits over (batch, query head) pairs; the backward over
// (batch, kv head) pairs, so the query heads that share a kv head, and therefore write the same
// dk/dv rows, run on one thread in a fixed order: no races and bitwise-reproducible results for
// any thread count.
#ifndef EQAT_ATTENTION_KERNEL_BODY

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "eqat.h"
#include "vexp.h"

namespace eqat {
namespace attention {

constexpr int kTileQ = 64;  // query rows per tile
constexpr int kTileK = 64;  // keys per tile; a multiple of every vector width below

struct Dims {
  int64_t B, Tq, Tk, H, Hkv, D;
  int64_t window;   // effective sliding window in [1, Tk]; Tk means full causal attention
  int64_t qOffset;  // position of query row 0; 0 <= qOffset <= Tk - Tq
  float scale;      // 1 / sqrt(D)
};

// A 64-byte aligned float buffer for per-thread scratch (zero-initialised).
class Scratch {
 public:
  explicit Scratch(size_t n) : buf_(n + 16, 0.0f) {
    auto addr = reinterpret_cast<uintptr_t>(buf_.data());
    ptr_ = buf_.data() + ((64 - addr % 64) % 64) / sizeof(float);
  }
  float* data() { return ptr_; }

 private:
  std::vector<float> buf_;
  float* ptr_;
};

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ---------------------------------------------------------------------------------------------
// Scalar path: a one-lane "vector".
namespace scalar {
struct Vec {
  static constexpr int W = 1;
  float v;
  static Vec load(const float* p) { return {*p}; }
  static Vec loadn(const float* p, int n) { return {n > 0 ? *p : 0.0f}; }
  void store(float* p) const { *p = v; }
  void storen(float* p, int n) const {
    if (n > 0) *p = v;
  }
  static Vec set1(float x) { return {x}; }
  static Vec zero() { return {0.0f}; }
  static Vec fmadd(Vec a, Vec b, Vec c) { return {a.v * b.v + c.v}; }
  static Vec add(Vec a, Vec b) { return {a.v + b.v}; }
  static Vec sub(Vec a, Vec b) { return {a.v - b.v}; }
  static Vec mul(Vec a, Vec b) { return {a.v * b.v}; }
  static Vec max(Vec a, Vec b) { return {a.v > b.v ? a.v : b.v}; }
  static Vec exp(Vec x) { return {std::exp(x.v)}; }
  static float hsum(Vec a) { return a.v; }
  static float hmax(Vec a) { return a.v; }
};
constexpr int MR = 4;  // rows per micro-kernel block
constexpr int NV = 4;  // vectors per micro-kernel block
#define EQAT_ATTENTION_KERNEL_BODY 1
#include "attention.cc"
#undef EQAT_ATTENTION_KERNEL_BODY
}  // namespace scalar

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA path: 8 lanes.
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
struct Vec {
  static constexpr int W = 8;
  __m256 v;
  static __m256i tail_mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Vec loadn(const float* p, int n) { return {_mm256_maskload_ps(p, tail_mask(n))}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  void storen(float* p, int n) const { _mm256_maskstore_ps(p, tail_mask(n), v); }
  static Vec set1(float x) { return {_mm256_set1_ps(x)}; }
  static Vec zero() { return {_mm256_setzero_ps()}; }
  static Vec fmadd(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  static Vec add(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
  static Vec sub(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
  static Vec mul(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
  static Vec max(Vec a, Vec b) { return {_mm256_max_ps(a.v, b.v)}; }
  static Vec exp(Vec x) { return {vexp::exp_avx2(x.v)}; }  // below ln(FLT_MIN), e.g. masked -inf: 0
  static float hsum(Vec a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float hmax(Vec a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};
constexpr int MR = 6;
constexpr int NV = 2;
#define EQAT_ATTENTION_KERNEL_BODY 1
#include "attention.cc"
#undef EQAT_ATTENTION_KERNEL_BODY
}  // namespace avx2
#pragma GCC pop_options

// ---------------------------------------------------------------------------------------------
// AVX-512 path: 16 lanes. (GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on masked
// intrinsics; the warning is about the header's placeholder operand, not about this code.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
namespace avx512 {
struct Vec {
  static constexpr int W = 16;
  __m512 v;
  static __mmask16 tail_mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec loadn(const float* p, int n) { return {_mm512_maskz_loadu_ps(tail_mask(n), p)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void storen(float* p, int n) const { _mm512_mask_storeu_ps(p, tail_mask(n), v); }
  static Vec set1(float x) { return {_mm512_set1_ps(x)}; }
  static Vec zero() { return {_mm512_setzero_ps()}; }
  static Vec fmadd(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static Vec add(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
  static Vec sub(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
  static Vec mul(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
  static Vec max(Vec a, Vec b) { return {_mm512_max_ps(a.v, b.v)}; }
  static Vec exp(Vec x) { return {vexp::exp_avx512(x.v)}; }
  static float hsum(Vec a) { return _mm512_reduce_add_ps(a.v); }
  static float hmax(Vec a) { return _mm512_reduce_max_ps(a.v); }
};
constexpr int MR = 6;
constexpr int NV = 4;
#define EQAT_ATTENTION_KERNEL_BODY 1
#include "attention.cc"
#undef EQAT_ATTENTION_KERNEL_BODY
}  // namespace avx512
#pragma GCC pop_options
#pragma GCC diagnostic pop

// ---------------------------------------------------------------------------------------------
// Dispatch and N-API entry points.

void forward(const Dims& d, float* out, float* lse, const float* q, const float* k, const float* v) {
  if (cpu_has_avx512())
    avx512::forward(d, out, lse, q, k, v);
  else if (cpu_has_avx2())
    avx2::forward(d, out, lse, q, k, v);
  else
    scalar::forward(d, out, lse, q, k, v);
}

void backward(const Dims& d, float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
              const float* v, const float* out, const float* lse) {
  if (cpu_has_avx512())
    avx512::backward(d, dq, dk, dv, dout, q, k, v, out, lse);
  else if (cpu_has_avx2())
    avx2::backward(d, dq, dk, dv, dout, q, k, v, out, lse);
  else
    scalar::backward(d, dq, dk, dv, dout, q, k, v, out, lse);
}

// Reads the shape arguments starting at index `first`: B, Tq, Tk, H, Hkv, D, window (0 = none),
// qOffset; throws a RangeError naming the op and the argument when they are inconsistent.
Dims read_dims(const Napi::CallbackInfo& info, size_t first, const char* op) {
  const char* names[] = {"B", "Tq", "Tk", "H", "Hkv", "D"};
  int64_t val[6];
  for (int i = 0; i < 6; ++i) {
    val[i] = arg_int(info, first + i, op, names[i]);
    if (val[i] < 1 || val[i] > (int64_t(1) << 31)) {
      throw Napi::RangeError::New(info.Env(), std::string(op) + ": argument '" + names[i] + "' must be a positive int32, got " +
                                                  std::to_string(val[i]));
    }
  }
  Dims d{val[0], val[1], val[2], val[3], val[4], val[5], 0, 0, 0.0f};
  if (d.H % d.Hkv != 0) {
    throw Napi::RangeError::New(info.Env(), std::string(op) + ": argument 'H' (" + std::to_string(d.H) +
                                                ") must be a multiple of 'Hkv' (" + std::to_string(d.Hkv) + ")");
  }
  int64_t window = arg_int(info, first + 6, op, "window");
  if (window < 0) throw Napi::RangeError::New(info.Env(), std::string(op) + ": argument 'window' must be >= 0 (0 = none)");
  d.window = (window == 0 || window > d.Tk) ? d.Tk : window;
  d.qOffset = arg_int(info, first + 7, op, "qOffset");
  if (d.Tq > d.Tk || d.qOffset < 0 || d.qOffset > d.Tk - d.Tq) {
    throw Napi::RangeError::New(info.Env(), std::string(op) + ": argument 'qOffset' must be in [0, Tk - Tq] = [0, " +
                                                std::to_string(d.Tk - d.Tq) + "], got " + std::to_string(d.qOffset));
  }
  d.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d.D)));
  return d;
}

// attentionForward(out, lse, q, k, v, B, Tq, Tk, H, Hkv, D, window, qOffset)
Napi::Value AttentionForward(const Napi::CallbackInfo& info) {
  const char* op = "attentionForward";
  check_argc(info, 13, op);
  Dims d = read_dims(info, 5, op);
  size_t nq = d.B * d.Tq * d.H * d.D, nk = d.B * d.Tk * d.Hkv * d.D;
  float* out = arg_f32(info, 0, nq, op, "out");
  float* lse = arg_f32(info, 1, d.B * d.H * d.Tq, op, "lse");
  const float* q = arg_f32(info, 2, nq, op, "q");
  const float* k = arg_f32(info, 3, nk, op, "k");
  const float* v = arg_f32(info, 4, nk, op, "v");
  forward(d, out, lse, q, k, v);
  return info.Env().Undefined();
}

// attentionBackward(dq, dk, dv, dout, q, k, v, out, lse, B, Tq, Tk, H, Hkv, D, window, qOffset)
Napi::Value AttentionBackward(const Napi::CallbackInfo& info) {
  const char* op = "attentionBackward";
  check_argc(info, 17, op);
  Dims d = read_dims(info, 9, op);
  size_t nq = d.B * d.Tq * d.H * d.D, nk = d.B * d.Tk * d.Hkv * d.D;
  float* dq = arg_f32(info, 0, nq, op, "dq");
  float* dk = arg_f32(info, 1, nk, op, "dk");
  float* dv = arg_f32(info, 2, nk, op, "dv");
  const float* dout = arg_f32(info, 3, nq, op, "dout");
  const float* q = arg_f32(info, 4, nq, op, "q");
  const float* k = arg_f32(info, 5, nk, op, "k");
  const float* v = arg_f32(info, 6, nk, op, "v");
  const float* out = arg_f32(info, 7, nq, op, "out");
  const float* lse = arg_f32(info, 8, d.B * d.H * d.Tq, op, "lse");
  backward(d, dq, dk, dv, dout, q, k, v, out, lse);
  return info.Env().Undefined();
}

}  // namespace attention

EQAT_EXPORT(attentionForward, attention::AttentionForward);
EQAT_EXPORT(attentionBackward, attention::AttentionBackward);

}  // namespace eqat

#else  // EQAT_ATTENTION_KERNEL_BODY
// ---------------------------------------------------------------------------------------------
// The kernels, compiled once per instruction set. In scope: Vec (W lanes), MR, NV, Dims,
// kTileQ, kTileK, Scratch, round_up, parallel_for.

// One register block of C (+)= A * B: R rows by NVEC vectors (or one partial vector of `tail`
// lanes when PART), summed over K. A(r, p) = A[r * ars + p * aps]; B rows are ldb apart and C
// rows ldc apart.
template <int R, int NVEC, bool ACC, bool PART>
inline void micro(int64_t K, const float* A, int64_t ars, int64_t aps, const float* B, int64_t ldb, float* C,
                  int64_t ldc, int tail) {
  Vec acc[R][NVEC];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NVEC; ++c) acc[r][c] = Vec::zero();
  for (int64_t p = 0; p < K; ++p) {
    const float* b = B + p * ldb;
    Vec bv[NVEC];
#pragma GCC unroll 8
    for (int c = 0; c < NVEC; ++c) bv[c] = PART ? Vec::loadn(b, tail) : Vec::load(b + c * Vec::W);
    const float* a = A + p * aps;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      Vec av = Vec::set1(a[r * ars]);
#pragma GCC unroll 8
      for (int c = 0; c < NVEC; ++c) acc[r][c] = Vec::fmadd(av, bv[c], acc[r][c]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    float* cr = C + r * ldc;
#pragma GCC unroll 8
    for (int c = 0; c < NVEC; ++c) {
      if (PART) {
        Vec x = ACC ? Vec::add(acc[r][c], Vec::loadn(cr, tail)) : acc[r][c];
        x.storen(cr, tail);
      } else {
        Vec x = ACC ? Vec::add(acc[r][c], Vec::load(cr + c * Vec::W)) : acc[r][c];
        x.store(cr + c * Vec::W);
      }
    }
  }
}

// The last `rem` (< R) rows of a column block.
template <int R, int NVEC, bool ACC, bool PART>
inline void micro_rows_tail(int rem, int64_t K, const float* A, int64_t ars, int64_t aps, const float* B, int64_t ldb,
                            float* C, int64_t ldc, int tail) {
  if constexpr (R >= 1) {
    if (rem == R)
      micro<R, NVEC, ACC, PART>(K, A, ars, aps, B, ldb, C, ldc, tail);
    else
      micro_rows_tail<R - 1, NVEC, ACC, PART>(rem, K, A, ars, aps, B, ldb, C, ldc, tail);
  }
}

// All M rows of one column block.
template <int NVEC, bool ACC, bool PART>
inline void micro_rows(int64_t M, int64_t K, const float* A, int64_t ars, int64_t aps, const float* B, int64_t ldb,
                       float* C, int64_t ldc, int tail) {
  int64_t r = 0;
  for (; r + MR <= M; r += MR) micro<MR, NVEC, ACC, PART>(K, A + r * ars, ars, aps, B, ldb, C + r * ldc, ldc, tail);
  if (r < M)
    micro_rows_tail<MR - 1, NVEC, ACC, PART>(static_cast<int>(M - r), K, A + r * ars, ars, aps, B, ldb, C + r * ldc,
                                              ldc, tail);
}

// C[r][0..N) = (or += when ACC) sum_{p < K} A(r, p) * B[p][0..N), for r < M. Only the first N
// columns of B and C are touched.
template <bool ACC>
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t ars, int64_t aps, const float* B, int64_t ldb,
          float* C, int64_t ldc) {
  constexpr int W = Vec::W;
  const int64_t blocks = N / (NV * W), singles = (N % (NV * W)) / W, tail = N % W;
  for (int64_t i = 0; i < blocks; ++i, B += NV * W, C += NV * W)
    micro_rows<NV, ACC, false>(M, K, A, ars, aps, B, ldb, C, ldc, W);
  for (int64_t i = 0; i < singles; ++i, B += W, C += W) micro_rows<1, ACC, false>(M, K, A, ars, aps, B, ldb, C, ldc, W);
  if (tail > 0) micro_rows<1, ACC, true>(M, K, A, ars, aps, B, ldb, C, ldc, static_cast<int>(tail));
}

// ---- row passes over one tile row of kTileK scores ----

inline float row_max(const float* x) {
  Vec m = Vec::load(x);
  for (int j = Vec::W; j < kTileK; j += Vec::W) m = Vec::max(m, Vec::load(x + j));
  return Vec::hmax(m);
}

// x[j] = exp(x[j] * a + b) for the whole row; returns the sum.
inline float row_exp(float* x, float a, float b) {
  Vec av = Vec::set1(a), bv = Vec::set1(b), sum = Vec::zero();
  for (int j = 0; j < kTileK; j += Vec::W) {
    Vec e = Vec::exp(Vec::fmadd(Vec::load(x + j), av, bv));
    e.store(x + j);
    sum = Vec::add(sum, e);
  }
  return Vec::hsum(sum);
}

// Sets the scores outside [lo, hi) to -inf (they become zero probabilities).
inline void row_mask(float* x, int64_t lo, int64_t hi) {
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < lo; ++j) x[j] = ninf;
  for (int64_t j = hi; j < kTileK; ++j) x[j] = ninf;
}

inline void row_zero(float* x) {
  for (int j = 0; j < kTileK; j += Vec::W) Vec::zero().store(x + j);
}

inline float dot(const float* a, const float* b, int64_t n) {
  Vec s = Vec::zero();
  int64_t i = 0;
  for (; i + Vec::W <= n; i += Vec::W) s = Vec::fmadd(Vec::load(a + i), Vec::load(b + i), s);
  if (i < n) s = Vec::fmadd(Vec::loadn(a + i, static_cast<int>(n - i)), Vec::loadn(b + i, static_cast<int>(n - i)), s);
  return Vec::hsum(s);
}

// dst[0..n) = src[0..n) * a (dst may be src)
inline void scale_into(float* dst, const float* src, float a, int64_t n) {
  Vec av = Vec::set1(a);
  int64_t i = 0;
  for (; i + Vec::W <= n; i += Vec::W) Vec::mul(Vec::load(src + i), av).store(dst + i);
  if (i < n) Vec::mul(Vec::loadn(src + i, static_cast<int>(n - i)), av).storen(dst + i, static_cast<int>(n - i));
}

// Packs key (or value) rows [j0, j0 + kTileK) of kv head g into a transposed tile
// dst[d * kTileK + jj] = src[j0 + jj][d], zero past Tk. src points at batch b's (Tk, Hkv, D).
inline void pack_transposed(float* dst, const float* src, const Dims& dm, int64_t g, int64_t j0) {
  const int64_t D = dm.D;
  for (int64_t jj = 0; jj < kTileK; ++jj) {
    const int64_t j = j0 + jj;
    if (j < dm.Tk) {
      const float* row = src + (j * dm.Hkv + g) * D;
      for (int64_t d = 0; d < D; ++d) dst[d * kTileK + jj] = row[d];
    } else {
      for (int64_t d = 0; d < D; ++d) dst[d * kTileK + jj] = 0.0f;
    }
  }
}

// Copies n rows of D floats, `stride` apart in src, into contiguous dst (D apart). Operands in
// the (B, T, heads, D) layout sit at power-of-two-like strides that alias in the L1 cache; the
// GEMMs read packed copies instead.
inline void pack_rows(float* dst, const float* src, int64_t n, int64_t stride, int64_t D) {
  for (int64_t r = 0; r < n; ++r) std::copy(src + r * stride, src + r * stride + D, dst + r * D);
}

// dst rows (`stride` apart) += src rows (contiguous, D apart), n rows.
inline void add_rows(float* dst, int64_t stride, const float* src, int64_t n, int64_t D) {
  for (int64_t r = 0; r < n; ++r) {
    float* d = dst + r * stride;
    const float* x = src + r * D;
    int64_t i = 0;
    for (; i + Vec::W <= D; i += Vec::W) Vec::add(Vec::load(d + i), Vec::load(x + i)).store(d + i);
    if (i < D) {
      const int n_tail = static_cast<int>(D - i);
      Vec::add(Vec::loadn(d + i, n_tail), Vec::loadn(x + i, n_tail)).storen(d + i, n_tail);
    }
  }
}

// The keys a query at position `pos` sees, as a range [lo, hi) relative to key tile start j0
// with kn keys; empty when lo >= hi.
inline void visible(const Dims& dm, int64_t pos, int64_t j0, int64_t kn, int64_t& lo, int64_t& hi) {
  lo = std::max<int64_t>(j0, pos - dm.window + 1) - j0;
  hi = std::min<int64_t>(j0 + kn, pos + 1) - j0;
}

// out (B, Tq, H, D), lse (B, H, Tq) from q (B, Tq, H, D), k, v (B, Tk, Hkv, D).
void forward(const Dims& dm, float* out, float* lse, const float* q, const float* k, const float* v) {
  const int64_t D = dm.D, H = dm.H, Hkv = dm.Hkv, group = H / Hkv, Tq = dm.Tq, Tk = dm.Tk;
  const int64_t qStride = H * D, kStride = Hkv * D;
  // Keys any query of this call can see: tiles [tileFirst, tileLast], keys [keyFirst, keyEnd).
  const int64_t tileFirst = std::max<int64_t>(0, dm.qOffset - dm.window + 1) / kTileK;
  const int64_t tileLast = (dm.qOffset + Tq - 1) / kTileK;
  const int64_t nTiles = tileLast - tileFirst + 1;
  const int64_t keyFirst = tileFirst * kTileK, keyEnd = std::min<int64_t>(Tk, (tileLast + 1) * kTileK);
  const float scale = dm.scale;
  parallel_for(dm.B * H, [&](int64_t begin, int64_t end) {
    Scratch ktBuf(nTiles * D * kTileK), vpBuf((keyEnd - keyFirst) * D), qpBuf(kTileQ * D), sBuf(kTileQ * kTileK),
        accBuf(kTileQ * D), mBuf(kTileQ), lBuf(kTileQ);
    float *kt = ktBuf.data(), *vp = vpBuf.data(), *qp = qpBuf.data(), *s = sBuf.data(), *acc = accBuf.data();
    float *m = mBuf.data(), *l = lBuf.data();
    int64_t packedFor = -1;  // the (b, kv head) whose keys and values kt and vp hold
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / H, h = item % H, g = h / group;
      if (packedFor != b * Hkv + g) {
        const float* kb = k + b * Tk * kStride;
        for (int64_t t = 0; t < nTiles; ++t) pack_transposed(kt + t * D * kTileK, kb, dm, g, (tileFirst + t) * kTileK);
        pack_rows(vp, v + ((b * Tk + keyFirst) * Hkv + g) * D, keyEnd - keyFirst, kStride, D);
        packedFor = b * Hkv + g;
      }
      for (int64_t t0 = 0; t0 < Tq; t0 += kTileQ) {
        const int64_t qn = std::min<int64_t>(kTileQ, Tq - t0);
        pack_rows(qp, q + ((b * Tq + t0) * H + h) * D, qn, qStride, D);
        for (int64_t i = 0; i < qn; ++i) {
          m[i] = -std::numeric_limits<float>::infinity();
          l[i] = 0.0f;
        }
        std::fill(acc, acc + qn * D, 0.0f);
        const int64_t p0 = dm.qOffset + t0, p1 = p0 + qn - 1;
        const int64_t jt0 = std::max<int64_t>(0, p0 - dm.window + 1) / kTileK, jt1 = p1 / kTileK;
        for (int64_t jt = jt0; jt <= jt1; ++jt) {
          const int64_t j0 = jt * kTileK, kn = std::min<int64_t>(kTileK, Tk - j0);
          // s = q k^T (unscaled) for this tile pair.
          gemm<false>(qn, kTileK, D, qp, D, 1, kt + (jt - tileFirst) * D * kTileK, kTileK, s, kTileK);
          for (int64_t i = 0; i < qn; ++i) {
            float* row = s + i * kTileK;
            int64_t lo, hi;
            visible(dm, p0 + i, j0, kn, lo, hi);
            if (lo >= hi) {
              row_zero(row);
              continue;
            }
            row_mask(row, lo, hi);
            const float mNew = std::max(m[i], row_max(row) * scale);
            const float alpha = std::exp(m[i] - mNew);  // 0 on the row's first visible tile
            const float sum = row_exp(row, scale, -mNew);
            l[i] = l[i] * alpha + sum;
            m[i] = mNew;
            if (alpha != 1.0f) scale_into(acc + i * D, acc + i * D, alpha, D);
          }
          // acc += p v
          gemm<true>(qn, D, kn, s, kTileK, 1, vp + (j0 - keyFirst) * D, D, acc, D);
        }
        for (int64_t i = 0; i < qn; ++i) {
          scale_into(out + ((b * Tq + t0 + i) * H + h) * D, acc + i * D, 1.0f / l[i], D);
          lse[(b * H + h) * Tq + t0 + i] = m[i] + std::log(l[i]);
        }
      }
    }
  });
}

// Accumulates dq, dk, dv from dout and the forward's inputs, out and lse.
void backward(const Dims& dm, float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
              const float* v, const float* out, const float* lse) {
  const int64_t D = dm.D, H = dm.H, Hkv = dm.Hkv, group = H / Hkv, Tq = dm.Tq, Tk = dm.Tk;
  const int64_t qStride = H * D, kStride = Hkv * D;
  const int64_t tileFirst = std::max<int64_t>(0, dm.qOffset - dm.window + 1) / kTileK;
  const int64_t tileLast = (dm.qOffset + Tq - 1) / kTileK;
  const float scale = dm.scale;
  parallel_for(dm.B * Hkv, [&](int64_t begin, int64_t end) {
    // Per key tile: kt, vt (D, kTileK) transposed, kp (kTileK, D) packed, dk/dv accumulators.
    // Per query tile: qp, dop packed rows, the dq contribution, P and dS (kTileQ, kTileK).
    Scratch ktBuf(D * kTileK), vtBuf(D * kTileK), kpBuf(kTileK * D), dkBuf(kTileK * D), dvBuf(kTileK * D),
        qpBuf(kTileQ * D), dopBuf(kTileQ * D), dqBuf(kTileQ * D), pBuf(kTileQ * kTileK), dsBuf(kTileQ * kTileK),
        deltaBuf(group * Tq);
    float *kt = ktBuf.data(), *vt = vtBuf.data(), *kp = kpBuf.data(), *dkAcc = dkBuf.data(), *dvAcc = dvBuf.data();
    float *qp = qpBuf.data(), *dop = dopBuf.data(), *dqPart = dqBuf.data(), *P = pBuf.data(), *dS = dsBuf.data();
    float* delta = deltaBuf.data();
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / Hkv, g = item % Hkv;
      const float* kb = k + b * Tk * kStride;
      const float* vb = v + b * Tk * kStride;
      // delta_t = dout_t . out_t for every query row of the group's heads.
      for (int64_t hh = 0; hh < group; ++hh) {
        const int64_t h = g * group + hh;
        for (int64_t t = 0; t < Tq; ++t) {
          const int64_t off = ((b * Tq + t) * H + h) * D;
          delta[hh * Tq + t] = dot(dout + off, out + off, D);
        }
      }
      for (int64_t jt = tileFirst; jt <= tileLast; ++jt) {
        const int64_t j0 = jt * kTileK, kn = std::min<int64_t>(kTileK, Tk - j0);
        // Query rows that see any key of this tile: positions [j0, j0 + kn - 1 + window - 1].
        const int64_t ta = std::max<int64_t>(0, j0 - dm.qOffset);
        const int64_t tb = std::min<int64_t>(Tq - 1, j0 + kn - 2 + dm.window - dm.qOffset);
        if (ta > tb) continue;
        pack_transposed(kt, kb, dm, g, j0);
        pack_transposed(vt, vb, dm, g, j0);
        pack_rows(kp, kb + (j0 * Hkv + g) * D, kn, kStride, D);
        std::fill(dkAcc, dkAcc + kn * D, 0.0f);
        std::fill(dvAcc, dvAcc + kn * D, 0.0f);
        for (int64_t hh = 0; hh < group; ++hh) {
          const int64_t h = g * group + hh;
          for (int64_t t0 = ta / kTileQ * kTileQ; t0 <= tb; t0 += kTileQ) {
            const int64_t qn = std::min<int64_t>(kTileQ, Tq - t0);
            const int64_t off = ((b * Tq + t0) * H + h) * D;
            pack_rows(qp, q + off, qn, qStride, D);
            pack_rows(dop, dout + off, qn, qStride, D);
            gemm<false>(qn, kTileK, D, qp, D, 1, kt, kTileK, P, kTileK);    // scores q k^T
            gemm<false>(qn, kTileK, D, dop, D, 1, vt, kTileK, dS, kTileK);  // dP = dout v^T
            const int64_t p0 = dm.qOffset + t0;
            for (int64_t i = 0; i < qn; ++i) {
              float* prow = P + i * kTileK;
              float* dsrow = dS + i * kTileK;
              int64_t lo, hi;
              visible(dm, p0 + i, j0, kn, lo, hi);
              if (lo >= hi) {
                row_zero(prow);
                row_zero(dsrow);
                continue;
              }
              row_mask(prow, lo, hi);
              row_exp(prow, scale, -lse[(b * H + h) * Tq + t0 + i]);
              // dS = scale * p * (dP - delta); the scale of the scores folds in here.
              const Vec dl = Vec::set1(delta[hh * Tq + t0 + i]), sc = Vec::set1(scale);
              for (int j = 0; j < kTileK; j += Vec::W) {
                Vec p = Vec::load(prow + j);
                Vec::mul(Vec::mul(p, sc), Vec::sub(Vec::load(dsrow + j), dl)).store(dsrow + j);
              }
            }
            gemm<true>(kn, D, qn, P, 1, kTileK, dop, D, dvAcc, D);     // dv += p^T dout
            gemm<true>(kn, D, qn, dS, 1, kTileK, qp, D, dkAcc, D);     // dk += dS^T q
            gemm<false>(qn, D, kn, dS, kTileK, 1, kp, D, dqPart, D);   // dq += dS k
            add_rows(dq + off, qStride, dqPart, qn, D);
          }
        }
        add_rows(dk + ((b * Tk + j0) * Hkv + g) * D, kStride, dkAcc, kn, D);
        add_rows(dv + ((b * Tk + j0) * Hkv + g) * D, kStride, dvAcc, kn, D);
      }
    }
  });
}

#endif  // EQAT_ATTENTION_KERNEL_BODY
