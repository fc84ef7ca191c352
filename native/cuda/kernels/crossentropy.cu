// Softmax cross-entropy over the vocabulary on CUDA (torch's cross_entropy with
// reduction='none', ignore_index=-100), rows = all leading dimensions of the logits (N, V):
//   loss[n]       = (max + log(sum_i exp(x[n,i] - max))) - x[n, target[n]]
//   dlogits[n, i] = scale * (exp(x[n,i] - max) / sum - [i == target[n]])   (OVERWRITES dlogits)
// A target of -100 gives loss 0 and a zero gradient row. A target outside [0, V) that is not
// -100 gives a NaN loss and a NaN gradient row (the wrapper normally rejects such targets before
// launching, see src/ops/cuda/crossentropy.ts). As in the twin src/ops/ref/crossentropy.ts,
// exp(x - max) is evaluated in f64 with x - max formed in f64, summed in f64, and the loss and
// gradient are formed in f64 and rounded once; the block's sums run in a tree order, so results
// match the twin to rounding, not bit for bit. Each pass reads an element before the same thread
// writes it, so dlogits may be logits (in place). Launch: one block per row (grid-stride over
// rows), blockDim.x a multiple of 32, at most 1024.

#include "reduce.cuh"

namespace eqat_ce {

constexpr int kIgnoreIndex = -100;

__device__ __forceinline__ float quiet_nan() { return __uint_as_float(0x7fc00000u); }

// The row's max and f64 sum of exp(x - max).
__device__ void row_stats(const float* x, int V, float& max_out, double& sum_out) {
  float m = __uint_as_float(0xff800000u);  // -inf
  for (int i = threadIdx.x; i < V; i += blockDim.x) m = eqat::max_nan(m, x[i]);
  m = eqat::block_max(m);
  double s = 0.0;
  for (int i = threadIdx.x; i < V; i += blockDim.x) s += exp((double)x[i] - (double)m);
  max_out = m;
  sum_out = eqat::block_sum(s);
}

// One row of the forward and/or backward (losses or dlogits may be null). Block-uniform control flow.
__device__ void row(float* losses, float* dlogits, const float* logits, const int* targets, int n, int V, double scale) {
  const long long base = (long long)n * V;
  const float* x = logits + base;
  const int t = targets[n];
  if (t == kIgnoreIndex || t < 0 || t >= V) {
    const float fill = t == kIgnoreIndex ? 0.0f : quiet_nan();
    if (losses && threadIdx.x == 0) losses[n] = fill;
    if (dlogits) for (int i = threadIdx.x; i < V; i += blockDim.x) dlogits[base + i] = fill;
    return;
  }
  const float target_logit = x[t];  // read before any thread overwrites the row
  float m;
  double sum;
  row_stats(x, V, m, sum);  // ends with a barrier: every thread has read target_logit
  if (losses && threadIdx.x == 0) losses[n] = (float)(((double)m + log(sum)) - (double)target_logit);
  if (dlogits) {
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
      const double p = exp((double)x[i] - (double)m) / sum;
      dlogits[base + i] = (float)(scale * (p - (i == t ? 1.0 : 0.0)));
    }
  }
}

}  // namespace eqat_ce

// losses (N) from logits (N, V) and targets (N).
extern "C" __global__ void eqat_cross_entropy_forward(float* losses, const float* logits, const int* targets, int N, int V) {
  for (int n = blockIdx.x; n < N; n += gridDim.x) eqat_ce::row(losses, nullptr, logits, targets, n, V, 0.0);
}

// dlogits (N, V) overwritten with scale * (softmax - onehot); dlogits may be logits.
extern "C" __global__ void eqat_cross_entropy_backward(float* dlogits, const float* logits, const int* targets, int N, int V,
                                                       double scale) {
  for (int n = blockIdx.x; n < N; n += gridDim.x) eqat_ce::row(nullptr, dlogits, logits, targets, n, V, scale);
}

// Both at once: the row's max and sum are computed once.
extern "C" __global__ void eqat_cross_entropy_forward_backward(float* losses, float* dlogits, const float* logits,
                                                               const int* targets, int N, int V, const double* scale) {
  const double s = *scale;  // from device memory, so a captured step takes each replay's value
  for (int n = blockIdx.x; n < N; n += gridDim.x) eqat_ce::row(losses, dlogits, logits, targets, n, V, s);
}
