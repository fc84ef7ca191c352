// f32 -> bf16 conversion shared by the kernels that store bf16 (the conversion kernel, packed and
// fake-quantized weight tiles, attention's probabilities): round to nearest even; a NaN stays a
// quiet NaN with its sign. Matches f32ToBf16Ref in src/engine/dtype.ts.
#ifndef EQAT_BF16_CUH
#define EQAT_BF16_CUH

namespace eqat {

__device__ __forceinline__ unsigned short to_bf16(float x) {
  const unsigned u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
  return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace eqat

#endif  // EQAT_BF16_CUH
