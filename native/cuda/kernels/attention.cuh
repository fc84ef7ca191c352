// What every attention kernel shares (attention.cu, attention_tc.cu, attention_rows.cu): the
// causal / sliding-window visibility rule of src/ops/attention.ts, and small scalar helpers.
#ifndef EQAT_ATTENTION_CUH
#define EQAT_ATTENTION_CUH

namespace eqat {

// Whether the query at position pos sees key j: j <= pos and, with a window (0: none),
// j > pos - window.
__device__ __forceinline__ bool key_visible(int pos, int j, int window) { return j <= pos && (window == 0 || j > pos - window); }

__device__ __forceinline__ float neg_inf() { return __uint_as_float(0xff800000u); }
__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

}  // namespace eqat

#endif  // EQAT_ATTENTION_CUH
