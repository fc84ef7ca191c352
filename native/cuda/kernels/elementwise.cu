// Elementwise CUDA kernels (f32 and bf16 storage): scaling and the f32 <-> bf16 conversions
// used for bf16 compute copies of f32 master weights. Compiled at run time by NVRTC (see
// src/engine/cuda.ts); no headers. Launched by src/ops/cuda/elementwise.ts with 1-D grids and
// grid-stride loops over 64-bit indices.
//
// Twins: scale -> src/ops/ref/elementwise.ts scaleRef; conversions -> f32ToBf16Ref /
// bf16ToF32Ref in src/engine/dtype.ts (round to nearest even, NaN kept quiet).

// out[i] = alpha * x[i] for i < n (out may be x).
extern "C" __global__ void eqat_scale(float* out, const float* x, float alpha, long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = alpha * x[i];
}

// out[i] = bf16(x[i]), round to nearest even; NaN becomes a quiet NaN with the same sign.
extern "C" __global__ void eqat_f32_to_bf16(unsigned short* out, const float* x, long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const unsigned u = __float_as_uint(x[i]);
    unsigned short h;
    if ((u & 0x7fffffffu) > 0x7f800000u) h = (unsigned short)((u >> 16) | 0x40u);
    else h = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    out[i] = h;
  }
}

// out[i] = f32(x[i]) (exact).
extern "C" __global__ void eqat_bf16_to_f32(float* out, const unsigned short* x, long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = __uint_as_float(((unsigned)x[i]) << 16);
  }
}
