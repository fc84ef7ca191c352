// RMSNorm on CUDA (Hugging Face LlamaRMSNorm in f32), rows = all leading dimensions:
//   rstd[n] = 1 / sqrt(mean_c(x[n,c]^2) + eps),   out[n,c] = weight[c] * (x[n,c] * rstd[n])
// and its backward, accumulating (+=) into dx and dweight. Sums run in f64 and the rounding
// points follow the reference twins in src/ops/ref/rmsnorm.ts (compiled with --fmad=false).
// Wrapper: src/ops/cuda/rmsnorm.ts. Launch: one block per row (blockDim.x a multiple of 32,
// at most 1024) for the forward and dx; one thread per column for dweight.

#include "reduce.cuh"

// out (rows, C), rstd (rows) from x (rows, C) and weight (C); block blockIdx.x handles row
// blockIdx.x (+ k * gridDim.x).
extern "C" __global__ void eqat_rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight,
                                                int rows, int C, float eps) {
  for (int row = blockIdx.x; row < rows; row += gridDim.x) {
    const float* xr = x + (long long)row * C;
    double ss = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) ss += (double)xr[c] * (double)xr[c];
    ss = eqat::block_sum(ss);
    const float variance = (float)(ss / C);
    const float rs = (float)(1.0 / sqrt((double)(variance + eps)));
    if (threadIdx.x == 0) rstd[row] = rs;
    float* orow = out + (long long)row * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) orow[c] = weight[c] * (xr[c] * rs);
  }
}

// dx (rows, C) += d out / d x given dout (rows, C), x, weight (C) and the forward's rstd (rows).
//   dx[c] += rs * dout[c] * w[c] - rs^3 * x[c] * sum_j(dout[j] * w[j] * x[j]) / C
extern "C" __global__ void eqat_rmsnorm_backward_dx(float* dx, const float* dout, const float* x, const float* weight,
                                                    const float* rstd, int rows, int C) {
  for (int row = blockIdx.x; row < rows; row += gridDim.x) {
    const long long base = (long long)row * C;
    double dot = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dot += (double)dout[base + c] * (double)weight[c] * (double)x[base + c];
    dot = eqat::block_sum(dot);
    const double rs = rstd[row];
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      const double xc = x[base + c];
      const double grad = rs * (double)dout[base + c] * (double)weight[c] - (rs * rs * rs * xc * dot) / C;
      dx[base + c] = (float)((double)dx[base + c] + grad);
    }
  }
}

// dweight (C) += sum over rows of dout[n, c] * (x[n, c] * rstd[n]); one thread per column,
// rows in order (as the twin).
extern "C" __global__ void eqat_rmsnorm_backward_dweight(float* dweight, const float* dout, const float* x,
                                                         const float* rstd, int rows, int C) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += gridDim.x * blockDim.x) {
    float acc = dweight[c];
    for (int row = 0; row < rows; ++row) {
      const long long i = (long long)row * C + c;
      const float normed = x[i] * rstd[row];
      acc = (float)((double)acc + (double)dout[i] * (double)normed);
    }
    dweight[c] = acc;
  }
}
