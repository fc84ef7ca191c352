// Whole-tensor reductions of the CPU engine (sum, sum of squares, dot product, max |x|, a
// non-finite check, mean squared error) and the MSE backward. They feed gradient clipping,
// loss values, overflow checks and the Block-AP reconstruction loss, so they must be accurate
// and reproducible: every sum is accumulated in f64, the tensor is cut into a number of parts
// fixed by its size and the thread count, and the parts' results are combined in order, so a
// given thread count and instruction set always give the same bits.
// Twin: src/ops/ref/reduce.ts.
#include "eqat.h"

// GCC 12's AVX-512 headers trip false -W(maybe-)uninitialized warnings (their
// _mm512_undefined_* helpers).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#define EQAT_AVX2 __attribute__((target("avx2,fma")))
#define EQAT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

namespace eqat {
namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per part below which one thread does it all

enum class Isa { scalar, avx2, avx512 };
Isa isa() { return cpu_has_avx512() ? Isa::avx512 : cpu_has_avx2() ? Isa::avx2 : Isa::scalar; }

enum class Kind { sum, sumsq, dot, sqdiff };  // f64-accumulated sums: x, x^2, a*b, (a-b)^2

// GCC contracts a vector multiply feeding an add into a fused multiply-add inside FMA-enabled
// functions (intrinsics included). Passing the product through an empty asm statement hides it
// from that rewrite, so each operation rounds to f32 exactly as written.
EQAT_AVX2 inline __m256 opaque_avx2(__m256 v) {
  __asm__("" : "+x"(v));
  return v;
}
EQAT_AVX512 inline __m512 opaque_avx512(__m512 v) {
  __asm__("" : "+v"(v));
  return v;
}

inline uint32_t bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

// ---------------------------------------------------------------- scalar paths

double sum_scalar(const float* a, const float* b, int64_t n, Kind k) {
  double s0 = 0, s1 = 0;  // two chains, like the vector paths' several accumulators
  int64_t i = 0;
  for (; i + 2 <= n; i += 2) {
    double x0 = a[i], x1 = a[i + 1];
    switch (k) {
      case Kind::sum: break;
      case Kind::sumsq: x0 *= x0; x1 *= x1; break;
      case Kind::dot: x0 *= b[i]; x1 *= b[i + 1]; break;
      case Kind::sqdiff: x0 -= b[i]; x1 -= b[i + 1]; x0 *= x0; x1 *= x1; break;
    }
    s0 += x0;
    s1 += x1;
  }
  for (; i < n; ++i) {
    double x = a[i];
    if (k == Kind::sumsq) x *= x;
    else if (k == Kind::dot) x *= b[i];
    else if (k == Kind::sqdiff) { x -= b[i]; x *= x; }
    s0 += x;
  }
  return s0 + s1;
}

// Largest |x| as the bit pattern of |x|: NaN patterns exceed +inf, so NaN wins the max.
uint32_t maxabs_bits_scalar(const float* a, int64_t n) {
  uint32_t m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, bits(a[i]) & 0x7fffffffu);
  return m;
}

bool nonfinite_scalar(const float* a, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if ((bits(a[i]) & 0x7f800000u) == 0x7f800000u) return true;
  return false;
}

// da += coef * (a - b)
void mse_backward_scalar(float* da, const float* a, const float* b, float coef, int64_t n) {
  for (int64_t i = 0; i < n; ++i) da[i] = da[i] + coef * (a[i] - b[i]);
}

// ---------------------------------------------------------------- AVX2 paths

// Converts 8 floats to two f64 vectors and applies the per-element map of `k`.
EQAT_AVX2 inline void widen_avx2(const float* a, const float* b, Kind k, __m256d& lo, __m256d& hi) {
  __m256 x = _mm256_loadu_ps(a);
  lo = _mm256_cvtps_pd(_mm256_castps256_ps128(x));
  hi = _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
  if (k == Kind::sum) return;
  if (k == Kind::sumsq) {
    lo = _mm256_mul_pd(lo, lo);
    hi = _mm256_mul_pd(hi, hi);
    return;
  }
  __m256 y = _mm256_loadu_ps(b);
  __m256d ylo = _mm256_cvtps_pd(_mm256_castps256_ps128(y)), yhi = _mm256_cvtps_pd(_mm256_extractf128_ps(y, 1));
  if (k == Kind::dot) {
    lo = _mm256_mul_pd(lo, ylo);
    hi = _mm256_mul_pd(hi, yhi);
  } else {
    lo = _mm256_sub_pd(lo, ylo);
    hi = _mm256_sub_pd(hi, yhi);
    lo = _mm256_mul_pd(lo, lo);
    hi = _mm256_mul_pd(hi, hi);
  }
}

EQAT_AVX2 double sum_avx2(const float* a, const float* b, int64_t n, Kind k) {
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd(), s2 = _mm256_setzero_pd(), s3 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256d x0, x1, x2, x3;
    widen_avx2(a + i, b ? b + i : nullptr, k, x0, x1);
    widen_avx2(a + i + 8, b ? b + i + 8 : nullptr, k, x2, x3);
    s0 = _mm256_add_pd(s0, x0);
    s1 = _mm256_add_pd(s1, x1);
    s2 = _mm256_add_pd(s2, x2);
    s3 = _mm256_add_pd(s3, x3);
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(_mm256_add_pd(s0, s1), _mm256_add_pd(s2, s3)));
  double s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  return s + sum_scalar(a + i, b ? b + i : nullptr, n - i, k);
}

EQAT_AVX2 uint32_t maxabs_bits_avx2(const float* a, int64_t n) {
  const __m256i mask = _mm256_set1_epi32(0x7fffffff);
  __m256i m0 = _mm256_setzero_si256(), m1 = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm256_max_epi32(m0, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i)), mask));
    m1 = _mm256_max_epi32(m1, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i + 8)), mask));
  }
  alignas(32) uint32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_max_epi32(m0, m1));
  uint32_t m = maxabs_bits_scalar(a + i, n - i);
  for (uint32_t v : lanes) m = std::max(m, v);
  return m;
}

EQAT_AVX2 bool nonfinite_avx2(const float* a, int64_t n) {
  const __m256i exp = _mm256_set1_epi32(0x7f800000);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {  // 4 vectors per test: one branch per 128 bytes
    __m256i hit = _mm256_setzero_si256();
    for (int j = 0; j < 32; j += 8) {
      __m256i x = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i + j)), exp);
      hit = _mm256_or_si256(hit, _mm256_cmpeq_epi32(x, exp));
    }
    if (!_mm256_testz_si256(hit, hit)) return true;
  }
  return nonfinite_scalar(a + i, n - i);
}

// Lanes [0, w) of a mask start at kLaneMask + 8 - w.
alignas(32) const int32_t kLaneMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

// The tail is masked, not scalar, as scalar code here could be contracted too.
EQAT_AVX2 void mse_backward_avx2(float* da, const float* a, const float* b, float coef, int64_t n) {
  const __m256 vc = _mm256_set1_ps(coef);
  for (int64_t i = 0; i < n; i += 8) {
    const __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask + 8 - std::min<int64_t>(8, n - i)));
    __m256 d = _mm256_sub_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m));
    _mm256_maskstore_ps(da + i, m, _mm256_add_ps(_mm256_maskload_ps(da + i, m), opaque_avx2(_mm256_mul_ps(vc, d))));
  }
}

// ---------------------------------------------------------------- AVX-512 paths

EQAT_AVX512 inline void widen_avx512(__m512 x, __m512 y, Kind k, __m512d& lo, __m512d& hi) {
  lo = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
  hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(x, 1));
  if (k == Kind::sum) return;
  if (k == Kind::sumsq) {
    lo = _mm512_mul_pd(lo, lo);
    hi = _mm512_mul_pd(hi, hi);
    return;
  }
  __m512d ylo = _mm512_cvtps_pd(_mm512_castps512_ps256(y)), yhi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(y, 1));
  if (k == Kind::dot) {
    lo = _mm512_mul_pd(lo, ylo);
    hi = _mm512_mul_pd(hi, yhi);
  } else {
    lo = _mm512_sub_pd(lo, ylo);
    hi = _mm512_sub_pd(hi, yhi);
    lo = _mm512_mul_pd(lo, lo);
    hi = _mm512_mul_pd(hi, hi);
  }
}

EQAT_AVX512 double sum_avx512(const float* a, const float* b, int64_t n, Kind k) {
  const bool two = k == Kind::dot || k == Kind::sqdiff;
  __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd(), s2 = _mm512_setzero_pd(), s3 = _mm512_setzero_pd();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512 x0 = _mm512_loadu_ps(a + i), x1 = _mm512_loadu_ps(a + i + 16);
    __m512 y0 = two ? _mm512_loadu_ps(b + i) : x0, y1 = two ? _mm512_loadu_ps(b + i + 16) : x1;
    __m512d p0, p1, p2, p3;
    widen_avx512(x0, y0, k, p0, p1);
    widen_avx512(x1, y1, k, p2, p3);
    s0 = _mm512_add_pd(s0, p0);
    s1 = _mm512_add_pd(s1, p1);
    s2 = _mm512_add_pd(s2, p2);
    s3 = _mm512_add_pd(s3, p3);
  }
  for (; i < n; i += 16) {  // masked tail: absent lanes load as 0 and add 0
    const int64_t w = std::min<int64_t>(16, n - i);
    const __mmask16 m = static_cast<__mmask16>((1u << w) - 1);
    __m512 x = _mm512_maskz_loadu_ps(m, a + i), y = two ? _mm512_maskz_loadu_ps(m, b + i) : x;
    __m512d p0, p1;
    widen_avx512(x, y, k, p0, p1);
    s0 = _mm512_add_pd(s0, p0);
    s1 = _mm512_add_pd(s1, p1);
  }
  alignas(64) double lanes[8];
  _mm512_store_pd(lanes, _mm512_add_pd(_mm512_add_pd(s0, s1), _mm512_add_pd(s2, s3)));
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

EQAT_AVX512 uint32_t maxabs_bits_avx512(const float* a, int64_t n) {
  const __m512i mask = _mm512_set1_epi32(0x7fffffff);
  __m512i m0 = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) m0 = _mm512_max_epu32(m0, _mm512_and_si512(_mm512_loadu_si512(a + i), mask));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    m0 = _mm512_max_epu32(m0, _mm512_and_si512(_mm512_maskz_loadu_epi32(m, a + i), mask));
  }
  alignas(64) uint32_t lanes[16];
  _mm512_store_si512(lanes, m0);
  uint32_t m = 0;
  for (uint32_t v : lanes) m = std::max(m, v);
  return m;
}

EQAT_AVX512 bool nonfinite_avx512(const float* a, int64_t n) {
  const __m512i exp = _mm512_set1_epi32(0x7f800000);
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    __mmask16 hit = 0;
    for (int j = 0; j < 64; j += 16) {
      __m512i x = _mm512_and_si512(_mm512_loadu_si512(a + i + j), exp);
      hit |= _mm512_cmpeq_epi32_mask(x, exp);
    }
    if (hit) return true;
  }
  for (; i < n; i += 16) {
    const int64_t w = std::min<int64_t>(16, n - i);
    const __mmask16 m = static_cast<__mmask16>((1u << w) - 1);
    __m512i x = _mm512_and_si512(_mm512_maskz_loadu_epi32(m, a + i), exp);
    if (_mm512_mask_cmpeq_epi32_mask(m, x, exp)) return true;
  }
  return false;
}

EQAT_AVX512 void mse_backward_avx512(float* da, const float* a, const float* b, float coef, int64_t n) {
  const __m512 vc = _mm512_set1_ps(coef);
  for (int64_t i = 0; i < n; i += 16) {
    const int64_t w = std::min<int64_t>(16, n - i);
    const __mmask16 m = static_cast<__mmask16>(w == 16 ? 0xffffu : (1u << w) - 1);
    __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
    _mm512_mask_storeu_ps(da + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, da + i), opaque_avx512(_mm512_mul_ps(vc, d))));
  }
}

// ---------------------------------------------------------------- dispatch and partitioning

double sum_any(const float* a, const float* b, int64_t n, Kind k) {
  switch (isa()) {
    case Isa::avx512: return sum_avx512(a, b, n, k);
    case Isa::avx2: return sum_avx2(a, b, n, k);
    default: return sum_scalar(a, b, n, k);
  }
}

uint32_t maxabs_bits(const float* a, int64_t n) {
  switch (isa()) {
    case Isa::avx512: return maxabs_bits_avx512(a, n);
    case Isa::avx2: return maxabs_bits_avx2(a, n);
    default: return maxabs_bits_scalar(a, n);
  }
}

bool nonfinite(const float* a, int64_t n) {
  switch (isa()) {
    case Isa::avx512: return nonfinite_avx512(a, n);
    case Isa::avx2: return nonfinite_avx2(a, n);
    default: return nonfinite_scalar(a, n);
  }
}

void mse_backward(float* da, const float* a, const float* b, float coef, int64_t n) {
  switch (isa()) {
    case Isa::avx512: return mse_backward_avx512(da, a, b, coef, n);
    case Isa::avx2: return mse_backward_avx2(da, a, b, coef, n);
    default: return mse_backward_scalar(da, a, b, coef, n);
  }
}

// Runs part(begin, end) on `parts` contiguous pieces of [0, n) (as many as threads, fewer for
// small n) and returns their results in piece order, for a fixed-order combination.
template <typename T, typename F>
std::vector<T> by_parts(int64_t n, F part) {
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(num_threads(), n / kGrain));
  std::vector<T> out(static_cast<size_t>(parts));
  parallel_for(parts, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) out[static_cast<size_t>(p)] = part(n * p / parts, n * (p + 1) / parts);
  }, 1);
  return out;
}

double reduce_sum(const float* a, const float* b, int64_t n, Kind k) {
  double s = 0;
  for (double v : by_parts<double>(n, [&](int64_t s0, int64_t s1) { return sum_any(a + s0, b ? b + s0 : nullptr, s1 - s0, k); }))
    s += v;
  return s;
}

// ---------------------------------------------------------------- N-API entry points

// reduceSum(x, n) / reduceSumSquares(x, n) -> number
template <Kind K>
Napi::Value SumOne(const Napi::CallbackInfo& info) {
  const char* op = K == Kind::sum ? "sum" : "sumSquares";
  check_argc(info, 2, op);
  const int64_t n = arg_int(info, 1, op, "n");
  const float* x = arg_f32(info, 0, n, op, "x");
  return Napi::Number::New(info.Env(), reduce_sum(x, nullptr, n, K));
}

// reduceDot(a, b, n) -> number
Napi::Value Dot(const Napi::CallbackInfo& info) {
  const char* op = "dot";
  check_argc(info, 3, op);
  const int64_t n = arg_int(info, 2, op, "n");
  const float* a = arg_f32(info, 0, n, op, "a");
  const float* b = arg_f32(info, 1, n, op, "b");
  return Napi::Number::New(info.Env(), reduce_sum(a, b, n, Kind::dot));
}

// reduceMseForward(a, b, n) -> mean of (a - b)^2 (NaN for n = 0, as a mean over nothing)
Napi::Value MseForward(const Napi::CallbackInfo& info) {
  const char* op = "mseForward";
  check_argc(info, 3, op);
  const int64_t n = arg_int(info, 2, op, "n");
  const float* a = arg_f32(info, 0, n, op, "a");
  const float* b = arg_f32(info, 1, n, op, "b");
  return Napi::Number::New(info.Env(), reduce_sum(a, b, n, Kind::sqdiff) / static_cast<double>(n));
}

// reduceMseBackward(da, a, b, coef, n): da += coef * (a - b), coef = f32(scale * 2 / n)
Napi::Value MseBackward(const Napi::CallbackInfo& info) {
  const char* op = "mseBackward";
  check_argc(info, 5, op);
  const int64_t n = arg_int(info, 4, op, "n");
  float* da = arg_f32(info, 0, n, op, "da");
  const float* a = arg_f32(info, 1, n, op, "a");
  const float* b = arg_f32(info, 2, n, op, "b");
  const float coef = static_cast<float>(arg_num(info, 3, op, "coef"));
  parallel_for(n, [&](int64_t s, int64_t e) { mse_backward(da + s, a + s, b + s, coef, e - s); }, kGrain);
  return info.Env().Undefined();
}

// reduceMaxAbs(x, n) -> max |x| (NaN if any element is NaN; 0 for n = 0)
Napi::Value MaxAbs(const Napi::CallbackInfo& info) {
  const char* op = "maxAbs";
  check_argc(info, 2, op);
  const int64_t n = arg_int(info, 1, op, "n");
  const float* x = arg_f32(info, 0, n, op, "x");
  uint32_t m = 0;
  for (uint32_t v : by_parts<uint32_t>(n, [&](int64_t s, int64_t e) { return maxabs_bits(x + s, e - s); })) m = std::max(m, v);
  if (m > 0x7f800000u) return Napi::Number::New(info.Env(), std::nan(""));
  float f;
  std::memcpy(&f, &m, 4);
  return Napi::Number::New(info.Env(), f);
}

// reduceHasNonFinite(x, n) -> whether any element is +-inf or NaN
Napi::Value HasNonFinite(const Napi::CallbackInfo& info) {
  const char* op = "hasNonFinite";
  check_argc(info, 2, op);
  const int64_t n = arg_int(info, 1, op, "n");
  const float* x = arg_f32(info, 0, n, op, "x");
  bool any = false;
  // std::vector<bool> packs bits and is unsafe to write from several threads: use uint8_t.
  for (uint8_t v : by_parts<uint8_t>(n, [&](int64_t s, int64_t e) { return static_cast<uint8_t>(nonfinite(x + s, e - s)); }))
    any = any || v != 0;
  return Napi::Boolean::New(info.Env(), any);
}

}  // namespace

EQAT_EXPORT(reduceSum, SumOne<Kind::sum>);
EQAT_EXPORT(reduceSumSquares, SumOne<Kind::sumsq>);
EQAT_EXPORT(reduceDot, Dot);
EQAT_EXPORT(reduceMseForward, MseForward);
EQAT_EXPORT(reduceMseBackward, MseBackward);
EQAT_EXPORT(reduceMaxAbs, MaxAbs);
EQAT_EXPORT(reduceHasNonFinite, HasNonFinite);

}  // namespace eqat
