// N-API module entry: exposes every function registered with EQAT_EXPORT, plus the
// argument-validation helpers every kernel file uses, CPU feature detection and the
// thread-count controls.
#include "eqat.h"

#include <cpuid.h>

namespace eqat {

std::vector<std::pair<const char*, ExportFn>>& export_registry() {
  static std::vector<std::pair<const char*, ExportFn>> r;
  return r;
}

namespace {

[[noreturn]] void type_error(const Napi::CallbackInfo& info, const char* op, const char* name, const char* want) {
  throw Napi::TypeError::New(info.Env(), std::string(op) + ": argument '" + name + "' must be " + want);
}

template <typename T, napi_typedarray_type kind>
T* typed_arg(const Napi::CallbackInfo& info, size_t i, size_t min_len, const char* op, const char* name,
             const char* want) {
  if (i >= info.Length() || !info[i].IsTypedArray()) type_error(info, op, name, want);
  Napi::TypedArray ta = info[i].As<Napi::TypedArray>();
  if (ta.TypedArrayType() != kind) type_error(info, op, name, want);
  if (ta.ElementLength() < min_len) {
    throw Napi::RangeError::New(info.Env(), std::string(op) + ": argument '" + name + "' has " +
                                                std::to_string(ta.ElementLength()) + " elements, needs " +
                                                std::to_string(min_len));
  }
  auto buf = ta.ArrayBuffer();
  return reinterpret_cast<T*>(static_cast<uint8_t*>(buf.Data()) + ta.ByteOffset());
}

}  // namespace

float* arg_f32(const Napi::CallbackInfo& info, size_t i, size_t n, const char* op, const char* name) {
  return typed_arg<float, napi_float32_array>(info, i, n, op, name, "a Float32Array");
}
uint16_t* arg_u16(const Napi::CallbackInfo& info, size_t i, size_t n, const char* op, const char* name) {
  return typed_arg<uint16_t, napi_uint16_array>(info, i, n, op, name, "a Uint16Array");
}
int32_t* arg_i32(const Napi::CallbackInfo& info, size_t i, size_t n, const char* op, const char* name) {
  return typed_arg<int32_t, napi_int32_array>(info, i, n, op, name, "an Int32Array");
}
uint32_t* arg_u32(const Napi::CallbackInfo& info, size_t i, size_t n, const char* op, const char* name) {
  return typed_arg<uint32_t, napi_uint32_array>(info, i, n, op, name, "a Uint32Array");
}
uint8_t* arg_u8(const Napi::CallbackInfo& info, size_t i, size_t n, const char* op, const char* name) {
  return typed_arg<uint8_t, napi_uint8_array>(info, i, n, op, name, "a Uint8Array");
}
int64_t arg_int(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  if (i >= info.Length() || !info[i].IsNumber()) type_error(info, op, name, "an integer");
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (d != static_cast<double>(static_cast<int64_t>(d))) type_error(info, op, name, "an integer");
  return static_cast<int64_t>(d);
}
double arg_num(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  if (i >= info.Length() || !info[i].IsNumber()) type_error(info, op, name, "a number");
  return info[i].As<Napi::Number>().DoubleValue();
}
bool arg_bool(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  if (i >= info.Length() || !info[i].IsBoolean()) type_error(info, op, name, "a boolean");
  return info[i].As<Napi::Boolean>().Value();
}
void check_argc(const Napi::CallbackInfo& info, size_t n, const char* op) {
  if (info.Length() != n) {
    throw Napi::TypeError::New(info.Env(), std::string(op) + ": expected " + std::to_string(n) + " arguments, got " +
                                               std::to_string(info.Length()));
  }
}

namespace {

struct Features {
  bool avx2 = false, avx512 = false;
  Features() {
    unsigned a, b, c, d;
    if (!__get_cpuid_max(0, nullptr)) return;
    __cpuid_count(1, 0, a, b, c, d);
    bool fma = c & (1u << 12), osxsave = c & (1u << 27);
    if (!osxsave) return;
    unsigned xlo, xhi;
    __asm__("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    bool ymm = (xlo & 0x6) == 0x6, zmm = (xlo & 0xe6) == 0xe6;
    __cpuid_count(7, 0, a, b, c, d);
    avx2 = ymm && fma && (b & (1u << 5));
    bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
    avx512 = avx2 && zmm && f && dq && bw && vl;
    if (const char* env = std::getenv("EQAT_ISA")) {  // debug knob: force a narrower path
      std::string s(env);
      if (s == "avx2") avx512 = false;
      if (s == "scalar") avx512 = avx2 = false;
    }
  }
};
const Features& features() {
  static Features f;
  return f;
}

Napi::Value CpuInfo(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("avx2", features().avx2);
  o.Set("avx512", features().avx512);
  o.Set("threads", num_threads());
  return o;
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  check_argc(info, 1, "setThreads");
  int64_t n = arg_int(info, 0, "setThreads", "n");
  if (n < 1 || n > 256) throw Napi::RangeError::New(info.Env(), "setThreads: n must be in [1, 256]");
  set_num_threads(static_cast<int>(n));
  return info.Env().Undefined();
}

}  // namespace

bool cpu_has_avx2() { return features().avx2; }
bool cpu_has_avx512() { return features().avx512; }

}  // namespace eqat

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("cpuInfo", Napi::Function::New(env, eqat::CpuInfo, "cpuInfo"));
  exports.Set("setThreads", Napi::Function::New(env, eqat::SetThreads, "setThreads"));
  for (auto& [name, fn] : eqat::export_registry()) exports.Set(name, Napi::Function::New(env, fn, name));
  return exports;
}

NODE_API_MODULE(eqat, Init)
