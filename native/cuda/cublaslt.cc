// cudaGemm: one cuBLASLt matrix multiply with BLAS (column-major) semantics, queued on the
// backend's stream:
//   C (m, n) = alpha * op(A) @ op(B) + beta * C        op(X) = X or Xᵀ (opA / opB: 0 = N, 1 = T)
// A is stored as (m, k) when opA = N and (k, m) when T, column-major with leading dimension
// lda; likewise B (k, n) / (n, k) with ldb, and C (m, n) with ldc. Types: A and B 'f32' with C
// 'f32', or A and B 'bf16' with C 'f32' or 'bf16'; products accumulate in f32
// (CUBLAS_COMPUTE_32F, no TF32 down-conversion of f32 inputs) and alpha/beta are f32 host values.
// beta = 0 does not read C.
//
// Strided batches (optional trailing arguments batch, strideA, strideB, strideC, in elements):
// `batch` independent products, the i-th reading A + i·strideA and B + i·strideB and writing
// C + i·strideC (cuBLASLt's BATCH_COUNT / STRIDED_BATCH_OFFSET layout attributes). Batches may
// interleave (e.g. the heads of a (T, heads, D) array: stride D, leading dimension heads·D) but
// must not share an element of C; the caller guarantees that.
//
// Row-major callers (src/ops/cuda/matmul.ts) map their problem onto this one by computing
// Cᵀ = op(B)ᵀ op(A)ᵀ; that mapping lives in TypeScript so it is tested without a GPU.
// m, n, k >= 1 here; degenerate shapes are handled by the caller.
#include "runtime.h"

#include <mutex>

namespace eqat {
namespace cuda {
namespace {

constexpr size_t kWorkspaceBytes = 32u << 20;  // cuBLASLt's suggestion for Hopper-class GPUs

struct LtState {
  std::mutex mu;
  cublasLtHandle_t handle = nullptr;
  CUdeviceptr workspace = 0;
};
LtState& lt() {
  static LtState s;
  return s;
}

void check_lt(const Napi::Env& env, cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  const char* text = api().cublasLtGetStatusString ? api().cublasLtGetStatusString(s) : nullptr;
  throw Napi::Error::New(env, std::string("cudaGemm: ") + what + " failed: " + (text ? text : "cuBLAS status " + std::to_string(s)));
}

int dtype_arg(const Napi::CallbackInfo& info, size_t i, const char* name, size_t* bytes) {
  if (i < info.Length() && info[i].IsString()) {
    const std::string s = info[i].As<Napi::String>().Utf8Value();
    if (s == "f32") {
      *bytes = 4;
      return CUDA_R_32F;
    }
    if (s == "bf16") {
      *bytes = 2;
      return CUDA_R_16BF;
    }
  }
  throw Napi::TypeError::New(info.Env(), std::string("cudaGemm: argument '") + name + "' must be 'f32' or 'bf16'");
}

// Largest power of two (<= 256) dividing the address: what the algorithm may assume.
uint32_t alignment_of(CUdeviceptr p) {
  uint32_t a = 256;
  while (a > 1 && (p % a) != 0) a >>= 1;
  return a;
}

// RAII holders so every early throw releases the descriptors.
struct Layout {
  cublasLtMatrixLayout_t h = nullptr;
  ~Layout() {
    if (h) api().cublasLtMatrixLayoutDestroy(h);
  }
};
struct Desc {
  cublasLtMatmulDesc_t h = nullptr;
  ~Desc() {
    if (h) api().cublasLtMatmulDescDestroy(h);
  }
};
struct Pref {
  cublasLtMatmulPreference_t h = nullptr;
  ~Pref() {
    if (h) api().cublasLtMatmulPreferenceDestroy(h);
  }
};

// Sets the strided-batch attributes of a layout (nothing for a single product).
void set_batch(const Napi::Env& env, cublasLtMatrixLayout_t l, int32_t batch, int64_t stride, const char* what) {
  if (batch == 1) return;
  check_lt(env, api().cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch), what);
  check_lt(env, api().cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride), what);
}

// cudaGemm(opA, opB, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, abType, cType[, batch, strideA, strideB, strideC])
Napi::Value Gemm(const Napi::CallbackInfo& info) {
  const char* op = "cudaGemm";
  Napi::Env env = info.Env();
  if (info.Length() != 15 && info.Length() != 19) {
    throw Napi::TypeError::New(env, "cudaGemm: expected 15 arguments, or 19 with a strided batch, got " + std::to_string(info.Length()));
  }
  const int64_t op_a = arg_int(info, 0, op, "opA"), op_b = arg_int(info, 1, op, "opB");
  if ((op_a != 0 && op_a != 1) || (op_b != 0 && op_b != 1)) {
    throw Napi::RangeError::New(env, "cudaGemm: arguments 'opA' and 'opB' must be 0 (N) or 1 (T)");
  }
  const int64_t m = arg_int(info, 2, op, "m"), n = arg_int(info, 3, op, "n"), k = arg_int(info, 4, op, "k");
  if (m < 1 || n < 1 || k < 1) throw Napi::RangeError::New(env, "cudaGemm: m, n and k must be >= 1");
  const float alpha = static_cast<float>(arg_num(info, 5, op, "alpha"));
  const CUdeviceptr A = arg_handle(info, 6, op, "A");
  const int64_t lda = arg_int(info, 7, op, "lda");
  const CUdeviceptr B = arg_handle(info, 8, op, "B");
  const int64_t ldb = arg_int(info, 9, op, "ldb");
  const float beta = static_cast<float>(arg_num(info, 10, op, "beta"));
  const CUdeviceptr C = arg_handle(info, 11, op, "C");
  const int64_t ldc = arg_int(info, 12, op, "ldc");
  size_t ab_bytes = 0, c_bytes = 0;
  const int ab_type = dtype_arg(info, 13, "abType", &ab_bytes);
  const int c_type = dtype_arg(info, 14, "cType", &c_bytes);
  if (ab_type == CUDA_R_32F && c_type != CUDA_R_32F) {
    throw Napi::TypeError::New(env, "cudaGemm: f32 inputs need an f32 output (cType 'f32')");
  }
  // Stored shapes (rows, cols) of A, B, C in column-major order.
  const int64_t a_rows = op_a == 0 ? m : k, a_cols = op_a == 0 ? k : m;
  const int64_t b_rows = op_b == 0 ? k : n, b_cols = op_b == 0 ? n : k;
  if (lda < a_rows) throw Napi::RangeError::New(env, "cudaGemm: argument 'lda' must be >= " + std::to_string(a_rows));
  if (ldb < b_rows) throw Napi::RangeError::New(env, "cudaGemm: argument 'ldb' must be >= " + std::to_string(b_rows));
  if (ldc < m) throw Napi::RangeError::New(env, "cudaGemm: argument 'ldc' must be >= " + std::to_string(m));
  int64_t batch = 1, stride_a = 0, stride_b = 0, stride_c = 0;
  if (info.Length() == 19) {
    batch = arg_int(info, 15, op, "batch");
    stride_a = arg_int(info, 16, op, "strideA");
    stride_b = arg_int(info, 17, op, "strideB");
    stride_c = arg_int(info, 18, op, "strideC");
    if (batch < 1 || batch > 2147483647) throw Napi::RangeError::New(env, "cudaGemm: argument 'batch' must be in [1, 2^31-1]");
    if (stride_a < 0 || stride_b < 0 || stride_c < 0) throw Napi::RangeError::New(env, "cudaGemm: batch strides must be >= 0");
    if (batch > 1 && stride_c < 1) throw Napi::RangeError::New(env, "cudaGemm: argument 'strideC' must be >= 1 for a batch");
  }

  const CudaApi& a = api();
  if (!a.cublaslt_loaded) throw Napi::Error::New(env, "cudaGemm: cuBLASLt is not available: " + a.cublaslt_error);
  CUstream stream = ensure_context(env, op);
  // the last batch's extent covers all of them (strides are >= 0)
  check_range(env, A, static_cast<uint64_t>((batch - 1) * stride_a + (a_cols - 1) * lda + a_rows) * ab_bytes, op, "A");
  check_range(env, B, static_cast<uint64_t>((batch - 1) * stride_b + (b_cols - 1) * ldb + b_rows) * ab_bytes, op, "B");
  check_range(env, C, static_cast<uint64_t>((batch - 1) * stride_c + (n - 1) * ldc + m) * c_bytes, op, "C");
  {
    std::lock_guard<std::mutex> lock(lt().mu);
    if (!lt().handle) check_lt(env, a.cublasLtCreate(&lt().handle), "cublasLtCreate");
    if (!lt().workspace) lt().workspace = internal_alloc(env, kWorkspaceBytes, op);
  }

  Desc desc;
  check_lt(env, a.cublasLtMatmulDescCreate(&desc.h, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  const int32_t ta = static_cast<int32_t>(op_a == 0 ? CUBLAS_OP_N : CUBLAS_OP_T);
  const int32_t tb = static_cast<int32_t>(op_b == 0 ? CUBLAS_OP_N : CUBLAS_OP_T);
  check_lt(env, a.cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "set TRANSA");
  check_lt(env, a.cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "set TRANSB");
  Layout la, lb, lc;
  check_lt(env, a.cublasLtMatrixLayoutCreate(&la.h, ab_type, a_rows, a_cols, lda), "cublasLtMatrixLayoutCreate(A)");
  check_lt(env, a.cublasLtMatrixLayoutCreate(&lb.h, ab_type, b_rows, b_cols, ldb), "cublasLtMatrixLayoutCreate(B)");
  check_lt(env, a.cublasLtMatrixLayoutCreate(&lc.h, c_type, m, n, ldc), "cublasLtMatrixLayoutCreate(C)");
  const int32_t batch32 = static_cast<int32_t>(batch);
  set_batch(env, la.h, batch32, stride_a, "set the batch of A");
  set_batch(env, lb.h, batch32, stride_b, "set the batch of B");
  set_batch(env, lc.h, batch32, stride_c, "set the batch of C");
  Pref pref;
  check_lt(env, a.cublasLtMatmulPreferenceCreate(&pref.h), "cublasLtMatmulPreferenceCreate");
  const uint64_t ws = kWorkspaceBytes;
  check_lt(env, a.cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws),
           "set MAX_WORKSPACE_BYTES");
  const uint32_t align_a = alignment_of(A), align_b = alignment_of(B), align_c = alignment_of(C);
  check_lt(env, a.cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, 4), "set alignment");
  check_lt(env, a.cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, 4), "set alignment");
  check_lt(env, a.cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, 4), "set alignment");
  check_lt(env, a.cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, 4), "set alignment");

  cublasLtMatmulHeuristicResult_t result{};
  int returned = 0;
  check_lt(env,
           a.cublasLtMatmulAlgoGetHeuristic(lt().handle, desc.h, la.h, lb.h, lc.h, lc.h, pref.h, 1, &result, &returned),
           "cublasLtMatmulAlgoGetHeuristic");
  if (returned < 1) {
    throw Napi::Error::New(env, "cudaGemm: cuBLASLt has no algorithm for m=" + std::to_string(m) + " n=" + std::to_string(n) +
                                    " k=" + std::to_string(k) + " opA=" + std::to_string(op_a) + " opB=" + std::to_string(op_b));
  }
  check_lt(env,
           a.cublasLtMatmul(lt().handle, desc.h, &alpha, reinterpret_cast<const void*>(A), la.h, reinterpret_cast<const void*>(B),
                            lb.h, &beta, reinterpret_cast<const void*>(C), lc.h, reinterpret_cast<void*>(C), lc.h,
                            &result.algo, reinterpret_cast<void*>(lt().workspace), kWorkspaceBytes, stream),
           "cublasLtMatmul");
  return env.Undefined();
}

}  // namespace

EQAT_EXPORT(cudaGemm, Gemm);

}  // namespace cuda
}  // namespace eqat
