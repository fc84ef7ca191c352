// dtype conversions between the storage formats of checkpoints (f16, bf16) and the f32
// compute format. Twin: src/engine/dtype.ts.
#include "eqat.h"

#include <cmath>
#include <cstring>

namespace eqat {
namespace {

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even; NaN stays NaN (quiet).
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal
      float f = std::ldexp(static_cast<float>(man), -24);
      std::memcpy(&u, &f, 4);
      u |= sign;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, overflow to inf, subnormals handled.
inline uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (absu >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (absu < 0x38800000u) {  // below smallest normal (2^-14): subnormal or zero
    float a;
    std::memcpy(&a, &absu, 4);
    float scaled = a * 16777216.0f;  // / 2^-24
    uint32_t m = static_cast<uint32_t>(std::nearbyint(scaled));
    return static_cast<uint16_t>(sign | m);
  }
  uint32_t exp = ((absu >> 23) - 112) << 10;
  uint32_t man = absu & 0x7fffffu;
  uint32_t h = exp | (man >> 13);
  uint32_t rem = man & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

// convertToF32(kind, src: Uint16Array, dst: Float32Array, n); kind 0 = f16, 1 = bf16
Napi::Value ConvertToF32(const Napi::CallbackInfo& info) {
  const char* op = "convertToF32";
  check_argc(info, 4, op);
  int64_t kind = arg_int(info, 0, op, "kind");
  int64_t n = arg_int(info, 3, op, "n");
  const uint16_t* src = arg_u16(info, 1, n, op, "src");
  float* dst = arg_f32(info, 2, n, op, "dst");
  parallel_for(n, [&](int64_t b, int64_t e) {
    if (kind == 0)
      for (int64_t i = b; i < e; ++i) dst[i] = f16_to_f32(src[i]);
    else
      for (int64_t i = b; i < e; ++i) dst[i] = bf16_to_f32(src[i]);
  }, 1 << 16);
  return info.Env().Undefined();
}

// convertFromF32(kind, src: Float32Array, dst: Uint16Array, n); kind 0 = f16, 1 = bf16
Napi::Value ConvertFromF32(const Napi::CallbackInfo& info) {
  const char* op = "convertFromF32";
  check_argc(info, 4, op);
  int64_t kind = arg_int(info, 0, op, "kind");
  int64_t n = arg_int(info, 3, op, "n");
  const float* src = arg_f32(info, 1, n, op, "src");
  uint16_t* dst = arg_u16(info, 2, n, op, "dst");
  parallel_for(n, [&](int64_t b, int64_t e) {
    if (kind == 0)
      for (int64_t i = b; i < e; ++i) dst[i] = f32_to_f16(src[i]);
    else
      for (int64_t i = b; i < e; ++i) dst[i] = f32_to_bf16(src[i]);
  }, 1 << 16);
  return info.Env().Undefined();
}

}  // namespace

EQAT_EXPORT(convertToF32, ConvertToF32);
EQAT_EXPORT(convertFromF32, ConvertFromF32);

}  // namespace eqat
