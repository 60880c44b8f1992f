// Torch bindings of the fused contrast op: the schema (written once) and the CPU implementation.
// The CUDA implementation registers against the same schema in bindings_cuda.cpp.
#include <torch/extension.h>

#include <cstdlib>

#include "contrast_checks.h"
#include "core/contrast.h"

namespace {

// GEMMs through ATen (MKL / OpenBLAS), on tensors viewing the core's raw buffers.
template <typename T>
struct AtenGemm final : uca::Gemm<T> {
  static at::Tensor view(const T* p, int64_t rows, int64_t cols, int64_t ld) {
    return at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1},
                         at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  }
  void nt(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
          int64_t ldc) const override {
    auto out = view(C, m, n, ldc);
    at::mm_out(out, view(A, m, k, lda), view(B, n, k, ldb).t());
  }
  void nn_acc(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb,
              T* C, int64_t ldc) const override {
    view(C, m, n, ldc).addmm_(view(A, m, k, lda), view(B, k, n, ldb));
  }
  void tn_acc(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb,
              T* C, int64_t ldc) const override {
    view(C, m, n, ldc).addmm_(view(A, k, m, lda).t(), view(B, k, n, ldb));
  }
};

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  const long long x = std::atoll(v);
  TORCH_CHECK(x > 0, uca::checks::msg::cat(name, " must be a positive integer, got '", v, "'"));
  return x;
}

uca::Tiles cpu_tiles() {
  uca::Tiles t;
  t.rows = env_int("UCA_CPU_TILE_ROWS", t.rows);
  t.cols = env_int("UCA_CPU_TILE_COLS", t.cols);
  return t;
}

void check_inputs(const at::Tensor& A, const at::Tensor& B, const at::Tensor& r, const at::Tensor& c,
                  const at::Tensor& scale, const at::Tensor& bias, const at::Tensor& labels_a,
                  const at::Tensor& labels_b, bool exclude_self) {
  uca::checks::check_inputs(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self, {at::kFloat, at::kDouble});
}

uca::Loss core_loss(uca::checks::LossKind kind) {
  switch (kind) {
    case uca::checks::LossKind::SDM: return uca::Loss::SDM;
    case uca::checks::LossKind::INFONCE: return uca::Loss::INFONCE;
    case uca::checks::LossKind::SIGMOID: return uca::Loss::SIGMOID;
  }
  TORCH_CHECK(false, "unknown loss kind");
}

template <typename T>
uca::ContrastArgs<T> make_args(const at::Tensor& A, const at::Tensor& B, const at::Tensor& r,
                               const at::Tensor& c, const at::Tensor& scale,
                               const at::Tensor& bias, const at::Tensor& labels_a,
                               const at::Tensor& labels_b, c10::string_view loss,
                               bool exclude_self) {
  uca::ContrastArgs<T> a;
  a.M = A.size(0);
  a.N = B.size(0);
  a.E = A.size(1);
  a.A = A.data_ptr<T>();
  a.B = B.data_ptr<T>();
  a.r = r.data_ptr<T>();
  a.c = c.data_ptr<T>();
  a.scale = scale.item<T>();
  a.bias = bias.item<T>();
  a.labels_a = labels_a.data_ptr<int64_t>();
  a.labels_b = labels_b.data_ptr<int64_t>();
  a.loss = core_loss(uca::checks::parse_loss(loss));
  a.exclude_self = exclude_self;
  return a;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrast_forward_cpu(
    const at::Tensor& A, const at::Tensor& B, const at::Tensor& r, const at::Tensor& c,
    const at::Tensor& scale, const at::Tensor& bias, const at::Tensor& labels_a,
    const at::Tensor& labels_b, c10::string_view loss, bool exclude_self, c10::string_view precision,
    int64_t /*chunk_rows: the CPU tiles are fixed*/) {
  check_inputs(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self);
  uca::checks::parse_precision(precision);  // checked; the CPU kernels compute exact fp32 products
  const int64_t M = A.size(0), N = B.size(0);
  auto loss_rows = at::empty({M}, A.options()), loss_cols = at::empty({N}, A.options());
  auto row_stats = at::empty({M, uca::kStats}, A.options().dtype(at::kDouble));  // float64 for every dtype
  auto col_stats = at::empty({N, uca::kStats}, A.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "contrast_forward_cpu", [&] {
    const auto args = make_args<scalar_t>(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self);
    uca::contrast_forward<scalar_t>(args, AtenGemm<scalar_t>(), cpu_tiles(),
                                    loss_rows.data_ptr<scalar_t>(), loss_cols.data_ptr<scalar_t>(),
                                    row_stats.data_ptr<double>(), col_stats.data_ptr<double>());
  });
  return {loss_rows, loss_cols, row_stats, col_stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
contrast_backward_cpu(const at::Tensor& grad_rows, const at::Tensor& grad_cols, const at::Tensor& A,
                      const at::Tensor& B, const at::Tensor& r, const at::Tensor& c,
                      const at::Tensor& scale, const at::Tensor& bias, const at::Tensor& labels_a,
                      const at::Tensor& labels_b, const at::Tensor& loss_rows,
                      const at::Tensor& loss_cols, const at::Tensor& row_stats,
                      const at::Tensor& col_stats, c10::string_view loss, bool exclude_self,
                      c10::string_view precision, int64_t /*chunk_rows*/) {
  check_inputs(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self);
  uca::checks::parse_precision(precision);
  uca::checks::check_backward_inputs(A, B, grad_rows, grad_cols, loss_rows, loss_cols, row_stats, col_stats);
  auto dA = at::empty_like(A), dB = at::empty_like(B), dr = at::empty_like(r),
       dc = at::empty_like(c), dscale = at::empty_like(scale), dbias = at::empty_like(bias);
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "contrast_backward_cpu", [&] {
    const auto args = make_args<scalar_t>(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self);
    uca::contrast_backward<scalar_t>(
        args, AtenGemm<scalar_t>(), cpu_tiles(), grad_rows.data_ptr<scalar_t>(),
        grad_cols.data_ptr<scalar_t>(), loss_rows.data_ptr<scalar_t>(),
        loss_cols.data_ptr<scalar_t>(), row_stats.data_ptr<double>(),
        col_stats.data_ptr<double>(), dA.data_ptr<scalar_t>(), dB.data_ptr<scalar_t>(),
        dr.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(), dscale.data_ptr<scalar_t>(),
        dbias.data_ptr<scalar_t>());
  });
  return {dA, dB, dr, dc, dscale, dbias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
sigmoid_loss_and_grads_cpu(const at::Tensor& A, const at::Tensor& B, const at::Tensor& r,
                           const at::Tensor& c, const at::Tensor& scale, const at::Tensor& bias,
                           const at::Tensor& labels_a, const at::Tensor& labels_b, bool exclude_self,
                           c10::string_view precision, int64_t /*chunk_rows*/) {
  check_inputs(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self);
  uca::checks::parse_precision(precision);
  auto total = at::empty({}, A.options());
  auto dA = at::empty_like(A), dB = at::empty_like(B), dr = at::empty_like(r),
       dc = at::empty_like(c), dscale = at::empty_like(scale), dbias = at::empty_like(bias);
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "sigmoid_loss_and_grads_cpu", [&] {
    const auto args = make_args<scalar_t>(A, B, r, c, scale, bias, labels_a, labels_b, "sigmoid", exclude_self);
    uca::sigmoid_loss_and_grads<scalar_t>(args, AtenGemm<scalar_t>(), cpu_tiles(), total.data_ptr<scalar_t>(),
                                          dA.data_ptr<scalar_t>(), dB.data_ptr<scalar_t>(),
                                          dr.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(),
                                          dscale.data_ptr<scalar_t>(), dbias.data_ptr<scalar_t>());
  });
  return {total, dA, dB, dr, dc, dscale, dbias};
}

}  // namespace

// precision: how float32 features are multiplied ("ieee" or "tf32"). chunk_rows: how the GPU
// computes S (CUDA: < 0 the fully fused tile kernels, 0 chunks of rows sized from the default
// scratch budget, > 0 chunks of that many rows); the CPU ignores it (its tiles are fixed). Autograd
// hands the backward the forward's precision and chunk_rows, so it recomputes the same logits.
TORCH_LIBRARY(uca, m) {
  m.def(
      "contrast_forward(Tensor A, Tensor B, Tensor r, Tensor c, Tensor scale, Tensor bias, "
      "Tensor labels_a, Tensor labels_b, str loss, bool exclude_self, str precision=\"ieee\", "
      "int chunk_rows=0) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "contrast_backward(Tensor grad_rows, Tensor grad_cols, Tensor A, Tensor B, Tensor r, "
      "Tensor c, Tensor scale, Tensor bias, Tensor labels_a, Tensor labels_b, Tensor loss_rows, "
      "Tensor loss_cols, Tensor row_stats, Tensor col_stats, str loss, bool exclude_self, "
      "str precision=\"ieee\", int chunk_rows=0) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The scalar sigmoid loss (sum of pair losses) with its unit-weight gradients, in one sweep.
  m.def(
      "sigmoid_loss_and_grads(Tensor A, Tensor B, Tensor r, Tensor c, Tensor scale, Tensor bias, "
      "Tensor labels_a, Tensor labels_b, bool exclude_self, str precision=\"ieee\", int chunk_rows=0) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(uca, CPU, m) {
  m.impl("contrast_forward", &contrast_forward_cpu);
  m.impl("contrast_backward", &contrast_backward_cpu);
  m.impl("sigmoid_loss_and_grads", &sigmoid_loss_and_grads_cpu);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "UCA fused contrast kernels (registers torch.ops.uca.*)";
  m.def("built_with_cuda", [] {
#ifdef UCA_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
}
