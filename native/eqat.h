// eqat native addon: shared declarations for every CPU kernel file.
//
// Each kernel file (native/cpu/<op>.cc) registers its N-API entry points with EQAT_EXPORT;
// binding.cc exposes everything registered. Entry points only validate arguments and hand
// buffers to plain C++ kernels: no policy, no allocation of tensors that outlive the call.
//
// Build: portable x86-64 baseline; wider paths are compiled per function with
// __attribute__((target("avx2,fma"))) / target("avx512f,...") and chosen at run time with
// eqat::cpu_has_avx512() / cpu_has_avx2(). Never -march=native.
#pragma once
#include <napi.h>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace eqat {

using ExportFn = Napi::Value (*)(const Napi::CallbackInfo&);

std::vector<std::pair<const char*, ExportFn>>& export_registry();

struct ExportRegistrar {
  ExportRegistrar(const char* name, ExportFn fn) { export_registry().emplace_back(name, fn); }
};

// Registers `fn` as addon.<name>.
#define EQAT_EXPORT(name, fn) static ::eqat::ExportRegistrar eqat_export_##name(#name, fn)

// ---- argument helpers (throw a JS TypeError/RangeError naming the op and argument) ----
// Typed-array views. `min_len` is the number of elements the kernel will touch.
float* arg_f32(const Napi::CallbackInfo& info, size_t i, size_t min_len, const char* op, const char* name);
uint16_t* arg_u16(const Napi::CallbackInfo& info, size_t i, size_t min_len, const char* op, const char* name);
int32_t* arg_i32(const Napi::CallbackInfo& info, size_t i, size_t min_len, const char* op, const char* name);
uint32_t* arg_u32(const Napi::CallbackInfo& info, size_t i, size_t min_len, const char* op, const char* name);
uint8_t* arg_u8(const Napi::CallbackInfo& info, size_t i, size_t min_len, const char* op, const char* name);
int64_t arg_int(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
double arg_num(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
bool arg_bool(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
void check_argc(const Napi::CallbackInfo& info, size_t n, const char* op);

// ---- threading ----
// Number of worker threads (including the caller). EQAT_THREADS overrides the default
// (std::thread::hardware_concurrency()).
int num_threads();
void set_num_threads(int n);
// Splits [0, n) into contiguous chunks, one per thread, and runs fn(begin, end) on each.
// The calling thread takes part. Ranges smaller than `grain` per thread run serially.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain = 1);

// ---- cpu features (cached) ----
bool cpu_has_avx2();    // avx2 + fma
bool cpu_has_avx512();  // avx512f + avx512bw + avx512vl + avx512dq

}  // namespace eqat
