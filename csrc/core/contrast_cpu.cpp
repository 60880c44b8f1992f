// Fused contrast op on the CPU: tiled GEMM (through the Gemm interface) + a vectorised epilogue.
//
// Forward, for each rows x cols tile in a fixed order: G = A_tile B_tile^T, then
//   row pass (OpenMP over rows):        S = scale (G + r + c) + bias in place, online row stats;
//   column pass (OpenMP over columns):  online column stats from the same S tile.
// Row and column states are merged in tile order on one thread per row / column, so results are
// bit-identical run to run (no atomics, no order that depends on scheduling).
//
// Backward recomputes G per tile, forms dS from the saved statistics, overwrites the tile with
// dT = scale dS, reduces dr, dc, dscale, dbias, and accumulates dA += dT B, dB += dT^T A.
//
// SIGMOID has no statistics: the forward's row pass overwrites the tile with the pair losses
// l = softplus(-y S) and adds them to the row sums, its column pass adds the same tile to the column
// sums; the backward forms dS = (g_row + g_col) dl/dS from the upstream gradients alone.
#include "contrast.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace uca {
namespace {

// Leaf loops are compiled for AVX-512, AVX2 + FMA and baseline x86-64 and picked at load time.
// The x86-64-v4 / v3 feature levels, not CPU names: GCC resolves an "arch=<cpu>" clone by the CPU
// model, which virtual machines often hide (here every leaf then ran its scalar SSE2 clone, ~6x
// slower), and a feature level by the CPUID feature bits.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define UCA_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define UCA_MULTIVERSION
#endif
#define UCA_INLINE inline __attribute__((always_inline))

template <typename T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();
// Arguments of exp are clamped to [kLow, 0]; exp(kLow) is exactly 0 (see vexp).
template <typename T>
constexpr T kLow = T(-100);
template <>
constexpr double kLow<double> = -800.0;

// exp(x) for x in [kLow, 0]: Cephes range reduction + degree-6 polynomial, branch-free so loops
// over it vectorise (selects only, and -fno-trapping-math: without it GCC keeps a branch around the
// float ops and the loop stays scalar); returns 0 below -87 (the float underflow point).
UCA_INLINE float vexp(float x0) {
  const float keep = x0 < -87.0f ? 0.0f : 1.0f;
  const float x = std::min(std::max(x0, -87.0f), 0.0f);
  const float v = x * 1.44269504088896341f + 0.5f;
  int32_t n = static_cast<int32_t>(v);
  n -= (v < static_cast<float>(n)) ? 1 : 0;  // floor(x log2 e + 1/2)
  const float fn = static_cast<float>(n);
  float r = x - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (n + 127) << 23;  // 2^n, n in [-126, 0]
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(float));
  return y * two_n * keep;
}
UCA_INLINE double vexp(double x) { return x < -708.0 ? 0.0 : std::exp(x > 0.0 ? 0.0 : x); }

// log(1 + e) for e in [0, 1]: 2 atanh(z), z = e / (2 + e) in [0, 1/3], odd series up to z^15
// (truncation error below 2e-9 relative, under float rounding; no cancellation for small e).
// Branch-free, so loops over it vectorise.
UCA_INLINE float log1p_unit(float e) {
  const float z = e / (2.0f + e), z2 = z * z;
  float p = 1.0f / 15.0f;
  p = p * z2 + 1.0f / 13.0f;
  p = p * z2 + 1.0f / 11.0f;
  p = p * z2 + 1.0f / 9.0f;
  p = p * z2 + 1.0f / 7.0f;
  p = p * z2 + 1.0f / 5.0f;
  p = p * z2 + 1.0f / 3.0f;
  p = p * z2 + 1.0f;
  return 2.0f * z * p;
}
UCA_INLINE double log1p_unit(double e) { return std::log1p(e); }

// softplus(x) = max(x, 0) + log(1 + e^-|x|): finite and accurate for every finite x (e^-|x| never
// overflows; it underflows to 0 where it should). Its derivative, the logistic sigma(x), is
// (x >= 0 ? 1 : e^-|x|) / (1 + e^-|x|) (bwd_row_impl, modes 3 and 4).
template <typename T>
UCA_INLINE T softplus(T x) {
  return std::max(x, T(0)) + log1p_unit(vexp(-std::fabs(x)));
}

// Positive sums are rescaled from sums relative to the overall max while the best positive is
// within this gap of it (below, exp(s - m) of a relevant positive could underflow: recompute).
template <typename T>
constexpr double kFastGap = 60.0;
template <>
constexpr double kFastGap<double> = 600.0;

template <typename T>
UCA_INLINE T clamp_arg(T x) {
  return x < kLow<T> ? kLow<T> : (x > T(0) ? T(0) : x);
}

// Online statistics of one row or column (structure of arrays so columns vectorise).
// Over valid entries, relative to the running max m: l = sum e, w = sum e (s - m),
// lneg = sum over negatives of e; over positives, relative to their own max mp: lp = sum e.
// Kept in double whatever the input type: the SDM backward reuses the loss built from these
// sums, and float32 sums of thousands of terms would put their rounding into every gradient.
struct Stats {
  std::vector<double> m, l, w, lneg, mp, lp, n;
  explicit Stats(int64_t size)
      : m(size, kNegInf<double>), l(size, 0), w(size, 0), lneg(size, 0), mp(size, kNegInf<double>),
        lp(size, 0), n(size, 0) {}
};

// Rescale one state to new maxima (tile maxima tmax over valid, tpmax over positives).
template <typename T = double>
UCA_INLINE void merge_max(T& m, T& l, T& w, T& lneg, T& mp, T& lp, T tmax, T tpmax, T& m_new,
                          T& mp_new) {
  m_new = std::max(m, tmax);
  if (m_new != kNegInf<T>) {
    if (m == kNegInf<T>) {
      l = w = lneg = 0;
    } else if (m_new != m) {
      const T alpha = static_cast<T>(std::exp(static_cast<double>(m - m_new)));
      w = alpha * (w + (m - m_new) * l);
      l *= alpha;
      lneg *= alpha;
    }
    m = m_new;
  }
  mp_new = std::max(mp, tpmax);
  if (mp_new != kNegInf<T>) {
    if (mp == kNegInf<T>) {
      lp = 0;
    } else if (mp_new != mp) {
      lp *= static_cast<T>(std::exp(static_cast<double>(mp - mp_new)));
    }
    mp = mp_new;
  }
}

// -- forward, one row of a tile ---------------------------------------------------------------
template <typename T>
UCA_INLINE void fwd_row_impl(int64_t nj, T* s, T ri, const T* cj, T scale, T bias, int64_t la,
                             const int64_t* lb, int64_t self_j, double* st_m, double* st_l,
                             double* st_w, double* st_lneg, double* st_mp, double* st_lp,
                             double* st_n) {
  // -- logits in place --
#pragma omp simd
  for (int64_t j = 0; j < nj; ++j) s[j] = scale * (s[j] + ri + cj[j]) + bias;
  if (self_j >= 0) s[self_j] = kNegInf<T>;
  // -- tile maxima and positive count --
  T tmax = kNegInf<T>, tpmax = kNegInf<T>, cnt = 0;
#pragma omp simd reduction(max : tmax, tpmax) reduction(+ : cnt)
  for (int64_t j = 0; j < nj; ++j) {
    const bool pos = la == lb[j];
    tmax = std::max(tmax, s[j]);
    tpmax = std::max(tpmax, pos ? s[j] : kNegInf<T>);
    cnt += pos ? T(1) : T(0);
  }
  if (self_j >= 0 && la == lb[self_j]) cnt -= 1;
  *st_n += cnt;
  double md, mpd;
  merge_max<double>(*st_m, *st_l, *st_w, *st_lneg, *st_mp, *st_lp, tmax, tpmax, md, mpd);
  if (md == kNegInf<double>) return;  // nothing valid in this tile row
  // -- online log-sum-exp sums (maxima are tile values, so exact in T) --
  const T m = static_cast<T>(md), mp = static_cast<T>(mpd);
  // Sums over one tile row in T (a double accumulator inside the loop stops it from vectorising);
  // they go into the double row state below.
  T l = 0, w = 0, lneg = 0, lpm = 0;
#pragma omp simd reduction(+ : l, w, lneg, lpm)
  for (int64_t j = 0; j < nj; ++j) {
    const bool pos = la == lb[j];
    const T x = clamp_arg(s[j] - m);
    const T e = vexp(x);
    l += e;
    w += e * x;
    lneg += pos ? T(0) : e;
    lpm += pos ? e : T(0);
  }
  *st_l += l;
  *st_w += w;
  *st_lneg += lneg;
  if (mp == kNegInf<T>) return;
  // -- positives, relative to their own max: rescale the sum above, or recompute when the best
  //    positive is so far below the max that exp(s - m) may have underflowed --
  if (md - mpd < kFastGap<T>) {
    *st_lp += lpm * std::exp(md - mpd);
  } else {
    T lp = 0;
#pragma omp simd reduction(+ : lp)
    for (int64_t j = 0; j < nj; ++j) lp += la == lb[j] ? vexp(clamp_arg(s[j] - mp)) : T(0);
    *st_lp += lp;
  }
}

// -- forward, a chunk of columns of a tile (s already holds logits) ---------------------------
template <typename T>
UCA_INLINE void fwd_cols_impl(int64_t mi, int64_t nc, int64_t ld, const T* s, const int64_t* la,
                              const int64_t* lb, double* st_m, double* st_l, double* st_w,
                              double* st_lneg, double* st_mp, double* st_lp, double* st_n, T* tmax,
                              T* tpmax, T* cnt, double* lpm) {
  for (int64_t j = 0; j < nc; ++j) tmax[j] = tpmax[j] = kNegInf<T>, cnt[j] = 0;
  for (int64_t i = 0; i < mi; ++i) {
    const T* si = s + i * ld;
    const int64_t lai = la[i];
#pragma omp simd
    for (int64_t j = 0; j < nc; ++j) {
      const bool pos = lai == lb[j];
      tmax[j] = std::max(tmax[j], si[j]);
      tpmax[j] = std::max(tpmax[j], pos ? si[j] : kNegInf<T>);
      cnt[j] += pos ? T(1) : T(0);
    }
  }
  for (int64_t j = 0; j < nc; ++j) {
    st_n[j] += cnt[j];
    double m, mp;
    merge_max<double>(st_m[j], st_l[j], st_w[j], st_lneg[j], st_mp[j], st_lp[j], tmax[j], tpmax[j],
                      m, mp);
    // The maxima to subtract; 0 where there is none yet (then every s is -inf and e = 0).
    tmax[j] = m == kNegInf<double> ? T(0) : static_cast<T>(m);
    tpmax[j] = mp == kNegInf<double> ? T(0) : static_cast<T>(mp);
  }
  for (int64_t j = 0; j < nc; ++j) lpm[j] = 0;
  for (int64_t i = 0; i < mi; ++i) {
    const T* si = s + i * ld;
    const int64_t lai = la[i];
#pragma omp simd
    for (int64_t j = 0; j < nc; ++j) {
      const bool pos = lai == lb[j];
      const T x = clamp_arg(si[j] - tmax[j]);
      const T e = vexp(x);
      st_l[j] += e;
      st_w[j] += e * x;
      st_lneg[j] += pos ? T(0) : e;
      lpm[j] += pos ? e : T(0);
    }
  }
  // -- positives relative to their own max (see fwd_row_impl) --
  for (int64_t j = 0; j < nc; ++j) {
    if (st_mp[j] == kNegInf<double>) continue;
    const double gap = st_m[j] - st_mp[j];
    if (gap < kFastGap<T>) {
      st_lp[j] += lpm[j] * std::exp(gap);
    } else {
      double lp = 0;
      for (int64_t i = 0; i < mi; ++i)
        lp += la[i] == lb[j] ? vexp(clamp_arg(s[i * ld + j] - tpmax[j])) : T(0);
      st_lp[j] += lp;
    }
  }
}

// -- backward, one row of a tile: dS, then dT = scale dS in place ---------------------------------
// Backward constants of rows or columns (arrays indexed like them): g = upstream gradient (0 where
// there is no positive), the float64 statistics split as LSE = lse + lse_lo (lse = LSE rounded to
// T, lse_lo = the rest rounded to T; likewise lsep for the positive LSE), loss, logq and
// fac = exp(LSE - positive LSE). log p is formed as (S - lse) - lse_lo: S - lse is exact wherever
// p is not negligible (Sterbenz), so p keeps T's relative precision even at |S| ~ 1e5, where a
// T-rounded LSE would shift every p of its row by up to half of T's spacing there.
template <typename T>
struct SideView {
  const T *g = nullptr, *lse = nullptr, *lse_lo = nullptr, *lsep = nullptr, *lsep_lo = nullptr,
          *loss = nullptr, *logq = nullptr, *fac = nullptr;
  SideView at(int64_t k) const {  // the view from row / column k on (null arrays stay null)
    auto off = [k](const T* x) { return x == nullptr ? x : x + k; };
    return {off(g), off(lse), off(lse_lo), off(lsep), off(lsep_lo), off(loss), off(logq), off(fac)};
  }
};

// rw: the row's constants (element 0 of each array); cl: the tile's columns'. MODE:
//   0 = sdm, 1 = infonce with the positive softmax from p * fac (one exp fewer per element),
//   2 = infonce with it recomputed (a row or column whose best positive is far below its max),
//   3 = sigmoid: dS = (gr + gc) dl/dS, dl/dS = -y sigma(-y S) (no statistics read),
//   4 = sigmoid, scalar loss: dS = dl/dS (unit weight) and the pair losses' sum in out[3].
// Writes the sums of dS*t, dS and dT over the row to out[0..2].
template <typename T, int MODE>
UCA_INLINE void bwd_row_impl(int64_t nj, T* g, T ri, const T* cj, T scale, T bias, int64_t la,
                             const int64_t* lb, int64_t self_j, T log_eps, const SideView<T>& rw,
                             const SideView<T>& cl, T* out) {
  // the row's constants in locals (MODE 4 reads none: its gradient weight is 1)
  const T gr = MODE == 4 ? T(1) : rw.g[0];
  const T lse_r = MODE < 3 ? rw.lse[0] : T(0), lse_lo_r = MODE < 3 ? rw.lse_lo[0] : T(0);
  const T lsep_r = MODE < 3 ? rw.lsep[0] : T(0), lsep_lo_r = MODE < 3 ? rw.lsep_lo[0] : T(0);
  const T loss_r = MODE < 3 ? rw.loss[0] : T(0), logq_r = MODE < 3 ? rw.logq[0] : T(0);
  const T fac_r = MODE < 3 ? rw.fac[0] : T(0);
  const T *gc = cl.g, *lse_c = cl.lse, *lse_lo_c = cl.lse_lo, *lsep_c = cl.lsep, *lsep_lo_c = cl.lsep_lo,
          *loss_c = cl.loss, *logq_c = cl.logq, *fac_c = cl.fac;
  T acc_st = 0, acc_s = 0, acc_t = 0, acc_l = 0;  // in T: see fwd_row_impl
#pragma omp simd reduction(+ : acc_st, acc_s, acc_t, acc_l)
  for (int64_t j = 0; j < nj; ++j) {
    const T t = g[j] + ri + cj[j];
    const T s = scale * t + bias;
    const bool pos = la == lb[j];
    T ds;
    if constexpr (MODE >= 3) {
      // l = softplus(x), x = -y S; dl/dS = -y sigma(x). One exp serves both.
      const T x = pos ? -s : s;
      const T e = vexp(-std::fabs(x));
      const T sig = (x >= T(0) ? T(1) : e) / (T(1) + e);
      const T dl = pos ? -sig : sig;
      if constexpr (MODE == 3) {
        ds = (gr + gc[j]) * dl;
      } else {
        ds = dl;
        acc_l += j == self_j ? T(0) : std::max(x, T(0)) + log1p_unit(e);
      }
    } else {
      const T xr = clamp_arg((s - lse_r) - lse_lo_r), xc = clamp_arg((s - lse_c[j]) - lse_lo_c[j]);
      const T pr = vexp(xr), pc = vexp(xc);
      T dr_, dc_;
      if constexpr (MODE == 0) {
        dr_ = pr * (xr - (pos ? logq_r : log_eps) - loss_r);
        dc_ = pc * (xc - (pos ? logq_c[j] : log_eps) - loss_c[j]);
      } else if constexpr (MODE == 1) {
        dr_ = pr - (pos ? pr * fac_r : T(0));
        dc_ = pc - (pos ? pc * fac_c[j] : T(0));
      } else {
        dr_ = pr - (pos ? vexp(clamp_arg((s - lsep_r) - lsep_lo_r)) : T(0));
        dc_ = pc - (pos ? vexp(clamp_arg((s - lsep_c[j]) - lsep_lo_c[j])) : T(0));
      }
      ds = gr * dr_ + gc[j] * dc_;
    }
    ds = j == self_j ? T(0) : ds;
    acc_st += ds * t;
    acc_s += ds;
    const T dt = scale * ds;
    g[j] = dt;
    acc_t += dt;
  }
  out[0] = acc_st;
  out[1] = acc_s;
  out[2] = acc_t;
  if constexpr (MODE == 4) out[3] = acc_l;
}

// -- sigmoid loss, forward, one row of a tile: pair losses in place, their sum added to *acc ----
template <typename T>
UCA_INLINE void fwd_row_sigmoid_impl(int64_t nj, T* s, T ri, const T* cj, T scale, T bias, int64_t la,
                                     const int64_t* lb, int64_t self_j, double* acc) {
  T sum = 0;  // in T: see fwd_row_impl
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < nj; ++j) {
    const T logit = scale * (s[j] + ri + cj[j]) + bias;
    const T x = la == lb[j] ? -logit : logit;  // l = softplus(-y S)
    const T sp = softplus(x);                   // computed for every j: a select, not a branch
    const T l = j == self_j ? T(0) : sp;
    s[j] = l;
    sum += l;
  }
  *acc += sum;
}

// Column sums of a tile added to double accumulators (rows in order: deterministic).
template <typename T>
UCA_INLINE void col_sum_acc_impl(int64_t mi, int64_t nc, int64_t ld, const T* x, double* out) {
  for (int64_t i = 0; i < mi; ++i) {
    const T* xi = x + i * ld;
#pragma omp simd
    for (int64_t j = 0; j < nc; ++j) out[j] += xi[j];
  }
}

template <typename T>
UCA_INLINE void col_sum_impl(int64_t mi, int64_t nc, int64_t ld, const T* x, T* out) {
  for (int64_t i = 0; i < mi; ++i) {
    const T* xi = x + i * ld;
#pragma omp simd
    for (int64_t j = 0; j < nc; ++j) out[j] += xi[j];
  }
}

// Non-template, multiversioned entry points (target_clones does not apply to templates).
#define UCA_BWD_MODE(T, MODE)                                                                      \
  case MODE:                                                                                       \
    bwd_row_impl<T, MODE>(nj, g, ri, cj, scale, bias, la, lb, self_j, log_eps, rw, cl, out);       \
    break;
#define UCA_LEAVES(T)                                                                              \
  UCA_MULTIVERSION void fwd_row(int64_t nj, T* s, T ri, const T* cj, T scale, T bias, int64_t la, \
                                const int64_t* lb, int64_t self_j, double* a, double* b,           \
                                double* c, double* d, double* e, double* f, double* h) {           \
    fwd_row_impl<T>(nj, s, ri, cj, scale, bias, la, lb, self_j, a, b, c, d, e, f, h);              \
  }                                                                                                \
  UCA_MULTIVERSION void fwd_cols(int64_t mi, int64_t nc, int64_t ld, const T* s, const int64_t* la, \
                                 const int64_t* lb, double* a, double* b, double* c, double* d,    \
                                 double* e, double* f, double* h, T* t1, T* t2, T* t3,             \
                                 double* t4) {                                                     \
    fwd_cols_impl<T>(mi, nc, ld, s, la, lb, a, b, c, d, e, f, h, t1, t2, t3, t4);                  \
  }                                                                                                \
  UCA_MULTIVERSION void bwd_row(int mode, int64_t nj, T* g, T ri, const T* cj, T scale, T bias,  \
                                int64_t la, const int64_t* lb, int64_t self_j, T log_eps,          \
                                const SideView<T>& rw, const SideView<T>& cl, T* out) {            \
    switch (mode) {                                                                                \
      UCA_BWD_MODE(T, 0) UCA_BWD_MODE(T, 1) UCA_BWD_MODE(T, 2) UCA_BWD_MODE(T, 3)                 \
      default: UCA_BWD_MODE(T, 4)                                                                  \
    }                                                                                              \
  }                                                                                                \
  UCA_MULTIVERSION void col_sum(int64_t mi, int64_t nc, int64_t ld, const T* x, T* out) {          \
    col_sum_impl<T>(mi, nc, ld, x, out);                                                           \
  }                                                                                                \
  UCA_MULTIVERSION void fwd_row_sigmoid(int64_t nj, T* s, T ri, const T* cj, T scale, T bias,     \
                                        int64_t la, const int64_t* lb, int64_t self_j,             \
                                        double* acc) {                                             \
    fwd_row_sigmoid_impl<T>(nj, s, ri, cj, scale, bias, la, lb, self_j, acc);                      \
  }                                                                                                \
  UCA_MULTIVERSION void col_sum_acc(int64_t mi, int64_t nc, int64_t ld, const T* x, double* out) { \
    col_sum_acc_impl<T>(mi, nc, ld, x, out);                                                       \
  }
UCA_LEAVES(float)
UCA_LEAVES(double)
#undef UCA_LEAVES
#undef UCA_BWD_MODE

constexpr int64_t kColChunk = 128;  // columns per OpenMP work item in column passes
// Tiles with fewer logits run their epilogue on one thread: a parallel region's fork and barrier
// cost more than the work there, and far more when other processes share the cores.
constexpr int64_t kParallelMin = 1 << 17;

// Finalise one row/column: statistics (LSE, positive LSE, n, sum p (S - LSE); float64 for every T) and the loss.
template <typename T>
void finalize(const Stats& st, int64_t k, Loss loss, T* out_loss, double* out_stats) {
  const double m = st.m[k], l = st.l[k], mp = st.mp[k], lp = st.lp[k], n = st.n[k];
  const double inf = std::numeric_limits<double>::infinity();
  const double lse = l > 0 ? m + std::log(l) : -inf;
  const double lsep = lp > 0 ? mp + std::log(lp) : -inf;
  double value = 0;
  if (n > 0 && l > 0 && lp > 0) {
    if (loss == Loss::INFONCE) {
      value = (m - mp) + std::log(l) - std::log(lp);
    } else {
      const double p_pos = lp * std::exp(mp - m) / l, p_neg = st.lneg[k] / l;
      value = st.w[k] / l - std::log(l) - p_pos * std::log(1.0 / n + kSdmEps) -
              p_neg * std::log(kSdmEps);
    }
  }
  out_loss[k] = static_cast<T>(value);
  out_stats[k * kStats + 0] = lse;
  out_stats[k * kStats + 1] = lsep;
  out_stats[k * kStats + 2] = n;
  out_stats[k * kStats + 3] = l > 0 ? st.w[k] / l - std::log(l) : 0.0;  // sum p (S - LSE)
}

// Backward constants of one row/column, with non-finite statistics replaced so that the
// branch-free loops never meet inf - inf (rows without positives get a zero gradient).
template <typename T>
struct BwdConsts {
  std::vector<T> g, lse, lse_lo, lsep, lsep_lo, loss, logq, fac;
  std::vector<char> fast;  // fac usable (see bwd_row_impl, MODE 1)
  BwdConsts(int64_t size, const T* grad, const T* loss_in, const double* stats)
      : g(size), lse(size), lse_lo(size), lsep(size), lsep_lo(size), loss(size), logq(size),
        fac(size), fast(size) {
    for (int64_t k = 0; k < size; ++k) {
      const double LSE = stats[k * kStats + 0], LSEP = stats[k * kStats + 1], n = stats[k * kStats + 2];
      const bool active = n > 0 && std::isfinite(LSE) && std::isfinite(LSEP);
      g[k] = active ? grad[k] : T(0);
      split(active ? LSE : 0.0, lse[k], lse_lo[k]);
      split(active ? LSEP : 0.0, lsep[k], lsep_lo[k]);
      loss[k] = active ? loss_in[k] : T(0);
      logq[k] = active ? static_cast<T>(std::log(1.0 / n + kSdmEps)) : T(0);
      const double gap = active ? LSE - LSEP : 0.0;
      fast[k] = gap < kFastGap<T>;
      fac[k] = fast[k] ? static_cast<T>(std::exp(gap)) : T(0);
    }
  }
  // x = hi + lo: hi = x rounded to T, lo = the remainder rounded to T (0 for T = double)
  static void split(double x, T& hi, T& lo) {
    hi = static_cast<T>(x);
    lo = static_cast<T>(x - static_cast<double>(hi));
  }
  SideView<T> view() const {
    return {g.data(), lse.data(), lse_lo.data(), lsep.data(), lsep_lo.data(), loss.data(), logq.data(), fac.data()};
  }
  bool all_fast(int64_t begin, int64_t n) const {
    return std::all_of(fast.begin() + begin, fast.begin() + begin + n, [](char f) { return f != 0; });
  }
};

template <typename T>
int64_t self_index(const ContrastArgs<T>& a, int64_t i, int64_t j0, int64_t nj) {
  return (a.exclude_self && i >= j0 && i < j0 + nj) ? i - j0 : -1;
}

}  // namespace

// -- LoopGemm ----------------------------------------------------------------------------------
template <typename T>
void LoopGemm<T>::nt(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B,
                     int64_t ldb, T* C, int64_t ldc) const {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      T acc = 0;
      for (int64_t p = 0; p < k; ++p) acc += A[i * lda + p] * B[j * ldb + p];
      C[i * ldc + j] = acc;
    }
}
template <typename T>
void LoopGemm<T>::nn_acc(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B,
                         int64_t ldb, T* C, int64_t ldc) const {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i)
    for (int64_t p = 0; p < k; ++p)
      for (int64_t j = 0; j < n; ++j) C[i * ldc + j] += A[i * lda + p] * B[p * ldb + j];
}
template <typename T>
void LoopGemm<T>::tn_acc(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B,
                         int64_t ldb, T* C, int64_t ldc) const {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i)
    for (int64_t p = 0; p < k; ++p)
      for (int64_t j = 0; j < n; ++j) C[i * ldc + j] += A[p * lda + i] * B[p * ldb + j];
}

namespace {
// -- forward, sigmoid loss: sums of pair losses, no statistics (written as zeros) ----------------
template <typename T>
void sigmoid_forward(const ContrastArgs<T>& a, const Gemm<T>& gemm, const Tiles& tiles,
                     T* loss_rows, T* loss_cols, double* row_stats, double* col_stats) {
  const int64_t M = a.M, N = a.N, E = a.E;
  const int64_t TM = std::max<int64_t>(1, std::min(tiles.rows, M));
  const int64_t TN = std::max<int64_t>(1, std::min(tiles.cols, N));
  std::vector<T> tile(TM * TN);
  std::vector<double> rows(M, 0.0), cols(N, 0.0);  // sums in double, as the other losses' stats

  for (int64_t i0 = 0; i0 < M; i0 += TM) {
    const int64_t mi = std::min(TM, M - i0);
    for (int64_t j0 = 0; j0 < N; j0 += TN) {
      const int64_t nj = std::min(TN, N - j0);
      T* s = tile.data();
      gemm.nt(mi, nj, E, a.A + i0 * E, E, a.B + j0 * E, E, s, nj);
      // -- row pass: pair losses in place + row sums --
#pragma omp parallel for schedule(static) if (mi * nj >= kParallelMin)
      for (int64_t ii = 0; ii < mi; ++ii) {
        const int64_t i = i0 + ii;
        fwd_row_sigmoid(nj, s + ii * nj, a.r[i], a.c + j0, a.scale, a.bias, a.labels_a[i],
                        a.labels_b + j0, self_index(a, i, j0, nj), &rows[i]);
      }
      // -- column pass: column sums of the same pair losses --
      const int64_t n_chunks = (nj + kColChunk - 1) / kColChunk;
#pragma omp parallel for schedule(static) if (mi * nj >= kParallelMin)
      for (int64_t ch = 0; ch < n_chunks; ++ch) {
        const int64_t jc = ch * kColChunk;
        col_sum_acc(mi, std::min(kColChunk, nj - jc), nj, s + jc, &cols[j0 + jc]);
      }
    }
  }
  for (int64_t i = 0; i < M; ++i) loss_rows[i] = static_cast<T>(rows[i]);
  for (int64_t j = 0; j < N; ++j) loss_cols[j] = static_cast<T>(cols[j]);
  std::fill(row_stats, row_stats + M * kStats, 0.0);
  std::fill(col_stats, col_stats + N * kStats, 0.0);
}
}  // namespace

// -- forward -------------------------------------------------------------------------------------
template <typename T>
void contrast_forward(const ContrastArgs<T>& a, const Gemm<T>& gemm, const Tiles& tiles,
                      T* loss_rows, T* loss_cols, double* row_stats, double* col_stats) {
  if (a.loss == Loss::SIGMOID) {
    sigmoid_forward(a, gemm, tiles, loss_rows, loss_cols, row_stats, col_stats);
    return;
  }
  const int64_t M = a.M, N = a.N, E = a.E;
  const int64_t TM = std::max<int64_t>(1, std::min(tiles.rows, M));
  const int64_t TN = std::max<int64_t>(1, std::min(tiles.cols, N));
  std::vector<T> tile(TM * TN);
  Stats rs(M), cs(N);
  const int64_t n_chunks_max = (TN + kColChunk - 1) / kColChunk;
  std::vector<T> scratch(3 * kColChunk * n_chunks_max);
  std::vector<double> scratch_d(kColChunk * n_chunks_max);

  for (int64_t i0 = 0; i0 < M; i0 += TM) {
    const int64_t mi = std::min(TM, M - i0);
    for (int64_t j0 = 0; j0 < N; j0 += TN) {
      const int64_t nj = std::min(TN, N - j0);
      T* s = tile.data();
      gemm.nt(mi, nj, E, a.A + i0 * E, E, a.B + j0 * E, E, s, nj);
      // -- row pass: logits + online row statistics --
#pragma omp parallel for schedule(static) if (mi * nj >= kParallelMin)
      for (int64_t ii = 0; ii < mi; ++ii) {
        const int64_t i = i0 + ii;
        fwd_row(nj, s + ii * nj, a.r[i], a.c + j0, a.scale, a.bias, a.labels_a[i], a.labels_b + j0,
                self_index(a, i, j0, nj), &rs.m[i], &rs.l[i], &rs.w[i], &rs.lneg[i], &rs.mp[i],
                &rs.lp[i], &rs.n[i]);
      }
      // -- column pass: online column statistics --
      const int64_t n_chunks = (nj + kColChunk - 1) / kColChunk;
#pragma omp parallel for schedule(static) if (mi * nj >= kParallelMin)
      for (int64_t ch = 0; ch < n_chunks; ++ch) {
        const int64_t jc = ch * kColChunk, nc = std::min(kColChunk, nj - jc), j = j0 + jc;
        T* tmp = scratch.data() + 3 * kColChunk * ch;
        fwd_cols(mi, nc, nj, s + jc, a.labels_a + i0, a.labels_b + j, &cs.m[j], &cs.l[j],
                 &cs.w[j], &cs.lneg[j], &cs.mp[j], &cs.lp[j], &cs.n[j], tmp, tmp + kColChunk,
                 tmp + 2 * kColChunk, scratch_d.data() + kColChunk * ch);
        if (a.exclude_self) {  // the count saw the (i, i) pairs of this tile: take them back
          for (int64_t jj = j; jj < j + nc; ++jj)
            if (jj >= i0 && jj < i0 + mi && a.labels_a[jj] == a.labels_b[jj]) cs.n[jj] -= 1;
        }
      }
    }
  }
#pragma omp parallel for schedule(static) if (M >= kParallelMin / 16)
  for (int64_t i = 0; i < M; ++i) finalize(rs, i, a.loss, loss_rows, row_stats);
#pragma omp parallel for schedule(static) if (N >= kParallelMin / 16)
  for (int64_t j = 0; j < N; ++j) finalize(cs, j, a.loss, loss_cols, col_stats);
}

// -- backward ------------------------------------------------------------------------------------
namespace {
// One sweep over the tiles: recompute G, form dT in place (bwd_row, `mode` or, for mode < 0, the
// softmax mode each row needs), reduce dr, dc, dscale, dbias and accumulate dA += dT B,
// dB += dT^T A. With mode 4 (sigmoid, unit weight) it also sums the pair losses into *loss_total.
template <typename T>
void backward_sweep(const ContrastArgs<T>& a, const Gemm<T>& gemm, const Tiles& tiles, int mode,
                    const BwdConsts<T>* rk, const BwdConsts<T>* ck, const T* grad_rows,
                    const T* grad_cols, T* dA, T* dB, T* dr, T* dc, T* dscale, T* dbias,
                    double* loss_total) {
  const int64_t M = a.M, N = a.N, E = a.E;
  const int64_t TM = std::max<int64_t>(1, std::min(tiles.rows, M));
  const int64_t TN = std::max<int64_t>(1, std::min(tiles.cols, N));
  std::fill(dA, dA + M * E, T(0));
  std::fill(dB, dB + N * E, T(0));
  std::fill(dr, dr + M, T(0));
  std::fill(dc, dc + N, T(0));
  const T log_eps = static_cast<T>(std::log(kSdmEps));
  SideView<T> rows_v, cols_v;  // sigmoid (modes 3, 4) reads the upstream gradients only
  if (mode == 3) {
    rows_v.g = grad_rows;
    cols_v.g = grad_cols;
  } else if (mode < 0) {
    rows_v = rk->view();
    cols_v = ck->view();
  }
  std::vector<T> tile(TM * TN), partial(4 * TM, T(0));
  double acc_scale = 0, acc_bias = 0, acc_loss = 0;

  for (int64_t i0 = 0; i0 < M; i0 += TM) {
    const int64_t mi = std::min(TM, M - i0);
    for (int64_t j0 = 0; j0 < N; j0 += TN) {
      const int64_t nj = std::min(TN, N - j0);
      T* g = tile.data();
      gemm.nt(mi, nj, E, a.A + i0 * E, E, a.B + j0 * E, E, g, nj);
      const bool cols_fast = mode < 0 && ck->all_fast(j0, nj);
      // -- dS, dT in place, row sums --
#pragma omp parallel for schedule(static) if (mi * nj >= kParallelMin)
      for (int64_t ii = 0; ii < mi; ++ii) {
        const int64_t i = i0 + ii;
        T* out = partial.data() + 4 * ii;
        const int64_t self_j = self_index(a, i, j0, nj);
        // sigmoid (3): every row and column takes its upstream gradient as is; 4: unit weight
        const int m = mode >= 0 ? mode : a.loss == Loss::SDM ? 0 : (cols_fast && rk->fast[i] ? 1 : 2);
        bwd_row(m, nj, g + ii * nj, a.r[i], a.c + j0, a.scale, a.bias, a.labels_a[i], a.labels_b + j0,
                self_j, log_eps, rows_v.at(i), cols_v.at(j0), out);
        dr[i] += out[2];
      }
      for (int64_t ii = 0; ii < mi; ++ii) {  // fixed order: deterministic
        acc_scale += partial[4 * ii + 0];
        acc_bias += partial[4 * ii + 1];
        acc_loss += partial[4 * ii + 3];
      }
      // -- column sums --
      const int64_t n_chunks = (nj + kColChunk - 1) / kColChunk;
#pragma omp parallel for schedule(static) if (mi * nj >= kParallelMin)
      for (int64_t ch = 0; ch < n_chunks; ++ch) {
        const int64_t jc = ch * kColChunk;
        col_sum(mi, std::min(kColChunk, nj - jc), nj, g + jc, dc + j0 + jc);
      }
      // -- dA += dT B, dB += dT^T A --
      gemm.nn_acc(mi, E, nj, g, nj, a.B + j0 * E, E, dA + i0 * E, E);
      gemm.tn_acc(nj, E, mi, g, nj, a.A + i0 * E, E, dB + j0 * E, E);
    }
  }
  *dscale = static_cast<T>(acc_scale);
  *dbias = static_cast<T>(acc_bias);
  if (loss_total != nullptr) *loss_total = acc_loss;
}
}  // namespace

template <typename T>
void contrast_backward(const ContrastArgs<T>& a, const Gemm<T>& gemm, const Tiles& tiles,
                       const T* grad_rows, const T* grad_cols, const T* loss_rows,
                       const T* loss_cols, const double* row_stats, const double* col_stats, T* dA,
                       T* dB, T* dr, T* dc, T* dscale, T* dbias) {
  if (a.loss == Loss::SIGMOID) {
    backward_sweep<T>(a, gemm, tiles, 3, nullptr, nullptr, grad_rows, grad_cols, dA, dB, dr, dc, dscale,
                      dbias, nullptr);
    return;
  }
  const BwdConsts<T> rk(a.M, grad_rows, loss_rows, row_stats), ck(a.N, grad_cols, loss_cols, col_stats);
  backward_sweep<T>(a, gemm, tiles, -1, &rk, &ck, grad_rows, grad_cols, dA, dB, dr, dc, dscale, dbias,
                    nullptr);
}

template <typename T>
void sigmoid_loss_and_grads(const ContrastArgs<T>& a, const Gemm<T>& gemm, const Tiles& tiles,
                            T* loss_total, T* dA, T* dB, T* dr, T* dc, T* dscale, T* dbias) {
  double total = 0;
  backward_sweep<T>(a, gemm, tiles, 4, nullptr, nullptr, nullptr, nullptr, dA, dB, dr, dc, dscale, dbias,
                    &total);
  *loss_total = static_cast<T>(total);
}

#define UCA_INSTANTIATE(T)                                                                        \
  template struct LoopGemm<T>;                                                                    \
  template void contrast_forward<T>(const ContrastArgs<T>&, const Gemm<T>&, const Tiles&, T*, T*, \
                                    double*, double*);                                            \
  template void contrast_backward<T>(const ContrastArgs<T>&, const Gemm<T>&, const Tiles&,        \
                                     const T*, const T*, const T*, const T*, const double*,       \
                                     const double*, T*, T*, T*, T*, T*, T*);                      \
  template void sigmoid_loss_and_grads<T>(const ContrastArgs<T>&, const Gemm<T>&, const Tiles&, T*, \
                                          T*, T*, T*, T*, T*, T*);
UCA_INSTANTIATE(float)
UCA_INSTANTIATE(double)
#undef UCA_INSTANTIATE

}  // namespace uca
