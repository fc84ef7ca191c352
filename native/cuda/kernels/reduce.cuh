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

__device__ __forceinline__ float max_nan(float a, float b) { return (a > b || a != a) ? a : b; }

// The reductions: how two values combine, and what the lanes past the last warp contribute.
struct SumF64 {
  typedef double T;
  static __device__ __forceinline__ double combine(double a, double b) { return a + b; }
  static __device__ __forceinline__ double pad(const double*) { return 0.0; }
};
struct MaxNanF32 {
  typedef float T;
  static __device__ __forceinline__ float combine(float a, float b) { return max_nan(a, b); }
  // max has no finite identity, but repeating a value already in the set changes nothing
  static __device__ __forceinline__ float pad(const float* partial) { return partial[0]; }
};

template <class Op>
__device__ __forceinline__ typename Op::T warp_reduce(typename Op::T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = Op::combine(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Reduction of v over the block with Op; every thread receives the result.
template <class Op>
__device__ typename Op::T block_reduce(typename Op::T v) {
  typedef typename Op::T T;
  __shared__ T partial[32];
  __shared__ T total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_reduce<Op>(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T t = lane < (int)(blockDim.x >> 5) ? partial[lane] : Op::pad(partial);
    t = warp_reduce<Op>(t);
    if (lane == 0) total = t;
  }
  __syncthreads();
  const T result = total;
  __syncthreads();  // partial and total are reused by the next call
  return result;
}

// Sum of v over the block (f64); every thread receives the total.
__device__ __forceinline__ double block_sum(double v) { return block_reduce<SumF64>(v); }

// Max of v over the block (NaN wins); every thread receives it.
__device__ __forceinline__ float block_max(float v) { return block_reduce<MaxNanF32>(v); }

}  // namespace eqat

#endif  // EQAT_REDUCE_CUH
