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

extern "C" __global__ void eqat_adamw_step(float* param, const float* grad, float* m, float* v, long long n,
                                           const float* hyper) {
  const float decay = hyper[0], w1 = hyper[1], beta2 = hyper[3], w2 = hyper[4], bc2_sqrt = hyper[5], eps = hyper[6],
              neg_step = hyper[7];
  const bool w1_small = hyper[2] != 0.0f;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float gi = grad[i];
    float pi = param[i] * decay;
    const float diff = gi - m[i];
    const float mi = w1_small ? (float)((double)w1 * (double)diff + (double)m[i])
                              : (float)((double)(w1 - 1.0f) * (double)diff + (double)gi);
    const float vi = v[i] * beta2 + (w2 * gi) * gi;
    const float denom = sqrtf(vi) / bc2_sqrt + eps;
    pi = pi + (neg_step * mi) / denom;
    param[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}
