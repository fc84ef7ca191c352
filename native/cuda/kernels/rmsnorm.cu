// RMSNorm on CUDA (Hugging Face LlamaRMSNorm in f32), rows = all leading dimensions:
//   rstd[n] = 1 / sqrt(mean_c(x[n,c]^2) + eps),   out[n,c] = weight[c] * (x[n,c] * rstd[n])
// and its backward, accumulating (+=) into dx and dweight. Sums run in f64 and the rounding
// points follow the reference twins in src/ops/ref/rmsnorm.ts (compiled with --fmad=false).
// Wrapper: src/ops/cuda/rmsnorm.ts. Launch: one block per row (blockDim.x a multiple of 32,
// at most 1024) for the forward and dx; 32 columns per block for dweight.

#include "bf16.cuh"
#include "reduce.cuh"

// out (rows, C), rstd (rows) from x (rows, C) and weight (C); block blockIdx.x handles row
// blockIdx.x (+ k * gridDim.x). With out16 given instead of out, the outputs are written
// rounded to bf16 (to_bf16: the bits a later f32 -> bf16 conversion would give), for GEMMs that
// read bf16 inputs.
extern "C" __global__ void eqat_rmsnorm_forward(float* out, unsigned short* out16, float* rstd, const float* x,
                                                const float* weight, int rows, int C, float eps) {
  for (int row = blockIdx.x; row < rows; row += gridDim.x) {
    const float* xr = x + (long long)row * C;
    double ss = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) ss += (double)xr[c] * (double)xr[c];
    ss = eqat::block_sum(ss);
    const float variance = (float)(ss / C);
    const float rs = (float)(1.0 / sqrt((double)(variance + eps)));
    if (threadIdx.x == 0) rstd[row] = rs;
    const long long base = (long long)row * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      const float y = weight[c] * (xr[c] * rs);
      if (out16) out16[base + c] = eqat::to_bf16(y);
      else out[base + c] = y;
    }
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

// dweight (C) += sum over rows of dout[n, c] * (x[n, c] * rstd[n]), rows in order for each column
// (as the twin). Launch: ceil(C / 32) blocks of 256 threads; block b owns columns 32b .. 32b + 31.
// The rows are taken kTileRows at a time: all 256 threads load the tile's dout and normed x
// coalesced into shared memory (many loads in flight), then one warp, a lane per column, adds the
// tile's rows in order. (One thread per column loading its own rows one by one kept too few loads
// in flight: C = 4096 columns are only 128 warps.)
namespace eqat_rmsnorm {
constexpr int kCols = 32;
constexpr int kTileRows = 128;
}  // namespace eqat_rmsnorm

extern "C" __global__ void eqat_rmsnorm_backward_dweight(float* dweight, const float* dout, const float* x,
                                                         const float* rstd, int rows, int C) {
  using eqat_rmsnorm::kCols;
  using eqat_rmsnorm::kTileRows;
  __shared__ float d_tile[kTileRows][kCols];
  __shared__ float normed_tile[kTileRows][kCols];
  for (int c0 = blockIdx.x * kCols; c0 < C; c0 += gridDim.x * kCols) {
    const int lane_col = c0 + (int)threadIdx.x;
    float acc = threadIdx.x < kCols && lane_col < C ? dweight[lane_col] : 0.0f;
    for (int r0 = 0; r0 < rows; r0 += kTileRows) {
      const int nr = rows - r0 < kTileRows ? rows - r0 : kTileRows;
      __syncthreads();  // the summing warp is done with the previous tile
      for (int i = threadIdx.x; i < nr * kCols; i += blockDim.x) {
        const int r = i / kCols, c = i % kCols;
        if (c0 + c < C) {
          const long long e = (long long)(r0 + r) * C + c0 + c;
          d_tile[r][c] = dout[e];
          normed_tile[r][c] = x[e] * rstd[r0 + r];
        }
      }
      __syncthreads();
      if (threadIdx.x < kCols && lane_col < C) {
        for (int r = 0; r < nr; ++r) acc = (float)((double)acc + (double)d_tile[r][threadIdx.x] * (double)normed_tile[r][threadIdx.x]);
      }
    }
    if (threadIdx.x < kCols && lane_col < C) dweight[lane_col] = acc;
  }
}
