// One AdamW element update (torch.optim.AdamW semantics; the formulas and the scalars' layout are
// in adamw.cu's header), shared by eqat_adamw_step and the fake-quant backward that updates a
// linear's weights as their gradients form (fakequant.cu). Every operation rounds to f32 except
// the moment lerp's fused multiply-add, formed in f64 and rounded once, as the twin adamwStepRef.
#ifndef EQAT_ADAMW_CUH
#define EQAT_ADAMW_CUH

namespace eqat {

struct AdamWScalars {
  float decay, w1, beta2, w2, bc2_sqrt, eps, neg_step;
  bool w1_small;
};

// hyper = [decay, w1, w1_small (0 or 1), beta2, w2 = 1 - beta2, sqrt(1 - beta2^step), eps, neg_step]
__device__ __forceinline__ AdamWScalars load_adamw_scalars(const float* hyper) {
  AdamWScalars h;
  h.decay = hyper[0];
  h.w1 = hyper[1];
  h.w1_small = hyper[2] != 0.0f;
  h.beta2 = hyper[3];
  h.w2 = hyper[4];
  h.bc2_sqrt = hyper[5];
  h.eps = hyper[6];
  h.neg_step = hyper[7];
  return h;
}

// p, m, v updated in place from gradient g.
__device__ __forceinline__ void adamw_update(float& p, float g, float& m, float& v, const AdamWScalars& h) {
  float pi = p * h.decay;
  const float mo = m;
  const float diff = g - mo;
  const float mi = h.w1_small ? (float)((double)h.w1 * (double)diff + (double)mo) : (float)((double)(h.w1 - 1.0f) * (double)diff + (double)g);
  const float vi = v * h.beta2 + (h.w2 * g) * g;
  const float denom = sqrtf(vi) / h.bc2_sqrt + h.eps;
  pi = pi + (h.neg_step * mi) / denom;
  p = pi;
  m = mi;
  v = vi;
}

}  // namespace eqat

#endif  // EQAT_ADAMW_CUH
