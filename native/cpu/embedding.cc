// Token embedding lookup, forward and backward:
//   out[n, :] = table[ids[n], :]                (forward: row gather, threads over rows)
//   dtable[ids[n], :] += dout[n, :]             (backward: scatter-add)
// The backward pass is race-free without atomics: threads split the columns (in blocks of 16
// floats, a cache line's worth, to limit false sharing) and each walks all rows in order, so
// every table element is accumulated by one thread in row order, exactly as the twin does. Ids outside [0, V) throw a RangeError naming the row and id before anything is
// written. Twin: src/ops/ref/embedding.ts; typed wrapper: src/ops/embedding.ts.
#include "eqat.h"

// GCC 12 reports false "may be used uninitialized" warnings from inside the AVX-512 intrinsic
// headers (masked loads, reductions); they are silenced for those header lines only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <cstring>

#ifndef EQAT_AVX512
#define EQAT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#endif
#ifndef EQAT_AVX2
#define EQAT_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace eqat {
namespace {

void check_ids(const Napi::CallbackInfo& info, const char* op, const int32_t* ids, int64_t N, int64_t V) {
  for (int64_t n = 0; n < N; ++n) {
    if (ids[n] < 0 || ids[n] >= V) {
      throw Napi::RangeError::New(info.Env(), std::string(op) + ": argument 'ids': id " + std::to_string(ids[n]) +
                                                  " at row " + std::to_string(n) + " is outside [0, " +
                                                  std::to_string(V) + ")");
    }
  }
}

// dst[0, len) += src[0, len)
void add_scalar(float* dst, const float* src, int64_t len) {
  for (int64_t i = 0; i < len; ++i) dst[i] += src[i];
}

EQAT_AVX2 void add_avx2(float* dst, const float* src, int64_t len) {
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) _mm256_storeu_ps(dst + i, _mm256_add_ps(_mm256_loadu_ps(dst + i), _mm256_loadu_ps(src + i)));
  for (; i < len; ++i) dst[i] += src[i];
}

EQAT_AVX512 void add_avx512(float* dst, const float* src, int64_t len) {
  int64_t i = 0;
  for (; i + 16 <= len; i += 16) {
    _mm512_storeu_ps(dst + i, _mm512_add_ps(_mm512_loadu_ps(dst + i), _mm512_loadu_ps(src + i)));
  }
  if (i < len) {
    __mmask16 m = static_cast<__mmask16>((1u << (len - i)) - 1u);
    _mm512_mask_storeu_ps(dst + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst + i), _mm512_maskz_loadu_ps(m, src + i)));
  }
}

// embeddingForward(out, ids, table, N, V, C)
Napi::Value EmbeddingForward(const Napi::CallbackInfo& info) {
  const char* op = "embeddingForward";
  check_argc(info, 6, op);
  int64_t N = arg_int(info, 3, op, "N"), V = arg_int(info, 4, op, "V"), C = arg_int(info, 5, op, "C");
  if (N < 0 || V < 0 || C < 0) throw Napi::RangeError::New(info.Env(), std::string(op) + ": sizes must be >= 0");
  float* out = arg_f32(info, 0, N * C, op, "out");
  const int32_t* ids = arg_i32(info, 1, N, op, "ids");
  const float* table = arg_f32(info, 2, V * C, op, "table");
  check_ids(info, op, ids, N, V);
  int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, C));
  parallel_for(N, [&](int64_t r0, int64_t r1) {
    for (int64_t n = r0; n < r1; ++n) {
      std::memcpy(out + n * C, table + static_cast<int64_t>(ids[n]) * C, static_cast<size_t>(C) * sizeof(float));
    }
  }, grain);
  return info.Env().Undefined();
}

// embeddingBackward(dtable, dout, ids, N, V, C)
Napi::Value EmbeddingBackward(const Napi::CallbackInfo& info) {
  const char* op = "embeddingBackward";
  check_argc(info, 6, op);
  int64_t N = arg_int(info, 3, op, "N"), V = arg_int(info, 4, op, "V"), C = arg_int(info, 5, op, "C");
  if (N < 0 || V < 0 || C < 0) throw Napi::RangeError::New(info.Env(), std::string(op) + ": sizes must be >= 0");
  float* dtable = arg_f32(info, 0, V * C, op, "dtable");
  const float* dout = arg_f32(info, 1, N * C, op, "dout");
  const int32_t* ids = arg_i32(info, 2, N, op, "ids");
  check_ids(info, op, ids, N, V);
  auto add = cpu_has_avx512() ? add_avx512 : cpu_has_avx2() ? add_avx2 : add_scalar;
  constexpr int64_t kBlock = 16;  // floats per cache line
  int64_t blocks = (C + kBlock - 1) / kBlock;
  // Enough column blocks per thread that each chunk touches >= ~16K elements.
  int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, N * kBlock));
  parallel_for(blocks, [&](int64_t b0, int64_t b1) {
    int64_t c0 = b0 * kBlock, c1 = std::min(C, b1 * kBlock);
    for (int64_t n = 0; n < N; ++n) {
      add(dtable + static_cast<int64_t>(ids[n]) * C + c0, dout + n * C + c0, c1 - c0);
    }
  }, grain);
  return info.Env().Undefined();
}

}  // namespace

EQAT_EXPORT(embeddingForward, EmbeddingForward);
EQAT_EXPORT(embeddingBackward, EmbeddingBackward);

}  // namespace eqat
