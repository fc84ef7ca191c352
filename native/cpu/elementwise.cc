// Elementwise kernels of the CPU engine: add, multiply, scale, accumulate (axpy), fill, copy,
// broadcast bias add and its backward (column sums). They glue the decoder's forward and
// backward passes together (residual adds, gradient accumulation, bias terms), so they are
// memory-bound and only need to stream at full bandwidth: AVX-512 / AVX2 paths chosen at run
// time, a scalar fallback, and threads for large tensors only.
//
// Every output element depends only on the inputs at the same index (bias: same column), so an
// output may be the same buffer as an input. Arithmetic is plain f32 without fused multiply-add,
// so every path (and the TypeScript twin, src/ops/ref/elementwise.ts) gives identical bits.
// biasBackward sums columns in f64 with per-thread partials combined in a fixed order.
#include "eqat.h"

// GCC 12's AVX-512 headers trip false -W(maybe-)uninitialized warnings (their
// _mm512_undefined_* helpers).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#define EQAT_AVX2 __attribute__((target("avx2,fma")))
#define EQAT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

namespace eqat {
namespace {

// Elements per thread below which a region stays on the calling thread: one chunk is then
// tens of microseconds of streaming, well above the cost of waking a worker.
constexpr int64_t kGrain = 1 << 15;

enum class Isa { scalar, avx2, avx512 };
Isa isa() { return cpu_has_avx512() ? Isa::avx512 : cpu_has_avx2() ? Isa::avx2 : Isa::scalar; }

enum class BinOp { add, mul };

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

// ---------------------------------------------------------------- scalar paths

void binary_scalar(float* out, const float* a, const float* b, int64_t n, BinOp op) {
  if (op == BinOp::add)
    for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
  else
    for (int64_t i = 0; i < n; ++i) out[i] = a[i] * b[i];
}

// dst += alpha * src
void axpy_scalar(float* dst, const float* src, float alpha, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = dst[i] + alpha * src[i];
}

void scale_scalar(float* out, const float* a, float alpha, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = alpha * a[i];
}

// acc[c] += sum over the rows of dout[r, c], for rows [0, rows)   dout: (rows, C)
void colsum_scalar(double* acc, const float* dout, int64_t rows, int64_t C) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = dout + r * C;
    for (int64_t c = 0; c < C; ++c) acc[c] += static_cast<double>(row[c]);
  }
}

// ---------------------------------------------------------------- AVX2 paths
//
// Tails use masked loads and stores rather than scalar loops, which GCC could also contract.

// Lanes [0, w) of a mask start at kLaneMask + 8 - w.
alignas(32) const int32_t kLaneMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

EQAT_AVX2 inline __m256i tail_mask_avx2(int64_t w) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask + 8 - w));
}

EQAT_AVX2 void binary_avx2(float* out, const float* a, const float* b, int64_t n, BinOp op) {
  int64_t i = 0;
  if (op == BinOp::add) {
    for (; i + 16 <= n; i += 16) {
      __m256 x0 = _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
      __m256 x1 = _mm256_add_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
      _mm256_storeu_ps(out + i, x0);
      _mm256_storeu_ps(out + i + 8, x1);
    }
  } else {
    for (; i + 16 <= n; i += 16) {
      __m256 x0 = _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
      __m256 x1 = _mm256_mul_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
      _mm256_storeu_ps(out + i, x0);
      _mm256_storeu_ps(out + i + 8, x1);
    }
  }
  for (; i < n; i += 8) {
    const __m256i m = tail_mask_avx2(std::min<int64_t>(8, n - i));
    __m256 x = _mm256_maskload_ps(a + i, m), y = _mm256_maskload_ps(b + i, m);
    _mm256_maskstore_ps(out + i, m, op == BinOp::add ? _mm256_add_ps(x, y) : _mm256_mul_ps(x, y));
  }
}

EQAT_AVX2 void axpy_avx2(float* dst, const float* src, float alpha, int64_t n) {
  const __m256 va = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 x0 = _mm256_add_ps(_mm256_loadu_ps(dst + i), opaque_avx2(_mm256_mul_ps(va, _mm256_loadu_ps(src + i))));
    __m256 x1 = _mm256_add_ps(_mm256_loadu_ps(dst + i + 8), opaque_avx2(_mm256_mul_ps(va, _mm256_loadu_ps(src + i + 8))));
    _mm256_storeu_ps(dst + i, x0);
    _mm256_storeu_ps(dst + i + 8, x1);
  }
  for (; i < n; i += 8) {
    const __m256i m = tail_mask_avx2(std::min<int64_t>(8, n - i));
    __m256 d = _mm256_maskload_ps(dst + i, m), s = _mm256_maskload_ps(src + i, m);
    _mm256_maskstore_ps(dst + i, m, _mm256_add_ps(d, opaque_avx2(_mm256_mul_ps(va, s))));
  }
}

EQAT_AVX2 void scale_avx2(float* out, const float* a, float alpha, int64_t n) {
  const __m256 va = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 x0 = _mm256_mul_ps(va, _mm256_loadu_ps(a + i));
    __m256 x1 = _mm256_mul_ps(va, _mm256_loadu_ps(a + i + 8));
    _mm256_storeu_ps(out + i, x0);
    _mm256_storeu_ps(out + i + 8, x1);
  }
  for (; i < n; i += 8) {
    const __m256i m = tail_mask_avx2(std::min<int64_t>(8, n - i));
    _mm256_maskstore_ps(out + i, m, _mm256_mul_ps(va, _mm256_maskload_ps(a + i, m)));
  }
}

// Column tiles of 16 floats are summed over blocks of rows in registers (four f64 vectors),
// then added to the f64 accumulator row, so the accumulator is touched once per row block.
EQAT_AVX2 void colsum_avx2(double* acc, const float* dout, int64_t rows, int64_t C) {
  constexpr int64_t kRowBlock = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
    const int64_t r1 = std::min(rows, r0 + kRowBlock);
    int64_t c = 0;
    for (; c + 16 <= C; c += 16) {
      __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd(), s2 = _mm256_setzero_pd(), s3 = _mm256_setzero_pd();
      for (int64_t r = r0; r < r1; ++r) {
        const float* p = dout + r * C + c;
        __m256 x0 = _mm256_loadu_ps(p), x1 = _mm256_loadu_ps(p + 8);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(x0)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(x0, 1)));
        s2 = _mm256_add_pd(s2, _mm256_cvtps_pd(_mm256_castps256_ps128(x1)));
        s3 = _mm256_add_pd(s3, _mm256_cvtps_pd(_mm256_extractf128_ps(x1, 1)));
      }
      _mm256_storeu_pd(acc + c, _mm256_add_pd(_mm256_loadu_pd(acc + c), s0));
      _mm256_storeu_pd(acc + c + 4, _mm256_add_pd(_mm256_loadu_pd(acc + c + 4), s1));
      _mm256_storeu_pd(acc + c + 8, _mm256_add_pd(_mm256_loadu_pd(acc + c + 8), s2));
      _mm256_storeu_pd(acc + c + 12, _mm256_add_pd(_mm256_loadu_pd(acc + c + 12), s3));
    }
    for (; c < C; ++c) {
      double s = 0;
      for (int64_t r = r0; r < r1; ++r) s += static_cast<double>(dout[r * C + c]);
      acc[c] += s;
    }
  }
}

// ---------------------------------------------------------------- AVX-512 paths

EQAT_AVX512 void binary_avx512(float* out, const float* a, const float* b, int64_t n, BinOp op) {
  int64_t i = 0;
  if (op == BinOp::add) {
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, _mm512_add_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i)));
  } else {
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i)));
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    __m512 x = _mm512_maskz_loadu_ps(m, a + i), y = _mm512_maskz_loadu_ps(m, b + i);
    _mm512_mask_storeu_ps(out + i, m, op == BinOp::add ? _mm512_add_ps(x, y) : _mm512_mul_ps(x, y));
  }
}

EQAT_AVX512 void axpy_avx512(float* dst, const float* src, float alpha, int64_t n) {
  const __m512 va = _mm512_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_add_ps(_mm512_loadu_ps(dst + i), opaque_avx512(_mm512_mul_ps(va, _mm512_loadu_ps(src + i)))));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    __m512 d = _mm512_maskz_loadu_ps(m, dst + i), s = _mm512_maskz_loadu_ps(m, src + i);
    _mm512_mask_storeu_ps(dst + i, m, _mm512_add_ps(d, opaque_avx512(_mm512_mul_ps(va, s))));
  }
}

EQAT_AVX512 void scale_avx512(float* out, const float* a, float alpha, int64_t n) {
  const __m512 va = _mm512_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, _mm512_mul_ps(va, _mm512_loadu_ps(a + i)));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m, a + i)));
  }
}

EQAT_AVX512 void colsum_avx512(double* acc, const float* dout, int64_t rows, int64_t C) {
  constexpr int64_t kRowBlock = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
    const int64_t r1 = std::min(rows, r0 + kRowBlock);
    for (int64_t c = 0; c < C; c += 16) {
      const int64_t w = std::min<int64_t>(16, C - c);
      const __mmask16 m = static_cast<__mmask16>((1u << w) - 1);
      const __mmask8 mlo = static_cast<__mmask8>(m & 0xff), mhi = static_cast<__mmask8>(m >> 8);
      __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
      for (int64_t r = r0; r < r1; ++r) {
        __m512 x = _mm512_maskz_loadu_ps(m, dout + r * C + c);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(x)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(x, 1)));
      }
      _mm512_mask_storeu_pd(acc + c, mlo, _mm512_add_pd(_mm512_maskz_loadu_pd(mlo, acc + c), s0));
      _mm512_mask_storeu_pd(acc + c + 8, mhi, _mm512_add_pd(_mm512_maskz_loadu_pd(mhi, acc + c + 8), s1));
    }
  }
}

// ---------------------------------------------------------------- dispatch

void binary(float* out, const float* a, const float* b, int64_t n, BinOp op) {
  switch (isa()) {
    case Isa::avx512: return binary_avx512(out, a, b, n, op);
    case Isa::avx2: return binary_avx2(out, a, b, n, op);
    default: return binary_scalar(out, a, b, n, op);
  }
}

void axpy(float* dst, const float* src, float alpha, int64_t n) {
  switch (isa()) {
    case Isa::avx512: return axpy_avx512(dst, src, alpha, n);
    case Isa::avx2: return axpy_avx2(dst, src, alpha, n);
    default: return axpy_scalar(dst, src, alpha, n);
  }
}

void scale(float* out, const float* a, float alpha, int64_t n) {
  switch (isa()) {
    case Isa::avx512: return scale_avx512(out, a, alpha, n);
    case Isa::avx2: return scale_avx2(out, a, alpha, n);
    default: return scale_scalar(out, a, alpha, n);
  }
}

void colsum(double* acc, const float* dout, int64_t rows, int64_t C) {
  switch (isa()) {
    case Isa::avx512: return colsum_avx512(acc, dout, rows, C);
    case Isa::avx2: return colsum_avx2(acc, dout, rows, C);
    default: return colsum_scalar(acc, dout, rows, C);
  }
}

// ---------------------------------------------------------------- N-API entry points

// add(out, a, b, n) / mul(out, a, b, n)
template <BinOp Op>
Napi::Value Binary(const Napi::CallbackInfo& info) {
  const char* op = Op == BinOp::add ? "add" : "mul";
  check_argc(info, 4, op);
  const int64_t n = arg_int(info, 3, op, "n");
  float* out = arg_f32(info, 0, n, op, "out");
  const float* a = arg_f32(info, 1, n, op, "a");
  const float* b = arg_f32(info, 2, n, op, "b");
  parallel_for(n, [&](int64_t s, int64_t e) { binary(out + s, a + s, b + s, e - s, Op); }, kGrain);
  return info.Env().Undefined();
}

// accumulate(dst, src, alpha, n): dst += alpha * src
Napi::Value Accumulate(const Napi::CallbackInfo& info) {
  const char* op = "accumulate";
  check_argc(info, 4, op);
  const int64_t n = arg_int(info, 3, op, "n");
  float* dst = arg_f32(info, 0, n, op, "dst");
  const float* src = arg_f32(info, 1, n, op, "src");
  const float alpha = static_cast<float>(arg_num(info, 2, op, "alpha"));
  parallel_for(n, [&](int64_t s, int64_t e) { axpy(dst + s, src + s, alpha, e - s); }, kGrain);
  return info.Env().Undefined();
}

// scale(out, a, alpha, n): out = alpha * a
Napi::Value Scale(const Napi::CallbackInfo& info) {
  const char* op = "scale";
  check_argc(info, 4, op);
  const int64_t n = arg_int(info, 3, op, "n");
  float* out = arg_f32(info, 0, n, op, "out");
  const float* a = arg_f32(info, 1, n, op, "a");
  const float alpha = static_cast<float>(arg_num(info, 2, op, "alpha"));
  parallel_for(n, [&](int64_t s, int64_t e) { scale(out + s, a + s, alpha, e - s); }, kGrain);
  return info.Env().Undefined();
}

// copy(dst, src, n)
Napi::Value Copy(const Napi::CallbackInfo& info) {
  const char* op = "copy";
  check_argc(info, 3, op);
  const int64_t n = arg_int(info, 2, op, "n");
  float* dst = arg_f32(info, 0, n, op, "dst");
  const float* src = arg_f32(info, 1, n, op, "src");
  if (dst == src) return info.Env().Undefined();
  // memmove keeps partially overlapping views correct on the serial path; threaded chunks of
  // overlapping views could race, so those stay serial.
  const bool overlap = dst < src + n && src < dst + n;
  if (overlap) {
    std::memmove(dst, src, static_cast<size_t>(n) * sizeof(float));
  } else {
    parallel_for(n, [&](int64_t s, int64_t e) {
      std::memcpy(dst + s, src + s, static_cast<size_t>(e - s) * sizeof(float));
    }, 4 * kGrain);
  }
  return info.Env().Undefined();
}

// fill(t, value, n)
Napi::Value Fill(const Napi::CallbackInfo& info) {
  const char* op = "fill";
  check_argc(info, 3, op);
  const int64_t n = arg_int(info, 2, op, "n");
  float* t = arg_f32(info, 0, n, op, "t");
  const float v = static_cast<float>(arg_num(info, 1, op, "value"));
  parallel_for(n, [&](int64_t s, int64_t e) { std::fill(t + s, t + e, v); }, 4 * kGrain);
  return info.Env().Undefined();
}

// addBias(out, bias, N, C): out[n, :] += bias   out: (N, C)  bias: (C)
Napi::Value AddBias(const Napi::CallbackInfo& info) {
  const char* op = "addBias";
  check_argc(info, 4, op);
  const int64_t N = arg_int(info, 2, op, "N"), C = arg_int(info, 3, op, "C");
  float* out = arg_f32(info, 0, N * C, op, "out");
  const float* bias = arg_f32(info, 1, C, op, "bias");
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(C, 1));
  parallel_for(N, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) binary(out + r * C, out + r * C, bias, C, BinOp::add);
  }, grain);
  return info.Env().Undefined();
}

// biasBackward(dbias, dout, N, C): dbias[c] += sum_n dout[n, c]   dbias: (C)  dout: (N, C)
// Rows are split into a fixed number of parts (from the size and thread count); each part sums
// its rows in f64, and the parts are added in order, so the result is deterministic.
Napi::Value BiasBackward(const Napi::CallbackInfo& info) {
  const char* op = "biasBackward";
  check_argc(info, 4, op);
  const int64_t N = arg_int(info, 2, op, "N"), C = arg_int(info, 3, op, "C");
  float* dbias = arg_f32(info, 0, C, op, "dbias");
  const float* dout = arg_f32(info, 1, N * C, op, "dout");
  if (C == 0) return info.Env().Undefined();
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>({num_threads(), N, N * C / (2 * kGrain)}));
  std::vector<double> acc(static_cast<size_t>(parts * C), 0.0);
  parallel_for(parts, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t r0 = N * p / parts, r1 = N * (p + 1) / parts;
      colsum(acc.data() + p * C, dout + r0 * C, r1 - r0, C);
    }
  }, 1);
  for (int64_t c = 0; c < C; ++c) {
    double s = 0;
    for (int64_t p = 0; p < parts; ++p) s += acc[static_cast<size_t>(p * C + c)];
    dbias[c] = static_cast<float>(static_cast<double>(dbias[c]) + s);
  }
  return info.Env().Undefined();
}

}  // namespace

EQAT_EXPORT(ewAdd, Binary<BinOp::add>);
EQAT_EXPORT(ewMul, Binary<BinOp::mul>);
EQAT_EXPORT(ewAccumulate, Accumulate);
EQAT_EXPORT(ewScale, Scale);
EQAT_EXPORT(ewCopy, Copy);
EQAT_EXPORT(ewFill, Fill);
EQAT_EXPORT(ewAddBias, AddBias);
EQAT_EXPORT(ewBiasBackward, BiasBackward);

}  // namespace eqat
