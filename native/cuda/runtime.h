// Process-wide CUDA state shared by the N-API entry points of native/cuda/*.cc: the selected
// device, its primary context, the one stream every copy, kernel and matmul is queued on, and
// the table of live allocations (so copies are bounds-checked against what cudaAlloc returned).
//
// Everything runs on a single stream, in call order; only cudaDownload and cudaSynchronize
// wait for the device. Errors from asynchronous work surface at the next waiting call.
#pragma once
#include "eqat.h"
#include "api.h"

namespace eqat {
namespace cuda {

struct DeviceInfo {
  int ordinal = 0;
  int cc_major = 0, cc_minor = 0;
};

// Why CUDA cannot be used in this process, or "" when it can (driver loaded, cuInit succeeded,
// at least one device, NVRTC loaded, not disabled by EQAT_CUDA_DISABLE).
std::string unavailable_reason();

// The device kernels are compiled for and run on: ordinal EQAT_CUDA_DEVICE (default 0).
// Throws a JS Error naming `op` when CUDA is unavailable.
DeviceInfo selected_device(const Napi::Env& env, const char* op);

// Makes the selected device's primary context current on this thread (creating it and the
// stream on first use) and returns the stream. Throws a JS Error naming `op` on failure.
CUstream ensure_context(const Napi::Env& env, const char* op);

// Throws a JS Error "op: what failed: CUDA_ERROR_X (text)" unless r is CUDA_SUCCESS.
void check_cu(const Napi::Env& env, CUresult r, const char* op, const std::string& what);

// Throws a RangeError unless [ptr, ptr + bytes) lies inside one live allocation.
void check_range(const Napi::Env& env, CUdeviceptr ptr, uint64_t bytes, const char* op, const char* name);

// A device pointer argument passed as a BigInt.
CUdeviceptr arg_handle(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);

// Device memory owned by the runtime (not visible to JS), e.g. the cuBLASLt workspace.
CUdeviceptr internal_alloc(const Napi::Env& env, size_t bytes, const char* op);

}  // namespace cuda
}  // namespace eqat
