// Epilogue kernels of the chunked CUDA path (contract: chunked_cuda.h; maths: uca_kernels/contrast.py).
//
// Memory-bound passes over a chunk S [ci, N] of logits that the vendor GEMM wrote: every entry is
// read once per pass (coalesced along a row), its logit formed with the tile kernels' rounding
// (epilogue.cuh), and the statistics merged in a fixed order. Nothing uses atomics: each output
// element is written by one thread, and every sum runs in an order fixed by the shapes alone, so
// reruns are bit-identical.
#include "chunked_cuda.h"
#include "epilogue.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

namespace uca {
namespace cuda {
namespace chunked {
namespace {

constexpr int kThreads = 256;  // every kernel: 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kGroup = 16;     // entries per thread between two online merges (rows and columns passes)
constexpr int kRowsPerWarp = kTileRows / kWarps;  // tile kernel
constexpr int kColsPerLane = kTileCols / 32;      // tile kernel
static_assert(kGroup <= 32, "valid / positive flags are kept in 32-bit masks");
static_assert(kTileCols == kThreads, "the tile kernel stages one column per thread");

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename Acc>
struct Common {
  const Acc* r;
  const Acc* c;
  const Acc* scale;
  const Acc* bias;
  const int64_t* la;
  const int64_t* lb;
  int64_t M, N;
  bool exclude_self;
};

template <typename Acc>
Common<Acc> common(const ChunkArgs& a) {
  return Common<Acc>{static_cast<const Acc*>(a.r), static_cast<const Acc*>(a.c), static_cast<const Acc*>(a.scale),
                     static_cast<const Acc*>(a.bias), a.labels_a, a.labels_b, a.M, a.N, a.exclude_self};
}

// -- forward, softmax losses: rows ---------------------------------------------------------------------
// One warp per row of the chunk; lane l covers columns l, l + 32, ... in groups of kGroup.
template <typename Acc, Loss LOSS>
__global__ void __launch_bounds__(kThreads) fwd_rows_kernel(Common<Acc> p, const Acc* __restrict__ S, int64_t i0,
                                                            int64_t ci, Acc* loss_rows, double* row_stats) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarps + warp;  // local
  if (row >= ci) return;  // whole warps only: no block-level synchronisation below
  const int64_t gi = i0 + row, N = p.N;
  const Acc* __restrict__ srow = S + row * N;
  const Acc ri = p.r[gi], scale = *p.scale, bias = *p.bias;
  const int64_t la = p.la[gi];
  Online<Acc> st;
  online_init(st);
  for (int64_t j0 = 0; j0 < N; j0 += 32 * kGroup) {
    Acc s[kGroup];
    uint32_t valid = 0, pos = 0;
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const int64_t j = j0 + g * 32 + lane;
      s[g] = Acc(0);
      if (j < N) {
        s[g] = logit(raw_value(srow[j], ri, p.c[j]), scale, bias);
        const bool v = !(p.exclude_self && j == gi);
        valid |= uint32_t(v) << g;
        pos |= uint32_t(v && p.lb[j] == la) << g;
      }
    }
    online_add<Acc, kGroup>(st, s, valid, pos);
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) st = online_merge(st, shfl_xor(st, off));
  if (lane == 0) write_finished<LOSS>(st, loss_rows, row_stats, gi);
}

// -- forward, softmax losses: columns -------------------------------------------------------------------
// Thread per column, block y = a segment of kColSegRows rows of the chunk: the segment's partial
// state to part [kOnlineFields][segments][N].
template <typename Acc>
__global__ void __launch_bounds__(kThreads) fwd_cols_part_kernel(Common<Acc> p, const Acc* __restrict__ S, int64_t i0,
                                                                 int64_t ci, Acc* part) {
  __shared__ int64_t s_la[kColSegRows];
  __shared__ Acc s_r[kColSegRows];
  const int64_t seg = blockIdx.y, nseg = gridDim.y, N = p.N;
  const int64_t row0 = seg * kColSegRows;  // local
  const int nrows = int(ci - row0 < kColSegRows ? ci - row0 : kColSegRows);
  for (int i = threadIdx.x; i < nrows; i += kThreads) {
    s_la[i] = p.la[i0 + row0 + i];
    s_r[i] = p.r[i0 + row0 + i];
  }
  __syncthreads();
  const int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= N) return;
  const Acc cj = p.c[j], scale = *p.scale, bias = *p.bias;
  const int64_t lb = p.lb[j];
  Online<Acc> st;
  online_init(st);
  for (int i = 0; i < nrows; i += kGroup) {
    Acc s[kGroup];
    uint32_t valid = 0, pos = 0;
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const int ii = i + g;
      s[g] = Acc(0);
      if (ii < nrows) {
        const int64_t gi = i0 + row0 + ii;
        s[g] = logit(raw_value(S[(row0 + ii) * N + j], s_r[ii], cj), scale, bias);
        const bool v = !(p.exclude_self && j == gi);
        valid |= uint32_t(v) << g;
        pos |= uint32_t(v && s_la[ii] == lb) << g;
      }
    }
    online_add<Acc, kGroup>(st, s, valid, pos);
  }
  const Acc fields[kOnlineFields] = {st.m, st.l, st.w, st.lneg, st.mp, st.lp, st.n};
#pragma unroll
  for (int q = 0; q < kOnlineFields; ++q) part[(q * nseg + seg) * N + j] = fields[q];
}

template <typename Acc>
__device__ __forceinline__ Online<Acc> load_state(const Acc* x, int64_t stride, int64_t j) {
  Online<Acc> st;
  st.m = x[0 * stride + j];
  st.l = x[1 * stride + j];
  st.w = x[2 * stride + j];
  st.lneg = x[3 * stride + j];
  st.mp = x[4 * stride + j];
  st.lp = x[5 * stride + j];
  st.n = x[6 * stride + j];
  return st;
}

// Thread per column: the running state (initial when first) merged with the segments in order.
template <typename Acc>
__global__ void __launch_bounds__(kThreads) fwd_cols_merge_kernel(int64_t N, int64_t nseg, const Acc* part,
                                                                  Acc* state, bool first) {
  const int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= N) return;
  Online<Acc> st;
  if (first)
    online_init(st);
  else
    st = load_state(state, N, j);
  for (int64_t seg = 0; seg < nseg; ++seg) st = online_merge(st, load_state(part + seg * N, nseg * N, j));
  const Acc fields[kOnlineFields] = {st.m, st.l, st.w, st.lneg, st.mp, st.lp, st.n};
#pragma unroll
  for (int q = 0; q < kOnlineFields; ++q) state[q * N + j] = fields[q];
}

template <typename Acc, Loss LOSS>
__global__ void __launch_bounds__(kThreads) fwd_cols_finish_kernel(int64_t N, const Acc* state, Acc* loss_cols,
                                                                   double* col_stats) {
  const int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= N) return;
  write_finished<LOSS>(load_state(state, N, j), loss_cols, col_stats, j);
}

// -- backward constants ---------------------------------------------------------------------------------
template <typename Acc, Loss LOSS>
__global__ void __launch_bounds__(kThreads) side_kernel(int64_t n, const Acc* grad, const Acc* loss,
                                                        const double* stats, Acc* out) {
  const int64_t k = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (k >= n) return;
  const Side<Acc> s = side_of<LOSS>(grad, loss, stats, k);
  const Acc fields[kSideFields] = {s.g, s.lse, s.lse_lo, s.lsep, s.lsep_lo, s.loss, s.logq};
#pragma unroll
  for (int q = 0; q < kSideFields; ++q) out[q * n + k] = fields[q];
}

// -- the tile kernel ------------------------------------------------------------------------------------
// Block (x, y) covers columns [x kTileCols, ...) and chunk rows [y kTileRows, ...). Warp w takes
// kRowsPerWarp rows, lane l the columns l + 32 k (coalesced). Row sums: per lane, then a butterfly
// over the warp; column sums: per lane over the warp's rows, then the warps in order via shared memory.
template <typename Acc, typename Low, Loss LOSS, TileMode MODE>
__global__ void __launch_bounds__(kThreads) tile_kernel(Common<Acc> p, Acc* __restrict__ S, Low* __restrict__ low,
                                                        int64_t i0, int64_t ci, const Acc* __restrict__ row_sides,
                                                        const Acc* __restrict__ col_sides, Acc* row_part,
                                                        Acc* col_part) {
  constexpr bool kSoftmax = LOSS != Loss::SIGMOID;
  constexpr bool kWriteLow = !std::is_same<Low, Acc>::value;
  constexpr bool kLosses = MODE != TileMode::BACKWARD;  // pair losses summed
  constexpr bool kGrad = MODE != TileMode::SIGMOID_FORWARD;
  __shared__ Acc s_c[kTileCols];
  __shared__ int64_t s_lb[kTileCols];
  __shared__ Acc s_side[kSoftmax && kGrad ? kSideFields : 1][kTileCols];
  __shared__ Acc s_red[kWarps][kTileCols];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t N = p.N, col0 = int64_t(blockIdx.x) * kTileCols, row0 = int64_t(blockIdx.y) * kTileRows;
  const int64_t ncb = gridDim.x;
  {
    const int64_t j = col0 + threadIdx.x;
    const bool ok = j < N;
    s_c[threadIdx.x] = ok ? p.c[j] : Acc(0);
    s_lb[threadIdx.x] = ok ? p.lb[j] : 0;
    if constexpr (kGrad) {
      if constexpr (kSoftmax) {
#pragma unroll
        for (int q = 0; q < kSideFields; ++q) s_side[q][threadIdx.x] = ok ? col_sides[q * N + j] : Acc(0);
      } else {
        s_side[0][threadIdx.x] = ok ? col_sides[j] : Acc(0);  // g only
      }
    }
  }
  __syncthreads();
  const Acc scale = *p.scale, bias = *p.bias;
  const int64_t M = p.M;
  Acc col_acc[kColsPerLane];
#pragma unroll
  for (int k = 0; k < kColsPerLane; ++k) col_acc[k] = Acc(0);

  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int64_t row = row0 + warp * kRowsPerWarp + rr;  // local; the same for the whole warp
    const bool row_ok = row < ci;
    const int64_t gi = i0 + row;
    Acc a_ds = 0, a_dst = 0, a_l = 0;
    if (row_ok) {
      const Acc ri = p.r[gi];
      const int64_t la = p.la[gi];
      Side<Acc> me{Acc(0), Acc(0), Acc(0), Acc(0), Acc(0), Acc(0), Acc(0)};
      if constexpr (kGrad) {
        me.g = row_sides[0 * M + gi];
        if constexpr (kSoftmax) {
          me.lse = row_sides[1 * M + gi];
          me.lse_lo = row_sides[2 * M + gi];
          me.lsep = row_sides[3 * M + gi];
          me.lsep_lo = row_sides[4 * M + gi];
          me.loss = row_sides[5 * M + gi];
          me.logq = row_sides[6 * M + gi];
        }
      }
      Acc* __restrict__ srow = S + row * N;
#pragma unroll
      for (int k = 0; k < kColsPerLane; ++k) {
        const int jl = lane + 32 * k;
        const int64_t j = col0 + jl;
        if (j >= N) continue;
        const Acc t = raw_value(srow[j], ri, s_c[jl]);
        const Acc s = logit(t, scale, bias);
        const bool valid = !(p.exclude_self && j == gi);
        const bool pos = valid && s_lb[jl] == la;
        if constexpr (kLosses) {
          const Acc l = valid ? sigmoid_pair_loss(s, pos) : Acc(0);
          a_l += l;
          if constexpr (MODE == TileMode::SIGMOID_FORWARD) col_acc[k] += l;
        }
        if constexpr (kGrad) {
          Acc ds = 0;
          if (valid) {
            if constexpr (kSoftmax) {
              ds = add_rn(dloss_dlogit<LOSS>(s, pos, me.g, me.lse, me.lse_lo, me.lsep, me.lsep_lo, me.loss, me.logq),
                          dloss_dlogit<LOSS>(s, pos, s_side[0][jl], s_side[1][jl], s_side[2][jl], s_side[3][jl],
                                             s_side[4][jl], s_side[5][jl], s_side[6][jl]));
            } else {
              ds = mul_rn(add_rn(me.g, s_side[0][jl]), sigmoid_pair_dlogit(s, pos));
            }
          }
          a_ds += ds;
          a_dst += ds * t;
          col_acc[k] += ds;
          const Acc dt = mul_rn(scale, ds);
          srow[j] = dt;
          if constexpr (kWriteLow) low[row * N + j] = to_operand<Low>(dt);
        }
      }
    }
    // -- the row's sums over this block's columns (butterfly: every lane the same bits) --
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
      if constexpr (kGrad) {
        a_ds += __shfl_xor_sync(0xffffffffu, a_ds, off);
        a_dst += __shfl_xor_sync(0xffffffffu, a_dst, off);
      }
      if constexpr (kLosses) a_l += __shfl_xor_sync(0xffffffffu, a_l, off);
    }
    if (row_ok && lane == 0) {
      if constexpr (kGrad) {
        row_part[(0 * ncb + blockIdx.x) * ci + row] = a_ds;
        row_part[(1 * ncb + blockIdx.x) * ci + row] = a_dst;
      }
      if constexpr (kLosses) row_part[(2 * ncb + blockIdx.x) * ci + row] = a_l;
    }
  }
  // -- column sums over this block's rows: the warps' partials in warp order --
#pragma unroll
  for (int k = 0; k < kColsPerLane; ++k) s_red[warp][lane + 32 * k] = col_acc[k];
  __syncthreads();
  const int64_t j = col0 + threadIdx.x;
  if (j < N) {
    Acc sum = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += s_red[w][threadIdx.x];
    col_part[int64_t(blockIdx.y) * N + j] = sum;
  }
}

template <typename Acc, TileMode MODE>
__global__ void __launch_bounds__(kThreads) reduce_rows_kernel(const Acc* row_part, int64_t ncb, int64_t i0,
                                                               int64_t ci, Acc* loss_rows, double* row_stats,
                                                               double* rows_ds, double* rows_dst, double* rows_loss) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= ci) return;
  constexpr bool kGrad = MODE != TileMode::SIGMOID_FORWARD, kLosses = MODE != TileMode::BACKWARD;
  double q[kRowParts] = {0.0, 0.0, 0.0};
  for (int64_t cb = 0; cb < ncb; ++cb) {  // in block order
    if (kGrad) {
      q[0] += double(row_part[(0 * ncb + cb) * ci + i]);
      q[1] += double(row_part[(1 * ncb + cb) * ci + i]);
    }
    if (kLosses) q[2] += double(row_part[(2 * ncb + cb) * ci + i]);
  }
  const int64_t gi = i0 + i;
  if constexpr (MODE == TileMode::SIGMOID_FORWARD) {
    loss_rows[gi] = Acc(q[2]);
#pragma unroll
    for (int k = 0; k < kStats; ++k) row_stats[gi * kStats + k] = 0.0;
  } else {
    rows_ds[gi] = q[0];
    rows_dst[gi] = q[1];
    if constexpr (MODE == TileMode::SIGMOID_SCALAR) rows_loss[gi] = q[2];
  }
}

template <typename Acc>
__global__ void __launch_bounds__(kThreads) reduce_cols_kernel(const Acc* col_part, int64_t nrb, int64_t N,
                                                               double* running, bool first, Acc* out_cols) {
  const int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= N) return;
  double sum = first ? 0.0 : running[j];
  for (int64_t rb = 0; rb < nrb; ++rb) sum += double(col_part[rb * N + j]);
  running[j] = sum;
  if (out_cols != nullptr) out_cols[j] = Acc(sum);
}

// -- host side ------------------------------------------------------------------------------------------

unsigned blocks(int64_t n) { return unsigned(cdiv(n, kThreads)); }

bool is_f64(const ChunkArgs& a) { return a.dtype == DType::F64; }

// Calls f(Acc{}, std::integral_constant<Loss, LOSS>{}) for the features' Acc and the loss.
template <typename F>
cudaError_t by_acc_loss(const ChunkArgs& a, F&& f) {
  const auto per_loss = [&](auto acc) -> cudaError_t {
    switch (a.loss) {
      case Loss::SDM: return f(acc, std::integral_constant<Loss, Loss::SDM>{});
      case Loss::INFONCE: return f(acc, std::integral_constant<Loss, Loss::INFONCE>{});
      case Loss::SIGMOID: return f(acc, std::integral_constant<Loss, Loss::SIGMOID>{});
    }
    return cudaErrorInvalidValue;
  };
  return is_f64(a) ? per_loss(double{}) : per_loss(float{});
}

}  // namespace

int64_t col_segments(int64_t ci) { return cdiv(ci, kColSegRows); }
int64_t fwd_col_part_elems(int64_t ci, int64_t N) { return int64_t(kOnlineFields) * col_segments(ci) * N; }
int64_t tile_row_part_elems(int64_t ci, int64_t N) { return int64_t(kRowParts) * cdiv(N, kTileCols) * ci; }
int64_t tile_col_part_elems(int64_t ci, int64_t N) { return cdiv(ci, kTileRows) * N; }

cudaError_t fwd_rows(const ChunkArgs& a, const void* S, int64_t i0, int64_t ci, void* loss_rows, void* row_stats,
                     cudaStream_t stream) {
  if (a.loss == Loss::SIGMOID || ci <= 0) return cudaErrorInvalidValue;
  return by_acc_loss(a, [&](auto acc, auto loss) -> cudaError_t {
    using Acc = decltype(acc);
    constexpr Loss LOSS = decltype(loss)::value;
    if constexpr (LOSS == Loss::SIGMOID) {
      return cudaErrorInvalidValue;
    } else {
      fwd_rows_kernel<Acc, LOSS><<<unsigned(cdiv(ci, kWarps)), kThreads, 0, stream>>>(
          common<Acc>(a), static_cast<const Acc*>(S), i0, ci, static_cast<Acc*>(loss_rows),
          static_cast<double*>(row_stats));
      return cudaGetLastError();
    }
  });
}

cudaError_t fwd_cols(const ChunkArgs& a, const void* S, int64_t i0, int64_t ci, void* part, void* col_state,
                     bool first, cudaStream_t stream) {
  if (a.loss == Loss::SIGMOID || ci <= 0) return cudaErrorInvalidValue;
  const int64_t nseg = col_segments(ci);
  if (nseg > 65535) return cudaErrorInvalidValue;  // grid y limit: chunks of at most 16.7 M rows
  const auto run = [&](auto acc) -> cudaError_t {
    using Acc = decltype(acc);
    fwd_cols_part_kernel<Acc><<<dim3(blocks(a.N), unsigned(nseg)), kThreads, 0, stream>>>(
        common<Acc>(a), static_cast<const Acc*>(S), i0, ci, static_cast<Acc*>(part));
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    fwd_cols_merge_kernel<Acc><<<blocks(a.N), kThreads, 0, stream>>>(a.N, nseg, static_cast<const Acc*>(part),
                                                                     static_cast<Acc*>(col_state), first);
    return cudaGetLastError();
  };
  return is_f64(a) ? run(double{}) : run(float{});
}

cudaError_t fwd_cols_finish(const ChunkArgs& a, const void* col_state, void* loss_cols, void* col_stats,
                            cudaStream_t stream) {
  if (a.loss == Loss::SIGMOID) return cudaErrorInvalidValue;
  return by_acc_loss(a, [&](auto acc, auto loss) -> cudaError_t {
    using Acc = decltype(acc);
    constexpr Loss LOSS = decltype(loss)::value;
    if constexpr (LOSS == Loss::SIGMOID) {
      return cudaErrorInvalidValue;
    } else {
      fwd_cols_finish_kernel<Acc, LOSS><<<blocks(a.N), kThreads, 0, stream>>>(
          a.N, static_cast<const Acc*>(col_state), static_cast<Acc*>(loss_cols), static_cast<double*>(col_stats));
      return cudaGetLastError();
    }
  });
}

cudaError_t side_constants(const ChunkArgs& a, int64_t n, const void* grad, const void* loss, const void* stats,
                           void* out, cudaStream_t stream) {
  if (n <= 0) return cudaErrorInvalidValue;
  return by_acc_loss(a, [&](auto acc, auto lossc) -> cudaError_t {
    using Acc = decltype(acc);
    constexpr Loss LOSS = decltype(lossc)::value;
    side_kernel<Acc, LOSS><<<blocks(n), kThreads, 0, stream>>>(n, static_cast<const Acc*>(grad),
                                                               static_cast<const Acc*>(loss),
                                                               static_cast<const double*>(stats),
                                                               static_cast<Acc*>(out));
    return cudaGetLastError();
  });
}

cudaError_t tile(const ChunkArgs& a, TileMode mode, void* S, void* low, int64_t i0, int64_t ci,
                 const void* row_sides, const void* col_sides, void* row_part, void* col_part, cudaStream_t stream) {
  if (ci <= 0) return cudaErrorInvalidValue;
  const int64_t nrb = cdiv(ci, kTileRows);
  if (nrb > 65535) return cudaErrorInvalidValue;  // grid y limit: chunks of at most 4.2 M rows
  if ((mode == TileMode::SIGMOID_FORWARD || mode == TileMode::SIGMOID_SCALAR) && a.loss != Loss::SIGMOID)
    return cudaErrorInvalidValue;
  const bool want_low = mode != TileMode::SIGMOID_FORWARD && (a.dtype == DType::F16 || a.dtype == DType::BF16);
  if (want_low && low == nullptr) return cudaErrorInvalidValue;
  const dim3 grid(unsigned(cdiv(a.N, kTileCols)), unsigned(nrb));
  return by_acc_loss(a, [&](auto acc, auto lossc) -> cudaError_t {
    using Acc = decltype(acc);
    constexpr Loss LOSS = decltype(lossc)::value;
    const auto launch = [&](auto low_tag, auto mode_tag) -> cudaError_t {
      using Low = decltype(low_tag);
      constexpr TileMode MODE = decltype(mode_tag)::value;
      tile_kernel<Acc, Low, LOSS, MODE><<<grid, kThreads, 0, stream>>>(
          common<Acc>(a), static_cast<Acc*>(S), static_cast<Low*>(low), i0, ci, static_cast<const Acc*>(row_sides),
          static_cast<const Acc*>(col_sides), static_cast<Acc*>(row_part), static_cast<Acc*>(col_part));
      return cudaGetLastError();
    };
    const auto by_low = [&](auto mode_tag) -> cudaError_t {
      if constexpr (std::is_same<Acc, double>::value) {
        return launch(double{}, mode_tag);
      } else {
        if (!want_low) return launch(float{}, mode_tag);
        return a.dtype == DType::F16 ? launch(__half{}, mode_tag) : launch(__nv_bfloat16{}, mode_tag);
      }
    };
    if constexpr (LOSS == Loss::SIGMOID) {
      switch (mode) {
        case TileMode::SIGMOID_FORWARD:
          return launch(Acc{}, std::integral_constant<TileMode, TileMode::SIGMOID_FORWARD>{});
        case TileMode::BACKWARD: return by_low(std::integral_constant<TileMode, TileMode::BACKWARD>{});
        case TileMode::SIGMOID_SCALAR: return by_low(std::integral_constant<TileMode, TileMode::SIGMOID_SCALAR>{});
      }
      return cudaErrorInvalidValue;
    } else {
      return by_low(std::integral_constant<TileMode, TileMode::BACKWARD>{});
    }
  });
}

cudaError_t reduce_rows(const ChunkArgs& a, TileMode mode, const void* row_part, int64_t i0, int64_t ci,
                        void* loss_rows, void* row_stats, void* rows_ds, void* rows_dst, void* rows_loss,
                        cudaStream_t stream) {
  if (ci <= 0) return cudaErrorInvalidValue;
  const int64_t ncb = cdiv(a.N, kTileCols);
  const auto run = [&](auto acc) -> cudaError_t {
    using Acc = decltype(acc);
    const auto launch = [&](auto mode_tag) -> cudaError_t {
      reduce_rows_kernel<Acc, decltype(mode_tag)::value><<<blocks(ci), kThreads, 0, stream>>>(
          static_cast<const Acc*>(row_part), ncb, i0, ci, static_cast<Acc*>(loss_rows),
          static_cast<double*>(row_stats), static_cast<double*>(rows_ds), static_cast<double*>(rows_dst),
          static_cast<double*>(rows_loss));
      return cudaGetLastError();
    };
    switch (mode) {
      case TileMode::SIGMOID_FORWARD: return launch(std::integral_constant<TileMode, TileMode::SIGMOID_FORWARD>{});
      case TileMode::BACKWARD: return launch(std::integral_constant<TileMode, TileMode::BACKWARD>{});
      case TileMode::SIGMOID_SCALAR: return launch(std::integral_constant<TileMode, TileMode::SIGMOID_SCALAR>{});
    }
    return cudaErrorInvalidValue;
  };
  return is_f64(a) ? run(double{}) : run(float{});
}

cudaError_t reduce_cols(const ChunkArgs& a, const void* col_part, int64_t ci, void* running, bool first,
                        void* out_cols, cudaStream_t stream) {
  if (ci <= 0) return cudaErrorInvalidValue;
  const int64_t nrb = cdiv(ci, kTileRows);
  const auto run = [&](auto acc) -> cudaError_t {
    using Acc = decltype(acc);
    reduce_cols_kernel<Acc><<<blocks(a.N), kThreads, 0, stream>>>(static_cast<const Acc*>(col_part), nrb, a.N,
                                                                  static_cast<double*>(running), first,
                                                                  static_cast<Acc*>(out_cols));
    return cudaGetLastError();
  };
  return is_f64(a) ? run(double{}) : run(float{});
}

}  // namespace chunked
}  // namespace cuda
}  // namespace uca
