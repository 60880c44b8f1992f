// The one definition of the op contract's per-row / per-column statistics width (torch-free: the
// CPU core, the CUDA kernels and the torch bindings' checks all include it).
#pragma once

namespace uca {

// row_stats [M, kStats] / col_stats [N, kStats]: LSE, positive LSE, #positives (all zeros for sigmoid)
constexpr int kStats = 3;

}  // namespace uca
