// Block-wide reductions shared by the kernels (RMSNorm, cross-entropy, the MSE loss, attention's
// softmax rows): warp shuffles, then one partial per warp in shared memory. Every thread
// receives the result. Requires blockDim.x to be a multiple of 32 (at most 1024) and
// block-uniform control flow at each call. Sums run in f64; max has Math.max semantics (NaN wins).
//
// Kernel files include this with `#include "reduce.cuh"`; the run-time compiler gets each file
// with its includes expanded in place (src/engine/cuda.ts kernelSource), so NVRTC needs no
// include paths.
#ifndef EQAT_REDUCE_CUH
#define EQAT_REDUCE_CUH

namespace eqat {

__device__ __forceinline__ double warp_sum(double v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum of v over the block; every thread receives the total.
__device__ double block_sum(double v) {
  __shared__ double partial[32];
  __shared__ double total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    double t = lane < (int)(blockDim.x >> 5) ? partial[lane] : 0.0;
    t = warp_sum(t);
    if (lane == 0) total = t;
  }
  __syncthreads();
  const double result = total;
  __syncthreads();  // partial and total are reused by the next call
  return result;
}

__device__ __forceinline__ float max_nan(float a, float b) { return (a > b || a != a) ? a : b; }

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Max of v over the block; every thread receives it.
__device__ float block_max(float v) {
  __shared__ float partial[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_max(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float t = lane < (int)(blockDim.x >> 5) ? partial[lane] : partial[0];
    t = warp_max(t);
    if (lane == 0) total = t;
  }
  __syncthreads();
  const float result = total;
  __syncthreads();  // partial and total are reused by the next call
  return result;
}

}  // namespace eqat

#endif  // EQAT_REDUCE_CUH
