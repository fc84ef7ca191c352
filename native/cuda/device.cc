// N-API entry points of the CUDA backend: the probe, device memory, NVRTC compilation, modules
// and kernel launches (the cuBLASLt matmul is in cublaslt.cc). The libraries are reached only
// through the run-time loaded table of loader.cc, so this file builds and loads without CUDA;
// every entry point but cudaProbe throws a JS Error naming itself and the reason when CUDA is
// unavailable.
//
// Handles crossing into JS are BigInts: device pointers (CUdeviceptr), modules and functions
// (their pointer values). All work is queued on one stream (see runtime.h).
//
// Kernel arguments (cudaLaunch): one ArrayBuffer packing the kernel's parameters in order, one
// 8-byte slot each, little-endian at the start of its slot:
//   pointer -> u64 device address       int / unsigned -> i32 / u32
//   long long / unsigned long long -> i64 / u64    float -> f32    double -> f64
// The slot count must equal the kernel's parameter count (checked with cuFuncGetParamInfo
// where the driver has it). Only scalars and pointers are supported (no structs).
#include "runtime.h"

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace eqat {
namespace cuda {
namespace {

struct State {
  std::mutex mu;
  bool context_ready = false;
  CUcontext ctx = nullptr;
  CUstream stream = nullptr;
  std::map<CUdeviceptr, size_t> allocations;           // base -> bytes
  std::unordered_map<CUfunction, int> param_counts;    // from cuFuncGetParamInfo (-1: unknown)
};
State& state() {
  static State s;
  return s;
}

bool disabled_by_env() {
  const char* v = std::getenv("EQAT_CUDA_DISABLE");
  return v && *v && std::strcmp(v, "0") != 0;
}

// cuInit(0), once per process; returns its result.
CUresult driver_init() {
  static std::once_flag once;
  static CUresult result = CUDA_ERROR_NO_DEVICE;
  std::call_once(once, [] { result = api().cuInit(0); });
  return result;
}

int selected_ordinal() {
  const char* v = std::getenv("EQAT_CUDA_DEVICE");
  if (!v || !*v) return 0;
  char* end = nullptr;
  long n = std::strtol(v, &end, 10);
  return (*end || n < 0 || n > 1024) ? -1 : static_cast<int>(n);
}

int device_count() {
  int n = 0;
  if (api().cuDeviceGetCount(&n) != CUDA_SUCCESS) return 0;
  return n;
}

std::string nvrtc_error_text(nvrtcResult r) {
  const char* s = api().nvrtcGetErrorString ? api().nvrtcGetErrorString(r) : nullptr;
  return s ? s : "NVRTC error " + std::to_string(r);
}

}  // namespace

std::string unavailable_reason() {
  if (disabled_by_env()) return "CUDA disabled by EQAT_CUDA_DISABLE=" + std::string(std::getenv("EQAT_CUDA_DISABLE"));
  const CudaApi& a = api();
  if (!a.driver_loaded) return a.driver_error;
  CUresult r = driver_init();
  if (r != CUDA_SUCCESS) return "cuInit failed: " + driver_error_text(r);
  int n = device_count();
  if (n < 1) return "the CUDA driver reports no devices";
  int ord = selected_ordinal();
  if (ord < 0 || ord >= n) {
    return "EQAT_CUDA_DEVICE=" + std::string(std::getenv("EQAT_CUDA_DEVICE")) + " is not a device ordinal in [0, " +
           std::to_string(n) + ")";
  }
  if (!a.nvrtc_loaded) return a.nvrtc_error;
  return "";
}

DeviceInfo selected_device(const Napi::Env& env, const char* op) {
  std::string why = unavailable_reason();
  if (!why.empty()) throw Napi::Error::New(env, std::string(op) + ": CUDA is not available: " + why);
  DeviceInfo d;
  d.ordinal = selected_ordinal();
  CUdevice dev = 0;
  check_cu(env, api().cuDeviceGet(&dev, d.ordinal), op, "cuDeviceGet");
  check_cu(env, api().cuDeviceGetAttribute(&d.cc_major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev), op,
           "cuDeviceGetAttribute");
  check_cu(env, api().cuDeviceGetAttribute(&d.cc_minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev), op,
           "cuDeviceGetAttribute");
  return d;
}

void check_cu(const Napi::Env& env, CUresult r, const char* op, const std::string& what) {
  if (r != CUDA_SUCCESS) throw Napi::Error::New(env, std::string(op) + ": " + what + " failed: " + driver_error_text(r));
}

CUstream ensure_context(const Napi::Env& env, const char* op) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.context_ready) {
    DeviceInfo d = selected_device(env, op);
    CUdevice dev = 0;
    check_cu(env, api().cuDeviceGet(&dev, d.ordinal), op, "cuDeviceGet");
    // The primary context is the one the CUDA runtime (inside cuBLASLt) also uses.
    check_cu(env, api().cuDevicePrimaryCtxRetain(&s.ctx, dev), op, "cuDevicePrimaryCtxRetain");
    check_cu(env, api().cuCtxSetCurrent(s.ctx), op, "cuCtxSetCurrent");
    check_cu(env, api().cuStreamCreate(&s.stream, CU_STREAM_DEFAULT), op, "cuStreamCreate");
    s.context_ready = true;
  } else {
    check_cu(env, api().cuCtxSetCurrent(s.ctx), op, "cuCtxSetCurrent");
  }
  return s.stream;
}

void check_range(const Napi::Env& env, CUdeviceptr ptr, uint64_t bytes, const char* op, const char* name) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.allocations.upper_bound(ptr);
  if (it != s.allocations.begin()) {
    --it;
    const uint64_t base = it->first, size = it->second;
    if (ptr >= base && bytes <= size && ptr - base <= size - bytes) return;
  }
  char buf[160];
  std::snprintf(buf, sizeof buf, ": argument '%s': device range [0x%llx, +%llu bytes) is not inside a live allocation", name,
                static_cast<unsigned long long>(ptr), static_cast<unsigned long long>(bytes));
  throw Napi::RangeError::New(env, std::string(op) + buf);
}

CUdeviceptr arg_handle(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  if (i >= info.Length() || !info[i].IsBigInt()) {
    throw Napi::TypeError::New(info.Env(), std::string(op) + ": argument '" + name + "' must be a BigInt handle");
  }
  bool lossless = false;
  uint64_t v = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) throw Napi::RangeError::New(info.Env(), std::string(op) + ": argument '" + name + "' is not a valid handle");
  return static_cast<CUdeviceptr>(v);
}

CUdeviceptr internal_alloc(const Napi::Env& env, size_t bytes, const char* op) {
  ensure_context(env, op);
  CUdeviceptr p = 0;
  check_cu(env, api().cuMemAlloc(&p, bytes), op, "cuMemAlloc_v2(" + std::to_string(bytes) + " bytes)");
  return p;
}

namespace {

// Bytes and base address of a typed array / DataView / ArrayBuffer argument.
struct HostBytes {
  uint8_t* data = nullptr;
  size_t bytes = 0;
};
HostBytes arg_bytes(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  if (i < info.Length()) {
    if (info[i].IsTypedArray()) {
      auto ta = info[i].As<Napi::TypedArray>();
      return {static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset(), ta.ByteLength()};
    }
    if (info[i].IsDataView()) {
      auto dv = info[i].As<Napi::DataView>();
      return {static_cast<uint8_t*>(dv.ArrayBuffer().Data()) + dv.ByteOffset(), dv.ByteLength()};
    }
    if (info[i].IsArrayBuffer()) {
      auto ab = info[i].As<Napi::ArrayBuffer>();
      return {static_cast<uint8_t*>(ab.Data()), ab.ByteLength()};
    }
  }
  throw Napi::TypeError::New(info.Env(), std::string(op) + ": argument '" + name +
                                             "' must be a typed array, DataView or ArrayBuffer");
}

uint64_t arg_u64(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  int64_t v = arg_int(info, i, op, name);
  if (v < 0) throw Napi::RangeError::New(info.Env(), std::string(op) + ": argument '" + name + "' must be >= 0");
  return static_cast<uint64_t>(v);
}

// ---------------------------------------------------------------- probe

Napi::Value Probe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  Napi::Array devices = Napi::Array::New(env);
  Napi::Object libraries = Napi::Object::New(env);
  Napi::Object errors = Napi::Object::New(env);
  o.Set("available", false);
  o.Set("driverVersion", env.Null());
  o.Set("devices", devices);
  o.Set("device", env.Null());
  o.Set("nvrtcVersion", env.Null());
  o.Set("nvrtcArchs", Napi::Array::New(env));
  o.Set("cublasLt", false);
  o.Set("cublasLtVersion", env.Null());
  o.Set("libraries", libraries);
  o.Set("errors", errors);
  if (disabled_by_env()) {
    o.Set("reason", unavailable_reason());
    return o;
  }
  const CudaApi& a = api();
  libraries.Set("driver", a.driver_loaded ? Napi::Value(Napi::String::New(env, a.driver_path)) : env.Null());
  libraries.Set("nvrtc", a.nvrtc_loaded ? Napi::Value(Napi::String::New(env, a.nvrtc_path)) : env.Null());
  libraries.Set("cublasLt", a.cublaslt_loaded ? Napi::Value(Napi::String::New(env, a.cublaslt_path)) : env.Null());
  if (!a.driver_loaded) errors.Set("driver", a.driver_error);
  if (!a.nvrtc_loaded) errors.Set("nvrtc", a.nvrtc_error);
  if (!a.cublaslt_loaded) errors.Set("cublasLt", a.cublaslt_error);
  if (a.driver_loaded && driver_init() == CUDA_SUCCESS) {
    int version = 0;
    if (a.cuDriverGetVersion(&version) == CUDA_SUCCESS) o.Set("driverVersion", version);
    const int n = device_count();
    for (int i = 0; i < n; ++i) {
      CUdevice dev = 0;
      if (a.cuDeviceGet(&dev, i) != CUDA_SUCCESS) continue;
      char name[256] = {0};
      a.cuDeviceGetName(name, sizeof name - 1, dev);
      int major = 0, minor = 0, sms = 0;
      a.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
      a.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev);
      a.cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev);
      size_t total = 0;
      a.cuDeviceTotalMem(&total, dev);
      Napi::Object d = Napi::Object::New(env);
      d.Set("index", i);
      d.Set("name", std::string(name));
      Napi::Array cc = Napi::Array::New(env, 2);
      cc.Set(uint32_t{0}, major);
      cc.Set(uint32_t{1}, minor);
      d.Set("computeCapability", cc);
      d.Set("totalMemory", static_cast<double>(total));
      d.Set("multiprocessors", sms);
      devices.Set(devices.Length(), d);
    }
  }
  if (a.nvrtc_loaded) {
    int major = 0, minor = 0;
    if (a.nvrtcVersion(&major, &minor) == NVRTC_SUCCESS) {
      o.Set("nvrtcVersion", std::to_string(major) + "." + std::to_string(minor));
    }
    int count = 0;
    if (a.nvrtcGetNumSupportedArchs && a.nvrtcGetSupportedArchs && a.nvrtcGetNumSupportedArchs(&count) == NVRTC_SUCCESS &&
        count > 0) {
      std::vector<int> archs(count);
      if (a.nvrtcGetSupportedArchs(archs.data()) == NVRTC_SUCCESS) {
        Napi::Array arr = Napi::Array::New(env, count);
        for (int i = 0; i < count; ++i) arr.Set(static_cast<uint32_t>(i), archs[i]);
        o.Set("nvrtcArchs", arr);
      }
    }
  }
  if (a.cublaslt_loaded) {
    o.Set("cublasLt", true);
    o.Set("cublasLtVersion", static_cast<double>(a.cublasLtGetVersion()));
  }
  const std::string why = unavailable_reason();
  if (why.empty()) {
    o.Set("available", true);
    o.Set("device", selected_ordinal());
  } else {
    o.Set("reason", why);
  }
  return o;
}

// ---------------------------------------------------------------- memory

// cudaAlloc(bytes) -> BigInt device pointer (bytes >= 1).
Napi::Value Alloc(const Napi::CallbackInfo& info) {
  const char* op = "cudaAlloc";
  check_argc(info, 1, op);
  const uint64_t bytes = arg_u64(info, 0, op, "bytes");
  if (bytes < 1) throw Napi::RangeError::New(info.Env(), "cudaAlloc: argument 'bytes' must be >= 1");
  ensure_context(info.Env(), op);
  CUdeviceptr p = 0;
  check_cu(info.Env(), api().cuMemAlloc(&p, bytes), op, "cuMemAlloc_v2(" + std::to_string(bytes) + " bytes)");
  {
    std::lock_guard<std::mutex> lock(state().mu);
    state().allocations[p] = bytes;
  }
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(p));
}

// cudaFree(handle): frees an allocation made by cudaAlloc (waits for queued work using it).
Napi::Value Free(const Napi::CallbackInfo& info) {
  const char* op = "cudaFree";
  check_argc(info, 1, op);
  const CUdeviceptr p = arg_handle(info, 0, op, "handle");
  ensure_context(info.Env(), op);
  {
    std::lock_guard<std::mutex> lock(state().mu);
    if (state().allocations.erase(p) == 0) {
      throw Napi::RangeError::New(info.Env(), "cudaFree: argument 'handle' is not a live allocation from cudaAlloc");
    }
  }
  check_cu(info.Env(), api().cuMemFree(p), op, "cuMemFree_v2");
  return info.Env().Undefined();
}

// cudaHostAlloc(bytes) -> ArrayBuffer over page-locked host memory (cuMemHostAlloc), or null when
// the driver cannot give it. Copies from it to the device run at full bus speed and without an
// intermediate staging copy. The memory is released (cuMemFreeHost) when the ArrayBuffer is
// garbage-collected, never before, so no JS view can outlive it.
Napi::Value HostAlloc(const Napi::CallbackInfo& info) {
  const char* op = "cudaHostAlloc";
  check_argc(info, 1, op);
  const uint64_t bytes = arg_u64(info, 0, op, "bytes");
  if (bytes < 1) throw Napi::RangeError::New(info.Env(), "cudaHostAlloc: argument 'bytes' must be >= 1");
  ensure_context(info.Env(), op);
  const CudaApi& a = api();
  if (!a.cuMemHostAlloc) return info.Env().Null();
  void* p = nullptr;
  if (a.cuMemHostAlloc(&p, bytes, 0) != CUDA_SUCCESS || !p) return info.Env().Null();
  Napi::MemoryManagement::AdjustExternalMemory(info.Env(), static_cast<int64_t>(bytes));
  return Napi::ArrayBuffer::New(info.Env(), p, bytes, [bytes](Napi::Env env, void* data) {
    api().cuMemFreeHost(data);
    Napi::MemoryManagement::AdjustExternalMemory(env, -static_cast<int64_t>(bytes));
  });
}

// cudaUpload(handle, src, byteOffset): copies all bytes of src to handle + byteOffset.
Napi::Value Upload(const Napi::CallbackInfo& info) {
  const char* op = "cudaUpload";
  check_argc(info, 3, op);
  const CUdeviceptr p = arg_handle(info, 0, op, "handle");
  const HostBytes src = arg_bytes(info, 1, op, "src");
  const uint64_t offset = arg_u64(info, 2, op, "byteOffset");
  if (src.bytes == 0) return info.Env().Undefined();
  CUstream stream = ensure_context(info.Env(), op);
  check_range(info.Env(), p + offset, src.bytes, op, "handle");
  check_cu(info.Env(), api().cuMemcpyHtoDAsync(p + offset, src.data, src.bytes, stream), op, "cuMemcpyHtoDAsync_v2");
  return info.Env().Undefined();
}

// cudaDownload(handle, dst, byteOffset): fills dst from handle + byteOffset; waits for the stream.
Napi::Value Download(const Napi::CallbackInfo& info) {
  const char* op = "cudaDownload";
  check_argc(info, 3, op);
  const CUdeviceptr p = arg_handle(info, 0, op, "handle");
  const HostBytes dst = arg_bytes(info, 1, op, "dst");
  const uint64_t offset = arg_u64(info, 2, op, "byteOffset");
  CUstream stream = ensure_context(info.Env(), op);
  if (dst.bytes > 0) {
    check_range(info.Env(), p + offset, dst.bytes, op, "handle");
    check_cu(info.Env(), api().cuMemcpyDtoHAsync(dst.data, p + offset, dst.bytes, stream), op, "cuMemcpyDtoHAsync_v2");
  }
  check_cu(info.Env(), api().cuStreamSynchronize(stream), op, "cuStreamSynchronize");
  return info.Env().Undefined();
}

// cudaMemset0(handle, bytes): zeroes [handle, handle + bytes).
Napi::Value Memset0(const Napi::CallbackInfo& info) {
  const char* op = "cudaMemset0";
  check_argc(info, 2, op);
  const CUdeviceptr p = arg_handle(info, 0, op, "handle");
  const uint64_t bytes = arg_u64(info, 1, op, "bytes");
  if (bytes == 0) return info.Env().Undefined();
  CUstream stream = ensure_context(info.Env(), op);
  check_range(info.Env(), p, bytes, op, "handle");
  check_cu(info.Env(), api().cuMemsetD8Async(p, 0, bytes, stream), op, "cuMemsetD8Async");
  return info.Env().Undefined();
}

// cudaSynchronize(): waits until all queued work has finished; reports asynchronous errors.
Napi::Value Synchronize(const Napi::CallbackInfo& info) {
  const char* op = "cudaSynchronize";
  check_argc(info, 0, op);
  CUstream stream = ensure_context(info.Env(), op);
  check_cu(info.Env(), api().cuStreamSynchronize(stream), op, "cuStreamSynchronize");
  return info.Env().Undefined();
}

// cudaMemInfo() -> { free, total } bytes on the selected device.
Napi::Value MemInfo(const Napi::CallbackInfo& info) {
  const char* op = "cudaMemInfo";
  check_argc(info, 0, op);
  ensure_context(info.Env(), op);
  size_t free_bytes = 0, total = 0;
  check_cu(info.Env(), api().cuMemGetInfo(&free_bytes, &total), op, "cuMemGetInfo_v2");
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("free", static_cast<double>(free_bytes));
  o.Set("total", static_cast<double>(total));
  return o;
}

// ---------------------------------------------------------------- NVRTC

// The target for compute capability cc (major*10+minor): "sm_<cc>" (CUBIN) when NVRTC knows the
// architecture, else "compute_<newest supported <= cc>" (PTX the driver JIT-compiles).
std::string pick_arch(const Napi::Env& env, int cc, bool* cubin) {
  const CudaApi& a = api();
  int count = 0;
  std::vector<int> archs;
  if (a.nvrtcGetNumSupportedArchs && a.nvrtcGetSupportedArchs && a.nvrtcGetNumSupportedArchs(&count) == NVRTC_SUCCESS &&
      count > 0) {
    archs.resize(count);
    if (a.nvrtcGetSupportedArchs(archs.data()) != NVRTC_SUCCESS) archs.clear();
  }
  *cubin = true;
  if (archs.empty()) return "sm_" + std::to_string(cc);  // old NVRTC: no list, trust it
  for (int x : archs) {
    if (x == cc) return "sm_" + std::to_string(cc);
  }
  int best = -1;
  for (int x : archs) {
    if (x <= cc && x > best) best = x;
  }
  if (best < 0) {
    std::string list;
    for (int x : archs) list += (list.empty() ? "" : ", ") + std::to_string(x);
    throw Napi::Error::New(env, "cudaCompile: NVRTC supports architectures " + list + ", none of them runs on sm_" +
                                    std::to_string(cc));
  }
  *cubin = false;
  return "compute_" + std::to_string(best);
}

// cudaCompile(source, name, options[]) -> { image: Uint8Array, kind: 'cubin' | 'ptx', arch, log }.
// The architecture option is added here (options must not set it). A PTX image keeps its
// terminating NUL so it can be passed to cudaModuleLoad as is.
Napi::Value Compile(const Napi::CallbackInfo& info) {
  const char* op = "cudaCompile";
  Napi::Env env = info.Env();
  check_argc(info, 3, op);
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "cudaCompile: argument 'source' must be a string");
  if (!info[1].IsString()) throw Napi::TypeError::New(env, "cudaCompile: argument 'name' must be a string");
  if (!info[2].IsArray()) throw Napi::TypeError::New(env, "cudaCompile: argument 'options' must be an array of strings");
  const std::string source = info[0].As<Napi::String>().Utf8Value();
  const std::string name = info[1].As<Napi::String>().Utf8Value();
  Napi::Array opt_arr = info[2].As<Napi::Array>();
  std::vector<std::string> options;
  for (uint32_t i = 0; i < opt_arr.Length(); ++i) {
    Napi::Value v = opt_arr.Get(i);
    if (!v.IsString()) throw Napi::TypeError::New(env, "cudaCompile: argument 'options' must be an array of strings");
    std::string s = v.As<Napi::String>().Utf8Value();
    if (s.rfind("-arch", 0) == 0 || s.rfind("--gpu-architecture", 0) == 0) {
      throw Napi::RangeError::New(env, "cudaCompile: options must not set the architecture ('" + s +
                                           "'); it is chosen from the device");
    }
    options.push_back(s);
  }
  const DeviceInfo dev = selected_device(env, op);
  bool cubin = true;
  const std::string arch = pick_arch(env, dev.cc_major * 10 + dev.cc_minor, &cubin);
  options.push_back("--gpu-architecture=" + arch);
  std::vector<const char*> argv;
  for (const auto& s : options) argv.push_back(s.c_str());

  const CudaApi& a = api();
  nvrtcProgram prog = nullptr;
  nvrtcResult r = a.nvrtcCreateProgram(&prog, source.c_str(), name.c_str(), 0, nullptr, nullptr);
  if (r != NVRTC_SUCCESS) throw Napi::Error::New(env, "cudaCompile: nvrtcCreateProgram(" + name + ") failed: " + nvrtc_error_text(r));
  struct Guard {
    nvrtcProgram* p;
    ~Guard() { api().nvrtcDestroyProgram(p); }
  } guard{&prog};
  const nvrtcResult compiled = a.nvrtcCompileProgram(prog, static_cast<int>(argv.size()), argv.data());
  std::string log;
  size_t log_size = 0;
  if (a.nvrtcGetProgramLogSize(prog, &log_size) == NVRTC_SUCCESS && log_size > 1) {
    log.resize(log_size);
    if (a.nvrtcGetProgramLog(prog, &log[0]) == NVRTC_SUCCESS) log.resize(log_size - 1);
    else log.clear();
  }
  if (compiled != NVRTC_SUCCESS) {
    throw Napi::Error::New(env, "cudaCompile: NVRTC failed to compile " + name + " for " + arch + ": " +
                                    nvrtc_error_text(compiled) + (log.empty() ? "" : "\n" + log));
  }
  size_t size = 0;
  r = cubin ? a.nvrtcGetCUBINSize(prog, &size) : a.nvrtcGetPTXSize(prog, &size);
  if (r != NVRTC_SUCCESS || size == 0) {
    throw Napi::Error::New(env, std::string("cudaCompile: NVRTC produced no ") + (cubin ? "CUBIN" : "PTX") + " for " + name +
                                    ": " + nvrtc_error_text(r));
  }
  Napi::Buffer<uint8_t> image = Napi::Buffer<uint8_t>::New(env, size);
  r = cubin ? a.nvrtcGetCUBIN(prog, reinterpret_cast<char*>(image.Data()))
            : a.nvrtcGetPTX(prog, reinterpret_cast<char*>(image.Data()));
  if (r != NVRTC_SUCCESS) throw Napi::Error::New(env, "cudaCompile: fetching the image of " + name + " failed: " + nvrtc_error_text(r));
  Napi::Object o = Napi::Object::New(env);
  o.Set("image", image);
  o.Set("kind", cubin ? "cubin" : "ptx");
  o.Set("arch", arch);
  o.Set("log", log);
  return o;
}

// ---------------------------------------------------------------- modules and launches

// cudaModuleLoad(image: Uint8Array) -> BigInt module (CUBIN, or PTX text).
Napi::Value ModuleLoad(const Napi::CallbackInfo& info) {
  const char* op = "cudaModuleLoad";
  check_argc(info, 1, op);
  const HostBytes img = arg_bytes(info, 0, op, "image");
  if (img.bytes < 4) throw Napi::RangeError::New(info.Env(), "cudaModuleLoad: argument 'image' is empty");
  ensure_context(info.Env(), op);
  // PTX must be NUL-terminated; an ELF (CUBIN) image is passed 8-byte aligned (a view into a
  // larger buffer may not be).
  const bool elf = img.data[0] == 0x7f && img.data[1] == 'E' && img.data[2] == 'L' && img.data[3] == 'F';
  std::vector<uint64_t> copy;
  const void* data = img.data;
  if ((!elf && img.data[img.bytes - 1] != 0) || (elf && reinterpret_cast<uintptr_t>(img.data) % 8 != 0)) {
    copy.assign(img.bytes / 8 + 1, 0);  // zero-filled: the byte after the image is a NUL
    std::memcpy(copy.data(), img.data, img.bytes);
    data = copy.data();
  }
  CUmodule m = nullptr;
  check_cu(info.Env(), api().cuModuleLoadData(&m, data), op, "cuModuleLoadData");
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(reinterpret_cast<uintptr_t>(m)));
}

// cudaModuleUnload(module)
Napi::Value ModuleUnload(const Napi::CallbackInfo& info) {
  const char* op = "cudaModuleUnload";
  check_argc(info, 1, op);
  CUmodule m = reinterpret_cast<CUmodule>(static_cast<uintptr_t>(arg_handle(info, 0, op, "module")));
  ensure_context(info.Env(), op);
  check_cu(info.Env(), api().cuModuleUnload(m), op, "cuModuleUnload");
  return info.Env().Undefined();
}

// cudaGetFunction(module, name) -> BigInt function handle.
Napi::Value GetFunction(const Napi::CallbackInfo& info) {
  const char* op = "cudaGetFunction";
  check_argc(info, 2, op);
  CUmodule m = reinterpret_cast<CUmodule>(static_cast<uintptr_t>(arg_handle(info, 0, op, "module")));
  if (!info[1].IsString()) throw Napi::TypeError::New(info.Env(), "cudaGetFunction: argument 'name' must be a string");
  const std::string name = info[1].As<Napi::String>().Utf8Value();
  ensure_context(info.Env(), op);
  CUfunction f = nullptr;
  check_cu(info.Env(), api().cuModuleGetFunction(&f, m, name.c_str()), op, "cuModuleGetFunction(" + name + ")");
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(reinterpret_cast<uintptr_t>(f)));
}

void dims3(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name, unsigned out[3]) {
  if (i >= info.Length() || !info[i].IsArray() || info[i].As<Napi::Array>().Length() != 3) {
    throw Napi::TypeError::New(info.Env(), std::string(op) + ": argument '" + name + "' must be an array of 3 integers");
  }
  Napi::Array arr = info[i].As<Napi::Array>();
  for (uint32_t k = 0; k < 3; ++k) {
    Napi::Value v = arr.Get(k);
    double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
    if (!(d >= 1 && d <= 2147483647.0) || d != static_cast<double>(static_cast<int64_t>(d))) {
      throw Napi::RangeError::New(info.Env(), std::string(op) + ": argument '" + name + "' must hold integers in [1, 2^31-1]");
    }
    out[k] = static_cast<unsigned>(d);
  }
}

// Number of parameters of fn per cuFuncGetParamInfo, or -1 when the driver cannot say.
int param_count(CUfunction fn) {
  const CudaApi& a = api();
  if (!a.cuFuncGetParamInfo) return -1;
  {
    std::lock_guard<std::mutex> lock(state().mu);
    auto it = state().param_counts.find(fn);
    if (it != state().param_counts.end()) return it->second;
  }
  int n = 0;
  for (;; ++n) {
    size_t offset = 0, size = 0;
    CUresult r = a.cuFuncGetParamInfo(fn, static_cast<size_t>(n), &offset, &size);
    if (r == CUDA_ERROR_INVALID_VALUE) break;
    if (r != CUDA_SUCCESS || size > 8) {
      n = r == CUDA_SUCCESS ? -2 - n : -1;  // -2 - i: parameter i is wider than a slot
      break;
    }
    if (n > 4096) {
      n = -1;
      break;
    }
  }
  std::lock_guard<std::mutex> lock(state().mu);
  state().param_counts[fn] = n;
  return n;
}

// cudaLaunch(fn, grid[3], block[3], sharedBytes, args): queues fn on the stream. `args` packs
// the parameters in 8-byte slots (see the file header).
Napi::Value Launch(const Napi::CallbackInfo& info) {
  const char* op = "cudaLaunch";
  Napi::Env env = info.Env();
  check_argc(info, 5, op);
  CUfunction fn = reinterpret_cast<CUfunction>(static_cast<uintptr_t>(arg_handle(info, 0, op, "fn")));
  unsigned grid[3], block[3];
  dims3(info, 1, op, "grid", grid);
  dims3(info, 2, op, "block", block);
  const uint64_t shared = arg_u64(info, 3, op, "sharedBytes");
  if (shared > (1u << 30)) throw Napi::RangeError::New(env, "cudaLaunch: argument 'sharedBytes' is too large");
  const HostBytes args = arg_bytes(info, 4, op, "args");
  if (args.bytes % 8 != 0) {
    throw Napi::RangeError::New(env, "cudaLaunch: argument 'args' must hold whole 8-byte slots, got " +
                                         std::to_string(args.bytes) + " bytes");
  }
  const size_t slots = args.bytes / 8;
  CUstream stream = ensure_context(env, op);
  const int expected = param_count(fn);
  if (expected <= -2) {
    throw Napi::RangeError::New(env, "cudaLaunch: kernel parameter " + std::to_string(-2 - expected) +
                                         " is wider than 8 bytes; only scalars and pointers can be passed");
  }
  if (expected >= 0 && static_cast<size_t>(expected) != slots) {
    throw Napi::RangeError::New(env, "cudaLaunch: the kernel takes " + std::to_string(expected) + " parameters, 'args' packs " +
                                         std::to_string(slots));
  }
  // Copy the slots: the driver reads them during the call only, but the JS buffer need not be
  // 8-byte aligned.
  std::vector<uint64_t> packed(slots);
  if (slots) std::memcpy(packed.data(), args.data, args.bytes);
  std::vector<void*> params(slots);
  for (size_t i = 0; i < slots; ++i) params[i] = &packed[i];
  if (shared > 48 * 1024) {
    check_cu(env, api().cuFuncSetAttribute(fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, static_cast<int>(shared)),
             op, "cuFuncSetAttribute(max dynamic shared memory)");
  }
  check_cu(env,
           api().cuLaunchKernel(fn, grid[0], grid[1], grid[2], block[0], block[1], block[2], static_cast<unsigned>(shared),
                                stream, slots ? params.data() : nullptr, nullptr),
           op, "cuLaunchKernel");
  return env.Undefined();
}

}  // namespace

EQAT_EXPORT(cudaProbe, Probe);
EQAT_EXPORT(cudaAlloc, Alloc);
EQAT_EXPORT(cudaFree, Free);
EQAT_EXPORT(cudaHostAlloc, HostAlloc);
EQAT_EXPORT(cudaUpload, Upload);
EQAT_EXPORT(cudaDownload, Download);
EQAT_EXPORT(cudaMemset0, Memset0);
EQAT_EXPORT(cudaSynchronize, Synchronize);
EQAT_EXPORT(cudaMemInfo, MemInfo);
EQAT_EXPORT(cudaCompile, Compile);
EQAT_EXPORT(cudaModuleLoad, ModuleLoad);
EQAT_EXPORT(cudaModuleUnload, ModuleUnload);
EQAT_EXPORT(cudaGetFunction, GetFunction);
EQAT_EXPORT(cudaLaunch, Launch);

}  // namespace cuda
}  // namespace eqat
