// CUDA implementation of the uca::contrast_forward / contrast_backward / sigmoid_loss_and_grads
// schema (csrc/bindings.cpp): checks, then one of two designs by the op's chunk_rows argument:
//   chunk_rows >= 0   the chunked path (chunked_driver.cpp): cuBLAS GEMMs over chunks of rows of A
//                     with epilogue kernels between them (0 = chunk size from the default budget);
//   chunk_rows < 0    the fully fused tile kernels (contrast_cuda.cu): output allocation, the launch
//                     on the current stream and the few O(M + N) reductions done with torch in a
//                     fixed order. Kept until a GPU run has measured both designs side by side.
//
// Inputs: A, B float16 / bfloat16 / float32 / float64; r, c, scale, bias and losses float32
// (float64 for float64 features); statistics float64 for every dtype. float32 features multiply exactly unless the op's
// `precision` argument is "tf32" (TF32 tensor cores, fp32 accumulation). The Python backend passes
// UCA_CUDA_PRECISION as read at the forward, and autograd hands the backward the same value (and the
// same chunk_rows), so a forward and its backward always recompute the same logits.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <string>

#include "contrast_checks.h"
#include "cuda/chunked_driver.h"
#include "cuda/contrast_cuda.h"

namespace {

namespace uc = uca::cuda;

uc::Precision kernel_precision(c10::string_view precision) {
  return uca::checks::parse_precision(precision) == uca::checks::PrecisionKind::TF32 ? uc::Precision::TF32
                                                                                  : uc::Precision::IEEE;
}

void check_inputs(const at::Tensor& A, const at::Tensor& B, const at::Tensor& r, const at::Tensor& c,
                  const at::Tensor& scale, const at::Tensor& bias, const at::Tensor& labels_a,
                  const at::Tensor& labels_b, bool exclude_self) {
  TORCH_CHECK(A.is_cuda(), uca::checks::msg::cat("A must be a CUDA tensor, got ", A.device()));
  uca::checks::check_inputs(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self,
                            {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble});
}

uc::Args make_args(const at::Tensor& A, const at::Tensor& B, const at::Tensor& r, const at::Tensor& c,
                   const at::Tensor& scale, const at::Tensor& bias, const at::Tensor& labels_a,
                   const at::Tensor& labels_b, c10::string_view loss, bool exclude_self,
                   c10::string_view precision) {
  uc::Args a;
  a.M = A.size(0);
  a.N = B.size(0);
  a.E = A.size(1);
  a.dtype = uca::cuda::chunked::feature_dtype(A.scalar_type());
  a.precision = kernel_precision(precision);
  a.A = A.data_ptr();
  a.B = B.data_ptr();
  a.r = r.data_ptr();
  a.c = c.data_ptr();
  a.scale = scale.data_ptr();
  a.bias = bias.data_ptr();
  a.labels_a = labels_a.data_ptr<int64_t>();
  a.labels_b = labels_b.data_ptr<int64_t>();
  a.loss = uca::cuda::chunked::kernel_loss(loss);
  a.exclude_self = exclude_self;
  return a;
}

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, uca::checks::msg::cat(what, " failed: ", cudaGetErrorString(err)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrast_forward_cuda(
    const at::Tensor& A, const at::Tensor& B, const at::Tensor& r, const at::Tensor& c,
    const at::Tensor& scale, const at::Tensor& bias, const at::Tensor& labels_a,
    const at::Tensor& labels_b, c10::string_view loss, bool exclude_self, c10::string_view precision,
    int64_t chunk_rows) {
  check_inputs(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self);
  if (chunk_rows >= 0) {
    uca::checks::parse_loss(loss);
    return uca::cuda::chunked::forward(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self,
                                       kernel_precision(precision) == uc::Precision::TF32, chunk_rows);
  }
  const c10::cuda::CUDAGuard guard(A.device());
  const int64_t M = A.size(0), N = B.size(0);
  const auto opts = r.options();
  auto loss_rows = at::empty({M}, opts), loss_cols = at::empty({N}, opts);
  const auto stats_opts = opts.dtype(at::kDouble);  // the statistics are float64 for every dtype
  auto row_stats = at::empty({M, uca::kStats}, stats_opts), col_stats = at::empty({N, uca::kStats}, stats_opts);
  const auto args = make_args(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self, precision);
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
    c10::string_view loss, bool exclude_self, c10::string_view precision, int64_t chunk_rows) {
  check_inputs(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self);
  uca::checks::check_backward_inputs(A, B, grad_rows, grad_cols, loss_rows, loss_cols, row_stats, col_stats);
  if (chunk_rows >= 0) {
    uca::checks::parse_loss(loss);
    return uca::cuda::chunked::backward(grad_rows, grad_cols, A, B, r, c, scale, bias, labels_a, labels_b, loss_rows,
                                        loss_cols, row_stats, col_stats, loss, exclude_self,
                                        kernel_precision(precision) == uc::Precision::TF32, chunk_rows);
  }
  const c10::cuda::CUDAGuard guard(A.device());
  const int64_t M = A.size(0), N = B.size(0), E = A.size(1);
  const auto args = make_args(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self, precision);
  // fp16/bf16: dT = scale dS is rounded to the feature dtype and underflows fp16 for mean-reduced
  // losses at large B; the backward is linear in the upstream gradients, so run it on pre * g, pre a
  // power of two (exact), and divide the outputs by pre. The rule of uca_kernels._registry.grad_prescale.
  at::Tensor g_rows = grad_rows, g_cols = grad_cols, pre;
  if (A.scalar_type() == at::kHalf || A.scalar_type() == at::kBFloat16) {
    pre = uca::cuda::chunked::grad_prescale(at::maximum(grad_rows.abs().amax(), grad_cols.abs().amax()), scale);
    g_rows = grad_rows * pre;
    g_cols = grad_cols * pre;
  }
  const auto opts = r.options();
  const int64_t ldx = uc::padded_cols(args.dtype, args.precision, E);
  auto dA_acc = at::empty({uc::padded_rows(args.dtype, M), ldx}, opts);
  auto dB_acc = at::empty({uc::padded_rows(args.dtype, N), ldx}, opts);
  auto sum_ds_rows = at::empty({M}, opts), sum_dst_rows = at::empty({M}, opts), sum_ds_cols = at::empty({N}, opts);
  check_cuda(uc::contrast_backward(args, g_rows.data_ptr(), g_cols.data_ptr(), loss_rows.data_ptr(),
                                   loss_cols.data_ptr(), row_stats.data_ptr(), col_stats.data_ptr(),
                                   dA_acc.data_ptr(), dB_acc.data_ptr(), sum_ds_rows.data_ptr(),
                                   sum_dst_rows.data_ptr(), sum_ds_cols.data_ptr(), at::cuda::getCurrentCUDAStream()),
             "uca contrast_backward (CUDA)");
  if (pre.defined()) {  // exact: pre is a power of two
    const auto inv = at::reciprocal(pre);
    for (auto* part : {&dA_acc, &dB_acc, &sum_ds_rows, &sum_dst_rows, &sum_ds_cols}) part->mul_(inv);
  }
  // -- fixed-order O(M + N) reductions (deterministic) --
  // fresh tensors (a view would keep the padded scratch alive), cast to the feature dtype
  auto dA = at::empty({M, E}, A.options());
  auto dB = at::empty({N, E}, B.options());
  dA.copy_(dA_acc.narrow(0, 0, M).narrow(1, 0, E));
  dB.copy_(dB_acc.narrow(0, 0, N).narrow(1, 0, E));
  auto dr = scale * sum_ds_rows;
  auto dc = scale * sum_ds_cols;
  const auto acc = uca::checks::acc_type(A);
  auto dbias = sum_ds_rows.sum(at::kDouble).to(acc);
  auto dscale = sum_dst_rows.sum(at::kDouble).to(acc);
  return {dA, dB, dr, dc, dscale, dbias};
}

// The scalar sigmoid loss (sum of the pair losses) and its unit-weight gradients. Chunked: one sweep
// of 3 GEMMs per chunk. Tile kernels (chunk_rows < 0): their forward, then their backward with
// grad_rows = 1, grad_cols = 0.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
sigmoid_loss_and_grads_cuda(const at::Tensor& A, const at::Tensor& B, const at::Tensor& r, const at::Tensor& c,
                            const at::Tensor& scale, const at::Tensor& bias, const at::Tensor& labels_a,
                            const at::Tensor& labels_b, bool exclude_self, c10::string_view precision,
                            int64_t chunk_rows) {
  check_inputs(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self);
  const bool tf32 = kernel_precision(precision) == uc::Precision::TF32;
  if (chunk_rows >= 0)
    return uca::cuda::chunked::sigmoid_loss_and_grads(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self, tf32,
                                                      chunk_rows);
  auto [loss_rows, loss_cols, row_stats, col_stats] =
      contrast_forward_cuda(A, B, r, c, scale, bias, labels_a, labels_b, "sigmoid", exclude_self, precision, -1);
  auto grads = contrast_backward_cuda(at::ones_like(loss_rows), at::zeros_like(loss_cols), A, B, r, c, scale, bias,
                                      labels_a, labels_b, loss_rows, loss_cols, row_stats, col_stats, "sigmoid",
                                      exclude_self, precision, -1);
  auto total = loss_rows.sum(at::kDouble).to(uca::checks::acc_type(A));
  return std::tuple_cat(std::make_tuple(total), grads);
}

}  // namespace

TORCH_LIBRARY_IMPL(uca, CUDA, m) {
  m.impl("contrast_forward", &contrast_forward_cuda);
  m.impl("contrast_backward", &contrast_backward_cuda);
  m.impl("sigmoid_loss_and_grads", &sigmoid_loss_and_grads_cuda);
}
