// Rotary position embedding, forward and backward, in the Hugging Face rotate_half layout
// (the two halves of each head are the rotated pairs, not interleaved neighbours):
//   out[i]      = x[i] * cos[t,i] - x[i+D/2] * sin[t,i]
//   out[i+D/2]  = x[i+D/2] * cos[t,i] + x[i] * sin[t,i]          for i < D/2
// x is (B, T, H, D); cos/sin are (T, D/2) tables from src/model/rope.ts. The backward pass is
// the transposed rotation, accumulated into dx. Products and sums are rounded separately (no
// fused multiply-add) so results match torch's q * cos + rotate_half(q) * sin bit for bit.
// Forward may run in place (out == x): each pair is loaded before it is stored.
// Twin: src/ops/ref/rope.ts; typed wrapper: src/ops/rope.ts.
#include "eqat.h"

// GCC 12 reports false "may be used uninitialized" warnings from inside the AVX-512 intrinsic
// headers (masked loads, reductions); they are silenced for those header lines only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <algorithm>

#ifndef EQAT_AVX512
#define EQAT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#endif
#ifndef EQAT_AVX2
#define EQAT_AVX2 __attribute__((target("avx2,fma")))
#endif

// Keep every product and sum separately rounded, as torch does: without this, GCC contracts
// a*b + c into an FMA inside the AVX2/AVX-512 functions (C++ defaults to -ffp-contract=fast).
#pragma GCC optimize("fp-contract=off")

namespace eqat {
namespace {

struct RopeShape {
  int64_t T, H, D;
};

// ---------------------------------------------------------------- forward
// Rows are (b, t) pairs: bt in [r0, r1), each holding H heads of D values.

void forward_rows_scalar(float* out, const float* x, const float* cs, const float* sn, RopeShape s, int64_t r0,
                         int64_t r1) {
  const int64_t half = s.D / 2;
  for (int64_t bt = r0; bt < r1; ++bt) {
    const float* c = cs + (bt % s.T) * half;
    const float* sv = sn + (bt % s.T) * half;
    for (int64_t h = 0; h < s.H; ++h) {
      const float* xr = x + (bt * s.H + h) * s.D;
      float* orow = out + (bt * s.H + h) * s.D;
      for (int64_t i = 0; i < half; ++i) {
        float x1 = xr[i], x2 = xr[i + half];
        float a = x1 * c[i], b = x2 * sv[i];
        float p = x2 * c[i], q = x1 * sv[i];
        orow[i] = a - b;
        orow[i + half] = p + q;
      }
    }
  }
}

EQAT_AVX2 void forward_rows_avx2(float* out, const float* x, const float* cs, const float* sn, RopeShape s, int64_t r0,
                                 int64_t r1) {
  const int64_t half = s.D / 2;
  for (int64_t bt = r0; bt < r1; ++bt) {
    const float* c = cs + (bt % s.T) * half;
    const float* sv = sn + (bt % s.T) * half;
    for (int64_t h = 0; h < s.H; ++h) {
      const float* xr = x + (bt * s.H + h) * s.D;
      float* orow = out + (bt * s.H + h) * s.D;
      int64_t i = 0;
      for (; i + 8 <= half; i += 8) {
        __m256 x1 = _mm256_loadu_ps(xr + i), x2 = _mm256_loadu_ps(xr + i + half);
        __m256 vc = _mm256_loadu_ps(c + i), vs = _mm256_loadu_ps(sv + i);
        __m256 o1 = _mm256_sub_ps(_mm256_mul_ps(x1, vc), _mm256_mul_ps(x2, vs));
        __m256 o2 = _mm256_add_ps(_mm256_mul_ps(x2, vc), _mm256_mul_ps(x1, vs));
        _mm256_storeu_ps(orow + i, o1);
        _mm256_storeu_ps(orow + i + half, o2);
      }
      for (; i < half; ++i) {
        float x1 = xr[i], x2 = xr[i + half];
        float a = x1 * c[i], b = x2 * sv[i];
        float p = x2 * c[i], q = x1 * sv[i];
        orow[i] = a - b;
        orow[i + half] = p + q;
      }
    }
  }
}

EQAT_AVX512 void forward_rows_avx512(float* out, const float* x, const float* cs, const float* sn, RopeShape s,
                                     int64_t r0, int64_t r1) {
  const int64_t half = s.D / 2;
  const int64_t tail = half % 16, body = half - tail;
  const __mmask16 m = static_cast<__mmask16>((1u << tail) - 1u);
  for (int64_t bt = r0; bt < r1; ++bt) {
    const float* c = cs + (bt % s.T) * half;
    const float* sv = sn + (bt % s.T) * half;
    for (int64_t h = 0; h < s.H; ++h) {
      const float* xr = x + (bt * s.H + h) * s.D;
      float* orow = out + (bt * s.H + h) * s.D;
      for (int64_t i = 0; i < body; i += 16) {
        __m512 x1 = _mm512_loadu_ps(xr + i), x2 = _mm512_loadu_ps(xr + i + half);
        __m512 vc = _mm512_loadu_ps(c + i), vs = _mm512_loadu_ps(sv + i);
        __m512 o1 = _mm512_sub_ps(_mm512_mul_ps(x1, vc), _mm512_mul_ps(x2, vs));
        __m512 o2 = _mm512_add_ps(_mm512_mul_ps(x2, vc), _mm512_mul_ps(x1, vs));
        _mm512_storeu_ps(orow + i, o1);
        _mm512_storeu_ps(orow + i + half, o2);
      }
      if (tail) {
        __m512 x1 = _mm512_maskz_loadu_ps(m, xr + body), x2 = _mm512_maskz_loadu_ps(m, xr + body + half);
        __m512 vc = _mm512_maskz_loadu_ps(m, c + body), vs = _mm512_maskz_loadu_ps(m, sv + body);
        __m512 o1 = _mm512_sub_ps(_mm512_mul_ps(x1, vc), _mm512_mul_ps(x2, vs));
        __m512 o2 = _mm512_add_ps(_mm512_mul_ps(x2, vc), _mm512_mul_ps(x1, vs));
        _mm512_mask_storeu_ps(orow + body, m, o1);
        _mm512_mask_storeu_ps(orow + body + half, m, o2);
      }
    }
  }
}

// ---------------------------------------------------------------- backward
//   dx[i]     += dout[i] * cos[t,i] + dout[i+D/2] * sin[t,i]
//   dx[i+D/2] += dout[i+D/2] * cos[t,i] - dout[i] * sin[t,i]

void backward_rows_scalar(float* dx, const float* dout, const float* cs, const float* sn, RopeShape s, int64_t r0,
                          int64_t r1) {
  const int64_t half = s.D / 2;
  for (int64_t bt = r0; bt < r1; ++bt) {
    const float* c = cs + (bt % s.T) * half;
    const float* sv = sn + (bt % s.T) * half;
    for (int64_t h = 0; h < s.H; ++h) {
      const float* dr = dout + (bt * s.H + h) * s.D;
      float* dxr = dx + (bt * s.H + h) * s.D;
      for (int64_t i = 0; i < half; ++i) {
        float d1 = dr[i], d2 = dr[i + half];
        float a = d1 * c[i], b = d2 * sv[i];
        float p = d2 * c[i], q = d1 * sv[i];
        dxr[i] += a + b;
        dxr[i + half] += p - q;
      }
    }
  }
}

EQAT_AVX2 void backward_rows_avx2(float* dx, const float* dout, const float* cs, const float* sn, RopeShape s,
                                  int64_t r0, int64_t r1) {
  const int64_t half = s.D / 2;
  for (int64_t bt = r0; bt < r1; ++bt) {
    const float* c = cs + (bt % s.T) * half;
    const float* sv = sn + (bt % s.T) * half;
    for (int64_t h = 0; h < s.H; ++h) {
      const float* dr = dout + (bt * s.H + h) * s.D;
      float* dxr = dx + (bt * s.H + h) * s.D;
      int64_t i = 0;
      for (; i + 8 <= half; i += 8) {
        __m256 d1 = _mm256_loadu_ps(dr + i), d2 = _mm256_loadu_ps(dr + i + half);
        __m256 vc = _mm256_loadu_ps(c + i), vs = _mm256_loadu_ps(sv + i);
        __m256 g1 = _mm256_add_ps(_mm256_mul_ps(d1, vc), _mm256_mul_ps(d2, vs));
        __m256 g2 = _mm256_sub_ps(_mm256_mul_ps(d2, vc), _mm256_mul_ps(d1, vs));
        _mm256_storeu_ps(dxr + i, _mm256_add_ps(_mm256_loadu_ps(dxr + i), g1));
        _mm256_storeu_ps(dxr + i + half, _mm256_add_ps(_mm256_loadu_ps(dxr + i + half), g2));
      }
      for (; i < half; ++i) {
        float d1 = dr[i], d2 = dr[i + half];
        float a = d1 * c[i], b = d2 * sv[i];
        float p = d2 * c[i], q = d1 * sv[i];
        dxr[i] += a + b;
        dxr[i + half] += p - q;
      }
    }
  }
}

EQAT_AVX512 void backward_rows_avx512(float* dx, const float* dout, const float* cs, const float* sn, RopeShape s,
                                      int64_t r0, int64_t r1) {
  const int64_t half = s.D / 2;
  const int64_t tail = half % 16, body = half - tail;
  const __mmask16 m = static_cast<__mmask16>((1u << tail) - 1u);
  for (int64_t bt = r0; bt < r1; ++bt) {
    const float* c = cs + (bt % s.T) * half;
    const float* sv = sn + (bt % s.T) * half;
    for (int64_t h = 0; h < s.H; ++h) {
      const float* dr = dout + (bt * s.H + h) * s.D;
      float* dxr = dx + (bt * s.H + h) * s.D;
      for (int64_t i = 0; i < body; i += 16) {
        __m512 d1 = _mm512_loadu_ps(dr + i), d2 = _mm512_loadu_ps(dr + i + half);
        __m512 vc = _mm512_loadu_ps(c + i), vs = _mm512_loadu_ps(sv + i);
        __m512 g1 = _mm512_add_ps(_mm512_mul_ps(d1, vc), _mm512_mul_ps(d2, vs));
        __m512 g2 = _mm512_sub_ps(_mm512_mul_ps(d2, vc), _mm512_mul_ps(d1, vs));
        _mm512_storeu_ps(dxr + i, _mm512_add_ps(_mm512_loadu_ps(dxr + i), g1));
        _mm512_storeu_ps(dxr + i + half, _mm512_add_ps(_mm512_loadu_ps(dxr + i + half), g2));
      }
      if (tail) {
        __m512 d1 = _mm512_maskz_loadu_ps(m, dr + body), d2 = _mm512_maskz_loadu_ps(m, dr + body + half);
        __m512 vc = _mm512_maskz_loadu_ps(m, c + body), vs = _mm512_maskz_loadu_ps(m, sv + body);
        __m512 g1 = _mm512_add_ps(_mm512_mul_ps(d1, vc), _mm512_mul_ps(d2, vs));
        __m512 g2 = _mm512_sub_ps(_mm512_mul_ps(d2, vc), _mm512_mul_ps(d1, vs));
        _mm512_mask_storeu_ps(dxr + body, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dxr + body), g1));
        _mm512_mask_storeu_ps(dxr + body + half, m,
                              _mm512_add_ps(_mm512_maskz_loadu_ps(m, dxr + body + half), g2));
      }
    }
  }
}

using RowsFn = void (*)(float*, const float*, const float*, const float*, RopeShape, int64_t, int64_t);

RowsFn pick(RowsFn avx512, RowsFn avx2, RowsFn scalar) {
  if (cpu_has_avx512()) return avx512;
  if (cpu_has_avx2()) return avx2;
  return scalar;
}

// Shared argument handling: (dst, src, cos, sin, B, T, H, D).
Napi::Value Run(const Napi::CallbackInfo& info, const char* op, const char* dst_name, const char* src_name,
                RowsFn fn) {
  check_argc(info, 8, op);
  int64_t B = arg_int(info, 4, op, "B"), T = arg_int(info, 5, op, "T");
  int64_t H = arg_int(info, 6, op, "H"), D = arg_int(info, 7, op, "D");
  if (B < 0 || T < 0 || H < 0 || D < 2 || D % 2 != 0) {
    throw Napi::RangeError::New(info.Env(), std::string(op) + ": need B, T, H >= 0 and an even D >= 2");
  }
  int64_t n = B * T * H * D, half = D / 2;
  float* dst = arg_f32(info, 0, n, op, dst_name);
  const float* src = arg_f32(info, 1, n, op, src_name);
  const float* cs = arg_f32(info, 2, T * half, op, "cos");
  const float* sn = arg_f32(info, 3, T * half, op, "sin");
  RopeShape s{T, H, D};
  int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, H * D));
  parallel_for(B * T, [&](int64_t r0, int64_t r1) { fn(dst, src, cs, sn, s, r0, r1); }, grain);
  return info.Env().Undefined();
}

// ropeForward(out, x, cos, sin, B, T, H, D)
Napi::Value RopeForward(const Napi::CallbackInfo& info) {
  return Run(info, "ropeForward", "out", "x", pick(forward_rows_avx512, forward_rows_avx2, forward_rows_scalar));
}

// ropeBackward(dx, dout, cos, sin, B, T, H, D)
Napi::Value RopeBackward(const Napi::CallbackInfo& info) {
  return Run(info, "ropeBackward", "dx", "dout",
             pick(backward_rows_avx512, backward_rows_avx2, backward_rows_scalar));
}

}  // namespace

EQAT_EXPORT(ropeForward, RopeForward);
EQAT_EXPORT(ropeBackward, RopeBackward);

}  // namespace eqat
