// Packed GPTQ weights on CUDA (E2E-QP and inference on frozen integer codes): dequantization of a
// tile of W_hat to f32 or bf16, and the per-group step-size gradient. Layout as
// src/quant/gptq-pack.ts packQweight writes it and src/quant/packed-linear.ts reads it:
//   qweight (I*bits/32, O) int32: column o is the little-endian bit stream of q[o, 0..I), value i
//           at bit i*bits (2/4/8 bits: whole values per word; 3 bits: 32 values per three words,
//           values 10 and 21 straddling two words)
//   zeros   (O, I/G) u8 integer zero points;  scales (O, I/G) f32, clamped to [1e-4, 1e4]
//   W_hat[o, i] = (q[o, i] - zeros[o, g]) * clamp(scales[o, g]),  g = floor(i / G)
//   dscales[o, g] += sum_{i in g} (q[o, i] - zeros[o, g]) * dW[o, i]   (f64 sum in i order)
// The products are exact and rounded as in the twins (src/quant/primitives.ts dequantize,
// src/quant/ref/packed-linear.ts), so both kernels match them bit for bit. Tiles: rows
// [o0, o0 + rows) and columns [i0, i0 + cols) of the (O, I) matrix, stored densely (rows, cols).
// Wrapper: src/ops/cuda/gptq.ts.

#include "bf16.cuh"

namespace eqat_gptq {

// Code q[o, i] read from column o of qweight (O words per packed row).
__device__ __forceinline__ int code_at(const int* qweight, int O, int o, long long i, int bits) {
  const long long bit = i * bits;
  const long long word = bit >> 5;
  const int shift = (int)(bit & 31);
  unsigned v = (unsigned)qweight[word * O + o] >> shift;
  if (shift + bits > 32) v |= (unsigned)qweight[(word + 1) * O + o] << (32 - shift);
  return (int)(v & ((1u << bits) - 1u));
}

// clamp(s, 1e-4, 1e4); NaN passes through, as the twin's clamp.
__device__ __forceinline__ float clamp_scale(float s) { return s < 1e-4f ? 1e-4f : (s > 1e4f ? 1e4f : s); }

__device__ __forceinline__ float dequant(const int* qweight, const unsigned char* zeros, const float* scales, int O, int I,
                                         int bits, int G, int o, int i) {
  const int groups = I / G;
  const long long gi = (long long)o * groups + i / G;
  return (float)(code_at(qweight, O, o, i, bits) - (int)zeros[gi]) * clamp_scale(scales[gi]);
}

}  // namespace eqat_gptq

// out (rows, cols) f32 = W_hat[o0 + r, i0 + c]; 1-D grid-stride over the tile, columns fastest
// (coalesced stores; the lanes of a warp read the same few qweight words).
extern "C" __global__ void eqat_gptq_dequant_f32(float* out, const int* qweight, const unsigned char* zeros,
                                                 const float* scales, int O, int I, int bits, int G, int o0, int i0,
                                                 int rows, int cols) {
  const long long n = (long long)rows * cols;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
    const int r = (int)(e / cols), c = (int)(e - (long long)r * cols);
    out[e] = eqat_gptq::dequant(qweight, zeros, scales, O, I, bits, G, o0 + r, i0 + c);
  }
}

// The same tile stored as bf16 (the f32 value rounded to nearest even).
extern "C" __global__ void eqat_gptq_dequant_bf16(unsigned short* out, const int* qweight, const unsigned char* zeros,
                                                  const float* scales, int O, int I, int bits, int G, int o0, int i0,
                                                  int rows, int cols) {
  const long long n = (long long)rows * cols;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
    const int r = (int)(e / cols), c = (int)(e - (long long)r * cols);
    out[e] = eqat::to_bf16(eqat_gptq::dequant(qweight, zeros, scales, O, I, bits, G, o0 + r, i0 + c));
  }
}

// dscales[o0 + r, i0/G + k] += sum over the k-th group of the tile of (q - z) * dW[r, c], for a
// dW tile (rows, cols) at (o0, i0) with i0 and cols multiples of G. One thread per (row, group),
// rows fastest (neighbouring threads read neighbouring qweight words); the G terms are summed in
// f64 in column order and added to dscales once.
extern "C" __global__ void eqat_gptq_scale_grad(float* dscales, const float* dW, const int* qweight,
                                                const unsigned char* zeros, int O, int I, int bits, int G, int o0,
                                                int i0, int rows, int cols) {
  const int groups = I / G, tile_groups = cols / G;
  const long long n = (long long)rows * tile_groups;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
    const int k = (int)(e / rows), r = (int)(e - (long long)k * rows);
    const int o = o0 + r, g = i0 / G + k;
    const long long gi = (long long)o * groups + g;
    const int z = zeros[gi];
    const float* drow = dW + (long long)r * cols + (long long)k * G;
    double s = 0.0;
    for (int j = 0; j < G; ++j) {
      s += (double)(eqat_gptq::code_at(qweight, O, o, (long long)g * G + j, bits) - z) * (double)drow[j];
    }
    dscales[gi] = (float)((double)dscales[gi] + s);
  }
}
