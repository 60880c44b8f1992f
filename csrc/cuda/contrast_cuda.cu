// CUDA kernels of the fused contrast op (contract: contrast_cuda.h; maths: uca_kernels/contrast.py).
//
// One thread block (4 warps) owns BM rows of one side and sweeps the other side in blocks of BM:
//
//   gram tile   G = A_blk B_blkᵀ over E in BK chunks: operands staged in shared memory with
//               asynchronous copies (cp.async, two stages), products on tensor cores (WMMA:
//               fp16/bf16 m16n16k16, or tf32 m16n16k8, fp32 accumulation) or exact FMA (fp32
//               "ieee", fp64), then written to shared memory;
//   forward     logits S = scale (G + r + c) + bias, online row statistics (running max, sum of
//               exp, sum of exp * (s - max), negatives' sum, positives with their own max), kept
//               per thread over its columns and merged across the threads of a row at the end;
//               sigmoid: plain sums of the pair losses softplus(-y S) instead (no statistics);
//   backward    dS from both sides' saved statistics (sigmoid: from the upstream gradients
//               alone), dT = scale dS to shared memory (in the operand type), then dX[own] +=
//               dT Y[other] over E in BX chunks, accumulated in an Acc scratch buffer whose rows
//               only this block touches (read-modify-write per tile: no atomics), plus per-row
//               sums of dS and dS * t.
//
// Rows launch (COLUMNS = false) owns rows of A: row stats, dA. Columns launch owns rows of B:
// column stats, dB. The gram tile is computed A-rows x B-rows in both, with the same BM, BK and
// instruction order, and logits are formed with explicit round-to-nearest adds and multiplies
// (never contracted into FMAs), so all four launches produce identical bits for each logit.
#include "contrast_cuda.h"
#include "epilogue.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_pipeline.h>
#include <mma.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "uca CUDA kernels need sm_80 or newer (bf16/tf32 tensor cores, cp.async): set TORCH_CUDA_ARCH_LIST"
#endif

namespace uca {
namespace cuda {
namespace {

using namespace nvcuda;

enum Kind : int { MMA16 = 0, MMA_TF32 = 1, SIMT = 2 };

constexpr int kThreads = 128;  // 4 warps
constexpr int kMinBlocks = 2;  // blocks per SM the register budget must allow (255 registers max at 128 threads)

constexpr size_t round128(size_t x) { return (x + 127) / 128 * 128; }
constexpr int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

template <typename T, int KIND>
struct Cfg {
  using Acc = std::conditional_t<std::is_same<T, double>::value, double, float>;
  static constexpr bool kDouble = std::is_same<T, double>::value;
  static constexpr int BM = kDouble ? 32 : 64;            // rows per block, both sides
  static constexpr int BK = sizeof(T) == 2 ? 32 : 16;     // features per gram chunk
  static constexpr int PAD = 16 / int(sizeof(T));         // keeps shared rows 16-byte aligned
  static constexpr int LDK = BK + PAD;                    // operand rows in shared memory
  static constexpr int BX = KIND == SIMT ? 32 : 64;       // features per dX chunk
  static constexpr int LDX = BX + PAD;                    // Y chunk rows
  static constexpr int LDT = BM + PAD;                    // dT rows
  static constexpr int LDG = BM + 4;                      // gram tile rows (Acc)
  static constexpr int TPR = kThreads / BM;               // epilogue threads per owner row
  static constexpr int CPT = BM / TPR;                    // epilogue columns per thread
  static_assert(CPT <= 32, "positives are kept in a 32-bit mask");
  // shared memory: [operands (two stages of A and B chunks) | Y chunk] [G] [dT] [side arrays]
  static constexpr size_t kOps = 2 * 2 * size_t(BM) * LDK * sizeof(T);
  static constexpr size_t kY = size_t(BM) * LDX * sizeof(T);
  static constexpr size_t kOffG = round128(kOps > kY ? kOps : kY);
  static constexpr size_t kOffDT = kOffG + round128(size_t(BM) * LDG * sizeof(Acc));
  static constexpr size_t kOffSide = kOffDT + round128(size_t(BM) * LDT * sizeof(T));
  static constexpr size_t kSmem = kOffSide + size_t(BM) * (sizeof(int64_t) + 8 * sizeof(Acc));
};


// -- loading tiles into shared memory --------------------------------------------------------------

// dst[ROWS][LD] <- X[x0 + row, k0 + col] for col < WIDTH, zero outside [nX, E). VEC: 16-byte
// asynchronous copies (the caller checked that rows of X are 16-byte aligned), else plain loads.
template <typename T, int ROWS, int WIDTH, int LD>
__device__ __forceinline__ void load_block(const T* __restrict__ X, int64_t x0, int64_t nX, int64_t E,
                                           int64_t k0, T* dst, bool vec) {
  constexpr int V = 16 / int(sizeof(T));
  constexpr int SEGS_PER_ROW = WIDTH / V;
  static_assert(WIDTH % V == 0, "chunk width must be a multiple of 16 bytes");
  for (int s = threadIdx.x; s < ROWS * SEGS_PER_ROW; s += kThreads) {
    const int row = s / SEGS_PER_ROW, col = (s % SEGS_PER_ROW) * V;
    const int64_t gr = x0 + row, gc = k0 + col;
    T* d = dst + row * LD + col;
    if (vec && gr < nX && gc < E) {
      __pipeline_memcpy_async(d, X + gr * E + gc, 16);
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) d[v] = (gr < nX && gc + v < E) ? X[gr * E + gc + v] : zero_of<T>();
    }
  }
}

// -- the gram tile ---------------------------------------------------------------------------------

// sG[i][j] = <A[a0 + i], B[b0 + j]> for i, j < BM (rows past M / N give zeros).
template <typename T, int KIND>
__device__ void gram_tile(const T* __restrict__ A, const T* __restrict__ B, int64_t a0, int64_t b0,
                          int64_t M, int64_t N, int64_t E, bool vec, unsigned char* smem) {
  using C = Cfg<T, KIND>;
  using Acc = typename C::Acc;
  constexpr int BM = C::BM, BK = C::BK, LDK = C::LDK;
  // stage s holds the A chunk at ops + s * 2 * BM * LDK and the B chunk right after it
  T* const ops = reinterpret_cast<T*>(smem);
  constexpr int kStage = 2 * BM * LDK;
  Acc* sG = reinterpret_cast<Acc*>(smem + C::kOffG);
  const int warp = threadIdx.x / 32;

  // accumulators live across the whole E loop
  constexpr int KM = KIND == MMA16 ? 16 : 8;  // WMMA k of one instruction
  using InT = std::conditional_t<KIND == MMA_TF32, wmma::precision::tf32, T>;
  using AccFrag = wmma::fragment<wmma::accumulator, 16, 16, KM, float>;
  constexpr int TM = BM / 16, TN = BM / 8;  // SIMT micro-tile per thread
  AccFrag acc_f[KIND == SIMT ? 1 : BM / 16];
  Acc acc_s[KIND == SIMT ? TM : 1][KIND == SIMT ? TN : 1];
  if constexpr (KIND == SIMT) {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc_s[i][j] = Acc(0);
  } else {
#pragma unroll
    for (int j = 0; j < BM / 16; ++j) wmma::fill_fragment(acc_f[j], 0.0f);
  }
  const int ty = threadIdx.x / 8, tx = threadIdx.x % 8;

  load_block<T, BM, BK, LDK>(A, a0, M, E, 0, ops, vec);
  load_block<T, BM, BK, LDK>(B, b0, N, E, 0, ops + BM * LDK, vec);
  __pipeline_commit();
  int stage = 0;
  for (int64_t k0 = 0; k0 < E; k0 += BK, stage ^= 1) {
    if (k0 + BK < E) {
      T* next = ops + (stage ^ 1) * kStage;
      load_block<T, BM, BK, LDK>(A, a0, M, E, k0 + BK, next, vec);
      load_block<T, BM, BK, LDK>(B, b0, N, E, k0 + BK, next + BM * LDK, vec);
    }
    __pipeline_commit();       // one group per iteration (possibly empty): uniform counting
    __pipeline_wait_prior(1);  // everything but the newest group has landed: this chunk
    __syncthreads();
    const T* a = ops + stage * kStage;
    const T* b = a + BM * LDK;
    if constexpr (KIND == SIMT) {
#pragma unroll 4
      for (int kk = 0; kk < BK; ++kk) {
        Acc av[TM], bv[TN];
#pragma unroll
        for (int i = 0; i < TM; ++i) av[i] = a[(ty * TM + i) * LDK + kk];
#pragma unroll
        for (int j = 0; j < TN; ++j) bv[j] = b[(tx + 8 * j) * LDK + kk];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc_s[i][j] = fma(av[i], bv[j], acc_s[i][j]);
      }
    } else {
#pragma unroll
      for (int kk = 0; kk < BK; kk += KM) {
        wmma::fragment<wmma::matrix_a, 16, 16, KM, InT, wmma::row_major> fa;
        wmma::load_matrix_sync(fa, a + warp * 16 * LDK + kk, LDK);
        if constexpr (KIND == MMA_TF32) {
#pragma unroll
          for (int t = 0; t < fa.num_elements; ++t) fa.x[t] = wmma::__float_to_tf32(fa.x[t]);
        }
#pragma unroll
        for (int j = 0; j < BM / 16; ++j) {
          // Bᵀ chunk: element (k, n) at b[n * LDK + k], i.e. column-major
          wmma::fragment<wmma::matrix_b, 16, 16, KM, InT, wmma::col_major> fb;
          wmma::load_matrix_sync(fb, b + j * 16 * LDK + kk, LDK);
          if constexpr (KIND == MMA_TF32) {
#pragma unroll
            for (int t = 0; t < fb.num_elements; ++t) fb.x[t] = wmma::__float_to_tf32(fb.x[t]);
          }
          wmma::mma_sync(acc_f[j], fa, fb, acc_f[j]);
        }
      }
    }
    __syncthreads();  // this stage is read; the next iteration may overwrite it
  }
  if constexpr (KIND == SIMT) {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) sG[(ty * TM + i) * C::LDG + tx + 8 * j] = acc_s[i][j];
  } else {
#pragma unroll
    for (int j = 0; j < BM / 16; ++j)
      wmma::store_matrix_sync(sG + warp * 16 * C::LDG + j * 16, acc_f[j], C::LDG, wmma::mem_row_major);
  }
  __syncthreads();
}


// -- kernels ----------------------------------------------------------------------------------------

struct KParams {
  const void* A;
  const void* B;
  const void* r;
  const void* c;
  const void* scale;
  const void* bias;
  const int64_t* la;
  const int64_t* lb;
  int64_t M, N, E;
  bool exclude_self;
  bool vec;  // rows of A and B are 16-byte aligned: asynchronous 16-byte copies
};

struct BParams {
  const void* g_own;
  const void* g_oth;
  const void* loss_own;
  const void* loss_oth;
  const void* st_own;
  const void* st_oth;
  void* dX;      // Acc [padded rows of the owner side, ldx]
  int64_t ldx;   // padded_cols(E)
  void* sum_ds;  // Acc [n_own]
  void* sum_dst; // Acc [n_own] (rows launch only)
};

// One thread's view of its owner row, and how both kernels read a tile. Thread t serves owner row
// t / TPR of the block, and its part t % TPR covers CPT consecutive entries of each tile row.
template <typename T, int KIND, bool COLUMNS>
struct Owner {
  using C = Cfg<T, KIND>;
  using Acc = typename C::Acc;
  const KParams& p;
  int64_t n_own, n_oth, own0, own, lab_own;
  const int64_t* lab_oth;
  const typename C::Acc* rc_oth;
  int lrow, part;
  bool own_ok;
  Acc rc_own, scale, bias;

  __device__ __forceinline__ explicit Owner(const KParams& params) : p(params) {
    const Acc* r = static_cast<const Acc*>(p.r);
    const Acc* c = static_cast<const Acc*>(p.c);
    n_own = COLUMNS ? p.N : p.M;
    n_oth = COLUMNS ? p.M : p.N;
    lab_oth = COLUMNS ? p.la : p.lb;
    rc_oth = COLUMNS ? r : c;
    own0 = int64_t(blockIdx.x) * C::BM;
    lrow = threadIdx.x / C::TPR;
    part = threadIdx.x % C::TPR;
    own = own0 + lrow;
    own_ok = own < n_own;
    lab_own = own_ok ? (COLUMNS ? p.lb : p.la)[own] : 0;
    rc_own = own_ok ? (COLUMNS ? c : r)[own] : Acc(0);
    scale = *static_cast<const Acc*>(p.scale);
    bias = *static_cast<const Acc*>(p.bias);
  }

  // Labels and row/column terms of the other side's block at k0, to shared memory.
  __device__ __forceinline__ void stage_other(int64_t k0, int64_t* sLab, Acc* sRC) const {
    for (int i = threadIdx.x; i < C::BM; i += kThreads) {
      const int64_t o = k0 + i;
      sLab[i] = o < n_oth ? lab_oth[o] : 0;
      sRC[i] = o < n_oth ? rc_oth[o] : Acc(0);
    }
  }

  // The gram tile of (owned block, other block at k0), always as A rows x B rows.
  __device__ __forceinline__ void gram(int64_t k0, unsigned char* smem) const {
    const T* A = static_cast<const T*>(p.A);
    const T* B = static_cast<const T*>(p.B);
    if (COLUMNS)
      gram_tile<T, KIND>(A, B, k0, own0, p.M, p.N, p.E, p.vec, smem);
    else
      gram_tile<T, KIND>(A, B, own0, k0, p.M, p.N, p.E, p.vec, smem);
  }

  // Entry j of this thread's row in the tile at k0: raw value t, logit s; returns whether the pair
  // is valid (in range, not excluded) and sets pos for a valid pair of one identity.
  __device__ __forceinline__ bool entry(int j, int64_t k0, const Acc* sG, const Acc* sRC, const int64_t* sLab,
                                        Acc& t, Acc& s, bool& pos) const {
    const int64_t o = k0 + j;
    const bool valid = own_ok && o < n_oth && !(p.exclude_self && o == own);
    const Acc g = COLUMNS ? sG[j * C::LDG + lrow] : sG[lrow * C::LDG + j];
    t = COLUMNS ? raw_value(g, sRC[j], rc_own) : raw_value(g, rc_own, sRC[j]);
    s = logit(t, scale, bias);
    pos = valid && sLab[j] == lab_own;
    return valid;
  }
};

template <typename T, int KIND, bool COLUMNS, Loss LOSS>
__global__ void __launch_bounds__(kThreads, kMinBlocks) fwd_kernel(KParams p, void* loss_out, void* stats_out) {
  using C = Cfg<T, KIND>;
  using Acc = typename C::Acc;
  constexpr int BM = C::BM, TPR = C::TPR, CPT = C::CPT;
  extern __shared__ __align__(128) unsigned char smem[];
  Acc* sG = reinterpret_cast<Acc*>(smem + C::kOffG);
  int64_t* sLab = reinterpret_cast<int64_t*>(smem + C::kOffSide);
  Acc* sRC = reinterpret_cast<Acc*>(sLab + BM);
  const Owner<T, KIND, COLUMNS> me(p);

  if constexpr (LOSS == Loss::SIGMOID) {
    // -- sigmoid: sums of the pair losses, no statistics --
    // Each thread sums its CPT entries of a tile in Acc, the tile sums in double (CPU: double);
    // then the TPR threads of a row merge by a butterfly (a + b = b + a: every lane the same bits).
    double sum = 0;
    for (int64_t k0 = 0; k0 < me.n_oth; k0 += BM) {
      me.stage_other(k0, sLab, sRC);
      me.gram(k0, smem);
      Acc tile = 0;
#pragma unroll
      for (int jj = 0; jj < CPT; ++jj) {
        Acc t, s;
        bool pos;
        const bool valid = me.entry(me.part * CPT + jj, k0, sG, sRC, sLab, t, s, pos);
        tile += valid ? sigmoid_pair_loss(s, pos) : Acc(0);
      }
      sum += double(tile);
      __syncthreads();  // sG, sLab, sRC are rewritten by the next tile
    }
#pragma unroll
    for (int off = TPR / 2; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (me.part == 0 && me.own_ok) {
      double* stats = static_cast<double*>(stats_out);
      static_cast<Acc*>(loss_out)[me.own] = Acc(sum);
#pragma unroll
      for (int k = 0; k < kStats; ++k) stats[me.own * kStats + k] = 0.0;
    }
  } else {
    Online<Acc> st;
    online_init(st);
    for (int64_t k0 = 0; k0 < me.n_oth; k0 += BM) {
      me.stage_other(k0, sLab, sRC);
      me.gram(k0, smem);

      // -- this thread's logits of the tile, tile maxima, positives --
      Acc s_loc[CPT];
      uint32_t pos_mask = 0, valid_mask = 0;
      Acc tmax = neg_inf<Acc>(), tpmax = neg_inf<Acc>(), cnt = 0;
#pragma unroll
      for (int jj = 0; jj < CPT; ++jj) {
        Acc t, s;
        bool pos;
        const bool valid = me.entry(me.part * CPT + jj, k0, sG, sRC, sLab, t, s, pos);
        s_loc[jj] = s;
        valid_mask |= uint32_t(valid) << jj;
        pos_mask |= uint32_t(pos) << jj;
        tmax = valid ? fmax(tmax, s) : tmax;
        tpmax = pos ? fmax(tpmax, s) : tpmax;
        cnt += pos ? Acc(1) : Acc(0);
      }
      // -- rescale the running sums to the new maxima, then add this tile --
      Online<Acc> add;
      online_init(add);
      add.n = cnt;
      add.m = tmax;
      add.mp = tpmax;
#pragma unroll
      for (int jj = 0; jj < CPT; ++jj) {
        if (!((valid_mask >> jj) & 1u)) continue;
        const bool pos = (pos_mask >> jj) & 1u;
        const Acc x = s_loc[jj] - tmax;
        const Acc e = ex(x);
        add.l += e;
        add.w += e * x;
        if (!pos) add.lneg += e;
        if (pos) add.lp += ex(s_loc[jj] - tpmax);
      }
      st = online_merge(st, add);
      __syncthreads();  // sG, sLab, sRC are rewritten by the next tile
    }

    // -- merge the TPR threads of each row; the first writes the loss and the stats --
#pragma unroll
    for (int off = TPR / 2; off > 0; off /= 2) st = online_merge(st, shfl_xor(st, off));
    if (me.part == 0 && me.own_ok)
      write_finished<LOSS>(st, static_cast<Acc*>(loss_out), static_cast<double*>(stats_out), me.own);
  }
}

// dX[own0 : own0 + BM, e0 : e0 + BX] (+)= dT Y_chunk, dT in shared [BM][LDT], Y chunk [BM][LDX].
template <typename T, int KIND>
__device__ __forceinline__ void dx_chunk(const T* sDT, const T* sY, typename Cfg<T, KIND>::Acc* dX,
                                         int64_t ldx, bool first) {
  using C = Cfg<T, KIND>;
  using Acc = typename C::Acc;
  constexpr int BM = C::BM, BX = C::BX;
  if constexpr (KIND == SIMT) {
    constexpr int TM = BM / 16, TN = BX / 8;
    const int ty = threadIdx.x / 8, tx = threadIdx.x % 8;
    Acc acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = first ? Acc(0) : dX[int64_t(ty * TM + i) * ldx + tx + 8 * j];
#pragma unroll 4
    for (int k = 0; k < BM; ++k) {
      Acc av[TM], bv[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) av[i] = sDT[(ty * TM + i) * C::LDT + k];
#pragma unroll
      for (int j = 0; j < TN; ++j) bv[j] = sY[k * C::LDX + tx + 8 * j];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fma(av[i], bv[j], acc[i][j]);
    }
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) dX[int64_t(ty * TM + i) * ldx + tx + 8 * j] = acc[i][j];
  } else {
    constexpr int KM = KIND == MMA16 ? 16 : 8;
    using InT = std::conditional_t<KIND == MMA_TF32, wmma::precision::tf32, T>;
    const int warp = threadIdx.x / 32;
    wmma::fragment<wmma::accumulator, 16, 16, KM, float> acc[BX / 16];
    float* rows = dX + int64_t(warp) * 16 * ldx;
#pragma unroll
    for (int j = 0; j < BX / 16; ++j) {
      if (first)
        wmma::fill_fragment(acc[j], 0.0f);
      else
        wmma::load_matrix_sync(acc[j], rows + j * 16, unsigned(ldx), wmma::mem_row_major);
    }
#pragma unroll
    for (int k = 0; k < BM; k += KM) {
      wmma::fragment<wmma::matrix_a, 16, 16, KM, InT, wmma::row_major> fa;
      wmma::load_matrix_sync(fa, sDT + warp * 16 * C::LDT + k, C::LDT);
      if constexpr (KIND == MMA_TF32) {
#pragma unroll
        for (int t = 0; t < fa.num_elements; ++t) fa.x[t] = wmma::__float_to_tf32(fa.x[t]);
      }
#pragma unroll
      for (int j = 0; j < BX / 16; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, KM, InT, wmma::row_major> fb;
        wmma::load_matrix_sync(fb, sY + k * C::LDX + j * 16, C::LDX);
        if constexpr (KIND == MMA_TF32) {
#pragma unroll
          for (int t = 0; t < fb.num_elements; ++t) fb.x[t] = wmma::__float_to_tf32(fb.x[t]);
        }
        wmma::mma_sync(acc[j], fa, fb, acc[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < BX / 16; ++j)
      wmma::store_matrix_sync(rows + j * 16, acc[j], unsigned(ldx), wmma::mem_row_major);
  }
}

template <typename T, int KIND, bool COLUMNS, Loss LOSS>
__global__ void __launch_bounds__(kThreads, kMinBlocks) bwd_kernel(KParams p, BParams q) {
  using C = Cfg<T, KIND>;
  using Acc = typename C::Acc;
  constexpr int BM = C::BM, TPR = C::TPR, CPT = C::CPT;
  extern __shared__ __align__(128) unsigned char smem[];
  T* sY = reinterpret_cast<T*>(smem);  // reuses the operand stages once the gram tile is done
  Acc* sG = reinterpret_cast<Acc*>(smem + C::kOffG);
  T* sDT = reinterpret_cast<T*>(smem + C::kOffDT);
  int64_t* sLab = reinterpret_cast<int64_t*>(smem + C::kOffSide);
  Acc* sRC = reinterpret_cast<Acc*>(sLab + BM);
  Acc* sGo = sRC + BM;
  Acc* sLse = sGo + BM;
  Acc* sLseLo = sLse + BM;
  Acc* sLsep = sLseLo + BM;
  Acc* sLsepLo = sLsep + BM;
  Acc* sLoss = sLsepLo + BM;
  Acc* sLogq = sLoss + BM;
  const Owner<T, KIND, COLUMNS> me(p);
  const T* Y = static_cast<const T*>(COLUMNS ? p.A : p.B);  // the other side's features: dX = dT Y
  const Acc* g_oth = static_cast<const Acc*>(q.g_oth);
  const Acc* loss_oth = static_cast<const Acc*>(q.loss_oth);
  const double* st_oth = static_cast<const double*>(q.st_oth);
  Acc* dX = static_cast<Acc*>(q.dX);
  Side<Acc> mine{Acc(0), Acc(0), Acc(0), Acc(0), Acc(0), Acc(0), Acc(0)};
  if (me.own_ok)
    mine = side_of<LOSS>(static_cast<const Acc*>(q.g_own), static_cast<const Acc*>(q.loss_own),
                         static_cast<const double*>(q.st_own), me.own);

  Acc sum_ds = 0, sum_dst = 0;
  for (int64_t k0 = 0; k0 < me.n_oth; k0 += BM) {
    me.stage_other(k0, sLab, sRC);
    for (int i = threadIdx.x; i < BM; i += kThreads) {
      const int64_t o = k0 + i;
      Side<Acc> s{Acc(0), Acc(0), Acc(0), Acc(0), Acc(0), Acc(0), Acc(0)};
      if (o < me.n_oth) s = side_of<LOSS>(g_oth, loss_oth, st_oth, o);
      sGo[i] = s.g;
      sLse[i] = s.lse;
      sLseLo[i] = s.lse_lo;
      sLsep[i] = s.lsep;
      sLsepLo[i] = s.lsep_lo;
      sLoss[i] = s.loss;
      sLogq[i] = s.logq;
    }
    me.gram(k0, smem);

    // -- dS of this thread's entries (0 where not a valid pair); dT = scale dS to shared --
#pragma unroll 4
    for (int jj = 0; jj < CPT; ++jj) {
      const int j = me.part * CPT + jj;
      Acc t, s;
      bool pos;
      Acc ds = 0;
      if (me.entry(j, k0, sG, sRC, sLab, t, s, pos)) {
        if constexpr (LOSS == Loss::SIGMOID) {
          // (g_row + g_col) dl/dS: the same bits in the rows and the columns launch (a + b = b + a,
          // each operation rounded on its own: no contraction)
          ds = mul_rn(add_rn(mine.g, sGo[j]), sigmoid_pair_dlogit(s, pos));
        } else {
          ds = add_rn(dloss_dlogit<LOSS>(s, pos, mine.g, mine.lse, mine.lse_lo, mine.lsep, mine.lsep_lo, mine.loss,
                                         mine.logq),
                      dloss_dlogit<LOSS>(s, pos, sGo[j], sLse[j], sLseLo[j], sLsep[j], sLsepLo[j], sLoss[j], sLogq[j]));
        }
      }
      sum_ds += ds;
      if (!COLUMNS) sum_dst += ds * t;
      sDT[me.lrow * C::LDT + j] = to_operand<T>(me.scale * ds);
    }
    __syncthreads();  // dT complete; the operand stages are free for Y

    // -- dX[own rows] += dT Y[other rows], chunk by chunk of E --
    for (int64_t e0 = 0; e0 < q.ldx; e0 += C::BX) {
      load_block<T, BM, C::BX, C::LDX>(Y, k0, me.n_oth, p.E, e0, sY, p.vec);
      __pipeline_commit();
      __pipeline_wait_prior(0);
      __syncthreads();
      dx_chunk<T, KIND>(sDT, sY, dX + me.own0 * q.ldx + e0, q.ldx, k0 == 0);
      __syncthreads();  // sY is reloaded next chunk; sDT, sG next tile
    }
  }

#pragma unroll
  for (int off = TPR / 2; off > 0; off /= 2) {
    sum_ds += __shfl_xor_sync(0xffffffffu, sum_ds, off);
    if (!COLUMNS) sum_dst += __shfl_xor_sync(0xffffffffu, sum_dst, off);
  }
  if (me.part == 0 && me.own_ok) {
    static_cast<Acc*>(q.sum_ds)[me.own] = sum_ds;
    if (!COLUMNS) static_cast<Acc*>(q.sum_dst)[me.own] = sum_dst;
  }
}

// -- host side --------------------------------------------------------------------------------------

KParams make_params(const Args& a) {
  KParams p;
  p.A = a.A;
  p.B = a.B;
  p.r = a.r;
  p.c = a.c;
  p.scale = a.scale;
  p.bias = a.bias;
  p.la = a.labels_a;
  p.lb = a.labels_b;
  p.M = a.M;
  p.N = a.N;
  p.E = a.E;
  p.exclude_self = a.exclude_self;
  return p;
}

template <typename T>
bool rows_aligned(const Args& a) {
  const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  return (a.E * int64_t(sizeof(T))) % 16 == 0 && aligned(a.A) && aligned(a.B);
}

template <typename Kernel>
cudaError_t prepare(Kernel kernel, size_t smem) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
}

template <typename T, int KIND, Loss LOSS>
cudaError_t forward_t(const Args& a, void* loss_rows, void* loss_cols, void* row_stats, void* col_stats,
                      cudaStream_t stream) {
  using C = Cfg<T, KIND>;
  KParams p = make_params(a);
  p.vec = rows_aligned<T>(a);
  const auto rows_kernel = fwd_kernel<T, KIND, false, LOSS>;
  const auto cols_kernel = fwd_kernel<T, KIND, true, LOSS>;
  cudaError_t err;
  if ((err = prepare(rows_kernel, C::kSmem)) != cudaSuccess) return err;
  if ((err = prepare(cols_kernel, C::kSmem)) != cudaSuccess) return err;
  rows_kernel<<<unsigned((a.M + C::BM - 1) / C::BM), kThreads, C::kSmem, stream>>>(p, loss_rows, row_stats);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  cols_kernel<<<unsigned((a.N + C::BM - 1) / C::BM), kThreads, C::kSmem, stream>>>(p, loss_cols, col_stats);
  return cudaGetLastError();
}

template <typename T, int KIND, Loss LOSS>
cudaError_t backward_t(const Args& a, const void* grad_rows, const void* grad_cols, const void* loss_rows,
                       const void* loss_cols, const void* row_stats, const void* col_stats, void* dA_acc,
                       void* dB_acc, void* sum_ds_rows, void* sum_dst_rows, void* sum_ds_cols,
                       cudaStream_t stream) {
  using C = Cfg<T, KIND>;
  KParams p = make_params(a);
  p.vec = rows_aligned<T>(a);
  const int64_t ldx = round_up(a.E, C::BX);
  BParams rows{grad_rows, grad_cols, loss_rows, loss_cols, row_stats, col_stats, dA_acc, ldx, sum_ds_rows, sum_dst_rows};
  BParams cols{grad_cols, grad_rows, loss_cols, loss_rows, col_stats, row_stats, dB_acc, ldx, sum_ds_cols, nullptr};
  const auto rows_kernel = bwd_kernel<T, KIND, false, LOSS>;
  const auto cols_kernel = bwd_kernel<T, KIND, true, LOSS>;
  cudaError_t err;
  if ((err = prepare(rows_kernel, C::kSmem)) != cudaSuccess) return err;
  if ((err = prepare(cols_kernel, C::kSmem)) != cudaSuccess) return err;
  rows_kernel<<<unsigned((a.M + C::BM - 1) / C::BM), kThreads, C::kSmem, stream>>>(p, rows);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  cols_kernel<<<unsigned((a.N + C::BM - 1) / C::BM), kThreads, C::kSmem, stream>>>(p, cols);
  return cudaGetLastError();
}

template <typename T_, int KIND_>
struct TypeKind {
  using type = T_;
  static constexpr int kind = KIND_;
};

struct ForwardRun {
  template <typename T, int KIND, Loss LOSS, typename... Rest>
  static cudaError_t run(const Args& a, Rest... rest) { return forward_t<T, KIND, LOSS>(a, rest...); }
};
struct BackwardRun {
  template <typename T, int KIND, Loss LOSS, typename... Rest>
  static cudaError_t run(const Args& a, Rest... rest) { return backward_t<T, KIND, LOSS>(a, rest...); }
};

// Calls F::run<T, KIND, LOSS>(a, rest...) for the dtype, precision and loss of a.
template <typename F, typename... Rest>
cudaError_t dispatch(const Args& a, Rest... rest) {
  const auto by_loss = [&](auto tag) -> cudaError_t {
    using TK = decltype(tag);
    switch (a.loss) {
      case Loss::SDM: return F::template run<typename TK::type, TK::kind, Loss::SDM>(a, rest...);
      case Loss::INFONCE: return F::template run<typename TK::type, TK::kind, Loss::INFONCE>(a, rest...);
      case Loss::SIGMOID: return F::template run<typename TK::type, TK::kind, Loss::SIGMOID>(a, rest...);
    }
    return cudaErrorInvalidValue;
  };
  switch (a.dtype) {
    case DType::F16: return by_loss(TypeKind<__half, MMA16>{});
    case DType::BF16: return by_loss(TypeKind<__nv_bfloat16, MMA16>{});
    case DType::F32:
      return a.precision == Precision::TF32 ? by_loss(TypeKind<float, MMA_TF32>{})
                                            : by_loss(TypeKind<float, SIMT>{});
    case DType::F64: return by_loss(TypeKind<double, SIMT>{});
  }
  return cudaErrorInvalidValue;
}

bool sizes_ok(const Args& a) { return a.M > 0 && a.N > 0 && a.E > 0; }

}  // namespace

int64_t padded_rows(DType dtype, int64_t n) { return round_up(n, dtype == DType::F64 ? 32 : 64); }

int64_t padded_cols(DType dtype, Precision precision, int64_t E) {
  const bool simt = dtype == DType::F64 || (dtype == DType::F32 && precision == Precision::IEEE);
  return round_up(E, simt ? 32 : 64);
}

size_t shared_bytes(DType dtype, Precision precision) {
  switch (dtype) {
    case DType::F16: return Cfg<__half, MMA16>::kSmem;
    case DType::BF16: return Cfg<__nv_bfloat16, MMA16>::kSmem;
    case DType::F32: return precision == Precision::TF32 ? Cfg<float, MMA_TF32>::kSmem : Cfg<float, SIMT>::kSmem;
    case DType::F64: return Cfg<double, SIMT>::kSmem;
  }
  return 0;
}

cudaError_t contrast_forward(const Args& a, void* loss_rows, void* loss_cols, void* row_stats,
                             void* col_stats, cudaStream_t stream) {
  if (!sizes_ok(a)) return cudaErrorInvalidValue;
  return dispatch<ForwardRun>(a, loss_rows, loss_cols, row_stats, col_stats, stream);
}

cudaError_t contrast_backward(const Args& a, const void* grad_rows, const void* grad_cols,
                              const void* loss_rows, const void* loss_cols, const void* row_stats,
                              const void* col_stats, void* dA_acc, void* dB_acc, void* sum_ds_rows,
                              void* sum_dst_rows, void* sum_ds_cols, cudaStream_t stream) {
  if (!sizes_ok(a)) return cudaErrorInvalidValue;
  return dispatch<BackwardRun>(a, grad_rows, grad_cols, loss_rows, loss_cols, row_stats, col_stats,
                               dA_acc, dB_acc, sum_ds_rows, sum_dst_rows, sum_ds_cols, stream);
}

}  // namespace cuda
}  // namespace uca
