// SwiGLU on CUDA, the gated activation of the Llama MLP, elementwise over n values:
//   out = silu(gate) * up,   silu(g) = g / (1 + exp(-g))
// and its backward, accumulating (+=) dgate = dout * up * silu'(gate) and dup = dout * silu(gate).
// The exponential is evaluated in f64 and the rounding points follow the reference twins in
// src/ops/ref/swiglu.ts (compiled with --fmad=false). Wrapper: src/ops/cuda/swiglu.ts.
#include "bf16.cuh"

// With out16 given instead of out, the outputs are written rounded to bf16 (to_bf16), for a
// GEMM that reads bf16 inputs.
extern "C" __global__ void eqat_swiglu_forward(float* out, unsigned short* out16, const float* gate, const float* up,
                                               long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float g = gate[i];
    const float e = (float)exp(-(double)g);
    const float silu = g / (1.0f + e);
    const float y = silu * up[i];
    if (out16) out16[i] = eqat::to_bf16(y);
    else out[i] = y;
  }
}

extern "C" __global__ void eqat_swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                                                const float* up, long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const double g = gate[i], u = up[i], d = dout[i];
    const double s = 1.0 / (1.0 + exp(-g));  // sigmoid
    dgate[i] = (float)((double)dgate[i] + d * u * (s + g * s * (1.0 - s)));
    dup[i] = (float)((double)dup[i] + d * g * s);
  }
}
