// Elementwise CUDA kernels (f32 and bf16 storage): scaling, sums, copies, bias add and its
// column-sum backward, and the f32 <-> bf16 conversions used for bf16 compute copies of f32
// master weights. Compiled at run time by NVRTC (see
// src/engine/cuda.ts); no headers. Launched by src/ops/cuda/elementwise.ts with 1-D grids and
// grid-stride loops over 64-bit indices.
//
// Twins: scale, add, copy, addBias, biasBackward -> src/ops/ref/elementwise.ts (scaleRef, addRef,
// copyRef, addBiasRef, biasBackwardRef); conversions -> f32ToBf16Ref /
// bf16ToF32Ref in src/engine/dtype.ts (round to nearest even, NaN kept quiet).

// out[i] = alpha * x[i] for i < n (out may be x).
#include "bf16.cuh"

extern "C" __global__ void eqat_scale(float* out, const float* x, float alpha, long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = alpha * x[i];
}

// out[i] = a[i] + b[i] for i < n (out may be a or b).
extern "C" __global__ void eqat_add(float* out, const float* a, const float* b, long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = a[i] + b[i];
}

// out[i] = x[i] for i < n (the bits, NaN payloads included).
extern "C" __global__ void eqat_copy(unsigned* out, const unsigned* x, long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = x[i];
}

// out[r, c] += bias[c] for out (rows, cols).
extern "C" __global__ void eqat_add_bias(float* out, const float* bias, long long rows, int cols) {
  const long long n = rows * cols;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = out[i] + bias[i % cols];
}

// dbias[c] += sum over r of dout[r, c] for dout (rows, cols): one thread per column, rows in
// order, the sum in f64 and added to dbias with one rounding (as the twin).
extern "C" __global__ void eqat_bias_backward(float* dbias, const float* dout, long long rows, int cols) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
    double s = 0.0;
    for (long long r = 0; r < rows; r++) s += (double)dout[r * cols + c];
    dbias[c] = (float)((double)dbias[c] + s);
  }
}

// out[i] = bf16(x[i]), round to nearest even; NaN becomes a quiet NaN with the same sign.
extern "C" __global__ void eqat_f32_to_bf16(unsigned short* out, const float* x, long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = eqat::to_bf16(x[i]);
  }
}

// The same, four elements per thread through 16-byte loads and 8-byte stores (x 16-byte and out
// 8-byte aligned; the wrapper checks); the last n % 4 elements one per thread.
extern "C" __global__ void eqat_f32_to_bf16_x4(unsigned short* out, const float* x, long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long quads = n / 4;
  for (long long i = first; i < quads; i += stride) {
    const float4 v = reinterpret_cast<const float4*>(x)[i];
    ushort4 o;
    o.x = eqat::to_bf16(v.x);
    o.y = eqat::to_bf16(v.y);
    o.z = eqat::to_bf16(v.z);
    o.w = eqat::to_bf16(v.w);
    reinterpret_cast<ushort4*>(out)[i] = o;
  }
  for (long long i = quads * 4 + first; i < n; i += stride) out[i] = eqat::to_bf16(x[i]);
}

// out[i] = f32(x[i]) (exact).
extern "C" __global__ void eqat_bf16_to_f32(float* out, const unsigned short* x, long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = __uint_as_float(((unsigned)x[i]) << 16);
  }
}
