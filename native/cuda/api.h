// The slice of the CUDA driver API, NVRTC and cuBLASLt that eqat uses, declared by hand so the
// addon builds on machines without a CUDA toolkit (CI, CPU-only installs). Nothing here links
// against CUDA: the libraries are opened at run time by native/cuda/loader.cc, which fills a
// CudaApi table of function pointers with dlsym.
//
// Conventions: every handle the libraries hand out is an opaque pointer; every enum is a plain
// int carrying the documented numeric value; size_t/uint64_t/int64_t are used exactly where the
// public prototypes use them. Only the enum values this backend passes are listed.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace eqat {
namespace cuda {

// ---------------------------------------------------------------- driver API (libcuda)

using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;  // 64-bit device address (the _v2 entry points)
using CUcontext = struct CUctx_opaque*;
using CUmodule = struct CUmod_opaque*;
using CUfunction = struct CUfunc_opaque*;
using CUstream = struct CUstream_opaque*;
using CUgraph = struct CUgraph_opaque*;
using CUgraphExec = struct CUgraphExec_opaque*;

constexpr CUresult CUDA_SUCCESS = 0;
constexpr CUresult CUDA_ERROR_INVALID_VALUE = 1;
constexpr CUresult CUDA_ERROR_NO_DEVICE = 100;

// CUdevice_attribute values used by the probe.
constexpr int CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
constexpr int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
constexpr int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;

// CUfunction_attribute: opt in to more than 48 KiB of dynamic shared memory.
constexpr int CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;

// cuStreamCreate flag: 0 = ordinary stream (ordered with the legacy default stream).
constexpr unsigned CU_STREAM_DEFAULT = 0;

// CUstreamCaptureMode: RELAXED lets other threads make unsafe calls while a capture is open
// (eqat captures from its one JS thread and checks itself that nothing synchronous is queued).
constexpr int CU_STREAM_CAPTURE_MODE_RELAXED = 2;

using PFN_cuInit = CUresult (*)(unsigned flags);
using PFN_cuDriverGetVersion = CUresult (*)(int* version);
using PFN_cuGetErrorName = CUresult (*)(CUresult error, const char** name);
using PFN_cuGetErrorString = CUresult (*)(CUresult error, const char** text);
using PFN_cuDeviceGetCount = CUresult (*)(int* count);
using PFN_cuDeviceGet = CUresult (*)(CUdevice* device, int ordinal);
using PFN_cuDeviceGetName = CUresult (*)(char* name, int len, CUdevice device);
using PFN_cuDeviceGetAttribute = CUresult (*)(int* value, int attribute, CUdevice device);
using PFN_cuDeviceTotalMem = CUresult (*)(size_t* bytes, CUdevice device);          // cuDeviceTotalMem_v2
using PFN_cuDevicePrimaryCtxRetain = CUresult (*)(CUcontext* ctx, CUdevice device);
using PFN_cuCtxSetCurrent = CUresult (*)(CUcontext ctx);
using PFN_cuCtxSynchronize = CUresult (*)();
using PFN_cuStreamCreate = CUresult (*)(CUstream* stream, unsigned flags);
using PFN_cuStreamSynchronize = CUresult (*)(CUstream stream);
using PFN_cuMemGetInfo = CUresult (*)(size_t* free_bytes, size_t* total_bytes);     // cuMemGetInfo_v2
using PFN_cuMemAlloc = CUresult (*)(CUdeviceptr* ptr, size_t bytes);                // cuMemAlloc_v2
using PFN_cuMemFree = CUresult (*)(CUdeviceptr ptr);                                // cuMemFree_v2
using PFN_cuMemHostAlloc = CUresult (*)(void** ptr, size_t bytes, unsigned flags);   // page-locked host memory
using PFN_cuMemFreeHost = CUresult (*)(void* ptr);
using PFN_cuMemcpyHtoDAsync = CUresult (*)(CUdeviceptr dst, const void* src, size_t bytes,
                                           CUstream stream);                        // _v2
using PFN_cuMemcpyDtoHAsync = CUresult (*)(void* dst, CUdeviceptr src, size_t bytes,
                                           CUstream stream);                        // _v2
using PFN_cuMemsetD8Async = CUresult (*)(CUdeviceptr dst, unsigned char value, size_t count,
                                         CUstream stream);
using PFN_cuModuleLoadData = CUresult (*)(CUmodule* module, const void* image);
using PFN_cuModuleUnload = CUresult (*)(CUmodule module);
using PFN_cuModuleGetFunction = CUresult (*)(CUfunction* fn, CUmodule module, const char* name);
using PFN_cuFuncSetAttribute = CUresult (*)(CUfunction fn, int attribute, int value);
// Optional (CUDA 12.4+): offset and size of parameter `index`; CUDA_ERROR_INVALID_VALUE past
// the last one. Used to check a launch's argument count.
using PFN_cuFuncGetParamInfo = CUresult (*)(CUfunction fn, size_t index, size_t* offset, size_t* size);
using PFN_cuLaunchKernel = CUresult (*)(CUfunction fn, unsigned grid_x, unsigned grid_y, unsigned grid_z,
                                        unsigned block_x, unsigned block_y, unsigned block_z,
                                        unsigned shared_bytes, CUstream stream, void** params, void** extra);

// Stream capture and graphs (driver 11.4+; optional: without them steps run eagerly).
using PFN_cuStreamBeginCapture = CUresult (*)(CUstream stream, int mode);  // cuStreamBeginCapture_v2
using PFN_cuStreamEndCapture = CUresult (*)(CUstream stream, CUgraph* graph);
using PFN_cuGraphInstantiateWithFlags = CUresult (*)(CUgraphExec* exec, CUgraph graph, unsigned long long flags);
using PFN_cuGraphLaunch = CUresult (*)(CUgraphExec exec, CUstream stream);
using PFN_cuGraphExecDestroy = CUresult (*)(CUgraphExec exec);
using PFN_cuGraphDestroy = CUresult (*)(CUgraph graph);

// ---------------------------------------------------------------- NVRTC (libnvrtc)

using nvrtcResult = int;
using nvrtcProgram = struct nvrtcProgram_opaque*;
constexpr nvrtcResult NVRTC_SUCCESS = 0;

using PFN_nvrtcVersion = nvrtcResult (*)(int* major, int* minor);
using PFN_nvrtcGetErrorString = const char* (*)(nvrtcResult result);
using PFN_nvrtcGetNumSupportedArchs = nvrtcResult (*)(int* count);
using PFN_nvrtcGetSupportedArchs = nvrtcResult (*)(int* archs);  // ascending, e.g. 75, 80, ..., 90
using PFN_nvrtcCreateProgram = nvrtcResult (*)(nvrtcProgram* prog, const char* source, const char* name,
                                               int num_headers, const char* const* headers,
                                               const char* const* include_names);
using PFN_nvrtcDestroyProgram = nvrtcResult (*)(nvrtcProgram* prog);
using PFN_nvrtcCompileProgram = nvrtcResult (*)(nvrtcProgram prog, int num_options, const char* const* options);
using PFN_nvrtcGetProgramLogSize = nvrtcResult (*)(nvrtcProgram prog, size_t* size);
using PFN_nvrtcGetProgramLog = nvrtcResult (*)(nvrtcProgram prog, char* log);
using PFN_nvrtcGetPTXSize = nvrtcResult (*)(nvrtcProgram prog, size_t* size);  // includes the trailing NUL
using PFN_nvrtcGetPTX = nvrtcResult (*)(nvrtcProgram prog, char* ptx);
using PFN_nvrtcGetCUBINSize = nvrtcResult (*)(nvrtcProgram prog, size_t* size);  // since 11.1
using PFN_nvrtcGetCUBIN = nvrtcResult (*)(nvrtcProgram prog, char* cubin);

// ---------------------------------------------------------------- cuBLASLt (libcublasLt)

using cublasStatus_t = int;
using cublasLtHandle_t = struct cublasLtContext_opaque*;
using cublasLtMatmulDesc_t = struct cublasLtMatmulDesc_opaque*;
using cublasLtMatrixLayout_t = struct cublasLtMatrixLayout_opaque*;
using cublasLtMatmulPreference_t = struct cublasLtMatmulPreference_opaque*;
constexpr cublasStatus_t CUBLAS_STATUS_SUCCESS = 0;

// cudaDataType_t
constexpr int CUDA_R_32F = 0;
constexpr int CUDA_R_16BF = 14;
// cublasComputeType_t: f32 accumulation, no down-conversion of f32 inputs (no TF32)
constexpr int CUBLAS_COMPUTE_32F = 68;
// cublasOperation_t
constexpr int CUBLAS_OP_N = 0;
constexpr int CUBLAS_OP_T = 1;
// cublasLtMatmulDescAttributes_t (values are int32 cublasOperation_t)
constexpr int CUBLASLT_MATMUL_DESC_TRANSA = 3;
constexpr int CUBLASLT_MATMUL_DESC_TRANSB = 4;
// cublasLtMatmulPreferenceAttributes_t
// cublasLtMatrixLayoutAttribute_t: strided batches.
constexpr int CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5;           // int32
constexpr int CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET = 6;  // int64, elements
constexpr int CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1;  // uint64
constexpr int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5;  // uint32, default 256
constexpr int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6;
constexpr int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7;
constexpr int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8;

// The algorithm descriptor is an opaque 64-byte blob filled by the heuristic query.
struct cublasLtMatmulAlgo_t {
  uint64_t data[8];
};
struct cublasLtMatmulHeuristicResult_t {
  cublasLtMatmulAlgo_t algo;
  size_t workspaceSize;
  cublasStatus_t state;
  float wavesCount;
  int reserved[4];
};
static_assert(sizeof(cublasLtMatmulHeuristicResult_t) == 96, "cuBLASLt heuristic result layout");

using PFN_cublasLtCreate = cublasStatus_t (*)(cublasLtHandle_t* handle);
using PFN_cublasLtGetVersion = size_t (*)();
using PFN_cublasLtGetStatusString = const char* (*)(cublasStatus_t status);
using PFN_cublasLtMatmulDescCreate = cublasStatus_t (*)(cublasLtMatmulDesc_t* desc, int compute_type, int scale_type);
using PFN_cublasLtMatmulDescDestroy = cublasStatus_t (*)(cublasLtMatmulDesc_t desc);
using PFN_cublasLtMatmulDescSetAttribute = cublasStatus_t (*)(cublasLtMatmulDesc_t desc, int attribute,
                                                              const void* value, size_t bytes);
using PFN_cublasLtMatrixLayoutCreate = cublasStatus_t (*)(cublasLtMatrixLayout_t* layout, int type, uint64_t rows,
                                                          uint64_t cols, int64_t ld);
using PFN_cublasLtMatrixLayoutDestroy = cublasStatus_t (*)(cublasLtMatrixLayout_t layout);
using PFN_cublasLtMatrixLayoutSetAttribute = cublasStatus_t (*)(cublasLtMatrixLayout_t layout, int attribute,
                                                                const void* value, size_t bytes);
using PFN_cublasLtMatmulPreferenceCreate = cublasStatus_t (*)(cublasLtMatmulPreference_t* pref);
using PFN_cublasLtMatmulPreferenceDestroy = cublasStatus_t (*)(cublasLtMatmulPreference_t pref);
using PFN_cublasLtMatmulPreferenceSetAttribute = cublasStatus_t (*)(cublasLtMatmulPreference_t pref, int attribute,
                                                                    const void* value, size_t bytes);
using PFN_cublasLtMatmulAlgoGetHeuristic = cublasStatus_t (*)(
    cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
    cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d, cublasLtMatmulPreference_t pref, int requested,
    cublasLtMatmulHeuristicResult_t* results, int* returned);
using PFN_cublasLtMatmul = cublasStatus_t (*)(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha,
                                              const void* a, cublasLtMatrixLayout_t a_layout, const void* b,
                                              cublasLtMatrixLayout_t b_layout, const void* beta, const void* c,
                                              cublasLtMatrixLayout_t c_layout, void* d, cublasLtMatrixLayout_t d_layout,
                                              const cublasLtMatmulAlgo_t* algo, void* workspace,
                                              size_t workspace_bytes, void* stream);

// ---------------------------------------------------------------- the loaded table

// Function pointers of the three libraries. A library's pointers are all set or all null
// (except the optional ones, marked), according to `*_loaded`.
struct CudaApi {
  // libcuda
  bool driver_loaded = false;
  std::string driver_error;  // why not, naming the library, every path tried and dlerror's text
  std::string driver_path;   // what was opened
  PFN_cuInit cuInit = nullptr;
  PFN_cuDriverGetVersion cuDriverGetVersion = nullptr;
  PFN_cuGetErrorName cuGetErrorName = nullptr;
  PFN_cuGetErrorString cuGetErrorString = nullptr;
  PFN_cuDeviceGetCount cuDeviceGetCount = nullptr;
  PFN_cuDeviceGet cuDeviceGet = nullptr;
  PFN_cuDeviceGetName cuDeviceGetName = nullptr;
  PFN_cuDeviceGetAttribute cuDeviceGetAttribute = nullptr;
  PFN_cuDeviceTotalMem cuDeviceTotalMem = nullptr;
  PFN_cuDevicePrimaryCtxRetain cuDevicePrimaryCtxRetain = nullptr;
  PFN_cuCtxSetCurrent cuCtxSetCurrent = nullptr;
  PFN_cuCtxSynchronize cuCtxSynchronize = nullptr;
  PFN_cuStreamCreate cuStreamCreate = nullptr;
  PFN_cuStreamSynchronize cuStreamSynchronize = nullptr;
  PFN_cuMemGetInfo cuMemGetInfo = nullptr;
  PFN_cuMemAlloc cuMemAlloc = nullptr;
  PFN_cuMemFree cuMemFree = nullptr;
  PFN_cuMemHostAlloc cuMemHostAlloc = nullptr;  // optional (with cuMemFreeHost)
  PFN_cuMemFreeHost cuMemFreeHost = nullptr;    // optional
  PFN_cuMemcpyHtoDAsync cuMemcpyHtoDAsync = nullptr;
  PFN_cuMemcpyDtoHAsync cuMemcpyDtoHAsync = nullptr;
  PFN_cuMemsetD8Async cuMemsetD8Async = nullptr;
  PFN_cuModuleLoadData cuModuleLoadData = nullptr;
  PFN_cuModuleUnload cuModuleUnload = nullptr;
  PFN_cuModuleGetFunction cuModuleGetFunction = nullptr;
  PFN_cuFuncSetAttribute cuFuncSetAttribute = nullptr;
  PFN_cuFuncGetParamInfo cuFuncGetParamInfo = nullptr;  // optional
  PFN_cuLaunchKernel cuLaunchKernel = nullptr;
  // optional as a group: all set or all null (graph_error says what is missing)
  PFN_cuStreamBeginCapture cuStreamBeginCapture = nullptr;
  PFN_cuStreamEndCapture cuStreamEndCapture = nullptr;
  PFN_cuGraphInstantiateWithFlags cuGraphInstantiateWithFlags = nullptr;
  PFN_cuGraphLaunch cuGraphLaunch = nullptr;
  PFN_cuGraphExecDestroy cuGraphExecDestroy = nullptr;
  PFN_cuGraphDestroy cuGraphDestroy = nullptr;
  std::string graph_error;  // "" when the graph entry points are bound

  // libnvrtc
  bool nvrtc_loaded = false;
  std::string nvrtc_error;
  std::string nvrtc_path;
  PFN_nvrtcVersion nvrtcVersion = nullptr;
  PFN_nvrtcGetErrorString nvrtcGetErrorString = nullptr;
  PFN_nvrtcGetNumSupportedArchs nvrtcGetNumSupportedArchs = nullptr;  // optional (11.2+)
  PFN_nvrtcGetSupportedArchs nvrtcGetSupportedArchs = nullptr;        // optional (11.2+)
  PFN_nvrtcCreateProgram nvrtcCreateProgram = nullptr;
  PFN_nvrtcDestroyProgram nvrtcDestroyProgram = nullptr;
  PFN_nvrtcCompileProgram nvrtcCompileProgram = nullptr;
  PFN_nvrtcGetProgramLogSize nvrtcGetProgramLogSize = nullptr;
  PFN_nvrtcGetProgramLog nvrtcGetProgramLog = nullptr;
  PFN_nvrtcGetPTXSize nvrtcGetPTXSize = nullptr;
  PFN_nvrtcGetPTX nvrtcGetPTX = nullptr;
  PFN_nvrtcGetCUBINSize nvrtcGetCUBINSize = nullptr;
  PFN_nvrtcGetCUBIN nvrtcGetCUBIN = nullptr;

  // libcublasLt
  bool cublaslt_loaded = false;
  std::string cublaslt_error;
  std::string cublaslt_path;
  PFN_cublasLtCreate cublasLtCreate = nullptr;
  PFN_cublasLtGetVersion cublasLtGetVersion = nullptr;
  PFN_cublasLtGetStatusString cublasLtGetStatusString = nullptr;
  PFN_cublasLtMatmulDescCreate cublasLtMatmulDescCreate = nullptr;
  PFN_cublasLtMatmulDescDestroy cublasLtMatmulDescDestroy = nullptr;
  PFN_cublasLtMatmulDescSetAttribute cublasLtMatmulDescSetAttribute = nullptr;
  PFN_cublasLtMatrixLayoutCreate cublasLtMatrixLayoutCreate = nullptr;
  PFN_cublasLtMatrixLayoutDestroy cublasLtMatrixLayoutDestroy = nullptr;
  PFN_cublasLtMatrixLayoutSetAttribute cublasLtMatrixLayoutSetAttribute = nullptr;
  PFN_cublasLtMatmulPreferenceCreate cublasLtMatmulPreferenceCreate = nullptr;
  PFN_cublasLtMatmulPreferenceDestroy cublasLtMatmulPreferenceDestroy = nullptr;
  PFN_cublasLtMatmulPreferenceSetAttribute cublasLtMatmulPreferenceSetAttribute = nullptr;
  PFN_cublasLtMatmulAlgoGetHeuristic cublasLtMatmulAlgoGetHeuristic = nullptr;
  PFN_cublasLtMatmul cublasLtMatmul = nullptr;
};

// The table, loaded on first call (thread-safe, once per process). Never throws: failures
// are recorded in *_loaded / *_error.
const CudaApi& api();

// "CUDA_ERROR_X (text)" for a driver result code (works only when the driver is loaded).
std::string driver_error_text(CUresult r);

}  // namespace cuda
}  // namespace eqat
