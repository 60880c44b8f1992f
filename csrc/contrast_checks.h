// Argument checks of the contrast op's schema (csrc/bindings.cpp), shared by the CPU and CUDA
// implementations: the same rules and messages whichever backend runs.
#pragma once

#include <torch/extension.h>

#include <initializer_list>
#include <string>

#include "core/stats.h"

namespace uca {
namespace checks {

// Error messages are built here as one std::string and handed to TORCH_CHECK whole, so that none
// of this extension's own iostream code runs (c10::str of a single string returns it as is). On the
// H200 machine (torch 2.11, GCC 13), TORCH_CHECK's ostringstream crashed inside the extension on
// the first integer it formatted (SIGSEGV in std::ostream::_M_insert<long>; backtrace in
// benchmarks/results/gpu-h200/).
namespace msg {
inline std::string of(const char* s) { return s; }
inline std::string of(const std::string& s) { return s; }
inline std::string of(c10::string_view s) { return std::string(s.data(), s.size()); }
inline std::string of(int64_t v) { return std::to_string(v); }
inline std::string of(at::ScalarType t) { return c10::toString(t); }
inline std::string of(const at::Device& d) { return d.str(); }  // formatted by libc10
inline std::string of(at::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + "]";
}
inline std::string dtype_list(std::initializer_list<at::ScalarType> dtypes) {
  std::string out;
  for (auto dt : dtypes) out += (out.empty() ? "" : ", ") + std::string(c10::toString(dt));
  return out;
}
template <typename... Ts>
std::string cat(const Ts&... parts) {
  std::string out;
  ((out += of(parts)), ...);
  return out;
}
}  // namespace msg


// dtype of r, c, scale, bias, losses and statistics: float64 for float64 features, else float32.
inline at::ScalarType acc_type(const at::Tensor& A) {
  return A.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The losses of the schema (values as uca::Loss in core/contrast.h); anything else is an error.
enum class LossKind : int { SDM = 0, INFONCE = 1, SIGMOID = 2 };

inline LossKind parse_loss(c10::string_view loss) {
  TORCH_CHECK(loss == "sdm" || loss == "infonce" || loss == "sigmoid",
              msg::cat("loss must be 'sdm', 'infonce' or 'sigmoid', got '", loss, "'"));
  return loss == "sdm" ? LossKind::SDM : (loss == "infonce" ? LossKind::INFONCE : LossKind::SIGMOID);
}

// The float32 product precision of the schema's `precision` argument: "ieee" (exact fp32 products)
// or "tf32" (tensor cores with 10-bit mantissa inputs, CUDA only: the CPU kernels compute ieee).
// An op argument rather than an environment read, so a backward uses its forward's precision.
enum class PrecisionKind : int { IEEE = 0, TF32 = 1 };

inline PrecisionKind parse_precision(c10::string_view precision) {
  TORCH_CHECK(precision == "ieee" || precision == "tf32",
              msg::cat("precision must be 'ieee' or 'tf32', got '", precision, "'"));
  return precision == "tf32" ? PrecisionKind::TF32 : PrecisionKind::IEEE;
}

inline void check_vector(const at::Tensor& x, const char* name, int64_t n, at::ScalarType dt, const at::Device& dev) {
  TORCH_CHECK(x.dim() == 1 && x.size(0) == n, msg::cat(name, " must have shape [", n, "], got ", x.sizes()));
  TORCH_CHECK(x.scalar_type() == dt, msg::cat(name, " must be ", dt, ", got ", x.scalar_type()));
  TORCH_CHECK(x.device() == dev, msg::cat(name, " is on ", x.device(), " but A is on ", dev));
  TORCH_CHECK(x.is_contiguous(), msg::cat(name, " must be contiguous"));
}

// The forward's inputs (and the same arguments of the backward). `features`: the dtypes this
// backend takes for A and B.
inline void check_inputs(const at::Tensor& A, const at::Tensor& B, const at::Tensor& r, const at::Tensor& c,
                         const at::Tensor& scale, const at::Tensor& bias, const at::Tensor& labels_a,
                         const at::Tensor& labels_b, bool /*exclude_self: any M, N*/,
                         std::initializer_list<at::ScalarType> features) {
  TORCH_CHECK(A.dim() == 2, msg::cat("A must be 2-D [M, E], got ", A.sizes()));
  TORCH_CHECK(B.dim() == 2 && B.size(1) == A.size(1),
              msg::cat("B must be [N, E] with E = ", A.size(1), ", got ", B.sizes()));
  const int64_t M = A.size(0), N = B.size(0);
  TORCH_CHECK(M > 0 && N > 0 && A.size(1) > 0, msg::cat("empty input: A ", A.sizes(), ", B ", B.sizes()));
  bool known = false;
  for (auto dt : features) known = known || A.scalar_type() == dt;
  TORCH_CHECK(known,
              msg::cat("A must be one of ", msg::dtype_list(features), " for this backend, got ", A.scalar_type()));
  TORCH_CHECK(B.scalar_type() == A.scalar_type(), msg::cat("B must be ", A.scalar_type(), ", got ", B.scalar_type()));
  TORCH_CHECK(A.is_contiguous() && B.is_contiguous(), "A and B must be contiguous");
  const auto dev = A.device();
  TORCH_CHECK(B.device() == dev, msg::cat("B is on ", B.device(), " but A is on ", dev));
  const auto acc = acc_type(A);
  check_vector(r, "r", M, acc, dev);
  check_vector(c, "c", N, acc, dev);
  check_vector(labels_a, "labels_a", M, at::kLong, dev);
  check_vector(labels_b, "labels_b", N, at::kLong, dev);
  for (const auto* t : {&scale, &bias}) {
    TORCH_CHECK(t->dim() == 0, msg::cat("scale and bias must be 0-d tensors, got ", t->sizes()));
    TORCH_CHECK(t->scalar_type() == acc, msg::cat("scale and bias must be ", acc, ", got ", t->scalar_type()));
    TORCH_CHECK(t->device() == dev, msg::cat("scale and bias must be on ", dev, ", got ", t->device()));
  }
}

// The backward's own inputs: upstream gradients and the forward's losses and statistics.
inline void check_backward_inputs(const at::Tensor& A, const at::Tensor& B, const at::Tensor& grad_rows,
                                  const at::Tensor& grad_cols, const at::Tensor& loss_rows,
                                  const at::Tensor& loss_cols, const at::Tensor& row_stats,
                                  const at::Tensor& col_stats) {
  const int64_t M = A.size(0), N = B.size(0);
  const auto acc = acc_type(A);
  const auto dev = A.device();
  check_vector(grad_rows, "grad_rows", M, acc, dev);
  check_vector(grad_cols, "grad_cols", N, acc, dev);
  check_vector(loss_rows, "loss_rows", M, acc, dev);
  check_vector(loss_cols, "loss_cols", N, acc, dev);
  for (const auto& [t, n, name] : {std::tuple<const at::Tensor*, int64_t, const char*>{&row_stats, M, "row_stats"},
                                   {&col_stats, N, "col_stats"}}) {
    TORCH_CHECK(t->dim() == 2 && t->size(0) == n && t->size(1) == kStats,
                msg::cat(name, " must have shape [", n, ", ", kStats, "], got ", t->sizes()));
    TORCH_CHECK(t->scalar_type() == at::kDouble && t->device() == dev && t->is_contiguous(),
                msg::cat(name, " must be a contiguous float64 tensor on ", dev, " (the forward's statistics)"));
  }
}

}  // namespace checks
}  // namespace uca
