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
// dW tile (rows, cols) at (o0, i0) with i0 and cols multiples of G. The G terms of a group are
// summed in f64 in column order and added to dscales once.
//
// Block (256 threads): 32 rows and a span of the tile's columns at a time: as many whole groups as
// fit in kScaleChunk columns, or one group when G is wider. The span goes through shared memory
// kScaleChunk columns at a time, read coalesced along rows by every thread; then the threads of
// lane r sum row r's groups from shared memory, each thread every 8th group of the span (lanes
// are rows: the row stride of kScaleChunk + 1 floats puts them in different banks, and their
// qweight reads are neighbouring words). A group wider than a chunk is summed by one thread per
// row, its sum carried from chunk to chunk. Grid-stride over the (row block, span) tiles.
namespace eqat_gptq {
constexpr int kScaleRows = 32, kScaleChunk = 256, kScaleThreads = 256, kScaleSlots = kScaleThreads / kScaleRows;
__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }

// Adds (q - z) * chunk[r][c] for columns [lo, hi) of the staged chunk to s; column c of the
// chunk is column i of the matrix at i = iChunk + c.
__device__ __forceinline__ double group_terms(double s, const float (*chunk)[kScaleChunk + 1], const int* qweight, int O, int o,
                                              long long iChunk, int r, int lo, int hi, int bits, int z) {
  for (int c = lo; c < hi; ++c) s += (double)(code_at(qweight, O, o, iChunk + c, bits) - z) * (double)chunk[r][c];
  return s;
}
}  // namespace eqat_gptq

extern "C" __global__ __launch_bounds__(256) void eqat_gptq_scale_grad(float* dscales, const float* dW, const int* qweight,
                                                                       const unsigned char* zeros, int O, int I, int bits,
                                                                       int G, int o0, int i0, int rows, int cols) {
  using namespace eqat_gptq;
  __shared__ float chunk[kScaleRows][kScaleChunk + 1];
  const int groups = I / G, tileGroups = cols / G;
  const int groupsPer = G >= kScaleChunk ? 1 : kScaleChunk / G;  // whole groups per span
  const int rowBlocks = (rows + kScaleRows - 1) / kScaleRows, spans = (tileGroups + groupsPer - 1) / groupsPer;
  const int t = threadIdx.x, r = t % kScaleRows, slot = t / kScaleRows;
  for (long long b = blockIdx.x; b < (long long)rowBlocks * spans; b += gridDim.x) {
    const int r0 = (int)(b % rowBlocks) * kScaleRows, k0 = (int)(b / rowBlocks) * groupsPer;
    const int nr = imin(kScaleRows, rows - r0), ng = imin(groupsPer, tileGroups - k0);
    const int cBegin = k0 * G, width = ng * G;
    const int o = o0 + r0 + r, gFirst = i0 / G + k0;
    double carry = 0.0;  // the one group of a span wider than a chunk
    for (int cc = 0; cc < width; cc += kScaleChunk) {
      const int nc = imin(kScaleChunk, width - cc);
      __syncthreads();  // the previous chunk has been read
      for (int e = t; e < kScaleRows * kScaleChunk; e += kScaleThreads) {
        const int rr = e / kScaleChunk, c = e - rr * kScaleChunk;
        chunk[rr][c] = (rr < nr && c < nc) ? dW[(long long)(r0 + rr) * cols + cBegin + cc + c] : 0.0f;
      }
      __syncthreads();
      if (r >= nr) continue;
      const long long iChunk = (long long)i0 + cBegin + cc;
      if (width <= kScaleChunk) {  // whole groups in this one chunk: each thread takes every 8th
        for (int k = slot; k < ng; k += kScaleSlots) {
          const long long gi = (long long)o * groups + gFirst + k;
          const double s = group_terms(0.0, chunk, qweight, O, o, iChunk, r, k * G, (k + 1) * G, bits, zeros[gi]);
          dscales[gi] = (float)((double)dscales[gi] + s);
        }
      } else if (slot == 0) {
        carry = group_terms(carry, chunk, qweight, O, o, iChunk, r, 0, nc, bits, zeros[(long long)o * groups + gFirst]);
      }
    }
    if (width > kScaleChunk && slot == 0 && r < nr) {
      const long long gi = (long long)o * groups + gFirst;
      dscales[gi] = (float)((double)dscales[gi] + carry);
    }
  }
}
