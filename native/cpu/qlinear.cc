// Packed low-bit linear layer: y = x W_hat^T (+ b) and its backward, with the weights kept as
// GPTQ-packed integer codes (2, 3, 4 or 8 bits) and never dequantized whole. Used by E2E-QP
// (which trains only the per-group scales of a quantized model) and to evaluate quantized
// models. Twin: src/quant/ref/packed-linear.ts. Wrapper: src/quant/packed-linear.ts.
//
// Weights. W_hat[o, i] = (q[o, i] - z[o, g]) * s_c[o, g], g = floor(i / G), s_c = clamp(s,
// 1e-4, 1e4) (the fake-quant op's clamp; in the backward the clamp is straight-through, so
// dscales is not masked by it). q lives in qweight (I*bits/32, O) int32: column o holds the
// little-endian bit stream of q[o, 0..I), value i at bit i*bits (3 bits: 32 values per 3
// words, values 10 and 21 straddling words). z is (O, I/G) u8, s is (O, I/G) f32.
//
// Kernels. Every product runs on the f32 GEMM micro-kernels of native/cpu/matmul.cc (through
// matmul.h), the same family the matmul op uses, with the weight operand dequantized straight
// into the packed micro-panel layout those kernels read:
//   forward  out (N, O) = x (N, I) @ W_hat^T: B panels are kc x nr blocks of W_hat^T. In the
//            GPTQ layout, one word row holds the same inputs of consecutive outputs, so a
//            vector of 8 words is 8 output lanes and every code of the block is a shift and a
//            mask away: the panels fill at vector speed.
//   dx       dx (N, I) = dout (N, O) @ W_hat: B panels are kc x nr blocks of W_hat (rows o,
//            lanes i). The bits words of one output's 32-input run are gathered and split into
//            4 vectors of 8 codes with per-lane variable shifts.
//   dscales  dscales[o, g] += sum_{i in g} (q - z) * dW[o, i], dW = dout^T x: dW is formed one
//            tile (an mc-row block of O x up to 1024 inputs) at a time in per-thread scratch by
//            the micro-kernel over all N rows, then reduced with (q - z) into partial group
//            sums, which a last pass adds into dscales in a fixed order.
// Work is split into tasks (blocks of rows and columns of the output, or of dW) that threads
// claim from an atomic counter (eqat::parallel_for runs one worker per thread). Each task
// dequantizes the weight blocks it needs into its own scratch: memory is O(tile) per thread,
// never O(O x I). Blocking never depends on the thread count, and every output element is
// computed by the same operations whatever task computes it, so results are identical for any
// number of threads.
//
// Paths. The AVX2 dequantizers run when the CPU has AVX2, the GEMM family's nr is a multiple of
// 8 and G is a multiple of 32 (every 32-input run then lies in one group); otherwise a scalar
// path does the same arithmetic element by element (also used when the matmul op runs its
// scalar kernel, so matmulSetKernel('scalar') exercises it). Both produce bit-identical W_hat:
// (float)(q - z) * s_c, one rounding.
//
// Exports:
//   qlinearForward(out, x, qweight, zeros, scales, bias|null, N, O, I, bits, G)
//   qlinearBackward(dx|null, dscales|null, dout, x, qweight, zeros, scales, N, O, I, bits, G, accumulateDx)
//   qlinearDequantize(out, qweight, zeros, scales, O, I, bits, G)
#include "eqat.h"
#include "matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#pragma GCC diagnostic ignored "-Wpsabi"

namespace eqat {
namespace {

#define QL_AVX2 __attribute__((target("avx2,fma")))

constexpr float kScaleMin = 1e-4f;
constexpr float kScaleMax = 1e4f;
constexpr int kMaxTile = 512;  // largest mr * nr of a GEMM family (AVX-512: 12 x 32)
constexpr int64_t kTileCols = 1024;  // most inputs per dW tile of the dscales pass

// The clamped scale s_c (NaN passes through, as in the twin).
inline float clamp_scale(float s) { return s < kScaleMin ? kScaleMin : (s > kScaleMax ? kScaleMax : s); }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t m) { return ceil_div(a, m) * m; }

// Splits `total` into equal blocks of at most `max_block`, each a multiple of `multiple`.
inline int64_t balanced_block(int64_t total, int64_t max_block, int64_t multiple) {
  max_block = std::max(multiple, max_block / multiple * multiple);
  const int64_t nblocks = ceil_div(total, max_block);
  return std::min(max_block, round_up(ceil_div(total, nblocks), multiple));
}

// One packed layer.
struct Packed {
  const int32_t* qweight;  // (I*bits/32, O)
  const uint8_t* zeros;    // (O, I/G)
  const float* scales;     // (O, I/G)
  int64_t O, I, G, ngroups;
  int bits;
  uint32_t mask;

  // Word row of qweight where the 32-input run starting at input i0 (a multiple of 32) begins.
  const int32_t* run(int64_t i0) const { return qweight + (i0 / 32) * bits * O; }

  // Code q[o, i], read from the bit stream of column o.
  uint32_t code(int64_t o, int64_t i) const {
    const int64_t bit = i * bits;
    const int64_t row = bit >> 5;
    const int sh = static_cast<int>(bit & 31);
    uint32_t v = static_cast<uint32_t>(qweight[row * O + o]) >> sh;
    if (sh + bits > 32) v |= static_cast<uint32_t>(qweight[(row + 1) * O + o]) << (32 - sh);
    return v & mask;
  }

  // q[o, i] - z[o, g] as an exact float (the factor of s_c in W_hat and of dW in dscales).
  float centered(int64_t o, int64_t i) const {
    return static_cast<float>(static_cast<int32_t>(code(o, i)) - static_cast<int32_t>(zeros[o * ngroups + i / G]));
  }

  float weight(int64_t o, int64_t i) const { return centered(o, i) * clamp_scale(scales[o * ngroups + i / G]); }
};

// ---------------------------------------------------------------------------------------------
// Dequantizers. A B-block dequantizer fills the panels of op(B) rows [k0, k0 + kc) x columns
// [j0, j0 + nc) (nc a multiple of nr; for a 32-input run, k0, kc or j0, nc are multiples of 32):
// panel p (columns j0 + p*nr ..) at dst + p*nr*kc, element (k, j) at k*nr + j.
// ---------------------------------------------------------------------------------------------

using BlockFn = void (*)(const Packed& w, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr, float* dst);

// Forward, scalar: op(B)(k, j) = W_hat[j, k].
void fwd_block_scalar(const Packed& w, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr, float* dst) {
  for (int64_t p = 0; p < nc / nr; ++p) {
    float* panel = dst + p * nr * kc;
    for (int64_t k = 0; k < kc; ++k)
      for (int j = 0; j < nr; ++j) panel[k * nr + j] = w.weight(j0 + p * nr + j, k0 + k);
  }
}

// dx, scalar: op(B)(k, j) = W_hat[k, j].
void dx_block_scalar(const Packed& w, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr, float* dst) {
  for (int64_t p = 0; p < nc / nr; ++p) {
    float* panel = dst + p * nr * kc;
    for (int64_t k = 0; k < kc; ++k)
      for (int j = 0; j < nr; ++j) panel[k * nr + j] = w.weight(k0 + k, j0 + p * nr + j);
  }
}

// (q - z) * s_c of 8 lanes, as the scalar path computes it: exact int difference, one rounding.
QL_AVX2 inline __m256 dequant8(__m256i q, __m256i z, __m256 s) {
  return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q, z)), s);
}

// Code K of a 32-input run for 8 output lanes: the run's `BITS` words are words[0..BITS).
template <int BITS, int K>
QL_AVX2 inline __m256i code_along_o(const __m256i* words, __m256i mask) {
  constexpr int bit = K * BITS, wi = bit >> 5, sh = bit & 31;
  __m256i v = words[wi];
  if constexpr (sh != 0) v = _mm256_srli_epi32(v, sh);
  if constexpr (sh + BITS > 32) v = _mm256_or_si256(v, _mm256_slli_epi32(words[wi + 1], 32 - sh));
  if constexpr (sh + BITS != 32) v = _mm256_and_si256(v, mask);
  return v;
}

// Dequantizes a 32-input run of 8 output lanes into 32 rows of dst (row stride ld).
template <int BITS, size_t... K>
QL_AVX2 inline void dequant_run_o(const __m256i* words, __m256i z, __m256 s, float* dst, int64_t ld,
                                  std::index_sequence<K...>) {
  const __m256i mask = _mm256_set1_epi32((1 << BITS) - 1);
  (_mm256_storeu_ps(dst + static_cast<int64_t>(K) * ld,
                    dequant8(code_along_o<BITS, static_cast<int>(K)>(words, mask), z, s)),
   ...);
}

// Forward, AVX2: 8 output lanes at a time, straight from the word rows of qweight.
template <int BITS>
QL_AVX2 void fwd_block_avx2(const Packed& w, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr, float* dst) {
  for (int64_t p = 0; p < nc / nr; ++p) {
    float* panel = dst + p * nr * kc;
    for (int64_t i0 = k0; i0 < k0 + kc; i0 += 32) {
      const int64_t g = i0 / w.G;
      const int32_t* run = w.run(i0);
      for (int v = 0; v < nr; v += 8) {
        const int64_t o = j0 + p * nr + v;
        __m256i words[BITS];
        for (int b = 0; b < BITS; ++b)
          words[b] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(run + b * w.O + o));
        alignas(32) int32_t zl[8];
        alignas(32) float sl[8];
        for (int l = 0; l < 8; ++l) {
          const int64_t e = (o + l) * w.ngroups + g;
          zl[l] = w.zeros[e];
          sl[l] = clamp_scale(w.scales[e]);
        }
        dequant_run_o<BITS>(words, _mm256_load_si256(reinterpret_cast<const __m256i*>(zl)), _mm256_load_ps(sl),
                            panel + (i0 - k0) * nr + v, nr, std::make_index_sequence<32>{});
      }
    }
  }
}

// Per-lane shift counts that cut 8 consecutive BITS-bit codes out of a 64-bit run with halves
// lo, hi: lane l = (lo >> a) | (hi >> b), masked, with bit = l * BITS; a count of 32 yields 0,
// which switches a term off. For 2, 3, 4 and 8 bits no code straddles the two halves (8 codes
// of <= 4 bits fit in lo; 8-bit codes 0-3 lie in lo, 4-7 in hi).
constexpr int lane_shift(bool hi, int bits, int l) {
  const int bit = l * bits;
  return hi ? (bit >= 32 ? bit - 32 : 32) : (bit < 32 ? bit : 32);
}

template <int BITS, bool HI>
QL_AVX2 inline __m256i lane_shifts() {
  return _mm256_setr_epi32(lane_shift(HI, BITS, 0), lane_shift(HI, BITS, 1), lane_shift(HI, BITS, 2),
                           lane_shift(HI, BITS, 3), lane_shift(HI, BITS, 4), lane_shift(HI, BITS, 5),
                           lane_shift(HI, BITS, 6), lane_shift(HI, BITS, 7));
}

// The 32 codes of output o in one 32-input run, as 4 vectors of 8 consecutive inputs. `col`
// points at the run's first word of column o; its words are `stride` apart.
template <int BITS>
QL_AVX2 inline void codes_along_i(const int32_t* col, int64_t stride, __m256i out[4]) {
  static_assert(BITS == 2 || BITS == 3 || BITS == 4 || BITS == 8, "codes straddle the 32-bit halves");
  alignas(16) uint32_t t[10] = {};  // the run's words, plus room for the last 8-byte read
  for (int b = 0; b < BITS; ++b) t[b] = static_cast<uint32_t>(col[b * stride]);
  const unsigned char* bytes = reinterpret_cast<const unsigned char*>(t);
  const __m256i mask = _mm256_set1_epi32((1 << BITS) - 1);
  // Codes v*8 .. v*8+7 occupy 8*BITS bits starting at byte v*BITS of the run.
  for (int v = 0; v < 4; ++v) {
    uint64_t u;
    std::memcpy(&u, bytes + v * BITS, sizeof u);
    const __m256i lo = _mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(u)));
    __m256i r = _mm256_srlv_epi32(lo, lane_shifts<BITS, false>());
    if constexpr (8 * BITS > 32) {
      const __m256i hi = _mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(u >> 32)));
      r = _mm256_or_si256(r, _mm256_srlv_epi32(hi, lane_shifts<BITS, true>()));
    }
    out[v] = _mm256_and_si256(r, mask);
  }
}

// dx, AVX2: 8 input lanes at a time; a vector never straddles panels (nr % 8 == 0).
template <int BITS>
QL_AVX2 void dx_block_avx2(const Packed& w, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr, float* dst) {
  for (int64_t i0 = j0; i0 < j0 + nc; i0 += 32) {
    const int64_t g = i0 / w.G;
    const int32_t* run = w.run(i0);
    float* d[4];
    for (int v = 0; v < 4; ++v) {
      const int64_t col = i0 - j0 + 8 * v;
      d[v] = dst + (col / nr) * nr * kc + col % nr;
    }
    for (int64_t o = k0; o < k0 + kc; ++o) {
      __m256i c[4];
      codes_along_i<BITS>(run + o, w.O, c);
      const int64_t e = o * w.ngroups + g;
      const __m256i z = _mm256_set1_epi32(w.zeros[e]);
      const __m256 s = _mm256_set1_ps(clamp_scale(w.scales[e]));
      const int64_t row = (o - k0) * nr;
      for (int v = 0; v < 4; ++v) _mm256_storeu_ps(d[v] + row, dequant8(c[v], z, s));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Whole-matrix dequantization (rows [o0, o1) of out (O, I)).
// ---------------------------------------------------------------------------------------------

using RowsFn = void (*)(const Packed& w, int64_t o0, int64_t o1, float* out);

void rows_scalar(const Packed& w, int64_t o0, int64_t o1, float* out) {
  for (int64_t o = o0; o < o1; ++o)
    for (int64_t i = 0; i < w.I; ++i) out[o * w.I + i] = w.weight(o, i);
}

template <int BITS>
QL_AVX2 void rows_avx2(const Packed& w, int64_t o0, int64_t o1, float* out) {
  for (int64_t o = o0; o < o1; ++o) {
    for (int64_t i0 = 0; i0 < w.I; i0 += 32) {
      __m256i c[4];
      codes_along_i<BITS>(w.run(i0) + o, w.O, c);
      const int64_t e = o * w.ngroups + i0 / w.G;
      const __m256i z = _mm256_set1_epi32(w.zeros[e]);
      const __m256 s = _mm256_set1_ps(clamp_scale(w.scales[e]));
      float* d = out + o * w.I + i0;
      for (int v = 0; v < 4; ++v) _mm256_storeu_ps(d + 8 * v, dequant8(c[v], z, s));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// dscales tile reduction: partial group sums of (q - z) * dW over a tile of dW rows
// [o0, o0 + rows) x inputs [i0, i0 + cols) (c: the tile, row stride ldc). The sum of row o over
// group g goes to part[o * cnt + g - g_lo] (g_lo: the tile's first group, cnt: its groups).
// ---------------------------------------------------------------------------------------------

using ReduceFn = void (*)(const Packed& w, int64_t o0, int64_t rows, int64_t i0, int64_t cols, const float* c,
                          int64_t ldc, float* part, int64_t cnt, int64_t g_lo);

void reduce_scalar(const Packed& w, int64_t o0, int64_t rows, int64_t i0, int64_t cols, const float* c, int64_t ldc,
                   float* part, int64_t cnt, int64_t g_lo) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = o0 + r;
    float* po = part + o * cnt - g_lo;
    for (int64_t g = g_lo; g < g_lo + cnt; ++g) po[g] = 0.0f;
    for (int64_t i = i0; i < i0 + cols; ++i) po[i / w.G] += w.centered(o, i) * c[r * ldc + (i - i0)];
  }
}

QL_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int BITS>
QL_AVX2 void reduce_avx2(const Packed& w, int64_t o0, int64_t rows, int64_t i0, int64_t cols, const float* c,
                         int64_t ldc, float* part, int64_t cnt, int64_t g_lo) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = o0 + r;
    float* po = part + o * cnt - g_lo;
    const float* cr = c + r * ldc - i0;
    __m256 acc = _mm256_setzero_ps();
    int64_t g_cur = i0 / w.G;
    for (int64_t i = i0; i < i0 + cols; i += 32) {
      const int64_t g = i / w.G;
      if (g != g_cur) {
        po[g_cur] = hsum8(acc);
        acc = _mm256_setzero_ps();
        g_cur = g;
      }
      __m256i q[4];
      codes_along_i<BITS>(w.run(i) + o, w.O, q);
      const __m256i z = _mm256_set1_epi32(w.zeros[o * w.ngroups + g]);
      for (int v = 0; v < 4; ++v)
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q[v], z)), _mm256_loadu_ps(cr + i + 8 * v), acc);
    }
    po[g_cur] = hsum8(acc);
  }
}

// ---------------------------------------------------------------------------------------------
// Path selection.
// ---------------------------------------------------------------------------------------------

bool use_avx2(const GemmFamily& f, const Packed& w) { return cpu_has_avx2() && f.nr % 8 == 0 && w.G % 32 == 0; }

template <template <int> class Pick>
auto by_bits(int bits) -> decltype(Pick<2>::fn) {
  switch (bits) {
    case 2: return Pick<2>::fn;
    case 3: return Pick<3>::fn;
    case 4: return Pick<4>::fn;
    default: return Pick<8>::fn;
  }
}
template <int B> struct PickFwd { static constexpr BlockFn fn = fwd_block_avx2<B>; };
template <int B> struct PickDx { static constexpr BlockFn fn = dx_block_avx2<B>; };
template <int B> struct PickRows { static constexpr RowsFn fn = rows_avx2<B>; };
template <int B> struct PickReduce { static constexpr ReduceFn fn = reduce_avx2<B>; };

// ---------------------------------------------------------------------------------------------
// Scratch and task scheduling.
// ---------------------------------------------------------------------------------------------

// A growable 64-byte-aligned float buffer of the calling thread, holding every worker's scratch.
class Scratch {
 public:
  float* get(size_t n) {
    if (n > cap_) {
      void* p = std::aligned_alloc(64, round_up(static_cast<int64_t>(n * sizeof(float)), 64));
      if (!p) throw std::bad_alloc();
      buf_.reset(static_cast<float*>(p));
      cap_ = n;
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

thread_local Scratch t_scratch;

// Runs task(t, slot) for t in [0, ntasks) on the pool: each worker claims tasks from a counter
// and owns scratch slot `slot` (a nested call runs every task on the calling thread, slot 0).
template <class Task>
void run_tasks(int64_t ntasks, int nt, Task&& task) {
  std::atomic<int64_t> next{0};
  parallel_for(nt, [&](int64_t slot, int64_t) {
    for (;;) {
      const int64_t t = next.fetch_add(1, std::memory_order_relaxed);
      if (t >= ntasks) break;
      task(t, slot);
    }
  });
}

// One micro-tile of C (rows mr <= f.mr, all nr columns): C = A B + beta C.
inline void run_tile(const GemmFamily& f, int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, int mr,
                     float beta) {
  if (mr == f.mr) {
    f.kernel(kc, ap, bp, f.nr, c, ldc, 1.0f, beta);
    return;
  }
  alignas(64) float tile[kMaxTile];
  f.kernel(kc, ap, bp, f.nr, tile, f.nr, 1.0f, 0.0f);
  for (int r = 0; r < mr; ++r) {
    float* cr = c + r * ldc;
    const float* tr = tile + r * f.nr;
    if (beta == 0.0f)
      for (int j = 0; j < f.nr; ++j) cr[j] = tr[j];
    else
      for (int j = 0; j < f.nr; ++j) cr[j] = tr[j] + beta * cr[j];
  }
}

// ---------------------------------------------------------------------------------------------
// C (M, Ncols) = A (M, K) @ op(B) + beta0 * C (+ bias), op(B) (K, Ncols) produced block by block
// by `deq`; K and Ncols are multiples of 32. The forward (A = x, op(B) = W_hat^T) and dx
// (A = dout, op(B) = W_hat).
// ---------------------------------------------------------------------------------------------

void packed_gemm(const GemmFamily& f, const Packed& w, BlockFn deq, int64_t M, int64_t Ncols, int64_t K,
                 const float* a, float* c, float beta0, const float* bias) {
  if (M == 0) return;
  const int nt = num_threads();
  const int64_t kc = balanced_block(K, f.kc, 32);
  // Tasks: row chunks x column chunks of C, several per thread so a descheduled thread does not
  // hold the others up; column chunks at least 128 wide (each dequantizes its own weights),
  // row chunks at least 64 rows where M allows.
  const int64_t target = nt > 1 ? 4 * nt : 1;
  int64_t cc = std::max<int64_t>({1, ceil_div(Ncols, f.nc / 32 * 32), std::min<int64_t>(target, Ncols / 128)});
  const int64_t cw = round_up(ceil_div(Ncols, cc), 32);
  cc = ceil_div(Ncols, cw);
  int64_t rc = std::min(ceil_div(target, cc), std::max<int64_t>(1, M / 64));
  while (nt > 1 && (cc * rc) % nt != 0 && rc < M / 32) ++rc;
  const int64_t rw = round_up(ceil_div(M, rc), f.mr);
  rc = ceil_div(M, rw);

  const int64_t bsize = round_up(kc * cw, 16);
  const int64_t asize = round_up(round_up(f.mc, f.mr) * kc, 16);
  float* scratch = t_scratch.get(static_cast<size_t>(nt * (bsize + asize)));

  run_tasks(rc * cc, nt, [&](int64_t t, int64_t slot) {
    float* bp = scratch + slot * (bsize + asize);
    float* ap = bp + bsize;
    const int64_t r0 = (t / cc) * rw, r1 = std::min(M, r0 + rw);
    const int64_t j0 = (t % cc) * cw, ncur = std::min(cw, Ncols - j0);
    const int64_t npanels = ncur / f.nr;
    for (int64_t pc = 0; pc < K; pc += kc) {
      const int64_t kcur = std::min(kc, K - pc);
      deq(w, pc, kcur, j0, ncur, f.nr, bp);
      const float beta = pc == 0 ? beta0 : 1.0f;
      for (int64_t ic = r0; ic < r1; ic += f.mc) {
        const int64_t mcur = std::min(f.mc, r1 - ic);
        const int64_t qpanels = ceil_div(mcur, f.mr);
        for (int64_t q = 0; q < qpanels; ++q) {
          const int wq = static_cast<int>(std::min<int64_t>(f.mr, mcur - q * f.mr));
          f.pack_a(a + (ic + q * f.mr) * K + pc, K, 1, wq, kcur, ap + q * f.mr * kcur);
        }
        for (int64_t p = 0; p < npanels; ++p) {
          for (int64_t q = 0; q < qpanels; ++q) {
            const int mr = static_cast<int>(std::min<int64_t>(f.mr, mcur - q * f.mr));
            run_tile(f, kcur, ap + q * f.mr * kcur, bp + p * f.nr * kcur, c + (ic + q * f.mr) * Ncols + j0 + p * f.nr,
                     Ncols, mr, beta);
          }
        }
        if (bias && pc + kcur == K) {
          for (int64_t r = ic; r < ic + mcur; ++r) {
            float* cr = c + r * Ncols;
            for (int64_t j = j0; j < j0 + ncur; ++j) cr[j] += bias[j];
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// dscales (O, I/G) += sum_{i in g} (q - z) * dW[o, i], dW = dout^T (O, N) @ x (N, I).
// ---------------------------------------------------------------------------------------------

void dscales_pass(const GemmFamily& f, const Packed& w, ReduceFn reduce, int64_t N, const float* dout, const float* x,
                  float* dscales) {
  if (N == 0) return;
  const int nt = num_threads();
  const int64_t O = w.O, I = w.I, G = w.G;
  const int64_t kc = balanced_block(N, f.kc, 1);
  // Tile widths fix the partial sums, so they do not depend on the thread count; the row
  // blocks (which do not change any result) shrink when there are too few tasks for the threads.
  const int64_t it = balanced_block(I, kTileCols, 32);
  const int64_t tiles = ceil_div(I, it);
  int64_t mt = balanced_block(O, f.mc, f.mr);
  while (ceil_div(O, mt) * tiles < 2 * nt && mt > 4 * f.mr) mt = round_up(mt / 2, f.mr);
  const int64_t blocks = ceil_div(O, mt);

  // Partial sums: tile t holds, for every row, its groups g_lo[t] .. g_lo[t] + cnt[t] - 1.
  std::vector<int64_t> g_lo(tiles), cnt(tiles), off(tiles + 1, 0);
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t i0 = t * it, i1 = std::min(I, i0 + it);
    g_lo[t] = i0 / G;
    cnt[t] = (i1 - 1) / G - g_lo[t] + 1;
    off[t + 1] = off[t] + O * cnt[t];
  }
  std::vector<float> partial(static_cast<size_t>(off[tiles]));

  const int64_t asize = round_up(round_up(mt, f.mr) * kc, 16);
  const int64_t bsize = round_up(kc * it, 16);
  const int64_t ldt = it + 16;  // tile row stride, padded so tile rows do not share L1 sets
  const int64_t csize = round_up(round_up(mt, f.mr) * ldt, 16);
  float* scratch = t_scratch.get(static_cast<size_t>(nt * (asize + bsize + csize)));

  run_tasks(blocks * tiles, nt, [&](int64_t task, int64_t slot) {
    float* ap = scratch + slot * (asize + bsize + csize);
    float* bp = ap + asize;
    float* ct = bp + bsize;
    const int64_t b = task / tiles, t = task % tiles;
    const int64_t o0 = b * mt, rows = std::min(mt, O - o0);
    const int64_t i0 = t * it, cols = std::min(it, I - i0);
    const int64_t qpanels = ceil_div(rows, f.mr), npanels = cols / f.nr;
    for (int64_t pc = 0; pc < N; pc += kc) {
      const int64_t kcur = std::min(kc, N - pc);
      for (int64_t q = 0; q < qpanels; ++q) {
        const int wq = static_cast<int>(std::min<int64_t>(f.mr, rows - q * f.mr));
        f.pack_a(dout + pc * O + o0 + q * f.mr, 1, O, wq, kcur, ap + q * f.mr * kcur);
      }
      for (int64_t p = 0; p < npanels; ++p)
        f.pack_b(x + pc * I + i0 + p * f.nr, 1, I, f.nr, kcur, bp + p * f.nr * kcur);
      const float beta = pc == 0 ? 0.0f : 1.0f;
      for (int64_t p = 0; p < npanels; ++p) {
        for (int64_t q = 0; q < qpanels; ++q) {
          const int mr = static_cast<int>(std::min<int64_t>(f.mr, rows - q * f.mr));
          run_tile(f, kcur, ap + q * f.mr * kcur, bp + p * f.nr * kcur, ct + q * f.mr * ldt + p * f.nr, ldt, mr,
                   beta);
        }
      }
    }
    reduce(w, o0, rows, i0, cols, ct, ldt, partial.data() + off[t], cnt[t], g_lo[t]);
  });

  // dscales += the partial sums of each group, tiles in order.
  const int64_t ng = w.ngroups;
  parallel_for(O, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      for (int64_t g = 0; g < ng; ++g) {
        const int64_t t0 = (g * G) / it, t1 = ((g + 1) * G - 1) / it;
        float s = 0.0f;
        for (int64_t t = t0; t <= t1; ++t) s += partial[static_cast<size_t>(off[t] + o * cnt[t] + g - g_lo[t])];
        dscales[o * ng + g] += s;
      }
    }
  }, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, ng)));
}

// ---------------------------------------------------------------------------------------------
// N-API entry points.
// ---------------------------------------------------------------------------------------------

struct Layer {
  int64_t N, O, I, G;
  int bits;
};

// Reads and checks N, O, I, bits, G at argument positions n_at (or -1: no N) .. n_at + 4.
Layer read_layer(const Napi::CallbackInfo& info, int n_at, size_t o_at, const char* op) {
  Layer L{};
  Napi::Env env = info.Env();
  L.N = n_at >= 0 ? arg_int(info, static_cast<size_t>(n_at), op, "N") : 0;
  L.O = arg_int(info, o_at, op, "O");
  L.I = arg_int(info, o_at + 1, op, "I");
  const int64_t bits = arg_int(info, o_at + 2, op, "bits");
  L.G = arg_int(info, o_at + 3, op, "G");
  const std::string p = std::string(op) + ": ";
  if (L.N < 0) throw Napi::RangeError::New(env, p + "argument 'N' must be >= 0");
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
    throw Napi::RangeError::New(env, p + "argument 'bits' must be 2, 3, 4 or 8, got " + std::to_string(bits));
  if (L.O <= 0 || L.O % 32 != 0)
    throw Napi::RangeError::New(env, p + "argument 'O' must be a positive multiple of 32, got " + std::to_string(L.O));
  if (L.I <= 0 || L.I % 32 != 0)
    throw Napi::RangeError::New(env, p + "argument 'I' must be a positive multiple of 32, got " + std::to_string(L.I));
  if (L.G <= 0 || L.I % L.G != 0)
    throw Napi::RangeError::New(env, p + "argument 'G' must divide I = " + std::to_string(L.I) + ", got " +
                                         std::to_string(L.G));
  L.bits = static_cast<int>(bits);
  return L;
}

// qweight, zeros and scales at argument positions qw_at .. qw_at + 2.
Packed read_packed(const Napi::CallbackInfo& info, size_t qw_at, const Layer& L, const char* op) {
  Packed w{};
  w.O = L.O;
  w.I = L.I;
  w.G = L.G;
  w.bits = L.bits;
  w.ngroups = L.I / L.G;
  w.mask = (1u << L.bits) - 1u;
  const size_t groups = static_cast<size_t>(L.O * w.ngroups);
  w.qweight = arg_i32(info, qw_at, static_cast<size_t>(L.I / 32 * L.bits * L.O), op, "qweight");
  w.zeros = arg_u8(info, qw_at + 1, groups, op, "zeros");
  w.scales = arg_f32(info, qw_at + 2, groups, op, "scales");
  return w;
}

bool is_absent(const Napi::CallbackInfo& info, size_t i) {
  return i >= info.Length() || info[i].IsNull() || info[i].IsUndefined();
}

void check_family(const Napi::CallbackInfo& info, const GemmFamily& f, const char* op) {
  if (f.mr * f.nr > kMaxTile || 32 % f.nr != 0)
    throw Napi::Error::New(info.Env(), std::string(op) + ": unsupported GEMM kernel family " + f.name);
}

// qlinearForward(out, x, qweight, zeros, scales, bias|null, N, O, I, bits, G)
Napi::Value QlinearForward(const Napi::CallbackInfo& info) {
  const char* op = "qlinearForward";
  check_argc(info, 11, op);
  const Layer L = read_layer(info, 6, 7, op);
  float* out = arg_f32(info, 0, static_cast<size_t>(L.N * L.O), op, "out");
  const float* x = arg_f32(info, 1, static_cast<size_t>(L.N * L.I), op, "x");
  const Packed w = read_packed(info, 2, L, op);
  const float* bias = is_absent(info, 5) ? nullptr : arg_f32(info, 5, static_cast<size_t>(L.O), op, "bias");
  const GemmFamily& f = gemm_family();
  check_family(info, f, op);
  const BlockFn deq = use_avx2(f, w) ? by_bits<PickFwd>(w.bits) : fwd_block_scalar;
  try {
    packed_gemm(f, w, deq, L.N, L.O, L.I, x, out, 0.0f, bias);
  } catch (const std::bad_alloc&) {
    throw Napi::Error::New(info.Env(), std::string(op) + ": out of memory for the scratch buffers");
  }
  return info.Env().Undefined();
}

// qlinearBackward(dx|null, dscales|null, dout, x, qweight, zeros, scales, N, O, I, bits, G, accumulateDx)
Napi::Value QlinearBackward(const Napi::CallbackInfo& info) {
  const char* op = "qlinearBackward";
  check_argc(info, 13, op);
  const Layer L = read_layer(info, 7, 8, op);
  float* dx = is_absent(info, 0) ? nullptr : arg_f32(info, 0, static_cast<size_t>(L.N * L.I), op, "dx");
  const size_t groups = static_cast<size_t>(L.O * (L.I / L.G));
  float* dscales = is_absent(info, 1) ? nullptr : arg_f32(info, 1, groups, op, "dscales");
  const float* dout = arg_f32(info, 2, static_cast<size_t>(L.N * L.O), op, "dout");
  const float* x = arg_f32(info, 3, static_cast<size_t>(L.N * L.I), op, "x");
  const Packed w = read_packed(info, 4, L, op);
  const bool accumulate = arg_bool(info, 12, op, "accumulateDx");
  const GemmFamily& f = gemm_family();
  check_family(info, f, op);
  const bool fast = use_avx2(f, w);
  try {
    if (dx) {
      const BlockFn deq = fast ? by_bits<PickDx>(w.bits) : dx_block_scalar;
      packed_gemm(f, w, deq, L.N, L.I, L.O, dout, dx, accumulate ? 1.0f : 0.0f, nullptr);
    }
    if (dscales) dscales_pass(f, w, fast ? by_bits<PickReduce>(w.bits) : reduce_scalar, L.N, dout, x, dscales);
  } catch (const std::bad_alloc&) {
    throw Napi::Error::New(info.Env(), std::string(op) + ": out of memory for the scratch buffers");
  }
  return info.Env().Undefined();
}

// qlinearDequantize(out, qweight, zeros, scales, O, I, bits, G)
Napi::Value QlinearDequantize(const Napi::CallbackInfo& info) {
  const char* op = "qlinearDequantize";
  check_argc(info, 8, op);
  const Layer L = read_layer(info, -1, 4, op);
  float* out = arg_f32(info, 0, static_cast<size_t>(L.O * L.I), op, "out");
  const Packed w = read_packed(info, 1, L, op);
  const RowsFn rows = use_avx2(gemm_family(), w) ? by_bits<PickRows>(w.bits) : rows_scalar;
  parallel_for(w.O, [&](int64_t o0, int64_t o1) { rows(w, o0, o1, out); }, std::max<int64_t>(1, 65536 / w.I));
  return info.Env().Undefined();
}

}  // namespace

EQAT_EXPORT(qlinearForward, QlinearForward);
EQAT_EXPORT(qlinearBackward, QlinearBackward);
EQAT_EXPORT(qlinearDequantize, QlinearDequantize);

}  // namespace eqat
