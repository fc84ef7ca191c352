// CPU emulation of the CUDA C++ subset that native/cuda/kernels/*.cu use, for tests on
// machines without a GPU: the kernel sources are compiled unchanged by the host C++ compiler
// with this header in front (test/cuda/emu/backend.ts builds and runs them).
//
// Execution model: blocks run one after another; the threads of a block are coroutines (own
// stacks, switched by a few instructions on x86-64, by ucontext elsewhere) on one OS thread.
// __syncthreads() is a block-wide barrier, each warp shuffle a barrier of the threads of its
// warp (lanes are linear thread ids / 32); a barrier that not every live thread of its scope
// reaches is reported as an error, as is a deadlock. __shared__
// variables become function-local statics, shared by the threads of the running block.
// Arithmetic is the host's IEEE f32/f64 without contraction (the kernels are compiled with
// --fmad=false on the GPU); libm's exp may differ from CUDA's in the last bit.
#pragma once
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <functional>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// CUDA's vector types that the kernels load and store whole (16- and 8-byte accesses).
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) ushort4 {
  unsigned short x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};

namespace emu {

enum class State { runnable, block_barrier, warp_barrier, done };

// Switching between the scheduler and a thread. On x86-64 a few instructions save and restore
// the callee-saved registers and the floating-point control words (swapcontext would also make
// two signal-mask system calls per switch, most of a launch's time); elsewhere ucontext.
#if defined(__x86_64__)
struct Context {
  void* sp = nullptr;
};
extern "C" void emu_switch_stack(void** save_sp, void* load_sp);
asm(R"(
  .text
  .p2align 4
  .globl emu_switch_stack
  .type emu_switch_stack, @function
emu_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  fnstcw (%rsp)
  stmxcsr 8(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  fldcw (%rsp)
  ldmxcsr 8(%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch_stack, .-emu_switch_stack
)");
#else
using Context = ucontext_t;
#endif

struct Thread {
  Context ctx;
  dim3 idx;
  unsigned linear = 0;
  State state = State::runnable;
  char* stack = nullptr;
};

constexpr size_t kStackBytes = 256 * 1024;

inline dim3 g_blockIdx, g_blockDim, g_gridDim;
inline Thread* g_current = nullptr;
inline Context g_scheduler;
inline std::vector<Thread> g_threads;
inline std::vector<uint64_t> g_exchange;  // one shuffle slot per thread
inline std::vector<uint32_t> g_fragments;  // kFragmentWords per thread: the registers of a warp matrix op
constexpr unsigned kFragmentWords = 16;
inline std::function<void()> g_kernel;

[[noreturn]] inline void fail(const char* what) {
  fprintf(stderr, "emulator: %s (block %u,%u,%u)\n", what, g_blockIdx.x, g_blockIdx.y, g_blockIdx.z);
  exit(3);
}

inline void to_scheduler(Thread* t) {
#if defined(__x86_64__)
  emu_switch_stack(&t->ctx.sp, g_scheduler.sp);
#else
  swapcontext(&t->ctx, &g_scheduler);
#endif
}

inline void wait_at(State s) {
  Thread* t = g_current;
  t->state = s;
  to_scheduler(t);
}

inline void thread_main() {
  g_kernel();
  g_current->state = State::done;
#if defined(__x86_64__)
  to_scheduler(g_current);  // never resumed
  __builtin_unreachable();
#endif
  // ucontext: uc_link returns to the scheduler
}

// Prepares t to run thread_main on its own stack from the start.
inline void start_context(Thread& t) {
#if defined(__x86_64__)
  // The frame emu_switch_stack pops: control words, r15..rbp, then the address it returns to
  // (thread_main, entered with the stack aligned as after a call; its own return slot is 0).
  auto* top = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(t.stack) + kStackBytes) & ~uintptr_t(15));
  uint64_t* sp = top - 10;
  uint16_t fpcw;
  uint32_t mxcsr;
  asm volatile("fnstcw %0" : "=m"(fpcw));
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  sp[0] = fpcw;
  sp[1] = mxcsr;
  for (int i = 2; i < 8; ++i) sp[i] = 0;  // r15, r14, r13, r12, rbx, rbp
  sp[8] = reinterpret_cast<uint64_t>(&thread_main);
  sp[9] = 0;
  t.ctx.sp = sp;
#else
  getcontext(&t.ctx);
  t.ctx.uc_stack.ss_sp = t.stack;
  t.ctx.uc_stack.ss_size = kStackBytes;
  t.ctx.uc_link = &g_scheduler;
  makecontext(&t.ctx, thread_main, 0);
#endif
}

// Runs thread t until it waits at a barrier or finishes.
inline void resume(Thread& t) {
  g_current = &t;
#if defined(__x86_64__)
  emu_switch_stack(&g_scheduler.sp, t.ctx.sp);
#else
  swapcontext(&g_scheduler, &t.ctx);
#endif
}

// Runs every thread of the current block to completion.
inline void run_block() {
  const unsigned bx = g_blockDim.x, by = g_blockDim.y, bz = g_blockDim.z;
  const unsigned n = bx * by * bz;
  if (n < 1 || n > 1024) fail("block size must be in [1, 1024]");
  if (g_threads.size() < n) g_threads.resize(n);
  g_exchange.assign(n, 0);
  g_fragments.assign(size_t(n) * kFragmentWords, 0);
  for (unsigned i = 0; i < n; ++i) {
    Thread& t = g_threads[i];
    if (!t.stack) t.stack = static_cast<char*>(malloc(kStackBytes));
    t.linear = i;
    t.idx.x = i % bx;
    t.idx.y = (i / bx) % by;
    t.idx.z = i / (bx * by);
    t.state = State::runnable;
    start_context(t);
  }
  for (;;) {
    for (unsigned i = 0; i < n; ++i) {
      if (g_threads[i].state == State::runnable) resume(g_threads[i]);
    }
    // Every thread now waits at a barrier or has finished. Release complete warp barriers first.
    bool released = false;
    for (unsigned w = 0; w * 32 < n; ++w) {
      unsigned live = 0, waiting = 0, done = 0;
      for (unsigned i = w * 32; i < n && i < w * 32 + 32; ++i) {
        const State s = g_threads[i].state;
        if (s == State::done) ++done;
        else ++live;
        if (s == State::warp_barrier) ++waiting;
      }
      if (live > 0 && waiting == live) {
        if (done > 0) fail("warp shuffle in a warp with exited threads");
        for (unsigned i = w * 32; i < n && i < w * 32 + 32; ++i) g_threads[i].state = State::runnable;
        released = true;
      }
    }
    if (released) continue;
    unsigned live = 0, at_block = 0;
    for (unsigned i = 0; i < n; ++i) {
      if (g_threads[i].state != State::done) ++live;
      if (g_threads[i].state == State::block_barrier) ++at_block;
    }
    if (live == 0) return;
    if (at_block == live) {
      if (live != n) fail("__syncthreads() not reached by every thread of the block");
      for (unsigned i = 0; i < n; ++i) g_threads[i].state = State::runnable;
      continue;
    }
    fail("deadlock: threads wait at different barriers (divergent __syncthreads or shuffle)");
  }
}

template <class T>
T shuffle(unsigned mask, T v, bool src_valid, unsigned src) {
  static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
  if (mask != 0xffffffffu) fail("only full-warp shuffles are emulated");
  Thread* me = g_current;
  uint64_t bits = 0;
  memcpy(&bits, &v, sizeof(T));
  g_exchange[me->linear] = bits;
  wait_at(State::warp_barrier);
  const unsigned from = (src_valid && src < g_exchange.size()) ? src : me->linear;
  const uint64_t got = g_exchange[from];
  wait_at(State::warp_barrier);
  T r;
  memcpy(&r, &got, sizeof(T));
  return r;
}

// The warp-collective tensor-core operations of native/cuda/kernels/mma.cuh (register layouts
// there). Each lane posts its operands, the warp meets at a barrier, each lane computes its own
// registers from every lane's operands, and the warp meets again before the slots are reused.

inline uint16_t half_of(uint32_t reg, unsigned hi) { return static_cast<uint16_t>(hi ? reg >> 16 : reg & 0xffffu); }
inline float bf16_value(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane L addresses row L % 8 of matrix L / 8.
inline void ldmatrix_x4(unsigned r[4], const unsigned short* row, bool trans) {
  Thread* me = g_current;
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0) fail("ldmatrix: row address not 16-byte aligned");
  g_exchange[me->linear] = reinterpret_cast<uintptr_t>(row);
  wait_at(State::warp_barrier);
  const unsigned lane = me->linear & 31u, warp0 = me->linear - lane;
  if (warp0 + 32 > g_exchange.size()) fail("ldmatrix in a partial warp");
  auto rowOf = [&](unsigned m, unsigned i) { return reinterpret_cast<const uint16_t*>(g_exchange[warp0 + 8 * m + i]); };
  for (unsigned m = 0; m < 4; ++m) {
    uint16_t lo, hi;
    if (!trans) {
      lo = rowOf(m, lane / 4)[2 * (lane % 4)];
      hi = rowOf(m, lane / 4)[2 * (lane % 4) + 1];
    } else {
      lo = rowOf(m, 2 * (lane % 4))[lane / 4];
      hi = rowOf(m, 2 * (lane % 4) + 1)[lane / 4];
    }
    r[m] = uint32_t(lo) | (uint32_t(hi) << 16);
  }
  wait_at(State::warp_barrier);
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, d = a · b + d: products exact in f32,
// summed in k order onto the accumulator (the tensor core's internal order is not specified).
inline void mma_bf16_16816(float d[4], const unsigned a[4], unsigned b0, unsigned b1) {
  Thread* me = g_current;
  uint32_t* mine = &g_fragments[size_t(me->linear) * kFragmentWords];
  for (int i = 0; i < 4; ++i) mine[i] = a[i];
  mine[4] = b0;
  mine[5] = b1;
  wait_at(State::warp_barrier);
  const unsigned lane = me->linear & 31u, warp0 = me->linear - lane;
  if (warp0 + 32 > g_exchange.size()) fail("mma in a partial warp");
  auto slot = [&](unsigned l) { return &g_fragments[size_t(warp0 + l) * kFragmentWords]; };
  auto A = [&](unsigned row, unsigned k) {
    const unsigned reg = row / 8 + 2 * (k / 8);
    return bf16_value(half_of(slot((row % 8) * 4 + (k % 8) / 2)[reg], k % 2));
  };
  auto B = [&](unsigned k, unsigned col) { return bf16_value(half_of(slot(col * 4 + (k % 8) / 2)[4 + k / 8], k % 2)); };
  float out[4];
  for (unsigned e = 0; e < 4; ++e) {
    const unsigned row = lane / 4 + 8 * (e / 2), col = 2 * (lane % 4) + e % 2;
    float sum = d[e];
    for (unsigned k = 0; k < 16; ++k) sum += A(row, k) * B(k, col);
    out[e] = sum;
  }
  wait_at(State::warp_barrier);
  for (int e = 0; e < 4; ++e) d[e] = out[e];
}

}  // namespace emu

#define threadIdx (emu::g_current->idx)
#define blockIdx (emu::g_blockIdx)
#define blockDim (emu::g_blockDim)
#define gridDim (emu::g_gridDim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

inline void __syncthreads() { emu::wait_at(emu::State::block_barrier); }

template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const unsigned lane = emu::g_current->linear & 31u, seg = lane % static_cast<unsigned>(width);
  return emu::shuffle(mask, v, seg + delta < static_cast<unsigned>(width), emu::g_current->linear + delta);
}

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const unsigned lane = emu::g_current->linear & 31u;
  const unsigned other = lane ^ static_cast<unsigned>(lane_mask);
  const bool ok = other / static_cast<unsigned>(width) == lane / static_cast<unsigned>(width) && other < 32u;
  return emu::shuffle(mask, v, ok, emu::g_current->linear - lane + other);
}

inline unsigned __float_as_uint(float f) {
  unsigned u;
  memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
