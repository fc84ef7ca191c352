// Fake quantization for Block-AP / E2E-QP training on CUDA: the forward
//   out = (clamp(round(w / s_c) + z_r, 0, qmax) - z_r) * s_c
// and its straight-through backward, over a weight (O, I) whose groups of G consecutive inputs
// share one scale and zero (O, I/G); group g is the contiguous run w[g*G .. g*G + G).
// Same math, operation for operation in f32 with round-half-to-even, as the reference twins
// fakeQuantForwardRef / fakeQuantBackwardRef in src/quant/primitives.ts (compiled with
// --fmad=false so no multiply-add is fused). Wrapper: src/ops/cuda/fakequant.ts.
//   s_c = clamp(s, 1e-4, 1e4)    z_r = clamp(round(z), 0, qmax)    (NaN passes both clamps)

#include "bf16.cuh"

namespace eqat_fq {

// x clamped to [lo, hi]; NaN passes through (as the twin's clamp).
__device__ __forceinline__ float clamp_keep_nan(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

__device__ __forceinline__ float clamp_scale(float s) { return clamp_keep_nan(s, 1e-4f, 1e4f); }

__device__ __forceinline__ float round_zero(float z, float qm) { return clamp_keep_nan(rintf(z), 0.0f, qm); }

// Fake-quantized value of element e of w.
__device__ __forceinline__ float fake_quant_at(const float* w, const float* scale, const float* zero, long long e, int G, float qm) {
  const long long g = e / G;
  const float s = clamp_scale(scale[g]);
  const float zr = round_zero(zero[g], qm);
  const float q = clamp_keep_nan(rintf(w[e] / s) + zr, 0.0f, qm);
  return (q - zr) * s;
}

}  // namespace eqat_fq

// out (n) = fake-quantized w (n), n = groups * G; one thread per element.
extern "C" __global__ void eqat_fakequant_forward(float* out, const float* w, const float* scale, const float* zero,
                                                  long long n, int G, int qmax) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
    out[e] = eqat_fq::fake_quant_at(w, scale, zero, e, G, (float)qmax);
  }
}

// The same, stored as bf16 (the f32 value rounded to nearest even): the weight tile of a bf16
// GEMM, with no f32 tile and no conversion pass.
extern "C" __global__ void eqat_fakequant_forward_bf16(unsigned short* out, const float* w, const float* scale, const float* zero,
                                                       long long n, int G, int qmax) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
    out[e] = eqat::to_bf16(eqat_fq::fake_quant_at(w, scale, zero, e, G, (float)qmax));
  }
}

// Straight-through backward, accumulating (+=) into dw (n), dscale and dzero (groups); one
// thread per group, summing its G elements in order (as the twin does):
//   in range (0 <= round(u) + z_r <= qmax, u = w / s_c): dw += dout, ds += dout * (round(u) - u)
//   clipped:                                            ds += dout * (q - z_r), dz -= dout * s_c
extern "C" __global__ void eqat_fakequant_backward(float* dw, float* dscale, float* dzero, const float* dout,
                                                   const float* w, const float* scale, const float* zero,
                                                   long long groups, int G, int qmax) {
  const float qm = (float)qmax;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
    const float s = eqat_fq::clamp_scale(scale[g]);
    const float zr = eqat_fq::round_zero(zero[g], qm);
    float ds = 0.0f, dz = 0.0f;
    for (long long e = g * G; e < (g + 1) * G; ++e) {
      const float grad = dout[e];
      const float u = w[e] / s;
      const float r = rintf(u);
      const float code = r + zr;
      if (code >= 0.0f && code <= qm) {
        dw[e] = dw[e] + grad;
        ds = ds + grad * (r - u);
      } else {
        dw[e] = dw[e] + 0.0f;  // turns -0 into +0, as the twin's += 0 does
        const float q = code < 0.0f ? 0.0f : qm;
        ds = ds + grad * (q - zr);
        dz = dz - grad * s;
      }
    }
    dscale[g] = dscale[g] + ds;
    dzero[g] = dzero[g] + dz;
  }
}
