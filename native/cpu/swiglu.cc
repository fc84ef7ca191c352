// SwiGLU, the gated activation of the Llama MLP, forward and backward:
//   out = silu(gate) * up,   silu(g) = g / (1 + exp(-g)) = g * s,   s = sigmoid(g)
//   dgate += dout * up * s * (1 + g * (1 - s)),   dup += dout * silu(g)
// Memory-bound and elementwise: rows are split across threads; the vector paths evaluate exp
// with native/cpu/vexp.h (about 1 ulp; far outside its range sigmoid saturates to 0 or 1
// anyway). The scalar path and vector tails use std::exp.
// Twin: src/ops/ref/swiglu.ts; typed wrapper: src/ops/swiglu.ts.
#include "eqat.h"

// GCC 12 reports false "may be used uninitialized" warnings from inside the AVX-512 intrinsic
// headers (masked loads, reductions); they are silenced for those header lines only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <cmath>

#include "vexp.h"

#ifndef EQAT_AVX512
#define EQAT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#endif
#ifndef EQAT_AVX2
#define EQAT_AVX2 __attribute__((target("avx2,fma")))
#endif

// Gradients are computed, rounded, then added (a backward call adds exactly what it computed);
// stop GCC from contracting the scalar tails into FMAs (C++ defaults to -ffp-contract=fast).
#pragma GCC optimize("fp-contract=off")

namespace eqat {
namespace {

// ---------------------------------------------------------------- scalar element kernels

inline float silu_scalar(float g) { return g / (1.0f + std::exp(-g)); }

inline void grad_scalar(float d, float g, float u, float& dg, float& du) {
  float s = 1.0f / (1.0f + std::exp(-g));
  float silu = g * s;
  float gg = d * u * (s * (1.0f + g * (1.0f - s))), gu = d * silu;
  dg += gg;
  du += gu;
}

// ---------------------------------------------------------------- forward over [i0, i1)

void forward_scalar(float* out, const float* gate, const float* up, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) out[i] = silu_scalar(gate[i]) * up[i];
}

EQAT_AVX2 void forward_avx2(float* out, const float* gate, const float* up, int64_t i0, int64_t i1) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = i0;
  for (; i + 8 <= i1; i += 8) {
    __m256 g = _mm256_loadu_ps(gate + i);
    __m256 e = vexp::exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), g));
    __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
  }
  for (; i < i1; ++i) out[i] = silu_scalar(gate[i]) * up[i];
}

EQAT_AVX512 void forward_avx512(float* out, const float* gate, const float* up, int64_t i0, int64_t i1) {
  const __m512 one = _mm512_set1_ps(1.0f);
  int64_t i = i0;
  for (; i + 16 <= i1; i += 16) {
    __m512 g = _mm512_loadu_ps(gate + i);
    __m512 e = vexp::exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), g));
    __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, e));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(silu, _mm512_loadu_ps(up + i)));
  }
  if (i < i1) {
    __mmask16 m = static_cast<__mmask16>((1u << (i1 - i)) - 1u);
    __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    __m512 e = vexp::exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), g));
    __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, e));
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(m, up + i)));
  }
}

// ---------------------------------------------------------------- backward over [i0, i1)

void backward_scalar(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t i0,
                     int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) grad_scalar(dout[i], gate[i], up[i], dgate[i], dup[i]);
}

EQAT_AVX2 void backward_avx2(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                             int64_t i0, int64_t i1) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = i0;
  for (; i + 8 <= i1; i += 8) {
    __m256 g = _mm256_loadu_ps(gate + i), u = _mm256_loadu_ps(up + i), d = _mm256_loadu_ps(dout + i);
    __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, vexp::exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    __m256 silu = _mm256_mul_ps(g, s);
    __m256 dsilu = _mm256_mul_ps(s, _mm256_fmadd_ps(g, _mm256_sub_ps(one, s), one));
    __m256 gg = _mm256_mul_ps(_mm256_mul_ps(d, u), dsilu), gu = _mm256_mul_ps(d, silu);
    _mm256_storeu_ps(dgate + i, _mm256_add_ps(_mm256_loadu_ps(dgate + i), gg));
    _mm256_storeu_ps(dup + i, _mm256_add_ps(_mm256_loadu_ps(dup + i), gu));
  }
  for (; i < i1; ++i) grad_scalar(dout[i], gate[i], up[i], dgate[i], dup[i]);
}

EQAT_AVX512 void backward_avx512(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                                 int64_t i0, int64_t i1) {
  const __m512 one = _mm512_set1_ps(1.0f);
  int64_t i = i0;
  for (; i + 16 <= i1; i += 16) {
    __m512 g = _mm512_loadu_ps(gate + i), u = _mm512_loadu_ps(up + i), d = _mm512_loadu_ps(dout + i);
    __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, vexp::exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    __m512 silu = _mm512_mul_ps(g, s);
    __m512 dsilu = _mm512_mul_ps(s, _mm512_fmadd_ps(g, _mm512_sub_ps(one, s), one));
    __m512 gg = _mm512_mul_ps(_mm512_mul_ps(d, u), dsilu), gu = _mm512_mul_ps(d, silu);
    _mm512_storeu_ps(dgate + i, _mm512_add_ps(_mm512_loadu_ps(dgate + i), gg));
    _mm512_storeu_ps(dup + i, _mm512_add_ps(_mm512_loadu_ps(dup + i), gu));
  }
  if (i < i1) {
    __mmask16 m = static_cast<__mmask16>((1u << (i1 - i)) - 1u);
    __m512 g = _mm512_maskz_loadu_ps(m, gate + i), u = _mm512_maskz_loadu_ps(m, up + i);
    __m512 d = _mm512_maskz_loadu_ps(m, dout + i);
    __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, vexp::exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    __m512 silu = _mm512_mul_ps(g, s);
    __m512 dsilu = _mm512_mul_ps(s, _mm512_fmadd_ps(g, _mm512_sub_ps(one, s), one));
    __m512 gg = _mm512_mul_ps(_mm512_mul_ps(d, u), dsilu), gu = _mm512_mul_ps(d, silu);
    _mm512_mask_storeu_ps(dgate + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dgate + i), gg));
    _mm512_mask_storeu_ps(dup + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dup + i), gu));
  }
}

// The op is elementwise, so the (N, F) buffers are processed as one flat range; chunks of at
// least 16K elements keep small calls on one thread.
constexpr int64_t kGrain = 16384;

// swigluForward(out, gate, up, n)
Napi::Value SwigluForward(const Napi::CallbackInfo& info) {
  const char* op = "swigluForward";
  check_argc(info, 4, op);
  int64_t n = arg_int(info, 3, op, "n");
  if (n < 0) throw Napi::RangeError::New(info.Env(), std::string(op) + ": n must be >= 0");
  float* out = arg_f32(info, 0, n, op, "out");
  const float* gate = arg_f32(info, 1, n, op, "gate");
  const float* up = arg_f32(info, 2, n, op, "up");
  auto fn = cpu_has_avx512() ? forward_avx512 : cpu_has_avx2() ? forward_avx2 : forward_scalar;
  parallel_for(n, [&](int64_t i0, int64_t i1) { fn(out, gate, up, i0, i1); }, kGrain);
  return info.Env().Undefined();
}

// swigluBackward(dgate, dup, dout, gate, up, n)
Napi::Value SwigluBackward(const Napi::CallbackInfo& info) {
  const char* op = "swigluBackward";
  check_argc(info, 6, op);
  int64_t n = arg_int(info, 5, op, "n");
  if (n < 0) throw Napi::RangeError::New(info.Env(), std::string(op) + ": n must be >= 0");
  float* dgate = arg_f32(info, 0, n, op, "dgate");
  float* dup = arg_f32(info, 1, n, op, "dup");
  const float* dout = arg_f32(info, 2, n, op, "dout");
  const float* gate = arg_f32(info, 3, n, op, "gate");
  const float* up = arg_f32(info, 4, n, op, "up");
  auto fn = cpu_has_avx512() ? backward_avx512 : cpu_has_avx2() ? backward_avx2 : backward_scalar;
  parallel_for(n, [&](int64_t i0, int64_t i1) { fn(dgate, dup, dout, gate, up, i0, i1); }, kGrain);
  return info.Env().Undefined();
}

}  // namespace

EQAT_EXPORT(swigluForward, SwigluForward);
EQAT_EXPORT(swigluBackward, SwigluBackward);

}  // namespace eqat
