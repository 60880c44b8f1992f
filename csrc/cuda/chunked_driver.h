// The chunked CUDA path of the contrast op: vendor GEMMs (cuBLAS, on torch's handle and current
// stream) over chunks of rows of A, with the epilogue kernels of chunked_cuda.cu between them.
// Called by the CUDA bindings (bindings_cuda.cpp) when the op's chunk_rows is >= 0.
//
//   forward    per chunk [i0, i0 + c): S = A_c Bᵀ (Acc output) -> row epilogue (the chunk's rows
//              complete) -> column epilogue (each column's running state continued); after the
//              last chunk the column state is finished. Sigmoid: one tile pass of pair-loss sums.
//   backward   per chunk: S again (the same GEMM: the same bits) -> dT = scale dS in place (and a
//              copy rounded to fp16/bf16 for those features) with row sums and per-row-block
//              column partials -> dA_c = dT B, dB += dT_cᵀ A_c (fp32 accumulation).
//   sigmoid_loss_and_grads   one sweep, 3 GEMMs per chunk: S, dA_c, dB += ...
// Memory: the chunk buffers (c x N Acc, + c x N fp16/bf16 in the backward) and O((M + N) E).
#pragma once

#include <torch/extension.h>

#include <tuple>

#include "cuda/contrast_cuda.h"

namespace uca {
namespace cuda {
namespace chunked {

// The kernels' enums of a feature dtype and of the schema's loss (checked: the CPU's messages).
DType feature_dtype(at::ScalarType features);
Loss kernel_loss(c10::string_view loss);

// Default scratch budget of the automatic chunk size (bytes).
constexpr int64_t kDefaultBudgetBytes = int64_t(512) << 20;  // uca_kernels._registry.DEFAULT_SCRATCH_MB

// Rows per chunk for chunk_rows >= 0: 0 = automatic (the rule below, also uca_kernels._registry's),
// > 0 = that many, at most M.
//   acc = 8 (float64 features) or 4; low = 2 (fp16/bf16 features) or 0;
//   c = budget / (N (acc + low)), c = max(c, 512); if c < M: c -= c % 64; c = min(c, M).
int64_t resolve_chunk_rows(int64_t chunk_rows, int64_t M, int64_t N, at::ScalarType features,
                           int64_t budget_bytes = kDefaultBudgetBytes);

// The power of two pre by which an fp16/bf16 backward multiplies the upstream gradients (and
// divides its outputs): uca_kernels._registry.grad_prescale. gmax: max |upstream gradient| (0-d).
at::Tensor grad_prescale(const at::Tensor& gmax, const at::Tensor& scale);

// The op's three calls (inputs checked by the caller; precision already parsed: tf32 = true allows
// TF32 tensor cores for float32 GEMMs). chunk_rows >= 0.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor& A, const at::Tensor& B, const at::Tensor& r, const at::Tensor& c, const at::Tensor& scale,
    const at::Tensor& bias, const at::Tensor& labels_a, const at::Tensor& labels_b, c10::string_view loss,
    bool exclude_self, bool tf32, int64_t chunk_rows);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_rows, const at::Tensor& grad_cols, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& r, const at::Tensor& c, const at::Tensor& scale, const at::Tensor& bias,
    const at::Tensor& labels_a, const at::Tensor& labels_b, const at::Tensor& loss_rows, const at::Tensor& loss_cols,
    const at::Tensor& row_stats, const at::Tensor& col_stats, c10::string_view loss, bool exclude_self, bool tf32,
    int64_t chunk_rows);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sigmoid_loss_and_grads(
    const at::Tensor& A, const at::Tensor& B, const at::Tensor& r, const at::Tensor& c, const at::Tensor& scale,
    const at::Tensor& bias, const at::Tensor& labels_a, const at::Tensor& labels_b, bool exclude_self, bool tf32,
    int64_t chunk_rows);

}  // namespace chunked
}  // namespace cuda
}  // namespace uca
