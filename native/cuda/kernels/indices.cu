// Index validation on CUDA: finds the first token id / target outside [0, V) so the
// embedding and cross-entropy wrappers (src/ops/cuda/indices.ts) can throw the CPU ops'
// RangeError naming the row before any kernel writes, without copying the indices to the host.
// One block reduces the per-thread first hits with warp shuffles (no atomics).

namespace eqat_idx {

__device__ __forceinline__ int warp_min(int v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const int o = __shfl_xor_sync(0xffffffffu, v, offset);
    v = o < v ? o : v;
  }
  return v;
}

}  // namespace eqat_idx

// first_bad[0] = the smallest n < count with ids[n] outside [0, V) (ids[n] == ignore allowed when
// allow_ignore != 0), or -1. One block (blockDim.x a multiple of 32, at most 1024); no atomics.
extern "C" __global__ void eqat_first_bad_index(int* first_bad, const int* ids, int count, int V, int ignore,
                                                int allow_ignore) {
  __shared__ int partial[32];
  const int none = 0x7fffffff;
  int best = none;
  for (int n = threadIdx.x; n < count && best == none; n += blockDim.x) {
    const int id = ids[n];
    const bool ok = (id >= 0 && id < V) || (allow_ignore != 0 && id == ignore);
    if (!ok) best = n;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  best = eqat_idx::warp_min(best);
  if (lane == 0) partial[warp] = best;
  __syncthreads();
  if (warp == 0) {
    int t = lane < (int)(blockDim.x >> 5) ? partial[lane] : none;
    t = eqat_idx::warp_min(t);
    if (lane == 0) first_bad[0] = t == none ? -1 : t;
  }
}
