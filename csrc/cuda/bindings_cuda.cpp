// CUDA implementation of the uca::contrast_forward / contrast_backward schema (csrc/bindings.cpp):
// checks, output allocation, the launch on the current stream (csrc/cuda/contrast_cuda.cu) and the
// few O(M + N) reductions done with torch in a fixed order.
//
// Inputs: A, B float16 / bfloat16 / float32 / float64; r, c, scale, bias and losses float32
// (float64 for float64 features); statistics float64 for every dtype. float32 features multiply exactly (FMA) unless the op's
// `precision` argument is "tf32" (TF32 tensor cores, fp32 accumulation). The Python backend passes
// UCA_CUDA_PRECISION as read at the forward, and autograd hands the backward the same value, so a
// forward and its backward always recompute the same logits.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <string>

#include "contrast_checks.h"
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
      TORCH_CHECK(false,
                  uca::checks::msg::cat("A must be float16, bfloat16, float32 or float64, got ", A.scalar_type()));
  }
}

// The schema's loss (checked by parse_loss: same message as the CPU) as the kernels' enum.
uc::Loss kernel_loss(c10::string_view loss) {
  switch (uca::checks::parse_loss(loss)) {
    case uca::checks::LossKind::SDM: return uc::Loss::SDM;
    case uca::checks::LossKind::INFONCE: return uc::Loss::INFONCE;
    case uca::checks::LossKind::SIGMOID: return uc::Loss::SIGMOID;
  }
  TORCH_CHECK(false, uca::checks::msg::cat("unknown loss '", loss, "'"));
}

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
  a.dtype = feature_dtype(A);
  a.precision = kernel_precision(precision);
  a.A = A.data_ptr();
  a.B = B.data_ptr();
  a.r = r.data_ptr();
  a.c = c.data_ptr();
  a.scale = scale.data_ptr();
  a.bias = bias.data_ptr();
  a.labels_a = labels_a.data_ptr<int64_t>();
  a.labels_b = labels_b.data_ptr<int64_t>();
  a.loss = kernel_loss(loss);
  a.exclude_self = exclude_self;
  return a;
}

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, uca::checks::msg::cat(what, " failed: ", cudaGetErrorString(err)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrast_forward_cuda(
    const at::Tensor& A, const at::Tensor& B, const at::Tensor& r, const at::Tensor& c,
    const at::Tensor& scale, const at::Tensor& bias, const at::Tensor& labels_a,
    const at::Tensor& labels_b, c10::string_view loss, bool exclude_self, c10::string_view precision) {
  check_inputs(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self);
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
    c10::string_view loss, bool exclude_self, c10::string_view precision) {
  check_inputs(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self);
  const c10::cuda::CUDAGuard guard(A.device());
  const int64_t M = A.size(0), N = B.size(0), E = A.size(1);
  uca::checks::check_backward_inputs(A, B, grad_rows, grad_cols, loss_rows, loss_cols, row_stats, col_stats);
  const auto args = make_args(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self, precision);
  // fp16/bf16: dT = scale dS is rounded to the feature dtype and underflows fp16 for mean-reduced
  // losses at large B; the backward is linear in the upstream gradients, so run it on pre * g, pre a
  // power of two (exact), and divide the outputs by pre. The rule of uca_kernels._registry.grad_prescale.
  at::Tensor g_rows = grad_rows, g_cols = grad_cols, pre;
  if (A.scalar_type() == at::kHalf || A.scalar_type() == at::kBFloat16) {
    constexpr double kGradPrescaleTarget = 256.0;  // _registry.GRAD_PRESCALE_TARGET
    const auto gmax = at::maximum(grad_rows.abs().amax(), grad_cols.abs().amax()) * scale.abs();
    pre = at::exp2(at::clamp(at::floor(at::log2(kGradPrescaleTarget / gmax.clamp_min(1e-30))), -60.0, 60.0));
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

}  // namespace

TORCH_LIBRARY_IMPL(uca, CUDA, m) {
  m.impl("contrast_forward", &contrast_forward_cuda);
  m.impl("contrast_backward", &contrast_backward_cuda);
}
