// Torch-free epilogue kernels of the chunked CUDA path (maths and contract: uca_kernels/contrast.py).
//
// The chunked path computes the logit matrix in chunks of rows with the vendor GEMM and runs these
// kernels over each chunk; the driver (chunked_driver.cpp) owns the GEMMs, the buffers and the
// chunk loop. For a chunk of rows [i0, i0 + ci) of A, S is the GEMM's output A[i0 : i0 + ci] Bᵀ,
// [ci, N] row-major in Acc (float, double for float64 features). Every kernel forms the raw value
// t = S_ij + (r_i + c_j) and the logit scale t + bias with the same rounding as the tile kernels
// (epilogue.cuh), and a pair (i, j) is excluded when exclude_self and i == j, i the GLOBAL row.
//
// Forward of the softmax losses, per chunk in increasing order:
//   fwd_rows          row statistics and losses of the chunk's rows (complete: a row sees all N);
//   fwd_cols          per-column online state (running max, sums; kept in col_state across chunks)
//                     continued over the chunk: partial states per segment of kColSegRows rows,
//                     merged in segment order (deterministic, no atomics);
//   fwd_cols_finish   after the last chunk: column losses and statistics from col_state.
// Sigmoid forward and every backward: `tile` over blocks of kTileRows x kTileCols entries (dS in
// the backward; the pair losses in the sigmoid forward) writing per-row partial sums per block of
// columns and per-column partial sums per block of rows, then `reduce_rows` (complete per row, in
// block order) and `reduce_cols` (added in block order to a float64 running sum across chunks).
// In the backward, tile writes dT = scale dS in place into S and, for fp16/bf16 features, a copy
// rounded to the feature dtype for the dX GEMMs.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/contrast_cuda.h"

namespace uca {
namespace cuda {
namespace chunked {

constexpr int kColSegRows = 256;  // rows of a chunk per column-partial segment (forward, softmax)
constexpr int kTileRows = 64;     // tile kernel: rows per block
constexpr int kTileCols = 256;    // tile kernel: columns per block
constexpr int kSideFields = 7;    // backward constants per row / column (g, lse, lse_lo, lsep, lsep_lo, loss, logq)
constexpr int kOnlineFields = 7;  // online state per column (m, l, w, lneg, mp, lp, n)
constexpr int kRowParts = 3;      // tile kernel row partials: sum dS, sum dS t, sum of pair losses

// What the tile kernel computes.
enum class TileMode : int {
  SIGMOID_FORWARD = 0,  // pair losses: row and column sums (S unchanged)
  BACKWARD = 1,         // dS from the upstream gradients and statistics; dT in place; sums of dS, dS t
  SIGMOID_SCALAR = 2,   // BACKWARD of the sigmoid (row weights g_row, g_col = 0) plus the pair losses' row sums
};

// The problem, as the kernels see it (the rows of a chunk are given per call).
struct ChunkArgs {
  int64_t M = 0, N = 0;            // rows of A, rows of B
  DType dtype = DType::F32;        // feature dtype: Acc = double for F64, float otherwise
  const void* r = nullptr;         // [M] Acc
  const void* c = nullptr;         // [N] Acc
  const void* scale = nullptr;     // [] Acc, on the device
  const void* bias = nullptr;      // [] Acc
  const int64_t* labels_a = nullptr;  // [M]
  const int64_t* labels_b = nullptr;  // [N]
  Loss loss = Loss::SDM;
  bool exclude_self = false;
};

// Scratch sizes in Acc elements for a chunk of ci rows.
int64_t col_segments(int64_t ci);                 // segments of the column-partial pass
int64_t fwd_col_part_elems(int64_t ci, int64_t N);  // fwd_cols' partial states
int64_t tile_row_part_elems(int64_t ci, int64_t N); // tile's row partials [kRowParts][col blocks][ci]
int64_t tile_col_part_elems(int64_t ci, int64_t N); // tile's column partials [row blocks][N]

// -- forward, softmax losses (SDM, INFONCE) --
// loss_rows [M] Acc, row_stats [M, kStats] double: rows [i0, i0 + ci) written.
cudaError_t fwd_rows(const ChunkArgs& a, const void* S, int64_t i0, int64_t ci, void* loss_rows, void* row_stats,
                     cudaStream_t stream);
// col_state [kOnlineFields, N] Acc: initialised when first, else continued; part: fwd_col_part_elems(ci, N).
cudaError_t fwd_cols(const ChunkArgs& a, const void* S, int64_t i0, int64_t ci, void* part, void* col_state,
                     bool first, cudaStream_t stream);
// loss_cols [N] Acc, col_stats [N, kStats] double.
cudaError_t fwd_cols_finish(const ChunkArgs& a, const void* col_state, void* loss_cols, void* col_stats,
                            cudaStream_t stream);

// -- backward constants --
// out [kSideFields, n] Acc from grad [n] Acc, loss [n] Acc, stats [n, kStats] double (SIGMOID reads grad only;
// loss and stats may be null).
cudaError_t side_constants(const ChunkArgs& a, int64_t n, const void* grad, const void* loss, const void* stats,
                           void* out, cudaStream_t stream);

// -- tile kernel over a chunk --
// S [ci, N] Acc (BACKWARD, SIGMOID_SCALAR: overwritten with dT = scale dS), low [ci, N] in the feature
// dtype for F16/BF16 (the rounded dT; null otherwise or in SIGMOID_FORWARD), row_sides/col_sides from
// side_constants (unused in SIGMOID_FORWARD), row_part/col_part of tile_*_part_elems.
cudaError_t tile(const ChunkArgs& a, TileMode mode, void* S, void* low, int64_t i0, int64_t ci,
                 const void* row_sides, const void* col_sides, void* row_part, void* col_part, cudaStream_t stream);

// Row partials of the chunk's tile call reduced in column-block order (float64 sums):
//   SIGMOID_FORWARD: loss_rows [M] Acc and zero row_stats [M, kStats] at rows [i0, i0 + ci);
//   BACKWARD: rows_ds, rows_dst [M] double at [i0, i0 + ci); SIGMOID_SCALAR: also rows_loss [M] double.
cudaError_t reduce_rows(const ChunkArgs& a, TileMode mode, const void* row_part, int64_t i0, int64_t ci,
                        void* loss_rows, void* row_stats, void* rows_ds, void* rows_dst, void* rows_loss,
                        cudaStream_t stream);

// Column partials added in row-block order to running [N] double (set, not added, when first);
// when out_cols is not null, the sums are also written there as Acc (the sigmoid forward's loss_cols,
// after its last chunk).
cudaError_t reduce_cols(const ChunkArgs& a, const void* col_part, int64_t ci, void* running, bool first,
                        void* out_cols, cudaStream_t stream);

}  // namespace chunked
}  // namespace cuda
}  // namespace uca
