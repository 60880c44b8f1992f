// Torch-free CUDA core of the fused contrast op (maths and contract: uca_kernels/contrast.py).
//
// Raw device pointers, sizes and a stream in; no torch types, so this compiles with plain nvcc
// (CMakeLists.txt) and is reused by the torch bindings (bindings_cuda.cpp).
//
// Kernels are written once for an *owner* side and launched twice: programs (thread blocks) own
// a block of rows of A (row launch: row statistics or sums, dA) or of B (column launch: column
// statistics or sums, dB) and sweep the other side. Every output element is written by exactly
// one block: no atomics, results bit-identical run to run. The logit of a pair is always computed
// the same way (A rows x B rows, same tile shape, same order along E, rounding fixed with
// __fadd_rn/__fmul_rn), so the four launches agree bit for bit on every logit and a
// probability formed from one launch's logits and another's log-sum-exp is consistent.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/stats.h"

namespace uca {
namespace cuda {

enum class DType : int { F16 = 0, BF16 = 1, F32 = 2, F64 = 3 };

// How float32 inputs are multiplied: TF32 tensor cores (fp32 accumulation) or exact fp32 FMA.
// float16/bfloat16 always use tensor cores (fp32 accumulation); float64 always exact FMA.
enum class Precision : int { IEEE = 0, TF32 = 1 };

// The losses of the schema (same values as uca::Loss in core/contrast.h). SIGMOID needs no
// statistics: its forward sums the pair losses, its backward reads only the upstream gradients.
enum class Loss : int { SDM = 0, INFONCE = 1, SIGMOID = 2 };


struct Args {
  int64_t M = 0, N = 0, E = 0;     // rows of A, rows of B, feature width
  DType dtype = DType::F32;        // of A and B
  Precision precision = Precision::IEEE;
  const void* A = nullptr;         // [M, E] contiguous, dtype
  const void* B = nullptr;         // [N, E] contiguous, dtype
  // Acc = double for F64 inputs, float otherwise. Everything below is Acc unless said.
  const void* r = nullptr;         // [M] row term
  const void* c = nullptr;         // [N] column term
  const void* scale = nullptr;     // [] on the device (no host sync)
  const void* bias = nullptr;      // []
  const int64_t* labels_a = nullptr;  // [M]
  const int64_t* labels_b = nullptr;  // [N]
  Loss loss = Loss::SDM;           // sdm, infonce or sigmoid
  bool exclude_self = false;       // drop pairs i == j (i < min(M, N))
};

// Rows of the tile that each block owns, and the column padding of dX scratch buffers: the
// backward accumulates dX in Acc buffers of at least padded_rows(n) x padded_cols(E) elements.
int64_t padded_rows(DType dtype, int64_t n);
int64_t padded_cols(DType dtype, Precision precision, int64_t E);

// Dynamic shared memory of one block (bytes) for these features; the same for every kernel of a
// dtype and precision (forward and backward, rows and columns launches).
size_t shared_bytes(DType dtype, Precision precision);

// loss_rows [M], loss_cols [N] (Acc), row_stats [M, 4], col_stats [N, 4] (double for every dtype:
// an LSE rounded to float shifts the backward's p by up to half a float spacing of |S|; zeros for
// SIGMOID).
cudaError_t contrast_forward(const Args& a, void* loss_rows, void* loss_cols, void* row_stats,
                             void* col_stats, cudaStream_t stream);

// Inputs: grad_rows [M], grad_cols [N], the forward's losses (Acc) and stats (double; SIGMOID reads
// neither: dS_ij = (grad_rows_i + grad_cols_j) dl_ij/dS_ij).
// Outputs (Acc): dA_acc [padded_rows(M), padded_cols(E)] and dB_acc [padded_rows(N), ...]
// (row-major with that leading dimension; the [M, E] / [N, E] corner is the gradient),
// sum_ds_rows [M] = sum_j dS_ij, sum_dst_rows [M] = sum_j dS_ij t_ij, sum_ds_cols [N].
// The caller forms dr = scale * sum_ds_rows, dc = scale * sum_ds_cols, dbias = sum(sum_ds_rows),
// dscale = sum(sum_dst_rows).
cudaError_t contrast_backward(const Args& a, const void* grad_rows, const void* grad_cols,
                              const void* loss_rows, const void* loss_cols, const void* row_stats,
                              const void* col_stats, void* dA_acc, void* dB_acc, void* sum_ds_rows,
                              void* sum_dst_rows, void* sum_ds_cols, cudaStream_t stream);

}  // namespace cuda
}  // namespace uca
