// Softmax cross-entropy over the vocabulary: the loss of end-to-end training (E2E-QP) and of
// evaluation (perplexity). Rows of logits are up to 128k wide and there are up to a few
// thousand of them, so this is one of the heaviest memory streams of a training step.
//
// Threads split the rows; the vectorised exp dominates the cost, so each element's exp is
// computed once per op.
// Forward: one streaming pass per row computes the max and the sum of exp(x - max) together:
// the row is read in L1-sized blocks; each block's max is found, the running sum is rescaled
// when the max grows, and the block's exponentials are added in f64 while the block is still
// in L1. The loss is max + log(sum) - x[target].
// Backward: a max pass, a pass that writes e = exp(x - max) to dlogits and sums it in f64, and a
// pass that scales dlogits by scale / sum; then scale is subtracted at the target. Each pass
// reads an element before writing the same index, so dlogits may be logits.
// crossEntropyForwardBackward is the backward scheme with the loss taken from its max and sum
// (the target logit is read before the row is overwritten).
// A target of -100 (the ignore index) gives loss 0 and a zero gradient row.
// Twin: src/ops/ref/crossentropy.ts.
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
#include <limits>
#include <string>

#include "vexp.h"

#define EQAT_AVX2 __attribute__((target("avx2,fma")))
#define EQAT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

namespace eqat {
namespace {

constexpr int32_t kIgnoreIndex = -100;
constexpr int64_t kBlock = 2048;        // floats per block: 8 KiB, stays in L1 between passes
constexpr int64_t kRowGrain = 1 << 15;  // elements per thread below which rows stay serial
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

enum class Isa { scalar, avx2, avx512 };
Isa isa() { return cpu_has_avx512() ? Isa::avx512 : cpu_has_avx2() ? Isa::avx2 : Isa::scalar; }

// Loss of one row from its max, sum of exp(x - max) and target logit.
inline float row_loss(float max, double sum, float target_logit) {
  return static_cast<float>((static_cast<double>(max) - static_cast<double>(target_logit)) + std::log(sum));
}

// Folds a new block maximum into the running (max, sum) pair; returns the max to subtract.
inline void rescale(float& run_max, double& sum, float block_max) {
  if (block_max > run_max) {
    if (sum != 0.0) sum *= std::exp(static_cast<double>(run_max) - static_cast<double>(block_max));
    run_max = block_max;
  }
}

// ---------------------------------------------------------------- scalar path

void row_stats_scalar(const float* x, int64_t V, float& max_out, double& sum_out) {
  float run_max = kNegInf;
  double sum = 0.0;
  for (int64_t b = 0; b < V; b += kBlock) {
    const int64_t e = std::min(V, b + kBlock);
    float m = kNegInf;
    for (int64_t i = b; i < e; ++i) m = std::max(m, x[i]);
    rescale(run_max, sum, m);
    for (int64_t i = b; i < e; ++i) sum += std::exp(static_cast<double>(x[i] - run_max));
  }
  max_out = run_max;
  sum_out = sum;
}

float row_max_scalar(const float* x, int64_t V) {
  float m = kNegInf;
  for (int64_t i = 0; i < V; ++i) m = std::max(m, x[i]);
  return m;
}

// d[i] = exp(x[i] - max); returns the f64 sum of the stored values.
double row_exp_scalar(float* d, const float* x, int64_t V, float max) {
  double sum = 0.0;
  for (int64_t i = 0; i < V; ++i) {
    const float e = static_cast<float>(std::exp(static_cast<double>(x[i] - max)));
    d[i] = e;
    sum += e;
  }
  return sum;
}

void row_scale_scalar(float* d, int64_t V, float coef) {
  for (int64_t i = 0; i < V; ++i) d[i] = d[i] * coef;
}

// ---------------------------------------------------------------- AVX2 path


// Lanes [0, w) of the mask table row start at kLaneMask + 8 - w.
alignas(32) const int32_t kLaneMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

EQAT_AVX2 inline __m256 load_tail_avx2(const float* p, int64_t w, __m256 fill) {
  const __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask + 8 - w));
  return _mm256_blendv_ps(fill, _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
}

EQAT_AVX2 inline float hmax_avx2(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

EQAT_AVX2 void row_stats_avx2(const float* x, int64_t V, float& max_out, double& sum_out) {
  const __m256 ninf = _mm256_set1_ps(kNegInf);
  float run_max = kNegInf;
  double sum = 0.0;
  for (int64_t b = 0; b < V; b += kBlock) {
    const int64_t e = std::min(V, b + kBlock);
    __m256 m0 = ninf, m1 = ninf;
    int64_t i = b;
    for (; i + 16 <= e; i += 16) {
      m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
      m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + i + 8));
    }
    for (; i < e; i += 8) m0 = _mm256_max_ps(m0, load_tail_avx2(x + i, std::min<int64_t>(8, e - i), ninf));
    rescale(run_max, sum, hmax_avx2(_mm256_max_ps(m0, m1)));
    const __m256 vmax = _mm256_set1_ps(run_max);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (i = b; i + 8 <= e; i += 8) {
      __m256 p = vexp::exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));
      s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
      s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1)));
    }
    if (i < e) {  // absent lanes are -inf, whose exp is 0
      __m256 p = vexp::exp_avx2(_mm256_sub_ps(load_tail_avx2(x + i, e - i, ninf), vmax));
      s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
      s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1)));
    }
    alignas(32) double lanes[4];
    _mm256_store_pd(lanes, _mm256_add_pd(s0, s1));
    sum += (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  }
  max_out = run_max;
  sum_out = sum;
}

EQAT_AVX2 float row_max_avx2(const float* x, int64_t V) {
  const __m256 ninf = _mm256_set1_ps(kNegInf);
  __m256 m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
  int64_t i = 0;
  for (; i + 32 <= V; i += 32) {
    m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
    m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + i + 8));
    m2 = _mm256_max_ps(m2, _mm256_loadu_ps(x + i + 16));
    m3 = _mm256_max_ps(m3, _mm256_loadu_ps(x + i + 24));
  }
  for (; i < V; i += 8) m0 = _mm256_max_ps(m0, load_tail_avx2(x + i, std::min<int64_t>(8, V - i), ninf));
  return hmax_avx2(_mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
}

EQAT_AVX2 double row_exp_avx2(float* d, const float* x, int64_t V, float max) {
  const __m256 vmax = _mm256_set1_ps(max);
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) {
    __m256 p = vexp::exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));
    _mm256_storeu_ps(d + i, p);
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1)));
  }
  if (i < V) {  // absent lanes are -inf, whose exp is 0
    const __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask + 8 - (V - i)));
    __m256 p = vexp::exp_avx2(_mm256_sub_ps(load_tail_avx2(x + i, V - i, _mm256_set1_ps(kNegInf)), vmax));
    _mm256_maskstore_ps(d + i, m, p);
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(s0, s1));
  return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}

EQAT_AVX2 void row_scale_avx2(float* d, int64_t V, float coef) {
  const __m256 vc = _mm256_set1_ps(coef);
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) _mm256_storeu_ps(d + i, _mm256_mul_ps(_mm256_loadu_ps(d + i), vc));
  if (i < V) {
    const __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask + 8 - (V - i)));
    _mm256_maskstore_ps(d + i, m, _mm256_mul_ps(_mm256_maskload_ps(d + i, m), vc));
  }
}

// ---------------------------------------------------------------- AVX-512 path


EQAT_AVX512 inline __mmask16 tail_mask(int64_t w) { return static_cast<__mmask16>((1u << w) - 1); }

EQAT_AVX512 inline float hmax_avx512(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float m = lanes[0];
  for (int i = 1; i < 16; ++i) m = std::max(m, lanes[i]);
  return m;
}

EQAT_AVX512 void row_stats_avx512(const float* x, int64_t V, float& max_out, double& sum_out) {
  const __m512 ninf = _mm512_set1_ps(kNegInf);
  float run_max = kNegInf;
  double sum = 0.0;
  for (int64_t b = 0; b < V; b += kBlock) {
    const int64_t e = std::min(V, b + kBlock);
    __m512 m0 = ninf, m1 = ninf;
    int64_t i = b;
    for (; i + 32 <= e; i += 32) {
      m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + i));
      m1 = _mm512_max_ps(m1, _mm512_loadu_ps(x + i + 16));
    }
    for (; i < e; i += 16) m0 = _mm512_max_ps(m0, _mm512_mask_loadu_ps(ninf, tail_mask(std::min<int64_t>(16, e - i)), x + i));
    rescale(run_max, sum, hmax_avx512(_mm512_max_ps(m0, m1)));
    const __m512 vmax = _mm512_set1_ps(run_max);
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (i = b; i < e; i += 16) {
      __m512 v = _mm512_mask_loadu_ps(ninf, tail_mask(std::min<int64_t>(16, e - i)), x + i);
      __m512 p = vexp::exp_avx512(_mm512_sub_ps(v, vmax));
      s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(p)));
      s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(p, 1)));
    }
    alignas(64) double lanes[8];
    _mm512_store_pd(lanes, _mm512_add_pd(s0, s1));
    sum += ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  }
  max_out = run_max;
  sum_out = sum;
}

EQAT_AVX512 float row_max_avx512(const float* x, int64_t V) {
  const __m512 ninf = _mm512_set1_ps(kNegInf);
  __m512 m0 = ninf, m1 = ninf;
  int64_t i = 0;
  for (; i + 32 <= V; i += 32) {
    m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + i));
    m1 = _mm512_max_ps(m1, _mm512_loadu_ps(x + i + 16));
  }
  for (; i < V; i += 16) m0 = _mm512_max_ps(m0, _mm512_mask_loadu_ps(ninf, tail_mask(std::min<int64_t>(16, V - i)), x + i));
  return hmax_avx512(_mm512_max_ps(m0, m1));
}

EQAT_AVX512 double row_exp_avx512(float* d, const float* x, int64_t V, float max) {
  const __m512 vmax = _mm512_set1_ps(max), ninf = _mm512_set1_ps(kNegInf);
  __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
  for (int64_t i = 0; i < V; i += 16) {  // absent tail lanes are -inf, whose exp is 0
    const __mmask16 m = tail_mask(std::min<int64_t>(16, V - i));
    __m512 p = vexp::exp_avx512(_mm512_sub_ps(_mm512_mask_loadu_ps(ninf, m, x + i), vmax));
    _mm512_mask_storeu_ps(d + i, m, p);
    s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(p)));
    s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(p, 1)));
  }
  alignas(64) double lanes[8];
  _mm512_store_pd(lanes, _mm512_add_pd(s0, s1));
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

EQAT_AVX512 void row_scale_avx512(float* d, int64_t V, float coef) {
  const __m512 vc = _mm512_set1_ps(coef);
  for (int64_t i = 0; i < V; i += 16) {
    const __mmask16 m = tail_mask(std::min<int64_t>(16, V - i));
    _mm512_mask_storeu_ps(d + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, d + i), vc));
  }
}

// ---------------------------------------------------------------- dispatch

void row_stats(const float* x, int64_t V, float& max, double& sum) {
  switch (isa()) {
    case Isa::avx512: return row_stats_avx512(x, V, max, sum);
    case Isa::avx2: return row_stats_avx2(x, V, max, sum);
    default: return row_stats_scalar(x, V, max, sum);
  }
}

float row_max(const float* x, int64_t V) {
  switch (isa()) {
    case Isa::avx512: return row_max_avx512(x, V);
    case Isa::avx2: return row_max_avx2(x, V);
    default: return row_max_scalar(x, V);
  }
}

double row_exp(float* d, const float* x, int64_t V, float max) {
  switch (isa()) {
    case Isa::avx512: return row_exp_avx512(d, x, V, max);
    case Isa::avx2: return row_exp_avx2(d, x, V, max);
    default: return row_exp_scalar(d, x, V, max);
  }
}

void row_scale(float* d, int64_t V, float coef) {
  switch (isa()) {
    case Isa::avx512: return row_scale_avx512(d, V, coef);
    case Isa::avx2: return row_scale_avx2(d, V, coef);
    default: return row_scale_scalar(d, V, coef);
  }
}

// dlogits row = scale * (softmax(x) - onehot(t)); returns the row's loss. d may be x.
float row_backward(float* d, const float* x, int64_t V, int32_t t, double scale) {
  const float max = row_max(x, V);
  const float xt = x[t];  // read before the row is overwritten when d == x
  const double sum = row_exp(d, x, V, max);
  row_scale(d, V, static_cast<float>(scale / sum));
  d[t] = d[t] - static_cast<float>(scale);
  return row_loss(max, sum, xt);
}

// Throws a RangeError naming the first row whose target is neither the ignore index nor a
// class index, before any output is written.
void check_targets(const Napi::CallbackInfo& info, const char* op, const int32_t* targets, int64_t N, int64_t V) {
  for (int64_t r = 0; r < N; ++r) {
    const int32_t t = targets[r];
    if (t == kIgnoreIndex || (t >= 0 && t < V)) continue;
    throw Napi::RangeError::New(info.Env(), std::string(op) + ": argument 'targets': row " + std::to_string(r) +
                                                " has target " + std::to_string(t) + ", outside [0, " + std::to_string(V) +
                                                ") and not the ignore index -100");
  }
}

int64_t row_grain(int64_t V) { return std::max<int64_t>(1, kRowGrain / std::max<int64_t>(V, 1)); }

// ---------------------------------------------------------------- N-API entry points

// crossEntropyForward(losses, logits, targets, N, V)   losses: (N)  logits: (N, V)  targets: (N) i32
Napi::Value Forward(const Napi::CallbackInfo& info) {
  const char* op = "crossEntropyForward";
  check_argc(info, 5, op);
  const int64_t N = arg_int(info, 3, op, "N"), V = arg_int(info, 4, op, "V");
  float* losses = arg_f32(info, 0, N, op, "losses");
  const float* logits = arg_f32(info, 1, N * V, op, "logits");
  const int32_t* targets = arg_i32(info, 2, N, op, "targets");
  check_targets(info, op, targets, N, V);
  parallel_for(N, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int32_t t = targets[r];
      if (t == kIgnoreIndex) {
        losses[r] = 0.0f;
        continue;
      }
      const float* x = logits + r * V;
      float max;
      double sum;
      row_stats(x, V, max, sum);
      losses[r] = row_loss(max, sum, x[t]);
    }
  }, row_grain(V));
  return info.Env().Undefined();
}

// crossEntropyBackward(dlogits, logits, targets, N, V, scale): dlogits = scale * (softmax - onehot)
// (overwrites; dlogits may be logits)
Napi::Value Backward(const Napi::CallbackInfo& info) {
  const char* op = "crossEntropyBackward";
  check_argc(info, 6, op);
  const int64_t N = arg_int(info, 3, op, "N"), V = arg_int(info, 4, op, "V");
  float* dlogits = arg_f32(info, 0, N * V, op, "dlogits");
  const float* logits = arg_f32(info, 1, N * V, op, "logits");
  const int32_t* targets = arg_i32(info, 2, N, op, "targets");
  const double scale = arg_num(info, 5, op, "scale");
  check_targets(info, op, targets, N, V);
  parallel_for(N, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int32_t t = targets[r];
      float* d = dlogits + r * V;
      if (t == kIgnoreIndex) {
        std::fill(d, d + V, 0.0f);
        continue;
      }
      row_backward(d, logits + r * V, V, t, scale);
    }
  }, row_grain(V));
  return info.Env().Undefined();
}

// crossEntropyForwardBackward(losses, dlogits, logits, targets, N, V, scale): both of the above
// with one statistics pass per row instead of two (dlogits may be logits)
Napi::Value ForwardBackward(const Napi::CallbackInfo& info) {
  const char* op = "crossEntropyForwardBackward";
  check_argc(info, 7, op);
  const int64_t N = arg_int(info, 4, op, "N"), V = arg_int(info, 5, op, "V");
  float* losses = arg_f32(info, 0, N, op, "losses");
  float* dlogits = arg_f32(info, 1, N * V, op, "dlogits");
  const float* logits = arg_f32(info, 2, N * V, op, "logits");
  const int32_t* targets = arg_i32(info, 3, N, op, "targets");
  const double scale = arg_num(info, 6, op, "scale");
  check_targets(info, op, targets, N, V);
  parallel_for(N, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int32_t t = targets[r];
      float* d = dlogits + r * V;
      if (t == kIgnoreIndex) {
        losses[r] = 0.0f;
        std::fill(d, d + V, 0.0f);
        continue;
      }
      losses[r] = row_backward(d, logits + r * V, V, t, scale);
    }
  }, row_grain(V));
  return info.Env().Undefined();
}

}  // namespace

EQAT_EXPORT(crossEntropyForward, Forward);
EQAT_EXPORT(crossEntropyBackward, Backward);
EQAT_EXPORT(crossEntropyForwardBackward, ForwardBackward);

}  // namespace eqat
