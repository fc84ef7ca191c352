// The AdamW optimiser step as one fused pass over a parameter tensor, its gradient and its two
// moment buffers (read 4 streams, write 3), used for every parameter group of Block-AP and
// E2E-QP at every step.
//
// Arithmetic follows torch.optim.AdamW (single-tensor path) operation for operation, in f32:
//   p = p * (1 - lr*wd)                                      (decoupled weight decay)
//   m = lerp(m, g, 1 - beta1)                                (fma(w, g - m, m) for w < 0.5,
//                                                             fma(w - 1, g - m, g) otherwise)
//   v = v * beta2 + ((1 - beta2) * g) * g
//   denom = sqrt(v) / sqrt(1 - beta2^step) + eps
//   p = p + ((-lr / (1 - beta1^step)) * m) / denom
// The scalar coefficients are computed in f64 and rounded to f32 once, as torch does with its
// Python-float hyperparameters. The vector paths use a fused multiply-add in the lerp exactly
// where torch's vectorised lerp does; the scalar fallback (machines without AVX2) forms that
// fused multiply-add in f64 instead, like the twin. Twin: src/ops/ref/adamw.ts.
#include "eqat.h"

// GCC 12's AVX-512 headers trip false -W(maybe-)uninitialized warnings (their
// _mm512_undefined_* helpers).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <cmath>

#define EQAT_AVX2 __attribute__((target("avx2,fma")))
#define EQAT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

namespace eqat {
namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per thread below which the step stays serial

enum class Isa { scalar, avx2, avx512 };
Isa isa() { return cpu_has_avx512() ? Isa::avx512 : cpu_has_avx2() ? Isa::avx2 : Isa::scalar; }

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

// The per-step scalars, each rounded to f32 once.
struct Coefs {
  float decay;      // 1 - lr*wd
  float w1;         // lerp weight 1 - beta1
  bool w1_small;    // |w1| < 0.5 picks lerp's first form
  float beta2;      // v decay
  float w2;         // 1 - beta2
  float bc2_sqrt;   // sqrt(1 - beta2^step)
  float eps;
  float neg_step;   // -lr / (1 - beta1^step)
};

// ---------------------------------------------------------------- scalar path

void step_scalar(float* p, const float* g, float* m, float* v, int64_t n, const Coefs& c) {
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    float pi = p[i] * c.decay;
    const float diff = gi - m[i];
    // lerp's fused multiply-add, formed in f64 (the f32 product is exact there) and rounded once
    const float mi = c.w1_small ? static_cast<float>(static_cast<double>(c.w1) * diff + m[i])
                                : static_cast<float>(static_cast<double>(c.w1 - 1.0f) * diff + gi);
    const float vi = v[i] * c.beta2 + c.w2 * gi * gi;
    const float denom = std::sqrt(vi) / c.bc2_sqrt + c.eps;
    pi = pi + c.neg_step * mi / denom;
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

// ---------------------------------------------------------------- AVX2 path

struct Avx2Coefs {
  __m256 decay, coeff, beta2, w2, bc2_sqrt, eps, neg_step;
};

EQAT_AVX2 inline void step8_avx2(float* p, const float* g, float* m, float* v, const Avx2Coefs& c, bool w1_small,
                                 __m256i mask, bool masked) {
  __m256 gi = masked ? _mm256_maskload_ps(g, mask) : _mm256_loadu_ps(g);
  __m256 pi = masked ? _mm256_maskload_ps(p, mask) : _mm256_loadu_ps(p);
  __m256 mi = masked ? _mm256_maskload_ps(m, mask) : _mm256_loadu_ps(m);
  __m256 vi = masked ? _mm256_maskload_ps(v, mask) : _mm256_loadu_ps(v);
  pi = opaque_avx2(_mm256_mul_ps(pi, c.decay));
  mi = _mm256_fmadd_ps(c.coeff, _mm256_sub_ps(gi, mi), w1_small ? mi : gi);
  vi = _mm256_add_ps(opaque_avx2(_mm256_mul_ps(vi, c.beta2)), opaque_avx2(_mm256_mul_ps(_mm256_mul_ps(c.w2, gi), gi)));
  __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), c.bc2_sqrt), c.eps);
  pi = _mm256_add_ps(pi, _mm256_div_ps(_mm256_mul_ps(c.neg_step, mi), denom));
  if (masked) {
    _mm256_maskstore_ps(p, mask, pi);
    _mm256_maskstore_ps(m, mask, mi);
    _mm256_maskstore_ps(v, mask, vi);
  } else {
    _mm256_storeu_ps(p, pi);
    _mm256_storeu_ps(m, mi);
    _mm256_storeu_ps(v, vi);
  }
}

alignas(32) const int32_t kLaneMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

EQAT_AVX2 void step_avx2(float* p, const float* g, float* m, float* v, int64_t n, const Coefs& s) {
  const Avx2Coefs c{_mm256_set1_ps(s.decay), _mm256_set1_ps(s.w1_small ? s.w1 : s.w1 - 1.0f), _mm256_set1_ps(s.beta2),
                    _mm256_set1_ps(s.w2),    _mm256_set1_ps(s.bc2_sqrt), _mm256_set1_ps(s.eps),
                    _mm256_set1_ps(s.neg_step)};
  const __m256i all = _mm256_set1_epi32(-1);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) step8_avx2(p + i, g + i, m + i, v + i, c, s.w1_small, all, false);
  if (i < n) {
    const __m256i mask = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask + 8 - (n - i)));
    step8_avx2(p + i, g + i, m + i, v + i, c, s.w1_small, mask, true);
  }
}

// ---------------------------------------------------------------- AVX-512 path

EQAT_AVX512 void step_avx512(float* p, const float* g, float* m, float* v, int64_t n, const Coefs& s) {
  const __m512 decay = _mm512_set1_ps(s.decay), coeff = _mm512_set1_ps(s.w1_small ? s.w1 : s.w1 - 1.0f);
  const __m512 beta2 = _mm512_set1_ps(s.beta2), w2 = _mm512_set1_ps(s.w2), bc2 = _mm512_set1_ps(s.bc2_sqrt);
  const __m512 eps = _mm512_set1_ps(s.eps), neg_step = _mm512_set1_ps(s.neg_step);
  // Absent tail lanes load as 0 and are never stored; 0/0 there is harmless.
  for (int64_t i = 0; i < n; i += 16) {
    const int64_t w = n - i < 16 ? n - i : 16;
    const __mmask16 k = static_cast<__mmask16>((1u << w) - 1);
    __m512 gi = _mm512_maskz_loadu_ps(k, g + i), pi = _mm512_maskz_loadu_ps(k, p + i);
    __m512 mi = _mm512_maskz_loadu_ps(k, m + i), vi = _mm512_maskz_loadu_ps(k, v + i);
    pi = opaque_avx512(_mm512_mul_ps(pi, decay));
    mi = _mm512_fmadd_ps(coeff, _mm512_sub_ps(gi, mi), s.w1_small ? mi : gi);
    vi = _mm512_add_ps(opaque_avx512(_mm512_mul_ps(vi, beta2)), opaque_avx512(_mm512_mul_ps(_mm512_mul_ps(w2, gi), gi)));
    __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), bc2), eps);
    pi = _mm512_add_ps(pi, _mm512_div_ps(_mm512_mul_ps(neg_step, mi), denom));
    _mm512_mask_storeu_ps(p + i, k, pi);
    _mm512_mask_storeu_ps(m + i, k, mi);
    _mm512_mask_storeu_ps(v + i, k, vi);
  }
}

void step(float* p, const float* g, float* m, float* v, int64_t n, const Coefs& c) {
  switch (isa()) {
    case Isa::avx512: return step_avx512(p, g, m, v, n, c);
    case Isa::avx2: return step_avx2(p, g, m, v, n, c);
    default: return step_scalar(p, g, m, v, n, c);
  }
}

// adamwStep(param, grad, m, v, n, lr, beta1, beta2, eps, weightDecay, step)
Napi::Value AdamwStep(const Napi::CallbackInfo& info) {
  const char* op = "adamwStep";
  check_argc(info, 11, op);
  const int64_t n = arg_int(info, 4, op, "n");
  float* p = arg_f32(info, 0, n, op, "param");
  const float* g = arg_f32(info, 1, n, op, "grad");
  float* m = arg_f32(info, 2, n, op, "m");
  float* v = arg_f32(info, 3, n, op, "v");
  const double lr = arg_num(info, 5, op, "lr"), beta1 = arg_num(info, 6, op, "beta1");
  const double beta2 = arg_num(info, 7, op, "beta2"), eps = arg_num(info, 8, op, "eps");
  const double wd = arg_num(info, 9, op, "weightDecay");
  const int64_t t = arg_int(info, 10, op, "step");
  if (t < 1) throw Napi::RangeError::New(info.Env(), "adamwStep: argument 'step' must be >= 1");
  const double w1 = 1.0 - beta1;
  Coefs c;
  c.decay = static_cast<float>(1.0 - lr * wd);
  c.w1 = static_cast<float>(w1);
  c.w1_small = std::fabs(c.w1) < 0.5f;
  c.beta2 = static_cast<float>(beta2);
  c.w2 = static_cast<float>(1.0 - beta2);
  c.bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, static_cast<double>(t))));
  c.eps = static_cast<float>(eps);
  c.neg_step = static_cast<float>(-(lr / (1.0 - std::pow(beta1, static_cast<double>(t)))));
  parallel_for(n, [&](int64_t s, int64_t e) { step(p + s, g + s, m + s, v + s, e - s, c); }, kGrain);
  return info.Env().Undefined();
}

}  // namespace

EQAT_EXPORT(adamwStep, AdamwStep);

}  // namespace eqat
