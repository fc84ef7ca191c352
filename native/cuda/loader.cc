// Run-time loader of the CUDA libraries: dlopen libcuda, NVRTC and cuBLASLt once per process
// (thread-safe) and fill the CudaApi function table with dlsym. Nothing CUDA-related is needed
// at build or install time; a machine without the libraries gets a table whose *_error strings
// say which library is missing, every path that was tried and what dlopen answered.
//
// Search order for each library, first hit wins:
//   driver:   libcuda.so.1, libcuda.so (plain names: LD_LIBRARY_PATH, ld.so.cache, system dirs),
//             then the same names in the directories below;
//   NVRTC:    libnvrtc.so, libnvrtc.so.13, .so.12, .so.11.2;
//   cuBLASLt: libcublasLt.so, libcublasLt.so.13, .so.12;
//   each name first plainly, then in $CUDA_HOME/lib64, $CUDA_PATH/lib64, /usr/local/cuda/lib64,
//   /usr/local/cuda-*/lib64 (newest version first), /usr/lib/x86_64-linux-gnu, /usr/lib64.
// Entry points that have _v2 variants are bound by their _v2 names (the plain names are the
// pre-64-bit ABI).
#include "api.h"

#include <dirent.h>
#include <dlfcn.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <initializer_list>
#include <mutex>
#include <vector>

namespace eqat {
namespace cuda {
namespace {

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// Version numbers in a directory name such as "cuda-12.10" -> {12, 10}.
std::vector<int> version_of(const std::string& name) {
  std::vector<int> v;
  int cur = -1;
  for (char ch : name) {
    if (ch >= '0' && ch <= '9') {
      cur = (cur < 0 ? 0 : cur * 10) + (ch - '0');
    } else if (cur >= 0) {
      v.push_back(cur);
      cur = -1;
    }
  }
  if (cur >= 0) v.push_back(cur);
  return v;
}

// The directories searched after the plain names, in order, without duplicates.
std::vector<std::string> search_dirs() {
  std::vector<std::string> dirs;
  auto add = [&](const std::string& d) {
    if (!d.empty() && std::find(dirs.begin(), dirs.end(), d) == dirs.end()) dirs.push_back(d);
  };
  for (const char* var : {"CUDA_HOME", "CUDA_PATH"}) {
    const char* v = std::getenv(var);
    if (v && *v) add(std::string(v) + "/lib64");
  }
  add("/usr/local/cuda/lib64");
  std::vector<std::string> versioned;
  if (DIR* d = ::opendir("/usr/local")) {
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n.rfind("cuda-", 0) == 0) versioned.push_back(n);
    }
    ::closedir(d);
  }
  std::sort(versioned.begin(), versioned.end(),
            [](const std::string& a, const std::string& b) { return version_of(a) > version_of(b); });
  for (const auto& n : versioned) add("/usr/local/" + n + "/lib64");
  add("/usr/lib/x86_64-linux-gnu");
  add("/usr/lib64");
  return dirs;
}

struct Opened {
  void* handle = nullptr;
  std::string path;   // what was opened
  std::string error;  // when handle is null
  std::string dir;    // directory of an absolute-path hit ("" for a plain-name hit)
};

// Tries every name plainly, then in every search directory. The error names the library,
// every dlopen attempt with dlerror's text, and the candidate paths that do not exist.
Opened open_library(const char* what, std::initializer_list<const char*> names) {
  Opened r;
  std::vector<std::string> failures, absent;
  for (const char* name : names) {
    if (void* h = ::dlopen(name, RTLD_NOW | RTLD_LOCAL)) {
      r.handle = h;
      r.path = name;
      return r;
    }
    const char* err = ::dlerror();
    failures.push_back(std::string(name) + " (" + (err ? err : "unknown dlopen error") + ")");
  }
  const std::vector<std::string> dirs = search_dirs();
  for (const char* name : names) {
    for (const auto& dir : dirs) {
      const std::string path = dir + "/" + name;
      if (!file_exists(path)) {
        absent.push_back(path);
        continue;
      }
      if (void* h = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) {
        r.handle = h;
        r.path = path;
        r.dir = dir;
        return r;
      }
      const char* err = ::dlerror();
      failures.push_back(path + " (" + (err ? err : "unknown dlopen error") + ")");
    }
  }
  std::string msg = std::string(what) + " not found; dlopen tried: ";
  for (size_t i = 0; i < failures.size(); ++i) msg += (i ? "; " : "") + failures[i];
  if (!absent.empty()) {
    msg += "; not present: ";
    for (size_t i = 0; i < absent.size(); ++i) msg += (i ? ", " : "") + absent[i];
  }
  r.error = msg;
  return r;
}

// Binds `slot` to the first of `names` the library exports. Returns false (and notes the
// symbol in `missing`) when none is exported.
template <typename F>
bool bind(void* lib, F& slot, std::initializer_list<const char*> names, std::string& missing) {
  for (const char* n : names) {
    if (void* p = ::dlsym(lib, n)) {
      slot = reinterpret_cast<F>(p);
      return true;
    }
  }
  missing += (missing.empty() ? "" : ", ") + std::string(*names.begin());
  return false;
}

void load_driver(CudaApi& a) {
  Opened o = open_library("CUDA driver library libcuda.so.1", {"libcuda.so.1", "libcuda.so"});
  if (!o.handle) {
    a.driver_error = o.error + ". Install the NVIDIA driver, or add the directory holding libcuda.so.1 to LD_LIBRARY_PATH.";
    return;
  }
  std::string missing;
  void* h = o.handle;
  bind(h, a.cuInit, {"cuInit"}, missing);
  bind(h, a.cuDriverGetVersion, {"cuDriverGetVersion"}, missing);
  bind(h, a.cuGetErrorName, {"cuGetErrorName"}, missing);
  bind(h, a.cuGetErrorString, {"cuGetErrorString"}, missing);
  bind(h, a.cuDeviceGetCount, {"cuDeviceGetCount"}, missing);
  bind(h, a.cuDeviceGet, {"cuDeviceGet"}, missing);
  bind(h, a.cuDeviceGetName, {"cuDeviceGetName"}, missing);
  bind(h, a.cuDeviceGetAttribute, {"cuDeviceGetAttribute"}, missing);
  bind(h, a.cuDeviceTotalMem, {"cuDeviceTotalMem_v2"}, missing);
  bind(h, a.cuDevicePrimaryCtxRetain, {"cuDevicePrimaryCtxRetain"}, missing);
  bind(h, a.cuCtxSetCurrent, {"cuCtxSetCurrent"}, missing);
  bind(h, a.cuCtxSynchronize, {"cuCtxSynchronize"}, missing);
  bind(h, a.cuStreamCreate, {"cuStreamCreate"}, missing);
  bind(h, a.cuStreamSynchronize, {"cuStreamSynchronize"}, missing);
  bind(h, a.cuMemGetInfo, {"cuMemGetInfo_v2"}, missing);
  bind(h, a.cuMemAlloc, {"cuMemAlloc_v2"}, missing);
  bind(h, a.cuMemFree, {"cuMemFree_v2"}, missing);
  bind(h, a.cuMemcpyHtoDAsync, {"cuMemcpyHtoDAsync_v2"}, missing);
  bind(h, a.cuMemcpyDtoHAsync, {"cuMemcpyDtoHAsync_v2"}, missing);
  bind(h, a.cuMemsetD8Async, {"cuMemsetD8Async"}, missing);
  bind(h, a.cuModuleLoadData, {"cuModuleLoadData"}, missing);
  bind(h, a.cuModuleUnload, {"cuModuleUnload"}, missing);
  bind(h, a.cuModuleGetFunction, {"cuModuleGetFunction"}, missing);
  bind(h, a.cuFuncSetAttribute, {"cuFuncSetAttribute"}, missing);
  bind(h, a.cuLaunchKernel, {"cuLaunchKernel"}, missing);
  std::string optional;
  bind(h, a.cuFuncGetParamInfo, {"cuFuncGetParamInfo"}, optional);
  if (!bind(h, a.cuMemHostAlloc, {"cuMemHostAlloc"}, optional) || !bind(h, a.cuMemFreeHost, {"cuMemFreeHost"}, optional)) {
    a.cuMemHostAlloc = nullptr;
    a.cuMemFreeHost = nullptr;
  }
  std::string graph_missing;
  bind(h, a.cuStreamBeginCapture, {"cuStreamBeginCapture_v2"}, graph_missing);
  bind(h, a.cuStreamEndCapture, {"cuStreamEndCapture"}, graph_missing);
  bind(h, a.cuGraphInstantiateWithFlags, {"cuGraphInstantiateWithFlags"}, graph_missing);
  bind(h, a.cuGraphLaunch, {"cuGraphLaunch"}, graph_missing);
  bind(h, a.cuGraphExecDestroy, {"cuGraphExecDestroy"}, graph_missing);
  bind(h, a.cuGraphDestroy, {"cuGraphDestroy"}, graph_missing);
  if (!graph_missing.empty()) {
    a.cuStreamBeginCapture = nullptr;
    a.cuStreamEndCapture = nullptr;
    a.cuGraphInstantiateWithFlags = nullptr;
    a.cuGraphLaunch = nullptr;
    a.cuGraphExecDestroy = nullptr;
    a.cuGraphDestroy = nullptr;
    a.graph_error = "CUDA driver library " + o.path + " lacks " + graph_missing + " (driver older than 11.4?)";
  }
  a.driver_path = o.path;
  if (!missing.empty()) {
    a.driver_error = "CUDA driver library " + o.path + " lacks " + missing + " (driver too old?)";
    return;
  }
  a.driver_loaded = true;
}

void load_nvrtc(CudaApi& a) {
  Opened o = open_library("NVRTC (libnvrtc.so)", {"libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2"});
  if (!o.handle) {
    a.nvrtc_error = o.error + ". Install the CUDA toolkit's NVRTC, or add its lib64 directory to LD_LIBRARY_PATH.";
    return;
  }
  std::string missing, optional;
  void* h = o.handle;
  bind(h, a.nvrtcVersion, {"nvrtcVersion"}, missing);
  bind(h, a.nvrtcGetErrorString, {"nvrtcGetErrorString"}, missing);
  bind(h, a.nvrtcCreateProgram, {"nvrtcCreateProgram"}, missing);
  bind(h, a.nvrtcDestroyProgram, {"nvrtcDestroyProgram"}, missing);
  bind(h, a.nvrtcCompileProgram, {"nvrtcCompileProgram"}, missing);
  bind(h, a.nvrtcGetProgramLogSize, {"nvrtcGetProgramLogSize"}, missing);
  bind(h, a.nvrtcGetProgramLog, {"nvrtcGetProgramLog"}, missing);
  bind(h, a.nvrtcGetPTXSize, {"nvrtcGetPTXSize"}, missing);
  bind(h, a.nvrtcGetPTX, {"nvrtcGetPTX"}, missing);
  bind(h, a.nvrtcGetCUBINSize, {"nvrtcGetCUBINSize"}, missing);
  bind(h, a.nvrtcGetCUBIN, {"nvrtcGetCUBIN"}, missing);
  bind(h, a.nvrtcGetNumSupportedArchs, {"nvrtcGetNumSupportedArchs"}, optional);
  bind(h, a.nvrtcGetSupportedArchs, {"nvrtcGetSupportedArchs"}, optional);
  a.nvrtc_path = o.path;
  if (!missing.empty()) {
    a.nvrtc_error = "NVRTC library " + o.path + " lacks " + missing + " (NVRTC older than 11.1?)";
    return;
  }
  // NVRTC opens its builtins library (libnvrtc-builtins.so.MAJ.MIN) by soname. When NVRTC was
  // found by absolute path, that directory may not be on the loader's path: open the builtins
  // from the same directory first so the soname lookup finds them already loaded.
  if (!o.dir.empty()) {
    int major = 0, minor = 0;
    if (a.nvrtcVersion(&major, &minor) == NVRTC_SUCCESS) {
      const std::string base = o.dir + "/libnvrtc-builtins.so." + std::to_string(major);
      for (const std::string& p : {base + "." + std::to_string(minor), base}) {
        if (file_exists(p) && ::dlopen(p.c_str(), RTLD_NOW | RTLD_GLOBAL)) break;
      }
    }
  }
  a.nvrtc_loaded = true;
}

void load_cublaslt(CudaApi& a) {
  Opened o = open_library("cuBLASLt (libcublasLt.so)", {"libcublasLt.so", "libcublasLt.so.13", "libcublasLt.so.12"});
  if (!o.handle) {
    a.cublaslt_error = o.error + ". Install the CUDA toolkit's cuBLAS, or add its lib64 directory to LD_LIBRARY_PATH.";
    return;
  }
  std::string missing;
  void* h = o.handle;
  bind(h, a.cublasLtCreate, {"cublasLtCreate"}, missing);
  bind(h, a.cublasLtGetVersion, {"cublasLtGetVersion"}, missing);
  bind(h, a.cublasLtGetStatusString, {"cublasLtGetStatusString"}, missing);
  bind(h, a.cublasLtMatmulDescCreate, {"cublasLtMatmulDescCreate"}, missing);
  bind(h, a.cublasLtMatmulDescDestroy, {"cublasLtMatmulDescDestroy"}, missing);
  bind(h, a.cublasLtMatmulDescSetAttribute, {"cublasLtMatmulDescSetAttribute"}, missing);
  bind(h, a.cublasLtMatrixLayoutCreate, {"cublasLtMatrixLayoutCreate"}, missing);
  bind(h, a.cublasLtMatrixLayoutDestroy, {"cublasLtMatrixLayoutDestroy"}, missing);
  bind(h, a.cublasLtMatrixLayoutSetAttribute, {"cublasLtMatrixLayoutSetAttribute"}, missing);
  bind(h, a.cublasLtMatmulPreferenceCreate, {"cublasLtMatmulPreferenceCreate"}, missing);
  bind(h, a.cublasLtMatmulPreferenceDestroy, {"cublasLtMatmulPreferenceDestroy"}, missing);
  bind(h, a.cublasLtMatmulPreferenceSetAttribute, {"cublasLtMatmulPreferenceSetAttribute"}, missing);
  bind(h, a.cublasLtMatmulAlgoGetHeuristic, {"cublasLtMatmulAlgoGetHeuristic"}, missing);
  bind(h, a.cublasLtMatmul, {"cublasLtMatmul"}, missing);
  a.cublaslt_path = o.path;
  if (!missing.empty()) {
    a.cublaslt_error = "cuBLASLt library " + o.path + " lacks " + missing;
    return;
  }
  a.cublaslt_loaded = true;
}

}  // namespace

const CudaApi& api() {
  static CudaApi table;
  static std::once_flag once;
  std::call_once(once, [] {
    load_driver(table);
    // NVRTC and cuBLASLt are only useful with a driver; skip them (and say why) without one.
    if (!table.driver_loaded) {
      table.nvrtc_error = table.cublaslt_error = "not loaded: the CUDA driver is unavailable";
      return;
    }
    load_nvrtc(table);
    load_cublaslt(table);
  });
  return table;
}

std::string driver_error_text(CUresult r) {
  const CudaApi& a = api();
  const char* name = nullptr;
  const char* text = nullptr;
  if (a.cuGetErrorName) a.cuGetErrorName(r, &name);
  if (a.cuGetErrorString) a.cuGetErrorString(r, &text);
  std::string s = name ? name : "CUDA error " + std::to_string(r);
  if (text) s += std::string(" (") + text + ")";
  return s;
}

}  // namespace cuda
}  // namespace eqat
