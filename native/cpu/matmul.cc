// f32 matrix multiply, the hottest kernel of the engine (every linear layer, forward and
// backward):  C (M, N) = alpha * op(A) @ op(B) + beta * C,  all row-major and contiguous,
// op(A) = A (M, K) or A^T with A (K, M), op(B) = B (K, N) or B^T with B (N, K).
// Twin: src/ops/ref/matmul.ts. Wrapper: src/ops/matmul.ts.
//
// Design (the classic Goto/BLIS scheme):
//   * op(A) and op(B) are copied ("packed") block by block into contiguous micro-panels, so a
//     transpose only changes how the packing reads memory; the inner kernel never sees it.
//   * Loops, outermost first: NC columns of C | KC of the K dimension (pack a KC x NC block of
//     op(B), shared by all threads) | MC rows (pack an MC x KC block of op(A), per thread) |
//     NR-wide micro-panel of B (stays in L1) | MR-tall micro-panel of A | micro-kernel.
//   * The micro-kernel keeps an MR x NR tile of C in vector registers: per k it loads NR/W
//     vectors of B, broadcasts MR values of A and issues MR*NR/W fused multiply-adds.
//     AVX-512: 12 x 32 (24 zmm accumulators); AVX2/FMA: 6 x 16 (12 ymm); scalar: 4 x 4.
//   * Edge tiles are computed whole (packing pads with zeros) into a scratch tile and only
//     the valid part is merged into C.
//   * Threads (eqat::parallel_for) share each packed B block (double-buffered, one barrier per
//     block) and claim its B panels to pack and then its MC-row blocks of C from atomic
//     counters: on an idle machine every thread gets the same share, and on a busy one a
//     thread that is descheduled does not leave its share waiting. When M is too short to
//     split, threads split the columns instead, each on its own.
//   * Few rows against a transposed B (token-by-token generation, y = x W^T): nothing is
//     packed; each C element is a dot product of two rows contiguous in k, computed in small
//     register tiles while B streams through once.
//
// Every kernel is one C++ template over a tiny vector-ops struct (V8 = AVX2 ymm, V16 = AVX-512
// zmm, V1 = scalar float, V16e = a zmm emulated by two ymm). Templates are instantiated inside
// functions compiled with __attribute__((target(...), flatten)), which inlines the whole body
// for that ISA. V16e exists so the 12 x 32 AVX-512 blocking and edge handling can be tested
// on machines without AVX-512 (kernel "avx512-emulated", selectable for tests).
//
// Exports:
//   matmul(out, a, b, M, N, K, transA, transB, alpha, beta)
//   matmulKernel() -> name of the kernel in use ('avx512' | 'avx2' | 'scalar' | 'avx512-emulated')
//   matmulSetKernel(name) -> force a kernel ('auto' restores the run-time choice)
//   matmulFmaPeak(ms) -> GFLOP/s of bare multiply-add chains on all threads (for benchmarks)
#include "eqat.h"
#include "matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <thread>

// Vector types cross no ABI boundary here (everything is inlined), so GCC's note that their
// passing convention depends on -mavx is noise.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace eqat {
namespace {

// ---------------------------------------------------------------------------------------------
// Vector-ops structs. Each provides T, W (lanes) and zero/set1/load/store/bcast/fma/mul/hsum.
// ---------------------------------------------------------------------------------------------

struct V1 {  // portable scalar
  using T = float;
  static constexpr int W = 1;
  static inline T zero() { return 0.0f; }
  static inline T set1(float x) { return x; }
  static inline T load(const float* p) { return *p; }
  static inline void store(float* p, T v) { *p = v; }
  static inline T bcast(const float* p) { return *p; }
  static inline T fma(T a, T b, T c) { return a * b + c; }
  static inline T mul(T a, T b) { return a * b; }
  static inline float hsum(T v) { return v; }
};

#define EQAT_AVX2 __attribute__((target("avx2,fma")))
#define EQAT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))

struct V8 {  // AVX2 + FMA, 8 lanes
  using T = __m256;
  static constexpr int W = 8;
  EQAT_AVX2 static inline T zero() { return _mm256_setzero_ps(); }
  EQAT_AVX2 static inline T set1(float x) { return _mm256_set1_ps(x); }
  EQAT_AVX2 static inline T load(const float* p) { return _mm256_loadu_ps(p); }
  EQAT_AVX2 static inline void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  EQAT_AVX2 static inline T bcast(const float* p) { return _mm256_broadcast_ss(p); }
  EQAT_AVX2 static inline T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  EQAT_AVX2 static inline T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  EQAT_AVX2 static inline float hsum(T v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

struct V16 {  // AVX-512, 16 lanes
  using T = __m512;
  static constexpr int W = 16;
  EQAT_AVX512 static inline T zero() { return _mm512_setzero_ps(); }
  EQAT_AVX512 static inline T set1(float x) { return _mm512_set1_ps(x); }
  EQAT_AVX512 static inline T load(const float* p) { return _mm512_loadu_ps(p); }
  EQAT_AVX512 static inline void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  EQAT_AVX512 static inline T bcast(const float* p) { return _mm512_set1_ps(*p); }
  EQAT_AVX512 static inline T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  EQAT_AVX512 static inline T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  EQAT_AVX512 static inline float hsum(T v) {
    alignas(64) float t[16];
    _mm512_store_ps(t, v);
    __m256 s = _mm256_add_ps(_mm256_load_ps(t), _mm256_load_ps(t + 8));
    return V8::hsum(s);
  }
};

struct V16e {  // a 16-lane vector made of two AVX2 halves: the AVX-512 code path, testable anywhere
  struct T {
    __m256 lo, hi;
  };
  static constexpr int W = 16;
  EQAT_AVX2 static inline T zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  EQAT_AVX2 static inline T set1(float x) { return {_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
  EQAT_AVX2 static inline T load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  EQAT_AVX2 static inline void store(float* p, T v) {
    _mm256_storeu_ps(p, v.lo);
    _mm256_storeu_ps(p + 8, v.hi);
  }
  EQAT_AVX2 static inline T bcast(const float* p) { return set1(*p); }
  EQAT_AVX2 static inline T fma(T a, T b, T c) {
    return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
  }
  EQAT_AVX2 static inline T mul(T a, T b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
  EQAT_AVX2 static inline float hsum(T v) { return V8::hsum(_mm256_add_ps(v.lo, v.hi)); }
};

// ---------------------------------------------------------------------------------------------
// Generic kernels (always inlined into the per-ISA entry points below).
// ---------------------------------------------------------------------------------------------

// Micro-kernel: the MR x NR tile C (row stride ldc) = alpha * sum_k Ap[k] (x) Bp[k] + beta * C.
// Ap is a packed A micro-panel: kc groups of MR values (one per row). Bp holds kc rows of NR
// values, ldb apart (ldb = NR for a packed panel, the row stride of B when read in place).
// beta == 0 never reads C.
template <class V, int MR, int NV>
inline void micro_kernel(int64_t kc, const float* __restrict ap, const float* __restrict bp, int64_t ldb,
                         float* __restrict c, int64_t ldc, float alpha, float beta) {
  using T = typename V::T;
  constexpr int W = V::W;
  T acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
  }
  for (int r = 0; r < MR; ++r) __builtin_prefetch(c + r * ldc, 1);
  for (int64_t k = 0; k < kc; ++k) {
    T b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = V::load(bp + v * W);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const T a = V::bcast(ap + r);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(a, b[v], acc[r][v]);
    }
    ap += MR;
    bp += ldb;
  }
  const T va = V::set1(alpha);
  if (beta == 0.0f) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) V::store(c + r * ldc + v * W, V::mul(va, acc[r][v]));
    }
  } else {
    const T vb = V::set1(beta);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        float* p = c + r * ldc + v * W;
        V::store(p, V::fma(va, acc[r][v], V::mul(vb, V::load(p))));
      }
    }
  }
}

// Packs one micro-panel of P lanes: dst[k * P + j] = src[j * s_w + k * s_k] for j < w, and 0
// for w <= j < P (zero padding makes edge tiles safe to compute whole).
template <int P>
inline void pack_panel(const float* __restrict src, int64_t s_w, int64_t s_k, int w, int64_t kc,
                       float* __restrict dst) {
  if (s_w == 1) {  // lanes contiguous in memory: row copies
    if (w == P) {
      for (int64_t k = 0; k < kc; ++k) {
        const float* s = src + k * s_k;
        float* d = dst + k * P;
#pragma GCC unroll 32
        for (int j = 0; j < P; ++j) d[j] = s[j];
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        const float* s = src + k * s_k;
        float* d = dst + k * P;
        for (int j = 0; j < w; ++j) d[j] = s[j];
        for (int j = w; j < P; ++j) d[j] = 0.0f;
      }
    }
  } else {  // a transposed operand: gather from P rows at once, walking k
    const float* rows[P];
    for (int j = 0; j < P; ++j) rows[j] = src + std::min(j, w - 1) * s_w;
    if (w == P && s_k == 1) {
      for (int64_t k = 0; k < kc; ++k) {
        float* d = dst + k * P;
#pragma GCC unroll 32
        for (int j = 0; j < P; ++j) d[j] = rows[j][k];
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        float* d = dst + k * P;
        for (int j = 0; j < w; ++j) d[j] = rows[j][k * s_k];
        for (int j = w; j < P; ++j) d[j] = 0.0f;
      }
    }
  }
}

// Dot-product tile for the few-rows transB path: C[i][j] = alpha * <A row i, B row j> + beta C,
// i < rm <= RM, j < rn <= RN; A rows are lda apart, B rows ldb apart, both contiguous in k.
// Rows past rm / rn alias the last valid row (computed, not stored).
template <class V, int RM, int RN>
inline void dot_tile(int64_t K, const float* a, int64_t lda, int rm, const float* b, int64_t ldb, int rn, float* c,
                     int64_t ldc, float alpha, float beta) {
  using T = typename V::T;
  constexpr int W = V::W;
  const float* ar[RM];
  const float* br[RN];
  for (int i = 0; i < RM; ++i) ar[i] = a + std::min(i, rm - 1) * lda;
  for (int j = 0; j < RN; ++j) br[j] = b + std::min(j, rn - 1) * ldb;
  T acc[RM][RN];
#pragma GCC unroll 8
  for (int i = 0; i < RM; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < RN; ++j) acc[i][j] = V::zero();
  }
  const int64_t kv = K - K % W;
  for (int64_t k = 0; k < kv; k += W) {
    T bv[RN];
#pragma GCC unroll 8
    for (int j = 0; j < RN; ++j) bv[j] = V::load(br[j] + k);
#pragma GCC unroll 8
    for (int i = 0; i < RM; ++i) {
      const T av = V::load(ar[i] + k);
#pragma GCC unroll 8
      for (int j = 0; j < RN; ++j) acc[i][j] = V::fma(av, bv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < rm; ++i) {
    for (int j = 0; j < rn; ++j) {
      float s = V::hsum(acc[i][j]);
      for (int64_t k = kv; k < K; ++k) s += ar[i][k] * br[j][k];
      float* p = c + i * ldc + j;
      *p = beta == 0.0f ? alpha * s : alpha * s + beta * *p;
    }
  }
}

// FMA throughput probe for benchmarks: NACC independent multiply-add chains (enough to cover
// the FMA latency) of `iters` steps; returns a value that depends on every lane so nothing is
// optimised away. 2 * NACC * W flops per step.
template <class V, int NACC>
inline float fma_probe(int64_t iters) {
  using T = typename V::T;
  T acc[NACC];
  for (int i = 0; i < NACC; ++i) {  // distinct lanes, so no two chains can be merged
    float init[V::W];
    for (int l = 0; l < V::W; ++l) init[l] = 1e-3f * static_cast<float>(i * V::W + l);
    acc[i] = V::load(init);
  }
  const T x = V::set1(0.999999f), y = V::set1(1e-6f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 32
    for (int i = 0; i < NACC; ++i) acc[i] = V::fma(acc[i], x, y);
  }
  float s = 0.0f;
  for (int i = 0; i < NACC; ++i) s += V::hsum(acc[i]);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Kernel families: one per ISA, with their blocking.
// ---------------------------------------------------------------------------------------------

// The family struct is declared in matmul.h, so other kernels can reuse the micro-kernels.
using Family = GemmFamily;

#define EQAT_FAMILY_FUNCS(PREFIX, ATTR, VEC, MR, NR, DRM, DRN, NACC)                                             \
  ATTR __attribute__((flatten)) void PREFIX##_kernel(int64_t kc, const float* ap, const float* bp, int64_t ldb, \
                                                     float* c, int64_t ldc, float alpha, float beta) {         \
    micro_kernel<VEC, MR, (NR) / VEC::W>(kc, ap, bp, ldb, c, ldc, alpha, beta);                                \
  }                                                                                                              \
  ATTR __attribute__((flatten)) void PREFIX##_pack_a(const float* s, int64_t sw, int64_t sk, int w, int64_t kc, \
                                                     float* d) {                                                \
    pack_panel<MR>(s, sw, sk, w, kc, d);                                                                         \
  }                                                                                                              \
  ATTR __attribute__((flatten)) void PREFIX##_pack_b(const float* s, int64_t sw, int64_t sk, int w, int64_t kc, \
                                                     float* d) {                                                \
    pack_panel<NR>(s, sw, sk, w, kc, d);                                                                         \
  }                                                                                                              \
  ATTR __attribute__((flatten)) void PREFIX##_dot(int64_t K, const float* a, int64_t lda, int rm, const float* b, \
                                                  int64_t ldb, int rn, float* c, int64_t ldc, float alpha,        \
                                                  float beta) {                                                   \
    dot_tile<VEC, DRM, DRN>(K, a, lda, rm, b, ldb, rn, c, ldc, alpha, beta);                                     \
  }                                                                                                              \
  ATTR __attribute__((flatten)) float PREFIX##_probe(int64_t iters) { return fma_probe<VEC, NACC>(iters); }

EQAT_FAMILY_FUNCS(avx512, EQAT_AVX512, V16, 12, 32, 4, 4, 24)
EQAT_FAMILY_FUNCS(avx512e, EQAT_AVX2, V16e, 12, 32, 4, 4, 6)
EQAT_FAMILY_FUNCS(avx2, EQAT_AVX2, V8, 6, 16, 3, 4, 12)
EQAT_FAMILY_FUNCS(scalar, , V1, 4, 4, 2, 2, 8)

// AVX-512 blocking (for 48 KiB L1d / 2 MiB L2): the 32 x 192 B micro-panel (24 KiB) stays in L1
// beside the streaming A micro-panel; the 384 x 192 A block (288 KiB) in L2.
const Family kAvx512{"avx512", 12, 32, 384, 192, 4096, 4, 4, avx512_kernel, avx512_pack_a, avx512_pack_b, avx512_dot,
                        avx512_probe, 2 * 24 * 16};
const Family kAvx512Emulated{"avx512-emulated", 12, 32, 384, 192, 4096, 4, 4,
                             avx512e_kernel, avx512e_pack_a, avx512e_pack_b, avx512e_dot,
                             avx512e_probe, 2 * 6 * 16};
// AVX2 blocking (for 32 KiB L1d / 512 KiB L2): B micro-panel 16 x 256 (16 KiB) in L1, A block
// 168 x 256 (168 KiB) in L2.
const Family kAvx2{"avx2", 6, 16, 168, 256, 4080, 3, 4, avx2_kernel, avx2_pack_a, avx2_pack_b, avx2_dot,
                    avx2_probe, 2 * 12 * 8};
const Family kScalar{"scalar", 4, 4, 128, 256, 4096, 2, 2, scalar_kernel, scalar_pack_a, scalar_pack_b, scalar_dot,
                      scalar_probe, 2 * 8};

constexpr int kMaxTile = 12 * 32;

const Family& auto_family() {
  if (cpu_has_avx512()) return kAvx512;
  if (cpu_has_avx2()) return kAvx2;
  return kScalar;
}

std::atomic<const Family*> g_forced{nullptr};

const Family& family() {
  const Family* f = g_forced.load(std::memory_order_relaxed);
  return f ? *f : auto_family();
}

// ---------------------------------------------------------------------------------------------
// Scratch memory and synchronisation.
// ---------------------------------------------------------------------------------------------

// A growable 64-byte-aligned float buffer, one per use per thread (thread_local below).
class Scratch {
 public:
  float* get(size_t n) {
    if (n > cap_) {
      size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
      void* p = std::aligned_alloc(64, bytes);
      if (!p) throw std::bad_alloc();
      buf_.reset(static_cast<float*>(p));
      cap_ = bytes / sizeof(float);
    }
    return buf_.get();
  }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> buf_;
  size_t cap_ = 0;
};

thread_local Scratch t_pack_a, t_pack_b[2], t_rows;

// Sense-reversing barrier for the threads of one matmul call: spins briefly, then yields
// (the machine may be shared, and a descheduled partner must not be spun on for long).
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    const int gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins < 4000)
        _mm_pause();
      else
        std::this_thread::yield();
    }
  }

 private:
  const int n_;
  std::atomic<int> count_{0};
  std::atomic<int> gen_{0};
};

// ---------------------------------------------------------------------------------------------
// Drivers.
// ---------------------------------------------------------------------------------------------

// A strided view of op(X): element (i, j) is p[i * rs + j * cs].
struct View {
  const float* p;
  int64_t rs, cs;
  const float* at(int64_t i, int64_t j) const { return p + i * rs + j * cs; }
};

// Splits `total` into equal blocks of at most `max_block` (a multiple of `multiple`), so a
// dimension just past a block size does not leave a thin, inefficient last block.
inline int64_t balanced_block(int64_t total, int64_t max_block, int64_t multiple) {
  const int64_t nblocks = (total + max_block - 1) / max_block;
  const int64_t size = (total + nblocks - 1) / nblocks;
  return std::min(max_block, (size + multiple - 1) / multiple * multiple);
}

// Writes alpha * tile + beta * C for the valid mr x nr part of an edge tile.
inline void merge_tile(const float* tile, int nr_full, int mr, int nr, float* c, int64_t ldc, float alpha,
                       float beta) {
  for (int r = 0; r < mr; ++r) {
    float* cr = c + r * ldc;
    const float* tr = tile + r * nr_full;
    if (beta == 0.0f)
      for (int j = 0; j < nr; ++j) cr[j] = alpha * tr[j];
    else
      for (int j = 0; j < nr; ++j) cr[j] = alpha * tr[j] + beta * cr[j];
  }
}

// Runs one MR x NR tile (full or edge) of C at (row, col).
inline void run_tile(const Family& f, int64_t kc, const float* ap, const float* bp, int64_t ldb, float* c,
                     int64_t ldc, int mr, int nr, float alpha, float beta) {
  if (mr == f.mr && nr == f.nr) {
    f.kernel(kc, ap, bp, ldb, c, ldc, alpha, beta);
  } else {
    alignas(64) float tile[kMaxTile];
    f.kernel(kc, ap, bp, ldb, tile, f.nr, 1.0f, 0.0f);
    merge_tile(tile, f.nr, mr, nr, c, ldc, alpha, beta);
  }
}

// Per-thread pack buffers for B, sized for one KC x NC block.
float* const* b_buffers(const Family& f, float* out[2]) {
  const size_t n = static_cast<size_t>(f.kc * ((f.nc + f.nr - 1) / f.nr) * f.nr);
  out[0] = t_pack_b[0].get(n);
  out[1] = t_pack_b[1].get(n);
  return out;
}

// Work counters of one blocked GEMM: for every (NC, KC) step, the next B panel to pack and
// the next MC-row block of C to compute.
class WorkCounters {
 public:
  explicit WorkCounters(int64_t steps) : n_(steps), c_(new std::atomic<int64_t>[2 * steps]) {
    for (int64_t i = 0; i < 2 * steps; ++i) c_[i].store(0, std::memory_order_relaxed);
  }
  // Claims `count` items of kind `kind` (0 = B panels, 1 = row blocks) at `step`; returns the first.
  int64_t claim(int kind, int64_t step, int64_t count) {
    return c_[kind * n_ + step].fetch_add(count, std::memory_order_relaxed);
  }

 private:
  int64_t n_;
  std::unique_ptr<std::atomic<int64_t>[]> c_;
};

// Cache-block sizes of one blocked GEMM, the same for every thread.
struct Blocking {
  int64_t mc, kc, nc;  // balanced block sizes
  int64_t mblocks;     // number of MC-row blocks
  int64_t steps;       // number of (NC, KC) steps
};

Blocking plan_blocking(const Family& f, int64_t M, int64_t N, int64_t K, int nt) {
  Blocking b;
  b.nc = balanced_block(N, f.nc, f.nr);
  b.kc = balanced_block(K, f.kc, 1);
  // Row blocks: at most MC rows, and a multiple of the thread count so the shares are equal.
  int64_t nblocks = (M + f.mc - 1) / f.mc;
  nblocks = (nblocks + nt - 1) / nt * nt;
  const int64_t rows = (M + nblocks - 1) / nblocks;
  b.mc = std::max<int64_t>(f.mr, (rows + f.mr - 1) / f.mr * f.mr);
  b.mblocks = (M + b.mc - 1) / b.mc;
  b.steps = ((N + b.nc - 1) / b.nc) * ((K + b.kc - 1) / b.kc);
  return b;
}

// The blocked GEMM as run by one of `nt` threads (nt == 1: the plain serial algorithm). Every
// thread walks the same (NC, KC) steps; at each it packs the B panels it claims into the shared
// buffer bufs[step % 2], waits at the barrier until the whole block is packed, then computes the
// row blocks it claims. Double buffering makes the one barrier per step enough: a thread can
// only start packing step s + 1 after every thread has passed barrier s, that is, has finished
// computing step s - 1, the last user of that buffer.
// `ap` is this thread's A block buffer (mc x kc floats).
void gemm_blocked(const Family& f, const Blocking& bk, WorkCounters& work, int nt, Barrier* barrier,
                  float* const bufs[2], float* ap, int64_t M, int64_t N, int64_t K, View A, View B, float* C,
                  int64_t ldc, float alpha, float beta) {
  constexpr int64_t kPanelChunk = 4;  // B panels claimed at a time
  int64_t step = 0;
  for (int64_t jc = 0; jc < N; jc += bk.nc) {
    const int64_t ncur = std::min(bk.nc, N - jc);
    const int64_t npanels = (ncur + f.nr - 1) / f.nr;
    for (int64_t pc = 0; pc < K; pc += bk.kc, ++step) {
      const int64_t kcur = std::min(bk.kc, K - pc);
      float* bp = bufs[step & 1];
      for (int64_t p0 = work.claim(0, step, kPanelChunk); p0 < npanels; p0 = work.claim(0, step, kPanelChunk)) {
        for (int64_t p = p0; p < std::min(npanels, p0 + kPanelChunk); ++p) {
          const int w = static_cast<int>(std::min<int64_t>(f.nr, ncur - p * f.nr));
          f.pack_b(B.at(pc, jc + p * f.nr), B.cs, B.rs, w, kcur, bp + p * f.nr * kcur);
        }
      }
      if (nt > 1) barrier->wait();
      const float beta_k = pc == 0 ? beta : 1.0f;
      for (int64_t blk = work.claim(1, step, 1); blk < bk.mblocks; blk = work.claim(1, step, 1)) {
        const int64_t ic = blk * bk.mc;
        const int64_t mcur = std::min(bk.mc, M - ic);
        const int64_t qpanels = (mcur + f.mr - 1) / f.mr;
        for (int64_t q = 0; q < qpanels; ++q) {
          const int w = static_cast<int>(std::min<int64_t>(f.mr, mcur - q * f.mr));
          f.pack_a(A.at(ic + q * f.mr, pc), A.rs, A.cs, w, kcur, ap + q * f.mr * kcur);
        }
        for (int64_t p = 0; p < npanels; ++p) {
          const int nr = static_cast<int>(std::min<int64_t>(f.nr, ncur - p * f.nr));
          for (int64_t q = 0; q < qpanels; ++q) {
            const int mr = static_cast<int>(std::min<int64_t>(f.mr, mcur - q * f.mr));
            float* c = C + (ic + q * f.mr) * ldc + jc + p * f.nr;
            run_tile(f, kcur, ap + q * f.mr * kcur, bp + p * f.nr * kcur, f.nr, c, ldc, mr, nr, alpha, beta_k);
          }
        }
      }
    }
  }
}

// One thread computes the whole product with its own buffers.
void gemm_serial(const Family& f, int64_t M, int64_t N, int64_t K, View A, View B, float* C, int64_t ldc,
                 float alpha, float beta) {
  const Blocking bk = plan_blocking(f, M, N, K, 1);
  WorkCounters work(bk.steps);
  float* bufs[2];
  b_buffers(f, bufs);
  float* ap = t_pack_a.get(static_cast<size_t>(bk.mc * bk.kc));
  gemm_blocked(f, bk, work, 1, nullptr, bufs, ap, M, N, K, A, B, C, ldc, alpha, beta);
}

// Few rows with transB (token-by-token generation: y = x W^T): every element of C is a dot
// product of a row of op(A) and a row of B, both contiguous in k, so nothing is packed and B,
// the big operand, is streamed once per dot_rm rows. Threads split the rows of B.
void gemm_dot_rows(const Family& f, int64_t M, int64_t N, int64_t K, View A, const float* b, float* C,
                   int64_t ldc, float alpha, float beta) {
  // op(A) rows must be contiguous in k: copy them when A is transposed (M x K floats, small).
  const float* arows = A.p;
  int64_t lda = A.rs;
  if (A.cs != 1) {
    float* rows = t_rows.get(static_cast<size_t>(M * K));
    for (int64_t i = 0; i < M; ++i)
      for (int64_t k = 0; k < K; ++k) rows[i * K + k] = *A.at(i, k);
    arows = rows;
    lda = K;
  }
  const int64_t jtiles = (N + f.dot_rn - 1) / f.dot_rn;
  parallel_for(jtiles, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t j = t * f.dot_rn;
      const int rn = static_cast<int>(std::min<int64_t>(f.dot_rn, N - j));
      for (int64_t i = 0; i < M; i += f.dot_rm) {
        const int rm = static_cast<int>(std::min<int64_t>(f.dot_rm, M - i));
        f.dot(K, arows + i * lda, lda, rm, b + j * K, K, rn, C + i * ldc + j, ldc, alpha, beta);
      }
    }
  }, std::max<int64_t>(1, 16384 / (K * M)));
}

// C = beta * C (beta == 0 writes zeros without reading C): the whole result when K == 0 or
// alpha == 0.
void scale_c(int64_t M, int64_t N, float* C, int64_t ldc, float beta) {
  parallel_for(M, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float* c = C + i * ldc;
      if (beta == 0.0f)
        std::memset(c, 0, static_cast<size_t>(N) * sizeof(float));
      else if (beta != 1.0f)
        for (int64_t j = 0; j < N; ++j) c[j] *= beta;
    }
  }, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, N)));
}

void gemm(int64_t M, int64_t N, int64_t K, const float* a, const float* b, float* c, bool trans_a, bool trans_b,
          float alpha, float beta) {
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == 0.0f) {
    scale_c(M, N, c, N, beta);
    return;
  }
  const Family& f = family();
  const View A = trans_a ? View{a, 1, M} : View{a, K, 1};  // op(A)(i, k)
  const View B = trans_b ? View{b, 1, K} : View{b, N, 1};  // op(B)(k, j)
  const int nt = num_threads();
  // Few rows against a transposed B: dot products beat packing B (measured on AVX2 up to
  // M ~ 128 with K = 4096); short K leaves too little work per dot product.
  if (trans_b && M <= 32 * f.dot_rm && K >= 32) {
    gemm_dot_rows(f, M, N, K, A, b, c, N, alpha, beta);
    return;
  }
  const int64_t mtiles = (M + f.mr - 1) / f.mr;
  if (nt == 1) {
    gemm_serial(f, M, N, K, A, B, c, N, alpha, beta);
  } else if (mtiles >= 4 * nt) {
    // Share the packed B blocks and the row blocks. Every buffer is allocated here, by the
    // caller: a worker that failed to allocate could not leave the barrier protocol cleanly.
    const Blocking bk = plan_blocking(f, M, N, K, nt);
    WorkCounters work(bk.steps);
    float* bufs[2];
    b_buffers(f, bufs);
    const int64_t a_block = (bk.mc * bk.kc + 15) / 16 * 16;  // whole cache lines per thread
    float* apacks = t_pack_a.get(static_cast<size_t>(a_block * nt));
    Barrier barrier(nt);
    parallel_for(nt, [&](int64_t t0, int64_t t1) {
      if (t1 - t0 == 1) {
        gemm_blocked(f, bk, work, nt, &barrier, bufs, apacks + t0 * a_block, M, N, K, A, B, c, N, alpha, beta);
      } else {  // the pool ran the region inline (a nested call): one thread does it all
        WorkCounters own(bk.steps);
        gemm_blocked(f, bk, own, 1, nullptr, bufs, apacks, M, N, K, A, B, c, N, alpha, beta);
      }
    });
  } else {
    // Too few rows to share: split whole NR-wide column panels, each thread on its own.
    // (Each thread allocates its own buffers; a failure is carried back to the caller.)
    const int64_t ntiles = (N + f.nr - 1) / f.nr;
    std::exception_ptr error;
    std::atomic<bool> failed{false};
    parallel_for(ntiles, [&](int64_t t0, int64_t t1) {
      try {
        const int64_t j0 = t0 * f.nr, j1 = std::min(N, t1 * f.nr);
        gemm_serial(f, M, j1 - j0, K, A, View{B.at(0, j0), B.rs, B.cs}, c + j0, N, alpha, beta);
      } catch (...) {
        if (!failed.exchange(true)) error = std::current_exception();
      }
    });
    if (error) std::rethrow_exception(error);
  }
}

// ---------------------------------------------------------------------------------------------
// N-API entry points.
// ---------------------------------------------------------------------------------------------

// matmul(out, a, b, M, N, K, transA, transB, alpha, beta)
Napi::Value Matmul(const Napi::CallbackInfo& info) {
  const char* op = "matmul";
  check_argc(info, 10, op);
  const int64_t M = arg_int(info, 3, op, "M");
  const int64_t N = arg_int(info, 4, op, "N");
  const int64_t K = arg_int(info, 5, op, "K");
  if (M < 0 || N < 0 || K < 0) throw Napi::RangeError::New(info.Env(), "matmul: M, N and K must be >= 0");
  float* out = arg_f32(info, 0, static_cast<size_t>(M * N), op, "out");
  const float* a = arg_f32(info, 1, static_cast<size_t>(M * K), op, "a");
  const float* b = arg_f32(info, 2, static_cast<size_t>(K * N), op, "b");
  const bool trans_a = arg_bool(info, 6, op, "transA");
  const bool trans_b = arg_bool(info, 7, op, "transB");
  const float alpha = static_cast<float>(arg_num(info, 8, op, "alpha"));
  const float beta = static_cast<float>(arg_num(info, 9, op, "beta"));
  try {
    gemm(M, N, K, a, b, out, trans_a, trans_b, alpha, beta);
  } catch (const std::bad_alloc&) {
    throw Napi::Error::New(info.Env(), "matmul: out of memory for the packing buffers");
  }
  return info.Env().Undefined();
}

Napi::Value MatmulKernel(const Napi::CallbackInfo& info) {
  check_argc(info, 0, "matmulKernel");
  return Napi::String::New(info.Env(), family().name);
}

// matmulFmaPeak(ms) -> GFLOP/s: the multiply-add throughput of the kernel family's vector unit
// on every pool thread at once, measured for about `ms` milliseconds (benchmarks quote matmul
// against it; on a shared machine it also shows how much CPU the run actually got).
Napi::Value MatmulFmaPeak(const Napi::CallbackInfo& info) {
  check_argc(info, 1, "matmulFmaPeak");
  const double ms = arg_num(info, 0, "matmulFmaPeak", "ms");
  if (!(ms > 0 && ms <= 10000)) throw Napi::RangeError::New(info.Env(), "matmulFmaPeak: argument 'ms' must be in (0, 10000]");
  const Family& f = family();
  const int nt = num_threads();
  std::atomic<float> sink{0.0f};
  auto run = [&](int64_t iters) {
    const auto t0 = std::chrono::steady_clock::now();
    parallel_for(nt, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) sink.store(f.probe(iters), std::memory_order_relaxed);
    });
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  int64_t iters = 1 << 16;
  double secs = run(iters);
  while (secs < 0.02 && iters < (int64_t{1} << 40)) {  // calibrate on at least 20 ms
    iters *= 4;
    secs = run(iters);
  }
  iters = std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(iters) * (ms / 1000.0) / secs));
  secs = run(iters);
  const double flops = static_cast<double>(iters) * f.probe_flops * nt;
  return Napi::Number::New(info.Env(), flops / secs / 1e9);
}

// matmulSetKernel(name): a debug knob for tests and benchmarks.
Napi::Value MatmulSetKernel(const Napi::CallbackInfo& info) {
  check_argc(info, 1, "matmulSetKernel");
  if (!info[0].IsString()) throw Napi::TypeError::New(info.Env(), "matmulSetKernel: argument 'name' must be a string");
  const std::string name = info[0].As<Napi::String>().Utf8Value();
  const Family* f = nullptr;
  bool ok = true;
  if (name == "auto") {
    f = nullptr;
  } else if (name == "scalar") {
    f = &kScalar;
  } else if (name == "avx2" || name == "avx512-emulated") {
    ok = cpu_has_avx2();
    f = name == "avx2" ? &kAvx2 : &kAvx512Emulated;
  } else if (name == "avx512") {
    ok = cpu_has_avx512();
    f = &kAvx512;
  } else {
    throw Napi::RangeError::New(info.Env(), "matmulSetKernel: unknown kernel '" + name + "'");
  }
  if (!ok) {
    throw Napi::RangeError::New(info.Env(), "matmulSetKernel: kernel '" + name + "' is not available on this CPU");
  }
  g_forced.store(f, std::memory_order_relaxed);
  return info.Env().Undefined();
}

}  // namespace

const GemmFamily& gemm_family() { return family(); }

void sgemm(int64_t M, int64_t N, int64_t K, const float* a, const float* b, float* c, bool trans_a, bool trans_b,
           float alpha, float beta) {
  gemm(M, N, K, a, b, c, trans_a, trans_b, alpha, beta);
}

EQAT_EXPORT(matmul, Matmul);
EQAT_EXPORT(matmulKernel, MatmulKernel);
EQAT_EXPORT(matmulSetKernel, MatmulSetKernel);
EQAT_EXPORT(matmulFmaPeak, MatmulFmaPeak);

}  // namespace eqat
