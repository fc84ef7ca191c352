// Whole-array reductions on CUDA: the sum of squares (the E2E-QP gradient norm) and the
// Block-AP reconstruction loss, mean squared error (torch.nn.MSELoss, mean reduction), with
// its accumulating backward. Wrapper: src/ops/cuda/reduce.ts. Twins: src/ops/ref/reduce.ts
// sumSquaresRef / mseForwardRef / mseBackwardRef.
//
// The sums write one f64 partial per block; the wrapper adds the partials on the host in block
// order, so a step needs one small download for its loss or norm and no atomics (the result is
// the same on every run). Launch: blockDim.x a multiple of 32, grid-stride over elements.

#include "reduce.cuh"

// partial[blockIdx.x] = sum over this block's elements of ((double)a[i] - (double)b[i])^2.
extern "C" __global__ void eqat_mse_partial(double* partial, const float* a, const float* b, long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  double s = 0.0;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const double d = (double)a[i] - (double)b[i];
    s += d * d;
  }
  s = eqat::block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// partial[blockIdx.x] = sum over this block's elements of (double)a[i]^2.
extern "C" __global__ void eqat_sumsq_partial(double* partial, const float* a, long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  double s = 0.0;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const double v = (double)a[i];
    s += v * v;
  }
  s = eqat::block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// da[i] += coef * (a[i] - b[i]) in f32 (coef = scale * 2 / n, rounded to f32 by the wrapper).
extern "C" __global__ void eqat_mse_backward(float* da, const float* a, const float* b, float coef, long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float d = a[i] - b[i];
    const float g = coef * d;
    da[i] = da[i] + g;
  }
}
