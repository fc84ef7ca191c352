// Warp-level tensor-core primitives on bf16 tiles (sm_80 and later), for kernels that keep their
// tiles in shared memory and registers (attention_tc.cu):
//   ldmatrix_x4 / ldmatrix_x4_trans  four 8x8 b16 matrices from shared memory into registers
//   mma_bf16_16816                   D (16x8 f32) += A (16x16 bf16, row-major) · B (16x8 bf16)
//   pack_bf16x2                      two f32 rounded to nearest even into one A/B register
//
// Register layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"), with
// g = lane / 4 and t = lane % 4; each 32-bit register holds two bf16, the lower column index in
// the low half:
//   A  a0 (row g, cols 2t, 2t+1)  a1 (row g+8, same cols)  a2 (row g, cols 8+2t, 9+2t)  a3 (row g+8, those)
//   B  b0 (k 2t, 2t+1; col g)     b1 (k 8+2t, 9+2t; col g)
//   C  c0, c1 (row g, cols 2t, 2t+1)                       c2, c3 (row g+8, cols 2t, 2t+1)
// ldmatrix: lane L gives the shared-memory address of row L % 8 of matrix L / 8 (16-byte aligned
// rows of eight b16); matrix i lands in register i, lane L holding its row L / 4, elements
// 2(L % 4) and 2(L % 4) + 1 (with .trans: rows 2(L % 4) and 2(L % 4) + 1 of column L / 4).
//
// On the GPU these are single PTX instructions; the CPU emulator of the kernels
// (test/cuda/emu/shim.h) implements the same warp-collective semantics in C++, so fragment
// indexing mistakes fail the same tests there.
#ifndef EQAT_MMA_CUH
#define EQAT_MMA_CUH

#include "bf16.cuh"

namespace eqat {

__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const unsigned short* row) {
#if defined(__CUDA_ARCH__)
  const unsigned a = (unsigned)__cvta_generic_to_shared(row);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
#else
  emu::ldmatrix_x4(r, row, false);
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned r[4], const unsigned short* row) {
#if defined(__CUDA_ARCH__)
  const unsigned a = (unsigned)__cvta_generic_to_shared(row);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
#else
  emu::ldmatrix_x4(r, row, true);
#endif
}

// d += a · (b0, b1), f32 sums.
__device__ __forceinline__ void mma_bf16_16816(float d[4], const unsigned a[4], unsigned b0, unsigned b1) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  emu::mma_bf16_16816(d, a, b0, b1);
#endif
}

// lo in the low half, hi in the high half, each rounded to nearest even (to_bf16's rounding).
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
#if defined(__CUDA_ARCH__)
  unsigned r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#else
  return (unsigned)to_bf16(lo) | ((unsigned)to_bf16(hi) << 16);
#endif
}

}  // namespace eqat

#endif  // EQAT_MMA_CUH
