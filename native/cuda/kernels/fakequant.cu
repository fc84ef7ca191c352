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

// Fake-quantized value of x with clamped step size s and rounded zero point zr.
__device__ __forceinline__ float fake_quant_value(float x, float s, float zr, float qm) {
  const float q = clamp_keep_nan(rintf(x / s) + zr, 0.0f, qm);
  return (q - zr) * s;
}

// Fake-quantized value of element e of w, in group g = e / G.
__device__ __forceinline__ float fake_quant_at(const float* w, const float* scale, const float* zero, long long e, long long g,
                                               float qm) {
  return fake_quant_value(w[e], clamp_scale(scale[g]), round_zero(zero[g], qm), qm);
}

// e / G, in 32-bit arithmetic when the whole array is indexable so (a 64-bit division costs
// several times more and runs once per element).
__device__ __forceinline__ long long group_of(long long e, int G, long long n) {
  return n <= 0xffffffffLL ? (long long)((unsigned)e / (unsigned)G) : e / G;
}

}  // namespace eqat_fq

// out (n) = fake-quantized w (n), n = groups * G; one thread per element.
extern "C" __global__ void eqat_fakequant_forward(float* out, const float* w, const float* scale, const float* zero,
                                                  long long n, int G, int qmax) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
    out[e] = eqat_fq::fake_quant_at(w, scale, zero, e, eqat_fq::group_of(e, G, n), (float)qmax);
  }
}

// The same, stored as bf16 (the f32 value rounded to nearest even): the weight tile of a bf16
// GEMM, with no f32 tile and no conversion pass.
extern "C" __global__ void eqat_fakequant_forward_bf16(unsigned short* out, const float* w, const float* scale, const float* zero,
                                                       long long n, int G, int qmax) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
    out[e] = eqat::to_bf16(eqat_fq::fake_quant_at(w, scale, zero, e, eqat_fq::group_of(e, G, n), (float)qmax));
  }
}

// The same, eight consecutive elements of one group per thread (G a multiple of 8, w 16-byte and
// out 16-byte aligned; the wrapper checks): one scale / zero lookup per eight elements, two
// 16-byte loads and one 16-byte store.
extern "C" __global__ void eqat_fakequant_forward_bf16_x8(unsigned short* out, const float* w, const float* scale,
                                                          const float* zero, long long n, int G, int qmax) {
  const float qm = (float)qmax;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n / 8; i += stride) {
    const long long g = eqat_fq::group_of(i * 8, G, n);
    const float s = eqat_fq::clamp_scale(scale[g]);
    const float zr = eqat_fq::round_zero(zero[g], qm);
    const float4 a = reinterpret_cast<const float4*>(w)[2 * i], b = reinterpret_cast<const float4*>(w)[2 * i + 1];
    const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    unsigned packed[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const unsigned lo = eqat::to_bf16(eqat_fq::fake_quant_value(v[2 * k], s, zr, qm));
      const unsigned hi = eqat::to_bf16(eqat_fq::fake_quant_value(v[2 * k + 1], s, zr, qm));
      packed[k] = lo | (hi << 16);
    }
    uint4 o;
    o.x = packed[0];
    o.y = packed[1];
    o.z = packed[2];
    o.w = packed[3];
    reinterpret_cast<uint4*>(out)[i] = o;
  }
}

// Straight-through backward:
//   in range (0 <= round(u) + z_r <= qmax, u = w / s_c): dW = dout, ds += dout * (round(u) - u)
//   clipped:                                            dW = 0,    ds += dout * (q - z_r), dz -= dout * s_c
// with dscale and dzero (groups) accumulated (+=). Each group's sums run over its G elements in
// order, as the twin's do, so the result is the twin's bit for bit. What happens to an element's
// weight gradient dW is the Sink's: eqat_fakequant_backward adds it into dw (or drops it), and
// eqat_fakequant_backward_adamw applies AdamW to the weight with it right away, as an AdamW step
// over a zeroed-then-accumulated gradient buffer would, without the buffer.
//
// Launch: blocks of any size; each block takes tiles of kTileGroups consecutive groups. A tile
// is visited kChunk elements of every group at a time: all threads read dout and w coalesced,
// hand each element's weight gradient to the sink and leave its two group terms in shared
// memory; then one thread per group adds its kChunk terms in order. (One thread walking its own
// group through global memory reads addresses G floats apart across a warp, and ran about ten
// times slower than this.)
#include "adamw.cuh"

namespace eqat_fq {
constexpr int kTileGroups = 32;
constexpr int kChunk = 64;

// dw[e] += g (dw null: the gradient is not wanted). g is +0 for a clipped element, so -0 in dw
// turns into +0 there, as the twin's += 0 does.
struct AccumulateGrad {
  float* dw;
  __device__ void operator()(long long e, float g) const {
    if (dw) dw[e] = dw[e] + g;
  }
};

// AdamW on w[e] with the gradient a zeroed buffer would hold after accumulating g (0 + g:
// -0 becomes +0), moments m[e], v[e].
struct AdamWUpdate {
  float* w;
  float* m;
  float* v;
  eqat::AdamWScalars h;
  __device__ void operator()(long long e, float g) const { eqat::adamw_update(w[e], 0.0f + g, m[e], v[e], h); }
};

template <typename Sink>
__device__ void backward_tiles(const Sink& sink, float* dscale, float* dzero, const float* dout, const float* w,
                               const float* scale, const float* zero, long long groups, int G, int qmax) {
  __shared__ float ds_term[kTileGroups][kChunk + 1];  // +1: the summing threads read distinct banks
  __shared__ float dz_term[kTileGroups][kChunk + 1];
  __shared__ unsigned char clipped[kTileGroups][kChunk + 1];
  __shared__ float s_c[kTileGroups], z_r[kTileGroups];
  const float qm = (float)qmax;
  for (long long g0 = (long long)blockIdx.x * kTileGroups; g0 < groups; g0 += (long long)gridDim.x * kTileGroups) {
    const int ng = (int)(groups - g0 < kTileGroups ? groups - g0 : kTileGroups);
    __syncthreads();  // the previous tile's summing threads are done with s_c and z_r
    if (threadIdx.x < ng) {
      s_c[threadIdx.x] = clamp_scale(scale[g0 + threadIdx.x]);
      z_r[threadIdx.x] = round_zero(zero[g0 + threadIdx.x], qm);
    }
    float ds = 0.0f, dz = 0.0f;  // thread t < ng: the sums of group g0 + t
    for (int c0 = 0; c0 < G; c0 += kChunk) {
      const int cn = G - c0 < kChunk ? G - c0 : kChunk;
      __syncthreads();  // s_c / z_r written; the previous chunk's terms consumed
      for (int i = threadIdx.x; i < ng * cn; i += blockDim.x) {
        const int lg = i / cn, j = i - lg * cn;
        const long long e = (g0 + lg) * G + c0 + j;
        const float s = s_c[lg], zr = z_r[lg];
        const float grad = dout[e];
        const float u = w[e] / s;  // read before the sink may update w[e]
        const float r = rintf(u);
        const float code = r + zr;
        if (code >= 0.0f && code <= qm) {
          ds_term[lg][j] = grad * (r - u);
          clipped[lg][j] = 0;
          sink(e, grad);
        } else {
          const float q = code < 0.0f ? 0.0f : qm;
          ds_term[lg][j] = grad * (q - zr);
          dz_term[lg][j] = grad * s;
          clipped[lg][j] = 1;
          sink(e, 0.0f);
        }
      }
      __syncthreads();
      if (threadIdx.x < ng) {
        const int t = threadIdx.x;
        for (int j = 0; j < cn; ++j) {
          ds = ds + ds_term[t][j];
          if (clipped[t][j]) dz = dz - dz_term[t][j];
        }
      }
    }
    if (threadIdx.x < ng) {
      dscale[g0 + threadIdx.x] = dscale[g0 + threadIdx.x] + ds;
      dzero[g0 + threadIdx.x] = dzero[g0 + threadIdx.x] + dz;
    }
  }
}

}  // namespace eqat_fq

// dw (n) += weight gradient (dw may be null: only dscale and dzero are wanted).
extern "C" __global__ void eqat_fakequant_backward(float* dw, float* dscale, float* dzero, const float* dout,
                                                   const float* w, const float* scale, const float* zero,
                                                   long long groups, int G, int qmax) {
  eqat_fq::backward_tiles(eqat_fq::AccumulateGrad{dw}, dscale, dzero, dout, w, scale, zero, groups, G, qmax);
}

// w (n), m, v updated by AdamW (scalars in `hyper`, see adamw.cu) with the weight gradient.
extern "C" __global__ void eqat_fakequant_backward_adamw(float* w, float* m, float* v, const float* hyper, float* dscale,
                                                         float* dzero, const float* dout, const float* scale,
                                                         const float* zero, long long groups, int G, int qmax) {
  const eqat_fq::AdamWUpdate sink{w, m, v, eqat::load_adamw_scalars(hyper)};
  eqat_fq::backward_tiles(sink, dscale, dzero, dout, w, scale, zero, groups, G, qmax);
}
