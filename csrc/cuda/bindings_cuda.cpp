// CUDA implementation of the uca::contrast_forward / contrast_backward schema (csrc/bindings.cpp):
// checks, output allocation, the launch on the current stream (csrc/cuda/contrast_cuda.cu) and the
// few O(M + N) reductions done with torch in a fixed order.
//
// Inputs: A, B float16 / bfloat16 / float32 / float64; r, c, scale, bias, losses and statistics
// float32 (float64 for float64 features). float32 features multiply exactly (FMA) unless
// UCA_CUDA_PRECISION=tf32 (TF32 tensor cores, fp32 accumulation); read at every call, so change
// it between training steps, not between a forward and its backward.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <cstdlib>
#include <string>

#include "cuda/contrast_cuda.h"

namespace {

namespace uc = uca::cuda;

uc::DType feature_dtype(const at::Tensor& A) {
  switch (A.scalar_type()) {
    case at::kHalf: return uc::DType::F16;
    case at::kBFloat16: return uc::DType::BF16;
    case at::kFloat: return uc::DType::F32;
    case at::kDouble: return uc::DType::F64;
    default:
      TORCH_CHECK(false, "A must be float16, bfloat16, float32 or float64, got ", A.scalar_type());
  }
}

uc::Precision precision_from_env() {
  const char* v = std::getenv("UCA_CUDA_PRECISION");
  const std::string s = v == nullptr ? "" : v;
  if (s.empty() || s == "ieee") return uc::Precision::IEEE;
  if (s == "tf32") return uc::Precision::TF32;
  TORCH_CHECK(false, "UCA_CUDA_PRECISION must be 'ieee' or 'tf32', got '", s, "'");
}

at::ScalarType acc_type(const at::Tensor& A) {
  return A.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_vector(const at::Tensor& x, const char* name, int64_t n, at::ScalarType dt, const at::Device& dev) {
  TORCH_CHECK(x.dim() == 1 && x.size(0) == n, name, " must have shape [", n, "], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == dt, name, " must be ", dt, ", got ", x.scalar_type());
  TORCH_CHECK(x.device() == dev, name, " is on ", x.device(), " but A is on ", dev);
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
}

void check_inputs(const at::Tensor& A, const at::Tensor& B, const at::Tensor& r, const at::Tensor& c,
                  const at::Tensor& scale, const at::Tensor& bias, const at::Tensor& labels_a,
                  const at::Tensor& labels_b, bool exclude_self) {
  TORCH_CHECK(A.is_cuda(), "A must be a CUDA tensor, got ", A.device());
  TORCH_CHECK(A.dim() == 2, "A must be 2-D [M, E], got ", A.sizes());
  TORCH_CHECK(B.dim() == 2 && B.size(1) == A.size(1), "B must be [N, E] with E = ", A.size(1), ", got ", B.sizes());
  const int64_t M = A.size(0), N = B.size(0);
  TORCH_CHECK(M > 0 && N > 0 && A.size(1) > 0, "empty input: A ", A.sizes(), ", B ", B.sizes());
  feature_dtype(A);
  TORCH_CHECK(B.scalar_type() == A.scalar_type(), "B must be ", A.scalar_type(), ", got ", B.scalar_type());
  TORCH_CHECK(A.is_contiguous() && B.is_contiguous(), "A and B must be contiguous");
  const auto dev = A.device();
  TORCH_CHECK(B.device() == dev, "B is on ", B.device(), " but A is on ", dev);
  const auto acc = acc_type(A);
  check_vector(r, "r", M, acc, dev);
  check_vector(c, "c", N, acc, dev);
  check_vector(labels_a, "labels_a", M, at::kLong, dev);
  check_vector(labels_b, "labels_b", N, at::kLong, dev);
  for (const auto* t : {&scale, &bias}) {
    TORCH_CHECK(t->numel() == 1 && t->dim() == 0, "scale and bias must be 0-d tensors, got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == acc, "scale and bias must be ", acc, ", got ", t->scalar_type());
    TORCH_CHECK(t->device() == dev, "scale and bias must be on ", dev, ", got ", t->device());
  }
  TORCH_CHECK(!exclude_self || M == N, "exclude_self needs M == N, got M=", M, ", N=", N);
}

uc::Args make_args(const at::Tensor& A, const at::Tensor& B, const at::Tensor& r, const at::Tensor& c,
                   const at::Tensor& scale, const at::Tensor& bias, const at::Tensor& labels_a,
                   const at::Tensor& labels_b, c10::string_view loss, bool exclude_self) {
  TORCH_CHECK(loss == "sdm" || loss == "infonce", "loss must be 'sdm' or 'infonce', got '", std::string(loss), "'");
  uc::Args a;
  a.M = A.size(0);
  a.N = B.size(0);
  a.E = A.size(1);
  a.dtype = feature_dtype(A);
  a.precision = precision_from_env();
  a.A = A.data_ptr();
  a.B = B.data_ptr();
  a.r = r.data_ptr();
  a.c = c.data_ptr();
  a.scale = scale.data_ptr();
  a.bias = bias.data_ptr();
  a.labels_a = labels_a.data_ptr<int64_t>();
  a.labels_b = labels_b.data_ptr<int64_t>();
  a.sdm = loss == "sdm";
  a.exclude_self = exclude_self;
  return a;
}

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrast_forward_cuda(
    const at::Tensor& A, const at::Tensor& B, const at::Tensor& r, const at::Tensor& c,
    const at::Tensor& scale, const at::Tensor& bias, const at::Tensor& labels_a,
    const at::Tensor& labels_b, c10::string_view loss, bool exclude_self) {
  check_inputs(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self);
  const c10::cuda::CUDAGuard guard(A.device());
  const int64_t M = A.size(0), N = B.size(0);
  const auto opts = r.options();
  auto loss_rows = at::empty({M}, opts), loss_cols = at::empty({N}, opts);
  auto row_stats = at::empty({M, uc::kStats}, opts), col_stats = at::empty({N, uc::kStats}, opts);
  const auto args = make_args(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self);
  check_cuda(uc::contrast_forward(args, loss_rows.data_ptr(), loss_cols.data_ptr(), row_stats.data_ptr(),
                                  col_stats.data_ptr(), at::cuda::getCurrentCUDAStream()),
             "uca contrast_forward (CUDA)");
  return {loss_rows, loss_cols, row_stats, col_stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrast_backward_cuda(
    const at::Tensor& grad_rows, const at::Tensor& grad_cols, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& r, const at::Tensor& c, const at::Tensor& scale, const at::Tensor& bias,
    const at::Tensor& labels_a, const at::Tensor& labels_b, const at::Tensor& loss_rows,
    const at::Tensor& loss_cols, const at::Tensor& row_stats, const at::Tensor& col_stats,
    c10::string_view loss, bool exclude_self) {
  check_inputs(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self);
  const c10::cuda::CUDAGuard guard(A.device());
  const int64_t M = A.size(0), N = B.size(0), E = A.size(1);
  const auto acc = acc_type(A);
  const auto dev = A.device();
  check_vector(grad_rows, "grad_rows", M, acc, dev);
  check_vector(grad_cols, "grad_cols", N, acc, dev);
  check_vector(loss_rows, "loss_rows", M, acc, dev);
  check_vector(loss_cols, "loss_cols", N, acc, dev);
  const auto check_stats = [&](const at::Tensor& t, int64_t n, const char* name) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == n && t.size(1) == uc::kStats, name, " must have shape [", n,
                ", 3], got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == acc && t.device() == dev && t.is_contiguous(), name, " must be a contiguous ",
                acc, " tensor on ", dev);
  };
  check_stats(row_stats, M, "row_stats");
  check_stats(col_stats, N, "col_stats");
  const auto args = make_args(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self);
  const auto opts = r.options();
  const int64_t ldx = uc::padded_cols(args.dtype, args.precision, E);
  auto dA_acc = at::empty({uc::padded_rows(args.dtype, M), ldx}, opts);
  auto dB_acc = at::empty({uc::padded_rows(args.dtype, N), ldx}, opts);
  auto sum_ds_rows = at::empty({M}, opts), sum_dst_rows = at::empty({M}, opts), sum_ds_cols = at::empty({N}, opts);
  check_cuda(uc::contrast_backward(args, grad_rows.data_ptr(), grad_cols.data_ptr(), loss_rows.data_ptr(),
                                   loss_cols.data_ptr(), row_stats.data_ptr(), col_stats.data_ptr(),
                                   dA_acc.data_ptr(), dB_acc.data_ptr(), sum_ds_rows.data_ptr(),
                                   sum_dst_rows.data_ptr(), sum_ds_cols.data_ptr(), at::cuda::getCurrentCUDAStream()),
             "uca contrast_backward (CUDA)");
  // -- fixed-order O(M + N) reductions (deterministic) --
  // fresh tensors (a view would keep the padded scratch alive), cast to the feature dtype
  auto dA = at::empty({M, E}, A.options());
  auto dB = at::empty({N, E}, B.options());
  dA.copy_(dA_acc.narrow(0, 0, M).narrow(1, 0, E));
  dB.copy_(dB_acc.narrow(0, 0, N).narrow(1, 0, E));
  auto dr = scale * sum_ds_rows;
  auto dc = scale * sum_ds_cols;
  auto dbias = sum_ds_rows.sum(at::kDouble).to(acc);
  auto dscale = sum_dst_rows.sum(at::kDouble).to(acc);
  return {dA, dB, dr, dc, dscale, dbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(uca, CUDA, m) {
  m.impl("contrast_forward", &contrast_forward_cuda);
  m.impl("contrast_backward", &contrast_backward_cuda);
}
