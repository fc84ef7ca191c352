// Token embedding on CUDA: out[n, :] = table[ids[n], :] and its scatter-add backward
// dtable[ids[n], :] += dout[n, :]. Same math as src/ops/embedding.ts and its twin
// src/ops/ref/embedding.ts (bit for bit: copies, and f32 adds in row order). Wrapper:
// src/ops/cuda/embedding.ts, which first checks the ids with indices.cu.
//
// The backward gives each thread one column and walks the rows in order, so rows repeating an
// id never race and the sums are reproducible without atomics (the parallelism is C threads).
// An id outside [0, V) (only reachable when the wrapper's check is skipped) yields a NaN row in
// the forward and is skipped by the backward; memory outside the table is never touched.

// out (N, C) from ids (N) and table (V, C); n = N * C, 1-D grid-stride.
extern "C" __global__ void eqat_embedding_forward(float* out, const int* ids, const float* table, long long n, int V, int C) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
    const long long row = e / C;
    const int c = (int)(e - row * C);
    const int id = ids[row];
    out[e] = (id >= 0 && id < V) ? table[(long long)id * C + c] : __uint_as_float(0x7fc00000u);
  }
}

// dtable (V, C) += dout (N, C) scattered by ids (N); one thread per column.
extern "C" __global__ void eqat_embedding_backward(float* dtable, const float* dout, const int* ids, int N, int V, int C) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += gridDim.x * blockDim.x) {
    for (int n = 0; n < N; ++n) {
      const int id = ids[n];
      if (id < 0 || id >= V) continue;
      const long long at = (long long)id * C + c;
      dtable[at] = dtable[at] + dout[(long long)n * C + c];
    }
  }
}
