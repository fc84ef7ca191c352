// Fused AdamW step on CUDA over a flat f32 range (a parameter tensor, or a slice of a parameter
// arena with its gradient and moment buffers laid out alike), torch.optim.AdamW semantics:
//   p = p * (1 - lr*wd)
//   m = lerp(m, g, 1 - beta1)        (fma(w1, g - m, m) for |w1| < 0.5, else fma(w1 - 1, g - m, g),
//                                     the fused multiply-add formed in f64 and rounded once)
//   v = v * beta2 + ((1 - beta2) * g) * g
//   p = p + ((-lr / (1 - beta1^step)) * m) / (sqrt(v) / sqrt(1 - beta2^step) + eps)
// Every other operation rounds to f32 (--fmad=false), matching the twin adamwStepRef in
// src/ops/ref/adamw.ts. The per-step scalars are computed on the host in f64, rounded to f32
// once and read from device memory (src/ops/cuda/adamw.ts writes them before the step), so a
// step captured in a CUDA graph uses each replay's learning rate and bias corrections:
//   hyper = [decay, w1, w1_small (0 or 1), beta2, w2 = 1 - beta2, sqrt(1 - beta2^step), eps,
//            neg_step = -lr / (1 - beta1^step)]
// The element update lives in adamw.cuh (shared with the fake-quant backward that updates a
// linear's weights as their gradients form).

#include "adamw.cuh"

extern "C" __global__ void eqat_adamw_step(float* param, const float* grad, float* m, float* v, long long n,
                                           const float* hyper) {
  const eqat::AdamWScalars h = eqat::load_adamw_scalars(hyper);
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    eqat::adamw_update(param[i], grad[i], m[i], v[i], h);
  }
}
