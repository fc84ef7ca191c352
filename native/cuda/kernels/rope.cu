// Rotary position embedding on CUDA in the Hugging Face rotate_half layout (pairs (i, i + D/2)
// of each head), forward and backward, over x (B, T, H, D) and the host-computed tables cos,
// sin (T, D/2) of src/model/rope.ts ropeTables (default, linear and llama3 scaling are all just
// different tables here):
//   out[i]       = x[i] cos[t, i] - x[i + D/2] sin[t, i]
//   out[i + D/2] = x[i + D/2] cos[t, i] + x[i] sin[t, i]
// The backward applies the inverse rotation to dout and accumulates (+=) into dx. Each product
// and sum is rounded to f32 in the twin's order (compiled with --fmad=false), so the results
// match src/ops/ref/rope.ts bit for bit. Wrapper: src/ops/cuda/rope.ts. Launch: 1-D grid-stride
// over the B*T*H*D/2 pairs; one thread reads both elements of its pair before writing them, so
// out may be x.

// out (rows*2*half) from x (rows*2*half), rows = B*T*H; pairs = rows * half.
extern "C" __global__ void eqat_rope_forward(float* out, const float* x, const float* cos_t, const float* sin_t,
                                             long long pairs, int T, int H, int half) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < pairs; e += stride) {
    const long long row = e / half;  // (b * T + t) * H + h
    const int i = (int)(e - row * half);
    const int t = (int)((row / H) % T);
    const long long base = row * 2 * half;
    const float x1 = x[base + i], x2 = x[base + i + half];
    const float c = cos_t[(long long)t * half + i], s = sin_t[(long long)t * half + i];
    out[base + i] = x1 * c - x2 * s;
    out[base + i + half] = x2 * c + x1 * s;
  }
}

// dx += the inverse rotation of dout:  dx[i] += d1 c + d2 s,  dx[i + D/2] += d2 c - d1 s.
extern "C" __global__ void eqat_rope_backward(float* dx, const float* dout, const float* cos_t, const float* sin_t,
                                              long long pairs, int T, int H, int half) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < pairs; e += stride) {
    const long long row = e / half;
    const int i = (int)(e - row * half);
    const int t = (int)((row / H) % T);
    const long long base = row * 2 * half;
    const float d1 = dout[base + i], d2 = dout[base + i + half];
    const float c = cos_t[(long long)t * half + i], s = sin_t[(long long)t * half + i];
    dx[base + i] = dx[base + i] + (d1 * c + d2 * s);
    dx[base + i + half] = dx[base + i + half] + (d2 * c - d1 * s);
  }
}
