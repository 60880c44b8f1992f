// Torch-free core of the fused contrast op (see uca_kernels/contrast.py for the maths).
//
// Everything here takes raw pointers and sizes so it compiles and is tested alone (ctest). The
// inner products go through a Gemm interface: the torch bindings hand in the BLAS that torch uses
// (MKL / OpenBLAS), the C++ tests a plain loop. The epilogue (logits, online log-sum-exp
// statistics, dS) is this file's own, vectorised and parallelised with OpenMP. Only one
// rows x cols tile of the logit matrix exists at a time: extra memory O(M + N + tile).
#pragma once

#include <cstdint>

#include "core/stats.h"

namespace uca {

// SIGMOID: pairwise softplus(-y S) summed over rows and over columns; needs no statistics.
enum class Loss : int { SDM = 0, INFONCE = 1, SIGMOID = 2 };

constexpr double kSdmEps = 1e-8;  // q + eps inside the log of the SDM loss

// Row-major GEMMs on raw pointers (leading dimensions in elements).
template <typename T>
struct Gemm {
  virtual ~Gemm() = default;
  // C[m,n] = A[m,k] * B[n,k]^T
  virtual void nt(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb,
                  T* C, int64_t ldc) const = 0;
  // C[m,n] += A[m,k] * B[k,n]
  virtual void nn_acc(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B,
                      int64_t ldb, T* C, int64_t ldc) const = 0;
  // C[m,n] += A[k,m]^T * B[k,n]
  virtual void tn_acc(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B,
                      int64_t ldb, T* C, int64_t ldc) const = 0;
};

// Plain loops, OpenMP over output rows: correct everywhere, slow. For tests and as a fallback.
template <typename T>
struct LoopGemm final : Gemm<T> {
  void nt(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
          int64_t ldc) const override;
  void nn_acc(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb,
              T* C, int64_t ldc) const override;
  void tn_acc(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb,
              T* C, int64_t ldc) const override;
};

template <typename T>
struct ContrastArgs {
  int64_t M = 0, N = 0, E = 0;       // rows, columns, feature width
  const T* A = nullptr;              // [M, E] row-major, contiguous
  const T* B = nullptr;              // [N, E]
  const T* r = nullptr;              // [M] row term
  const T* c = nullptr;              // [N] column term
  T scale = 1, bias = 0;             // S = scale * (A B^T + r + c) + bias
  const int64_t* labels_a = nullptr; // [M] identities of the rows
  const int64_t* labels_b = nullptr; // [N] identities of the columns
  Loss loss = Loss::SDM;
  bool exclude_self = false;         // drop i == j (i < min(M, N))
};

struct Tiles {
  int64_t rows = 256;   // rows of A per tile
  int64_t cols = 2048;  // rows of B per tile
};

// Forward: per-row and per-column losses and the statistics backward needs
// (row_stats [M, 4], col_stats [N, 4]: LSE, positive LSE, #positives, sum p (S - LSE); all zeros for SIGMOID,
// whose backward needs none). The statistics are float64 for every T: an LSE rounded to float
// would shift the backward's p = exp(S - LSE) by up to half a float spacing of |S| (4e-3 at 1e5).
template <typename T>
void contrast_forward(const ContrastArgs<T>& a, const Gemm<T>& gemm, const Tiles& tiles,
                      T* loss_rows, T* loss_cols, double* row_stats, double* col_stats);

// Backward: gradients of sum(grad_rows * loss_rows) + sum(grad_cols * loss_cols).
// dA [M, E], dB [N, E], dr [M], dc [N] are overwritten; dscale, dbias point to one value each.
template <typename T>
void contrast_backward(const ContrastArgs<T>& a, const Gemm<T>& gemm, const Tiles& tiles,
                       const T* grad_rows, const T* grad_cols, const T* loss_rows,
                       const T* loss_cols, const double* row_stats, const double* col_stats, T* dA,
                       T* dB, T* dr, T* dc, T* dscale, T* dbias);

// The scalar sigmoid loss and all its gradients in one sweep (3 GEMM passes instead of the
// forward's 1 + the backward's 3): loss_total = sum of the pair losses (loss_rows summed), and
// dA, dB, dr, dc, dscale, dbias its gradients with unit upstream weight, i.e. the backward of
// grad_rows = 1, grad_cols = 0. The caller multiplies them by the scalar's upstream gradient.
// a.loss is ignored (always SIGMOID).
template <typename T>
void sigmoid_loss_and_grads(const ContrastArgs<T>& a, const Gemm<T>& gemm, const Tiles& tiles,
                            T* loss_total, T* dA, T* dB, T* dr, T* dc, T* dscale, T* dbias);

}  // namespace uca
