// The one definition of the op contract's per-row / per-column statistics width (torch-free: the
// CPU core, the CUDA kernels and the torch bindings' checks all include it).
#pragma once

namespace uca {

// row_stats [M, kStats] / col_stats [N, kStats], float64: LSE, positive LSE, #positives and
// sum_j p_j (S_j - LSE) (the softmax's negative entropy); all zeros for sigmoid. The last is what a
// softmax over a split set needs besides the LSEs to assemble SDM's loss from its parts
// (uca_kernels.contrast.combine_stats).
constexpr int kStats = 4;

}  // namespace uca
