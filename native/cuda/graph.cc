// N-API entry points for CUDA graphs: capture the work queued on eqat's stream into a graph,
// instantiate it, replay it, destroy it. A training step whose shapes and buffers are fixed is
// captured once and then replayed with one driver call instead of one launch per op (see
// src/engine/cuda.ts, CudaStepGraphs).
//
//   cudaGraphBegin()        starts capturing the stream (relaxed mode): launches, cuBLASLt
//                           matmuls and memsets queued until cudaGraphEnd are recorded, not run
//   cudaGraphEnd() -> exec  ends the capture and instantiates the graph (BigInt handle); a
//                           capture that an illegal call invalidated throws, naming the reason
//   cudaGraphLaunch(exec)   queues the whole graph on the stream
//   cudaGraphDestroy(exec)  releases an instantiated graph
//   cudaGraphSupport() -> "" when the driver has the entry points, else why not
//
// Kernel parameters are copied into the graph when captured, so a replay sees the pointers and
// scalars of the capture; anything that changes between steps must live in device memory.
#include "runtime.h"

namespace eqat {
namespace cuda {
namespace {

void require_graphs(const Napi::Env& env, const char* op) {
  const CudaApi& a = api();
  if (!a.graph_error.empty()) throw Napi::Error::New(env, std::string(op) + ": CUDA graphs unavailable: " + a.graph_error);
}

Napi::Value Support(const Napi::CallbackInfo& info) {
  check_argc(info, 0, "cudaGraphSupport");
  const std::string why = unavailable_reason();
  if (!why.empty()) return Napi::String::New(info.Env(), why);
  return Napi::String::New(info.Env(), api().graph_error);
}

Napi::Value Begin(const Napi::CallbackInfo& info) {
  const char* op = "cudaGraphBegin";
  check_argc(info, 0, op);
  CUstream stream = ensure_context(info.Env(), op);
  require_graphs(info.Env(), op);
  check_cu(info.Env(), api().cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_RELAXED), op, "cuStreamBeginCapture_v2");
  return info.Env().Undefined();
}

Napi::Value End(const Napi::CallbackInfo& info) {
  const char* op = "cudaGraphEnd";
  check_argc(info, 0, op);
  CUstream stream = ensure_context(info.Env(), op);
  require_graphs(info.Env(), op);
  const CudaApi& a = api();
  CUgraph graph = nullptr;
  check_cu(info.Env(), a.cuStreamEndCapture(stream, &graph), op, "cuStreamEndCapture");
  if (!graph) throw Napi::Error::New(info.Env(), std::string(op) + ": cuStreamEndCapture returned no graph");
  CUgraphExec exec = nullptr;
  const CUresult r = a.cuGraphInstantiateWithFlags(&exec, graph, 0);
  a.cuGraphDestroy(graph);  // the instantiated graph does not need it
  check_cu(info.Env(), r, op, "cuGraphInstantiateWithFlags");
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(reinterpret_cast<uintptr_t>(exec)));
}

Napi::Value Launch(const Napi::CallbackInfo& info) {
  const char* op = "cudaGraphLaunch";
  check_argc(info, 1, op);
  CUgraphExec exec = reinterpret_cast<CUgraphExec>(static_cast<uintptr_t>(arg_handle(info, 0, op, "exec")));
  CUstream stream = ensure_context(info.Env(), op);
  require_graphs(info.Env(), op);
  check_cu(info.Env(), api().cuGraphLaunch(exec, stream), op, "cuGraphLaunch");
  return info.Env().Undefined();
}

Napi::Value Destroy(const Napi::CallbackInfo& info) {
  const char* op = "cudaGraphDestroy";
  check_argc(info, 1, op);
  CUgraphExec exec = reinterpret_cast<CUgraphExec>(static_cast<uintptr_t>(arg_handle(info, 0, op, "exec")));
  ensure_context(info.Env(), op);
  require_graphs(info.Env(), op);
  check_cu(info.Env(), api().cuGraphExecDestroy(exec), op, "cuGraphExecDestroy");
  return info.Env().Undefined();
}

}  // namespace

EQAT_EXPORT(cudaGraphSupport, Support);
EQAT_EXPORT(cudaGraphBegin, Begin);
EQAT_EXPORT(cudaGraphEnd, End);
EQAT_EXPORT(cudaGraphLaunch, Launch);
EQAT_EXPORT(cudaGraphDestroy, Destroy);

}  // namespace cuda
}  // namespace eqat
