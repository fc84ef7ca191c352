// Fake quantization of weight groups (forward, straight-through backward) and integer
// quantization to bytes: the hot quantization kernels of Block-AP / E2E-QP training.
// Twin: src/quant/primitives.ts (fakeQuantForwardRef, fakeQuantBackwardRef, quantize); the
// formulas are documented there. Groups of G elements are contiguous (group g is
// w[g*G .. g*G+G)), so every kernel walks groups, with scale/zero broadcast inside a group.
//
// The forward and quantize kernels are bit-exact with the twin: each lane does the same f32
// operations in the same order (a true division, round-half-to-even, add, clamp, subtract,
// multiply; no fused multiply-add). Backward group sums are reassociated across lanes, so they
// agree with the twin to rounding.
#include "eqat.h"

// GCC 12 flags the deliberately undefined pass-through operands inside the AVX-512 intrinsic
// headers as maybe-uninitialized once they are inlined; the warning is spurious.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <cmath>
#include <string>

namespace eqat {
namespace {

constexpr float kScaleMin = 1e-4f;
constexpr float kScaleMax = 1e4f;

inline float clampf(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

// Round half to even, as std::nearbyint under the default rounding mode but without a libm
// call on the baseline ISA: adding and subtracting 2^23 rounds |x| < 2^23 to an integer with
// ties to even; larger magnitudes are already integers; NaN passes through; the sign (also of
// a -0 result) is kept.
inline float round_even(float x) {
  const float two23 = 8388608.0f;
  float ax = std::fabs(x);
  if (!(ax < two23)) return x;
  return std::copysign((ax + two23) - two23, x);
}

// s_c and z_r of one group.
inline void group_params(float scale, float zero, float qmax, float& s, float& zr) {
  s = clampf(scale, kScaleMin, kScaleMax);
  zr = clampf(round_even(zero), 0.0f, qmax);
}

// The pre-clamp code round(w / s) + z_r of one element.
inline float code_of(float w, float s, float zr) { return round_even(w / s) + zr; }

struct Args {
  float* out;          // forward: (groups*G)
  uint8_t* q;          // quantize: (groups*G)
  float* dw;           // backward: (groups*G) +=
  float* dscale;       // backward: (groups) +=
  float* dzero;        // backward: (groups) +=
  const float* dout;   // backward: (groups*G)
  const float* w;      // (groups*G)
  const float* scale;  // (groups)
  const float* zero;   // (groups)
  int64_t G;
  float qmax;
};

// ---------------------------------------------------------------- scalar

void forward_scalar(const Args& a, int64_t g0, int64_t g1) {
  for (int64_t g = g0; g < g1; ++g) {
    float s, zr;
    group_params(a.scale[g], a.zero[g], a.qmax, s, zr);
    const float* w = a.w + g * a.G;
    float* out = a.out + g * a.G;
    for (int64_t i = 0; i < a.G; ++i) out[i] = (clampf(code_of(w[i], s, zr), 0.0f, a.qmax) - zr) * s;
  }
}

void quantize_scalar(const Args& a, int64_t g0, int64_t g1) {
  for (int64_t g = g0; g < g1; ++g) {
    float s, zr;
    group_params(a.scale[g], a.zero[g], a.qmax, s, zr);
    const float* w = a.w + g * a.G;
    uint8_t* q = a.q + g * a.G;
    for (int64_t i = 0; i < a.G; ++i) q[i] = static_cast<uint8_t>(clampf(code_of(w[i], s, zr), 0.0f, a.qmax));
  }
}

// One element of the backward pass; ds/dz are the group accumulators.
inline void backward_element(float grad, float w, float s, float zr, float qmax, float& dw, float& ds, float& dz) {
  float u = w / s;
  float r = round_even(u);
  float code = r + zr;
  if (code >= 0.0f && code <= qmax) {
    dw += grad;
    ds += grad * (r - u);
  } else {
    dw += 0.0f;
    float q = code < 0.0f ? 0.0f : qmax;
    ds += grad * (q - zr);
    dz -= grad * s;
  }
}

void backward_scalar(const Args& a, int64_t g0, int64_t g1) {
  for (int64_t g = g0; g < g1; ++g) {
    float s, zr;
    group_params(a.scale[g], a.zero[g], a.qmax, s, zr);
    const int64_t base = g * a.G;
    float ds = 0.0f, dz = 0.0f;
    for (int64_t i = 0; i < a.G; ++i)
      backward_element(a.dout[base + i], a.w[base + i], s, zr, a.qmax, a.dw[base + i], ds, dz);
    a.dscale[g] += ds;
    a.dzero[g] += dz;
  }
}

// ---------------------------------------------------------------- AVX2

constexpr int kRoundNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

__attribute__((target("avx2,fma"))) void forward_avx2(const Args& a, int64_t g0, int64_t g1) {
  const __m256 vzero = _mm256_setzero_ps(), vqmax = _mm256_set1_ps(a.qmax);
  for (int64_t g = g0; g < g1; ++g) {
    float s, zr;
    group_params(a.scale[g], a.zero[g], a.qmax, s, zr);
    const __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(zr);
    const float* w = a.w + g * a.G;
    float* out = a.out + g * a.G;
    int64_t i = 0;
    for (; i + 8 <= a.G; i += 8) {
      __m256 code = _mm256_add_ps(_mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(w + i), vs), kRoundNearest), vz);
      __m256 q = _mm256_min_ps(_mm256_max_ps(code, vzero), vqmax);
      _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_sub_ps(q, vz), vs));
    }
    for (; i < a.G; ++i) out[i] = (clampf(code_of(w[i], s, zr), 0.0f, a.qmax) - zr) * s;
  }
}

__attribute__((target("avx2,fma"))) void quantize_avx2(const Args& a, int64_t g0, int64_t g1) {
  const __m256 vzero = _mm256_setzero_ps(), vqmax = _mm256_set1_ps(a.qmax);
  for (int64_t g = g0; g < g1; ++g) {
    float s, zr;
    group_params(a.scale[g], a.zero[g], a.qmax, s, zr);
    const __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(zr);
    const float* w = a.w + g * a.G;
    uint8_t* q = a.q + g * a.G;
    int64_t i = 0;
    for (; i + 8 <= a.G; i += 8) {
      __m256 code = _mm256_add_ps(_mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(w + i), vs), kRoundNearest), vz);
      __m256i qi = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(code, vzero), vqmax));  // integral: exact
      __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(qi), _mm256_extracti128_si256(qi, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i), _mm_packus_epi16(q16, q16));
    }
    for (; i < a.G; ++i) q[i] = static_cast<uint8_t>(clampf(code_of(w[i], s, zr), 0.0f, a.qmax));
  }
}

__attribute__((target("avx2,fma"))) inline float hsum_avx2(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

__attribute__((target("avx2,fma"))) void backward_avx2(const Args& a, int64_t g0, int64_t g1) {
  const __m256 vzero = _mm256_setzero_ps(), vqmax = _mm256_set1_ps(a.qmax);
  for (int64_t g = g0; g < g1; ++g) {
    float s, zr;
    group_params(a.scale[g], a.zero[g], a.qmax, s, zr);
    const __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(zr);
    const int64_t base = g * a.G;
    const float* w = a.w + base;
    const float* dout = a.dout + base;
    float* dw = a.dw + base;
    __m256 vds = _mm256_setzero_ps(), vdz = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= a.G; i += 8) {
      __m256 grad = _mm256_loadu_ps(dout + i);
      __m256 u = _mm256_div_ps(_mm256_loadu_ps(w + i), vs);
      __m256 r = _mm256_round_ps(u, kRoundNearest);
      __m256 code = _mm256_add_ps(r, vz);
      __m256 in = _mm256_and_ps(_mm256_cmp_ps(code, vzero, _CMP_GE_OQ), _mm256_cmp_ps(code, vqmax, _CMP_LE_OQ));
      __m256 q = _mm256_min_ps(_mm256_max_ps(code, vzero), vqmax);
      _mm256_storeu_ps(dw + i, _mm256_add_ps(_mm256_loadu_ps(dw + i), _mm256_and_ps(in, grad)));
      __m256 ds_in = _mm256_mul_ps(grad, _mm256_sub_ps(r, u));
      __m256 ds_out = _mm256_mul_ps(grad, _mm256_sub_ps(q, vz));
      vds = _mm256_add_ps(vds, _mm256_blendv_ps(ds_out, ds_in, in));
      vdz = _mm256_sub_ps(vdz, _mm256_andnot_ps(in, _mm256_mul_ps(grad, vs)));
    }
    float ds = hsum_avx2(vds), dz = hsum_avx2(vdz);
    for (; i < a.G; ++i) backward_element(dout[i], w[i], s, zr, a.qmax, dw[i], ds, dz);
    a.dscale[g] += ds;
    a.dzero[g] += dz;
  }
}

// ---------------------------------------------------------------- AVX-512

#define EQAT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

EQAT_AVX512 inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1u);
}

EQAT_AVX512 void forward_avx512(const Args& a, int64_t g0, int64_t g1) {
  const __m512 vzero = _mm512_setzero_ps(), vqmax = _mm512_set1_ps(a.qmax);
  for (int64_t g = g0; g < g1; ++g) {
    float s, zr;
    group_params(a.scale[g], a.zero[g], a.qmax, s, zr);
    const __m512 vs = _mm512_set1_ps(s), vz = _mm512_set1_ps(zr);
    const float* w = a.w + g * a.G;
    float* out = a.out + g * a.G;
    for (int64_t i = 0; i < a.G; i += 16) {
      __mmask16 m = tail_mask(a.G - i);
      __m512 u = _mm512_div_ps(_mm512_maskz_loadu_ps(m, w + i), vs);
      __m512 code = _mm512_add_ps(_mm512_roundscale_ps(u, kRoundNearest), vz);
      __m512 q = _mm512_min_ps(_mm512_max_ps(code, vzero), vqmax);
      _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_sub_ps(q, vz), vs));
    }
  }
}

EQAT_AVX512 void quantize_avx512(const Args& a, int64_t g0, int64_t g1) {
  const __m512 vzero = _mm512_setzero_ps(), vqmax = _mm512_set1_ps(a.qmax);
  for (int64_t g = g0; g < g1; ++g) {
    float s, zr;
    group_params(a.scale[g], a.zero[g], a.qmax, s, zr);
    const __m512 vs = _mm512_set1_ps(s), vz = _mm512_set1_ps(zr);
    const float* w = a.w + g * a.G;
    uint8_t* q = a.q + g * a.G;
    for (int64_t i = 0; i < a.G; i += 16) {
      __mmask16 m = tail_mask(a.G - i);
      __m512 u = _mm512_div_ps(_mm512_maskz_loadu_ps(m, w + i), vs);
      __m512 code = _mm512_add_ps(_mm512_roundscale_ps(u, kRoundNearest), vz);
      __m512i qi = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(code, vzero), vqmax));  // integral: exact
      _mm_mask_storeu_epi8(q + i, m, _mm512_cvtepi32_epi8(qi));
    }
  }
}

EQAT_AVX512 void backward_avx512(const Args& a, int64_t g0, int64_t g1) {
  const __m512 vzero = _mm512_setzero_ps(), vqmax = _mm512_set1_ps(a.qmax);
  for (int64_t g = g0; g < g1; ++g) {
    float s, zr;
    group_params(a.scale[g], a.zero[g], a.qmax, s, zr);
    const __m512 vs = _mm512_set1_ps(s), vz = _mm512_set1_ps(zr);
    const int64_t base = g * a.G;
    const float* w = a.w + base;
    const float* dout = a.dout + base;
    float* dw = a.dw + base;
    __m512 vds = _mm512_setzero_ps(), vdz = _mm512_setzero_ps();
    for (int64_t i = 0; i < a.G; i += 16) {
      __mmask16 m = tail_mask(a.G - i);  // lanes past the group load 0 and contribute 0
      __m512 grad = _mm512_maskz_loadu_ps(m, dout + i);
      __m512 u = _mm512_div_ps(_mm512_maskz_loadu_ps(m, w + i), vs);
      __m512 r = _mm512_roundscale_ps(u, kRoundNearest);
      __m512 code = _mm512_add_ps(r, vz);
      __mmask16 in = _mm512_cmp_ps_mask(code, vzero, _CMP_GE_OQ) & _mm512_cmp_ps_mask(code, vqmax, _CMP_LE_OQ);
      __m512 q = _mm512_min_ps(_mm512_max_ps(code, vzero), vqmax);
      _mm512_mask_storeu_ps(dw + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dw + i), _mm512_maskz_mov_ps(in, grad)));
      __m512 ds_in = _mm512_mul_ps(grad, _mm512_sub_ps(r, u));
      __m512 ds_out = _mm512_mul_ps(grad, _mm512_sub_ps(q, vz));
      vds = _mm512_add_ps(vds, _mm512_mask_blend_ps(in, ds_out, ds_in));
      vdz = _mm512_sub_ps(vdz, _mm512_maskz_mov_ps(static_cast<__mmask16>(~in), _mm512_mul_ps(grad, vs)));
    }
    a.dscale[g] += _mm512_reduce_add_ps(vds);
    a.dzero[g] += _mm512_reduce_add_ps(vdz);
  }
}

// ---------------------------------------------------------------- dispatch and entry points

using Kernel = void (*)(const Args&, int64_t, int64_t);

void run(const Args& a, int64_t groups, Kernel k512, Kernel k2, Kernel k1) {
  Kernel k = cpu_has_avx512() ? k512 : cpu_has_avx2() ? k2 : k1;
  const int64_t grain = std::max<int64_t>(1, 16384 / a.G);
  parallel_for(groups, [&](int64_t b, int64_t e) { k(a, b, e); }, grain);
}

// Reads and checks (groups, G, qmax) at argument positions first..first+2.
void dims(const Napi::CallbackInfo& info, size_t first, const char* op, int64_t& groups, int64_t& G, float& qmax) {
  groups = arg_int(info, first, op, "groups");
  G = arg_int(info, first + 1, op, "G");
  int64_t qm = arg_int(info, first + 2, op, "qmax");
  if (groups < 0) throw Napi::RangeError::New(info.Env(), std::string(op) + ": argument 'groups' must be >= 0");
  if (G < 1) throw Napi::RangeError::New(info.Env(), std::string(op) + ": argument 'G' must be >= 1");
  if (qm < 1 || qm > 255) throw Napi::RangeError::New(info.Env(), std::string(op) + ": argument 'qmax' must be in [1, 255]");
  qmax = static_cast<float>(qm);
}

// fakeQuantForwardNative(out, w, scale, zero, groups, G, qmax)
Napi::Value FakeQuantForward(const Napi::CallbackInfo& info) {
  const char* op = "fakeQuantForwardNative";
  check_argc(info, 7, op);
  Args a{};
  int64_t groups;
  dims(info, 4, op, groups, a.G, a.qmax);
  const size_t n = static_cast<size_t>(groups * a.G);
  a.out = arg_f32(info, 0, n, op, "out");
  a.w = arg_f32(info, 1, n, op, "w");
  a.scale = arg_f32(info, 2, groups, op, "scale");
  a.zero = arg_f32(info, 3, groups, op, "zero");
  run(a, groups, forward_avx512, forward_avx2, forward_scalar);
  return info.Env().Undefined();
}

// fakeQuantBackwardNative(dw, dscale, dzero, dout, w, scale, zero, groups, G, qmax)
Napi::Value FakeQuantBackward(const Napi::CallbackInfo& info) {
  const char* op = "fakeQuantBackwardNative";
  check_argc(info, 10, op);
  Args a{};
  int64_t groups;
  dims(info, 7, op, groups, a.G, a.qmax);
  const size_t n = static_cast<size_t>(groups * a.G);
  a.dw = arg_f32(info, 0, n, op, "dw");
  a.dscale = arg_f32(info, 1, groups, op, "dscale");
  a.dzero = arg_f32(info, 2, groups, op, "dzero");
  a.dout = arg_f32(info, 3, n, op, "dout");
  a.w = arg_f32(info, 4, n, op, "w");
  a.scale = arg_f32(info, 5, groups, op, "scale");
  a.zero = arg_f32(info, 6, groups, op, "zero");
  run(a, groups, backward_avx512, backward_avx2, backward_scalar);
  return info.Env().Undefined();
}

// fakeQuantQuantizeNative(q, w, scale, zero, groups, G, qmax)
Napi::Value FakeQuantQuantize(const Napi::CallbackInfo& info) {
  const char* op = "fakeQuantQuantizeNative";
  check_argc(info, 7, op);
  Args a{};
  int64_t groups;
  dims(info, 4, op, groups, a.G, a.qmax);
  const size_t n = static_cast<size_t>(groups * a.G);
  a.q = arg_u8(info, 0, n, op, "q");
  a.w = arg_f32(info, 1, n, op, "w");
  a.scale = arg_f32(info, 2, groups, op, "scale");
  a.zero = arg_f32(info, 3, groups, op, "zero");
  run(a, groups, quantize_avx512, quantize_avx2, quantize_scalar);
  return info.Env().Undefined();
}

}  // namespace

EQAT_EXPORT(fakeQuantForwardNative, FakeQuantForward);
EQAT_EXPORT(fakeQuantBackwardNative, FakeQuantBackward);
EQAT_EXPORT(fakeQuantQuantizeNative, FakeQuantQuantize);

}  // namespace eqat
