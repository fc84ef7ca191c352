// SwiGLU on CUDA, the gated activation of the Llama MLP, elementwise over n values:
//   out = silu(gate) * up,   silu(g) = g / (1 + exp(-g))
// and its backward, accumulating (+=) dgate = dout * up * silu'(gate) and dup = dout * silu(gate).
// The exponential is evaluated in f64 and the rounding points follow the reference twins in
// src/ops/ref/swiglu.ts (compiled with --fmad=false). Wrapper: src/ops/cuda/swiglu.ts.

extern "C" __global__ void eqat_swiglu_forward(float* out, const float* gate, const float* up, long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float g = gate[i];
    const float e = (float)exp(-(double)g);
    const float silu = g / (1.0f + e);
    out[i] = silu * up[i];
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
