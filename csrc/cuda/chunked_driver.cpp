// The chunked CUDA path's driver (contract: chunked_driver.h): buffers, the chunk loop, the vendor
// GEMMs and the O(M + N) reductions.
//
// GEMMs call cublasGemmEx on torch's cuBLAS handle for the current device and stream (its
// workspace included) with an explicit compute type: fp16/bf16 inputs with fp32 output and fp32
// accumulation, float32 with exact fp32 products ("ieee") or TF32 tensor cores ("tf32"), float64.
// The op's precision argument decides, not torch's global TF32 flag: the handle's math mode is set
// to the default for the call and restored afterwards (torch resets it on every handle fetch
// anyway). at::mm's out_dtype overload (torch >= 2.8) would serve S and dA, but the fp32
// accumulation dB += dT_cᵀ A_c with fp16/bf16 operands needs addmm.dtype_out with an fp32 self,
// which older releases refuse ("self and mat2 must have the same dtype"); one call path for all
// three GEMMs keeps the forward's and the backward's S computed by the same routine.
#include "cuda/chunked_driver.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <climits>
#include <string>

#include "contrast_checks.h"
#include "cuda/chunked_cuda.h"

namespace uca {
namespace cuda {
namespace chunked {
namespace {

namespace msg = uca::checks::msg;

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, msg::cat("uca chunked CUDA path: ", what, " failed: ", cudaGetErrorString(err)));
}

ChunkArgs make_args(const at::Tensor& A, const at::Tensor& B, const at::Tensor& r, const at::Tensor& c,
                    const at::Tensor& scale, const at::Tensor& bias, const at::Tensor& labels_a,
                    const at::Tensor& labels_b, Loss loss, bool exclude_self) {
  ChunkArgs a;
  a.M = A.size(0);
  a.N = B.size(0);
  a.dtype = feature_dtype(A.scalar_type());
  a.r = r.data_ptr();
  a.c = c.data_ptr();
  a.scale = scale.data_ptr();
  a.bias = bias.data_ptr();
  a.labels_a = labels_a.data_ptr<int64_t>();
  a.labels_b = labels_b.data_ptr<int64_t>();
  a.loss = loss;
  a.exclude_self = exclude_self;
  return a;
}

// -- GEMMs ------------------------------------------------------------------------------------------

// The handle's math mode for the duration of one call (then the previous one).
class MathModeGuard {
 public:
  MathModeGuard(cublasHandle_t handle, cublasMath_t mode) : handle_(handle) {
    TORCH_CHECK(cublasGetMathMode(handle_, &saved_) == CUBLAS_STATUS_SUCCESS, "cublasGetMathMode failed");
    TORCH_CHECK(cublasSetMathMode(handle_, mode) == CUBLAS_STATUS_SUCCESS, "cublasSetMathMode failed");
  }
  ~MathModeGuard() { cublasSetMathMode(handle_, saved_); }
  MathModeGuard(const MathModeGuard&) = delete;
  MathModeGuard& operator=(const MathModeGuard&) = delete;

 private:
  cublasHandle_t handle_;
  cublasMath_t saved_ = CUBLAS_DEFAULT_MATH;
};

// How one dtype's GEMMs run: operand type, output type (Acc), compute type.
struct GemmTypes {
  cudaDataType in, out;
  cublasComputeType_t compute;
  bool f64;
};

GemmTypes gemm_types(at::ScalarType features, bool tf32) {
  switch (features) {
    case at::kHalf: return {CUDA_R_16F, CUDA_R_32F, CUBLAS_COMPUTE_32F, false};
    case at::kBFloat16: return {CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F, false};
    case at::kFloat: return {CUDA_R_32F, CUDA_R_32F, tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, false};
    case at::kDouble: return {CUDA_R_64F, CUDA_R_64F, CUBLAS_COMPUTE_64F, true};
    default: TORCH_CHECK(false, msg::cat("no GEMM for features of dtype ", features));
  }
}

int as_int(int64_t v, const char* what) {
  TORCH_CHECK(v >= 0 && v <= INT_MAX, msg::cat("uca chunked CUDA path: ", what, " = ", v, " exceeds cuBLAS's int range"));
  return int(v);
}

// Row-major C[m, n] (ldc) = op(X) op(Y) (+ C when accumulate): X is [m, k] (ldx), or [k, m] when tx
// (op = transpose); Y is [k, n] (ldy), or [n, k] when ty. cuBLAS is column-major, so it computes
// Cᵀ = op(Y)ᵀ op(X)ᵀ on the same buffers.
void gemm(const GemmTypes& t, bool tx, bool ty, int64_t m, int64_t n, int64_t k, const void* X, int64_t ldx,
          const void* Y, int64_t ldy, bool accumulate, void* C, int64_t ldc) {
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();  // bound to the current stream
  const MathModeGuard mode(handle, CUBLAS_DEFAULT_MATH);
  const float one_f = 1.0f, beta_f = accumulate ? 1.0f : 0.0f;
  const double one_d = 1.0, beta_d = accumulate ? 1.0 : 0.0;
  const void* alpha = t.f64 ? static_cast<const void*>(&one_d) : static_cast<const void*>(&one_f);
  const void* beta = t.f64 ? static_cast<const void*>(&beta_d) : static_cast<const void*>(&beta_f);
  const cublasStatus_t st = cublasGemmEx(
      handle, ty ? CUBLAS_OP_T : CUBLAS_OP_N, tx ? CUBLAS_OP_T : CUBLAS_OP_N, as_int(n, "n"), as_int(m, "m"),
      as_int(k, "k"), alpha, Y, t.in, as_int(ldy, "ldy"), X, t.in, as_int(ldx, "ldx"), beta, C, t.out,
      as_int(ldc, "ldc"), t.compute, CUBLAS_GEMM_DEFAULT);
  TORCH_CHECK(st == CUBLAS_STATUS_SUCCESS,
              msg::cat("uca chunked CUDA path: cublasGemmEx failed with status ", int64_t(st), " (m = ", m,
                       ", n = ", n, ", k = ", k, ")"));
}

const char* byte_ptr(const at::Tensor& x) { return static_cast<const char*>(x.data_ptr()); }

// S[0 : ci] = A[i0 : i0 + ci] Bᵀ
void gemm_logits(const GemmTypes& t, const at::Tensor& A, const at::Tensor& B, int64_t i0, int64_t ci,
                 const at::Tensor& S) {
  const int64_t N = B.size(0), E = A.size(1);
  gemm(t, false, true, ci, N, E, byte_ptr(A) + i0 * E * A.element_size(), E, B.data_ptr(), E, false, S.data_ptr(), N);
}

// dA[i0 : i0 + ci] = dT B; dB (+)= dTᵀ A[i0 : i0 + ci]. dT: [ci, N] in the operand type.
void gemm_grads(const GemmTypes& t, const at::Tensor& A, const at::Tensor& B, int64_t i0, int64_t ci,
                const void* dT, const at::Tensor& dA, const at::Tensor& dB, bool first) {
  const int64_t N = B.size(0), E = A.size(1);
  char* dA_rows = static_cast<char*>(dA.data_ptr()) + i0 * E * dA.element_size();
  gemm(t, false, false, ci, E, N, dT, N, B.data_ptr(), E, false, dA_rows, E);
  gemm(t, true, false, N, E, ci, dT, N, byte_ptr(A) + i0 * E * A.element_size(), E, !first, dB.data_ptr(), E);
}

bool low_precision(const at::Tensor& A) {
  return A.scalar_type() == at::kHalf || A.scalar_type() == at::kBFloat16;
}

// The shared backward sweep: per chunk S, dT (tile, mode), the sums, dA and dB. Row and column
// backward constants are given (side_constants). Returns nothing; fills the outputs.
struct Sweep {
  at::Tensor dA, dB;                  // Acc [M, E], [N, E]
  at::Tensor rows_ds, rows_dst;       // double [M]
  at::Tensor rows_loss;               // double [M] (SIGMOID_SCALAR only)
  at::Tensor cols_ds;                 // double [N]
};

Sweep backward_sweep(const ChunkArgs& a, TileMode mode, const at::Tensor& A, const at::Tensor& B,
                     const at::Tensor& row_sides, const at::Tensor& col_sides, bool tf32, int64_t chunk_rows) {
  const int64_t M = A.size(0), N = B.size(0), E = A.size(1);
  const int64_t ci_max = resolve_chunk_rows(chunk_rows, M, N, A.scalar_type());
  const auto acc = uca::checks::acc_type(A);
  const auto acc_opts = A.options().dtype(acc);
  const auto dbl = A.options().dtype(at::kDouble);
  const GemmTypes types = gemm_types(A.scalar_type(), tf32);
  const auto stream = at::cuda::getCurrentCUDAStream();
  auto S = at::empty({ci_max, N}, acc_opts);
  at::Tensor low;
  if (low_precision(A)) low = at::empty({ci_max, N}, A.options());
  auto row_part = at::empty({tile_row_part_elems(ci_max, N)}, acc_opts);
  auto col_part = at::empty({tile_col_part_elems(ci_max, N)}, acc_opts);
  Sweep out;
  out.dA = at::empty({M, E}, acc_opts);
  out.dB = at::empty({N, E}, acc_opts);
  out.rows_ds = at::empty({M}, dbl);
  out.rows_dst = at::empty({M}, dbl);
  if (mode == TileMode::SIGMOID_SCALAR) out.rows_loss = at::empty({M}, dbl);
  out.cols_ds = at::empty({N}, dbl);
  for (int64_t i0 = 0; i0 < M; i0 += ci_max) {
    const int64_t ci = std::min(ci_max, M - i0);
    gemm_logits(types, A, B, i0, ci, S);
    check_cuda(tile(a, mode, S.data_ptr(), low.defined() ? low.data_ptr() : nullptr, i0, ci, row_sides.data_ptr(),
                    col_sides.data_ptr(), row_part.data_ptr(), col_part.data_ptr(), stream),
               "backward epilogue");
    check_cuda(reduce_rows(a, mode, row_part.data_ptr(), i0, ci, nullptr, nullptr, out.rows_ds.data_ptr(),
                           out.rows_dst.data_ptr(), out.rows_loss.defined() ? out.rows_loss.data_ptr() : nullptr,
                           stream),
               "backward row sums");
    check_cuda(reduce_cols(a, col_part.data_ptr(), ci, out.cols_ds.data_ptr(), i0 == 0, nullptr, stream),
               "backward column sums");
    gemm_grads(types, A, B, i0, ci, low.defined() ? low.data_ptr() : S.data_ptr(), out.dA, out.dB, i0 == 0);
  }
  return out;
}

// The op's gradients from a sweep: divided by pre (fp16/bf16: exact, a power of two), cast.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> finish_grads(
    Sweep& s, const at::Tensor& A, const at::Tensor& scale, const at::Tensor& pre) {
  const auto acc = uca::checks::acc_type(A);
  if (pre.defined()) {
    const auto inv = at::reciprocal(pre);
    s.dA.mul_(inv);
    s.dB.mul_(inv);
    const auto inv_d = inv.to(at::kDouble);
    s.rows_ds.mul_(inv_d);
    s.rows_dst.mul_(inv_d);
    s.cols_ds.mul_(inv_d);
  }
  auto dA = low_precision(A) ? s.dA.to(A.scalar_type()) : s.dA;
  auto dB = low_precision(A) ? s.dB.to(A.scalar_type()) : s.dB;
  const auto scale_d = scale.to(at::kDouble);
  auto dr = (scale_d * s.rows_ds).to(acc);
  auto dc = (scale_d * s.cols_ds).to(acc);
  auto dbias = s.rows_ds.sum().to(acc);
  auto dscale = s.rows_dst.sum().to(acc);
  return {dA, dB, dr, dc, dscale, dbias};
}

}  // namespace

DType feature_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kFloat: return DType::F32;
    case at::kDouble: return DType::F64;
    default: TORCH_CHECK(false, uca::checks::msg::cat("A must be float16, bfloat16, float32 or float64, got ", t));
  }
}

Loss kernel_loss(c10::string_view loss) {
  switch (uca::checks::parse_loss(loss)) {
    case uca::checks::LossKind::SDM: return Loss::SDM;
    case uca::checks::LossKind::INFONCE: return Loss::INFONCE;
    case uca::checks::LossKind::SIGMOID: return Loss::SIGMOID;
  }
  TORCH_CHECK(false, uca::checks::msg::cat("unknown loss '", loss, "'"));
}

int64_t resolve_chunk_rows(int64_t chunk_rows, int64_t M, int64_t N, at::ScalarType features, int64_t budget_bytes) {
  TORCH_CHECK(chunk_rows >= 0, msg::cat("chunk_rows must be >= 0 for the chunked path, got ", chunk_rows));
  if (chunk_rows > 0) return std::min(chunk_rows, M);
  const int64_t acc_bytes = features == at::kDouble ? 8 : 4;
  const int64_t low_bytes = (features == at::kHalf || features == at::kBFloat16) ? 2 : 0;
  int64_t c = budget_bytes / (N * (acc_bytes + low_bytes));
  c = std::max<int64_t>(c, 512);
  if (c < M) c = std::max<int64_t>(c - c % 64, 64);
  return std::min(c, M);
}

at::Tensor grad_prescale(const at::Tensor& gmax, const at::Tensor& scale) {
  constexpr double kGradPrescaleTarget = 256.0;  // uca_kernels._registry.GRAD_PRESCALE_TARGET
  const auto g = gmax.to(at::kFloat) * scale.abs().to(at::kFloat);
  return at::exp2(at::clamp(at::floor(at::log2(kGradPrescaleTarget / g.clamp_min(1e-30))), -60.0, 60.0));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor& A, const at::Tensor& B, const at::Tensor& r, const at::Tensor& c, const at::Tensor& scale,
    const at::Tensor& bias, const at::Tensor& labels_a, const at::Tensor& labels_b, c10::string_view loss,
    bool exclude_self, bool tf32, int64_t chunk_rows) {
  const c10::cuda::CUDAGuard guard(A.device());
  const int64_t M = A.size(0), N = B.size(0);
  const int64_t ci_max = resolve_chunk_rows(chunk_rows, M, N, A.scalar_type());
  const auto acc_opts = r.options();
  const auto dbl = acc_opts.dtype(at::kDouble);  // the statistics are float64 for every dtype
  const auto stream = at::cuda::getCurrentCUDAStream();
  const ChunkArgs a = make_args(A, B, r, c, scale, bias, labels_a, labels_b, kernel_loss(loss), exclude_self);
  const GemmTypes types = gemm_types(A.scalar_type(), tf32);
  auto loss_rows = at::empty({M}, acc_opts), loss_cols = at::empty({N}, acc_opts);
  auto row_stats = at::empty({M, uca::kStats}, dbl), col_stats = at::empty({N, uca::kStats}, dbl);
  auto S = at::empty({ci_max, N}, acc_opts);
  if (a.loss == Loss::SIGMOID) {
    auto row_part = at::empty({tile_row_part_elems(ci_max, N)}, acc_opts);
    auto col_part = at::empty({tile_col_part_elems(ci_max, N)}, acc_opts);
    auto running = at::empty({N}, dbl);
    for (int64_t i0 = 0; i0 < M; i0 += ci_max) {
      const int64_t ci = std::min(ci_max, M - i0);
      const bool last = i0 + ci >= M;
      gemm_logits(types, A, B, i0, ci, S);
      check_cuda(tile(a, TileMode::SIGMOID_FORWARD, S.data_ptr(), nullptr, i0, ci, nullptr, nullptr,
                      row_part.data_ptr(), col_part.data_ptr(), stream),
                 "sigmoid forward epilogue");
      check_cuda(reduce_rows(a, TileMode::SIGMOID_FORWARD, row_part.data_ptr(), i0, ci, loss_rows.data_ptr(),
                             row_stats.data_ptr(), nullptr, nullptr, nullptr, stream),
                 "sigmoid forward row sums");
      check_cuda(reduce_cols(a, col_part.data_ptr(), ci, running.data_ptr(), i0 == 0,
                             last ? loss_cols.data_ptr() : nullptr, stream),
                 "sigmoid forward column sums");
    }
    col_stats.zero_();
  } else {
    auto part = at::empty({fwd_col_part_elems(ci_max, N)}, acc_opts);
    auto state = at::empty({kOnlineFields, N}, acc_opts);
    for (int64_t i0 = 0; i0 < M; i0 += ci_max) {
      const int64_t ci = std::min(ci_max, M - i0);
      gemm_logits(types, A, B, i0, ci, S);
      check_cuda(fwd_rows(a, S.data_ptr(), i0, ci, loss_rows.data_ptr(), row_stats.data_ptr(), stream),
                 "forward row epilogue");
      check_cuda(fwd_cols(a, S.data_ptr(), i0, ci, part.data_ptr(), state.data_ptr(), i0 == 0, stream),
                 "forward column epilogue");
    }
    check_cuda(fwd_cols_finish(a, state.data_ptr(), loss_cols.data_ptr(), col_stats.data_ptr(), stream),
               "forward column finish");
  }
  return {loss_rows, loss_cols, row_stats, col_stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_rows, const at::Tensor& grad_cols, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& r, const at::Tensor& c, const at::Tensor& scale, const at::Tensor& bias,
    const at::Tensor& labels_a, const at::Tensor& labels_b, const at::Tensor& loss_rows, const at::Tensor& loss_cols,
    const at::Tensor& row_stats, const at::Tensor& col_stats, c10::string_view loss, bool exclude_self, bool tf32,
    int64_t chunk_rows) {
  const c10::cuda::CUDAGuard guard(A.device());
  const int64_t M = A.size(0), N = B.size(0);
  const auto acc_opts = r.options();
  const auto stream = at::cuda::getCurrentCUDAStream();
  const ChunkArgs a = make_args(A, B, r, c, scale, bias, labels_a, labels_b, kernel_loss(loss), exclude_self);
  // fp16/bf16: dT is rounded to the feature dtype for the dX GEMMs and would underflow for
  // mean-reduced losses at large B; the backward is linear in the upstream gradients, so it runs on
  // pre * g (pre a power of two: exact) and divides the outputs by pre.
  at::Tensor g_rows = grad_rows, g_cols = grad_cols, pre;
  if (low_precision(A)) {
    pre = grad_prescale(at::maximum(grad_rows.abs().amax(), grad_cols.abs().amax()), scale);
    g_rows = grad_rows * pre;
    g_cols = grad_cols * pre;
  }
  auto row_sides = at::empty({kSideFields, M}, acc_opts), col_sides = at::empty({kSideFields, N}, acc_opts);
  const bool sigmoid = a.loss == Loss::SIGMOID;
  check_cuda(side_constants(a, M, g_rows.data_ptr(), sigmoid ? nullptr : loss_rows.data_ptr(),
                            sigmoid ? nullptr : row_stats.data_ptr(), row_sides.data_ptr(), stream),
             "row constants");
  check_cuda(side_constants(a, N, g_cols.data_ptr(), sigmoid ? nullptr : loss_cols.data_ptr(),
                            sigmoid ? nullptr : col_stats.data_ptr(), col_sides.data_ptr(), stream),
             "column constants");
  Sweep s = backward_sweep(a, TileMode::BACKWARD, A, B, row_sides, col_sides, tf32, chunk_rows);
  return finish_grads(s, A, scale, pre);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sigmoid_loss_and_grads(
    const at::Tensor& A, const at::Tensor& B, const at::Tensor& r, const at::Tensor& c, const at::Tensor& scale,
    const at::Tensor& bias, const at::Tensor& labels_a, const at::Tensor& labels_b, bool exclude_self, bool tf32,
    int64_t chunk_rows) {
  const c10::cuda::CUDAGuard guard(A.device());
  const int64_t M = A.size(0), N = B.size(0);
  const auto acc_opts = r.options();
  const auto stream = at::cuda::getCurrentCUDAStream();
  const ChunkArgs a = make_args(A, B, r, c, scale, bias, labels_a, labels_b, Loss::SIGMOID, exclude_self);
  // unit weight per row (g_row = 1, g_col = 0), times pre for fp16/bf16 (see backward)
  at::Tensor pre;
  auto g_rows = at::ones({M}, acc_opts);
  if (low_precision(A)) {
    pre = grad_prescale(at::ones({}, acc_opts), scale);
    g_rows = g_rows * pre;
  }
  auto g_cols = at::zeros({N}, acc_opts);
  auto row_sides = at::empty({kSideFields, M}, acc_opts), col_sides = at::empty({kSideFields, N}, acc_opts);
  check_cuda(side_constants(a, M, g_rows.data_ptr(), nullptr, nullptr, row_sides.data_ptr(), stream), "row constants");
  check_cuda(side_constants(a, N, g_cols.data_ptr(), nullptr, nullptr, col_sides.data_ptr(), stream),
             "column constants");
  Sweep s = backward_sweep(a, TileMode::SIGMOID_SCALAR, A, B, row_sides, col_sides, tf32, chunk_rows);
  auto total = s.rows_loss.sum().to(uca::checks::acc_type(A));  // the pair losses: not scaled by pre
  auto [dA, dB, dr, dc, dscale, dbias] = finish_grads(s, A, scale, pre);
  return {total, dA, dB, dr, dc, dscale, dbias};
}

}  // namespace chunked
}  // namespace cuda
}  // namespace uca
