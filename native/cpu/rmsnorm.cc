// RMSNorm forward and backward (Hugging Face LlamaRMSNorm, computed in f32):
//   rstd[n] = 1 / sqrt(mean_c(x[n,c]^2) + eps),   out[n,c] = weight[c] * (x[n,c] * rstd[n]).
// Used for the two norms of every decoder block, the final norm, and (with x viewed as
// (N*H, D)) the per-head q/k norms of Qwen3. Memory-bound: rows are split across threads and
// each row is processed with AVX-512 / AVX2 / scalar code chosen at run time.
// Twin: src/ops/ref/rmsnorm.ts; typed wrapper: src/ops/rmsnorm.ts.
#include "eqat.h"

// GCC 12 reports false "may be used uninitialized" warnings from inside the AVX-512 intrinsic
// headers (masked loads, reductions); they are silenced for those header lines only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <cmath>
#include <vector>

namespace eqat {
namespace {

#ifndef EQAT_AVX512
#define EQAT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#endif
#ifndef EQAT_AVX2
#define EQAT_AVX2 __attribute__((target("avx2,fma")))
#endif

// Rows per thread chunk: at least ~16K elements so that small inputs stay on one thread.
int64_t row_grain(int64_t C) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, C)); }

// ---------------------------------------------------------------- forward

// Per-row reciprocal RMS from the sum of squares, in f32 as torch computes it.
inline float rstd_from_sumsq(float sumsq, int64_t C, float eps) {
  float var = sumsq / static_cast<float>(C);
  return 1.0f / std::sqrt(var + eps);
}

void forward_rows_scalar(float* out, float* rstd, const float* x, const float* w, int64_t C, float eps, int64_t r0,
                         int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    float* orow = out + r * C;
    float ss = 0.0f;
    for (int64_t c = 0; c < C; ++c) ss += xr[c] * xr[c];
    float rs = rstd_from_sumsq(ss, C, eps);
    rstd[r] = rs;
    for (int64_t c = 0; c < C; ++c) orow[c] = w[c] * (xr[c] * rs);
  }
}

EQAT_AVX2 void forward_rows_avx2(float* out, float* rstd, const float* x, const float* w, int64_t C, float eps,
                                 int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    float* orow = out + r * C;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 16 <= C; c += 16) {
      __m256 v0 = _mm256_loadu_ps(xr + c), v1 = _mm256_loadu_ps(xr + c + 8);
      a0 = _mm256_fmadd_ps(v0, v0, a0);
      a1 = _mm256_fmadd_ps(v1, v1, a1);
    }
    for (; c + 8 <= C; c += 8) {
      __m256 v = _mm256_loadu_ps(xr + c);
      a0 = _mm256_fmadd_ps(v, v, a0);
    }
    __m256 a = _mm256_add_ps(a0, a1);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    float ss = _mm_cvtss_f32(s4);
    for (; c < C; ++c) ss += xr[c] * xr[c];
    float rs = rstd_from_sumsq(ss, C, eps);
    rstd[r] = rs;
    __m256 vr = _mm256_set1_ps(rs);
    c = 0;
    for (; c + 8 <= C; c += 8) {
      __m256 xh = _mm256_mul_ps(_mm256_loadu_ps(xr + c), vr);
      _mm256_storeu_ps(orow + c, _mm256_mul_ps(_mm256_loadu_ps(w + c), xh));
    }
    for (; c < C; ++c) orow[c] = w[c] * (xr[c] * rs);
  }
}

EQAT_AVX512 void forward_rows_avx512(float* out, float* rstd, const float* x, const float* w, int64_t C, float eps,
                                     int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    float* orow = out + r * C;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 32 <= C; c += 32) {
      __m512 v0 = _mm512_loadu_ps(xr + c), v1 = _mm512_loadu_ps(xr + c + 16);
      a0 = _mm512_fmadd_ps(v0, v0, a0);
      a1 = _mm512_fmadd_ps(v1, v1, a1);
    }
    for (; c + 16 <= C; c += 16) {
      __m512 v = _mm512_loadu_ps(xr + c);
      a0 = _mm512_fmadd_ps(v, v, a0);
    }
    if (c < C) {
      __mmask16 m = static_cast<__mmask16>((1u << (C - c)) - 1u);
      __m512 v = _mm512_maskz_loadu_ps(m, xr + c);
      a1 = _mm512_fmadd_ps(v, v, a1);
    }
    float rs = rstd_from_sumsq(_mm512_reduce_add_ps(_mm512_add_ps(a0, a1)), C, eps);
    rstd[r] = rs;
    __m512 vr = _mm512_set1_ps(rs);
    c = 0;
    for (; c + 16 <= C; c += 16) {
      __m512 xh = _mm512_mul_ps(_mm512_loadu_ps(xr + c), vr);
      _mm512_storeu_ps(orow + c, _mm512_mul_ps(_mm512_loadu_ps(w + c), xh));
    }
    if (c < C) {
      __mmask16 m = static_cast<__mmask16>((1u << (C - c)) - 1u);
      __m512 xh = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + c), vr);
      _mm512_mask_storeu_ps(orow + c, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, w + c), xh));
    }
  }
}

// ---------------------------------------------------------------- backward
// With g = dout * w and xhat = x * rstd:
//   dx[c] += rstd * g[c] - xhat[c] * (rstd / C) * sum_c'(g[c'] * xhat[c'])
//   dw[c] += dout[c] * xhat[c]                         (summed over rows into dwacc)

void backward_rows_scalar(float* dx, float* dwacc, const float* dout, const float* x, const float* w,
                          const float* rstd, int64_t C, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    const float* dr = dout + r * C;
    float* dxr = dx + r * C;
    float rs = rstd[r];
    float dot = 0.0f;
    for (int64_t c = 0; c < C; ++c) dot += dr[c] * w[c] * (xr[c] * rs);
    float k = dot * rs / static_cast<float>(C);
    for (int64_t c = 0; c < C; ++c) {
      float xh = xr[c] * rs;
      dxr[c] += rs * (dr[c] * w[c]) - xh * k;
      dwacc[c] += dr[c] * xh;
    }
  }
}

EQAT_AVX2 void backward_rows_avx2(float* dx, float* dwacc, const float* dout, const float* x, const float* w,
                                  const float* rstd, int64_t C, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    const float* dr = dout + r * C;
    float* dxr = dx + r * C;
    float rs = rstd[r];
    __m256 vr = _mm256_set1_ps(rs);
    __m256 a0 = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) {
      __m256 g = _mm256_mul_ps(_mm256_loadu_ps(dr + c), _mm256_loadu_ps(w + c));
      __m256 xh = _mm256_mul_ps(_mm256_loadu_ps(xr + c), vr);
      a0 = _mm256_fmadd_ps(g, xh, a0);
    }
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    float dot = _mm_cvtss_f32(s4);
    for (; c < C; ++c) dot += dr[c] * w[c] * (xr[c] * rs);
    float k = dot * rs / static_cast<float>(C);
    __m256 vk = _mm256_set1_ps(k);
    c = 0;
    for (; c + 8 <= C; c += 8) {
      __m256 d = _mm256_loadu_ps(dr + c);
      __m256 xh = _mm256_mul_ps(_mm256_loadu_ps(xr + c), vr);
      __m256 g = _mm256_mul_ps(d, _mm256_loadu_ps(w + c));
      __m256 v = _mm256_fnmadd_ps(xh, vk, _mm256_mul_ps(vr, g));
      _mm256_storeu_ps(dxr + c, _mm256_add_ps(_mm256_loadu_ps(dxr + c), v));
      _mm256_storeu_ps(dwacc + c, _mm256_fmadd_ps(d, xh, _mm256_loadu_ps(dwacc + c)));
    }
    for (; c < C; ++c) {
      float xh = xr[c] * rs;
      dxr[c] += rs * (dr[c] * w[c]) - xh * k;
      dwacc[c] += dr[c] * xh;
    }
  }
}

EQAT_AVX512 void backward_rows_avx512(float* dx, float* dwacc, const float* dout, const float* x, const float* w,
                                      const float* rstd, int64_t C, int64_t r0, int64_t r1) {
  const int64_t tail = C % 16, body = C - tail;
  const __mmask16 m = static_cast<__mmask16>((1u << tail) - 1u);
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    const float* dr = dout + r * C;
    float* dxr = dx + r * C;
    float rs = rstd[r];
    __m512 vr = _mm512_set1_ps(rs);
    __m512 a0 = _mm512_setzero_ps();
    for (int64_t c = 0; c < body; c += 16) {
      __m512 g = _mm512_mul_ps(_mm512_loadu_ps(dr + c), _mm512_loadu_ps(w + c));
      __m512 xh = _mm512_mul_ps(_mm512_loadu_ps(xr + c), vr);
      a0 = _mm512_fmadd_ps(g, xh, a0);
    }
    if (tail) {
      __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, dr + body), _mm512_maskz_loadu_ps(m, w + body));
      __m512 xh = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + body), vr);
      a0 = _mm512_fmadd_ps(g, xh, a0);
    }
    float k = _mm512_reduce_add_ps(a0) * rs / static_cast<float>(C);
    __m512 vk = _mm512_set1_ps(k);
    for (int64_t c = 0; c < body; c += 16) {
      __m512 d = _mm512_loadu_ps(dr + c);
      __m512 xh = _mm512_mul_ps(_mm512_loadu_ps(xr + c), vr);
      __m512 g = _mm512_mul_ps(d, _mm512_loadu_ps(w + c));
      __m512 v = _mm512_fnmadd_ps(xh, vk, _mm512_mul_ps(vr, g));
      _mm512_storeu_ps(dxr + c, _mm512_add_ps(_mm512_loadu_ps(dxr + c), v));
      _mm512_storeu_ps(dwacc + c, _mm512_fmadd_ps(d, xh, _mm512_loadu_ps(dwacc + c)));
    }
    if (tail) {
      __m512 d = _mm512_maskz_loadu_ps(m, dr + body);
      __m512 xh = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + body), vr);
      __m512 g = _mm512_mul_ps(d, _mm512_maskz_loadu_ps(m, w + body));
      __m512 v = _mm512_fnmadd_ps(xh, vk, _mm512_mul_ps(vr, g));
      _mm512_mask_storeu_ps(dxr + body, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dxr + body), v));
      _mm512_mask_storeu_ps(dwacc + body, m, _mm512_fmadd_ps(d, xh, _mm512_maskz_loadu_ps(m, dwacc + body)));
    }
  }
}

using ForwardRows = void (*)(float*, float*, const float*, const float*, int64_t, float, int64_t, int64_t);
using BackwardRows = void (*)(float*, float*, const float*, const float*, const float*, const float*, int64_t, int64_t,
                              int64_t);

ForwardRows pick_forward() {
  if (cpu_has_avx512()) return forward_rows_avx512;
  if (cpu_has_avx2()) return forward_rows_avx2;
  return forward_rows_scalar;
}
BackwardRows pick_backward() {
  if (cpu_has_avx512()) return backward_rows_avx512;
  if (cpu_has_avx2()) return backward_rows_avx2;
  return backward_rows_scalar;
}

// rmsnormForward(out, rstd, x, weight, rows, C, eps)
Napi::Value RmsnormForward(const Napi::CallbackInfo& info) {
  const char* op = "rmsnormForward";
  check_argc(info, 7, op);
  int64_t N = arg_int(info, 4, op, "rows");
  int64_t C = arg_int(info, 5, op, "C");
  if (N < 0 || C < 1) throw Napi::RangeError::New(info.Env(), std::string(op) + ": need rows >= 0 and C >= 1");
  float eps = static_cast<float>(arg_num(info, 6, op, "eps"));
  float* out = arg_f32(info, 0, N * C, op, "out");
  float* rstd = arg_f32(info, 1, N, op, "rstd");
  const float* x = arg_f32(info, 2, N * C, op, "x");
  const float* w = arg_f32(info, 3, C, op, "weight");
  ForwardRows fn = pick_forward();
  parallel_for(N, [&](int64_t r0, int64_t r1) { fn(out, rstd, x, w, C, eps, r0, r1); }, row_grain(C));
  return info.Env().Undefined();
}

// rmsnormBackward(dx, dweight, dout, x, weight, rstd, rows, C)
// The weight gradient is reduced deterministically: rows are cut into a fixed number of
// chunks, each accumulates into its own partial vector, and partials are added in order.
Napi::Value RmsnormBackward(const Napi::CallbackInfo& info) {
  const char* op = "rmsnormBackward";
  check_argc(info, 8, op);
  int64_t N = arg_int(info, 6, op, "rows");
  int64_t C = arg_int(info, 7, op, "C");
  if (N < 0 || C < 1) throw Napi::RangeError::New(info.Env(), std::string(op) + ": need rows >= 0 and C >= 1");
  float* dx = arg_f32(info, 0, N * C, op, "dx");
  float* dw = arg_f32(info, 1, C, op, "dweight");
  const float* dout = arg_f32(info, 2, N * C, op, "dout");
  const float* x = arg_f32(info, 3, N * C, op, "x");
  const float* w = arg_f32(info, 4, C, op, "weight");
  const float* rstd = arg_f32(info, 5, N, op, "rstd");
  BackwardRows fn = pick_backward();
  int64_t grain = row_grain(C);
  int64_t parts = std::min<int64_t>(num_threads(), N / grain);
  if (parts <= 1) {
    fn(dx, dw, dout, x, w, rstd, C, 0, N);
    return info.Env().Undefined();
  }
  std::vector<float> partial(static_cast<size_t>(parts * C), 0.0f);
  parallel_for(parts, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      fn(dx, partial.data() + p * C, dout, x, w, rstd, C, N * p / parts, N * (p + 1) / parts);
    }
  });
  parallel_for(C, [&](int64_t c0, int64_t c1) {
    for (int64_t p = 0; p < parts; ++p) {
      const float* src = partial.data() + p * C;
      for (int64_t c = c0; c < c1; ++c) dw[c] += src[c];
    }
  }, 4096);
  return info.Env().Undefined();
}

}  // namespace

EQAT_EXPORT(rmsnormForward, RmsnormForward);
EQAT_EXPORT(rmsnormBackward, RmsnormBackward);

}  // namespace eqat
