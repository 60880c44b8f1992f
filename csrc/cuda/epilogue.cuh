// Device helpers shared by the CUDA kernels of the contrast op (contrast_cuda.cu: the fully fused
// tile kernels; chunked_cuda.cu: the epilogues of the chunked path): rounding-fixed arithmetic, the
// online log-sum-exp statistics, the backward's per-side constants and dS of each loss. One copy of
// the maths, so both designs form every logit, statistic and gradient entry the same way.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "core/stats.h"
#include "cuda/contrast_cuda.h"

namespace uca {
namespace cuda {
namespace {

constexpr double kSdmEps = 1e-8;

// -- scalar helpers ------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ T zero_of();
template <>
__device__ __forceinline__ __half zero_of<__half>() { return __float2half_rn(0.f); }
template <>
__device__ __forceinline__ __nv_bfloat16 zero_of<__nv_bfloat16>() { return __float2bfloat16_rn(0.f); }
template <>
__device__ __forceinline__ float zero_of<float>() { return 0.f; }
template <>
__device__ __forceinline__ double zero_of<double>() { return 0.0; }

// x (Acc) rounded to the operand type T (nearest even)
template <typename T, typename Acc>
__device__ __forceinline__ T to_operand(Acc x);
template <>
__device__ __forceinline__ __half to_operand<__half, float>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 to_operand<__nv_bfloat16, float>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ float to_operand<float, float>(float x) { return x; }
template <>
__device__ __forceinline__ double to_operand<double, double>(double x) { return x; }

__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float ex(float x) { return expf(x); }
__device__ __forceinline__ double ex(double x) { return exp(x); }
__device__ __forceinline__ float lg(float x) { return logf(x); }
__device__ __forceinline__ double lg(double x) { return log(x); }
__device__ __forceinline__ float lg1p(float x) { return log1pf(x); }
__device__ __forceinline__ double lg1p(double x) { return log1p(x); }

template <typename Acc>
__device__ __forceinline__ Acc neg_inf() { return -INFINITY; }

// Raw value t = g + (r_a + c_b) and logit s = scale t + bias, with fixed rounding: the same bits
// whichever launch computes them (r of the A row, c of the B row).
template <typename Acc>
__device__ __forceinline__ Acc raw_value(Acc g, Acc r_a, Acc c_b) { return add_rn(g, add_rn(r_a, c_b)); }
template <typename Acc>
__device__ __forceinline__ Acc logit(Acc t, Acc scale, Acc bias) { return add_rn(mul_rn(scale, t), bias); }

// -- online statistics ------------------------------------------------------------------------------

// Over valid entries, relative to the running max m: l = sum e, w = sum e (s - m), lneg = sum over
// negatives; over positives, relative to their own max mp: lp = sum e; n = #positives.
template <typename Acc>
struct Online {
  Acc m, l, w, lneg, mp, lp, n;
};

template <typename Acc>
__device__ __forceinline__ void online_init(Online<Acc>& st) {
  st.m = st.mp = neg_inf<Acc>();
  st.l = st.w = st.lneg = st.lp = st.n = Acc(0);
}

// Merge two states (symmetric in a and b, so every lane of a butterfly gets the same bits).
template <typename Acc>
__device__ __forceinline__ Online<Acc> online_merge(const Online<Acc>& a, const Online<Acc>& b) {
  Online<Acc> o;
  o.n = a.n + b.n;
  o.m = fmax(a.m, b.m);
  if (o.m == neg_inf<Acc>()) {
    o.l = o.w = o.lneg = Acc(0);
  } else {
    const bool ha = a.m != neg_inf<Acc>(), hb = b.m != neg_inf<Acc>();
    const Acc fa = ha ? ex(a.m - o.m) : Acc(0), fb = hb ? ex(b.m - o.m) : Acc(0);
    const Acc wa = ha ? fa * (a.w + (a.m - o.m) * a.l) : Acc(0);
    const Acc wb = hb ? fb * (b.w + (b.m - o.m) * b.l) : Acc(0);
    // explicit rounding: nvcc would contract x * f + y * g into an FMA, which is not symmetric
    o.l = add_rn(mul_rn(a.l, fa), mul_rn(b.l, fb));
    o.w = add_rn(wa, wb);
    o.lneg = add_rn(mul_rn(a.lneg, fa), mul_rn(b.lneg, fb));
  }
  o.mp = fmax(a.mp, b.mp);
  if (o.mp == neg_inf<Acc>()) {
    o.lp = Acc(0);
  } else {
    const Acc pa = a.mp != neg_inf<Acc>() ? mul_rn(a.lp, ex(a.mp - o.mp)) : Acc(0);
    const Acc pb = b.mp != neg_inf<Acc>() ? mul_rn(b.lp, ex(b.mp - o.mp)) : Acc(0);
    o.lp = add_rn(pa, pb);
  }
  return o;
}

template <typename Acc>
__device__ __forceinline__ Online<Acc> shfl_xor(const Online<Acc>& s, int off) {
  Online<Acc> o;
  o.m = __shfl_xor_sync(0xffffffffu, s.m, off);
  o.l = __shfl_xor_sync(0xffffffffu, s.l, off);
  o.w = __shfl_xor_sync(0xffffffffu, s.w, off);
  o.lneg = __shfl_xor_sync(0xffffffffu, s.lneg, off);
  o.mp = __shfl_xor_sync(0xffffffffu, s.mp, off);
  o.lp = __shfl_xor_sync(0xffffffffu, s.lp, off);
  o.n = __shfl_xor_sync(0xffffffffu, s.n, off);
  return o;
}

// The running state after adding a group of entries: tile maxima first, then sums relative to
// them, then one merge (both designs use it).
template <typename Acc, int G>
// G <= 32 entries s, flags per entry in the valid / pos bit masks.
__device__ __forceinline__ void online_add(Online<Acc>& st, const Acc (&s)[G], uint32_t valid, uint32_t pos) {
  Acc tmax = neg_inf<Acc>(), tpmax = neg_inf<Acc>(), cnt = 0;
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const bool v = (valid >> g) & 1u, p = (pos >> g) & 1u;
    tmax = v ? fmax(tmax, s[g]) : tmax;
    tpmax = p ? fmax(tpmax, s[g]) : tpmax;
    cnt += p ? Acc(1) : Acc(0);
  }
  if (valid == 0u) return;  // nothing to add (n counts positives, which are valid)
  Online<Acc> add;
  online_init(add);
  add.n = cnt;
  add.m = tmax;
  add.mp = tpmax;
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (!((valid >> g) & 1u)) continue;
    const bool p = (pos >> g) & 1u;
    const Acc x = s[g] - tmax;
    const Acc e = ex(x);
    add.l += e;
    add.w += e * x;
    if (!p) add.lneg += e;
    if (p) add.lp += ex(s[g] - tpmax);
  }
  st = online_merge(st, add);
}

// Loss and statistics of a finished row or column k: loss[k], stats[k, :] (float64).
template <Loss LOSS, typename Acc>
__device__ __forceinline__ void write_finished(const Online<Acc>& st, Acc* loss, double* stats, int64_t k) {
  const Acc inf = INFINITY;
  const bool has_l = st.l > Acc(0), has_lp = st.lp > Acc(0);
  const Acc l1 = has_l ? st.l : Acc(1), lp1 = has_lp ? st.lp : Acc(1);
  const Acc m0 = has_l ? st.m : Acc(0), mp0 = has_lp ? st.mp : Acc(0);
  Acc value;
  if constexpr (LOSS == Loss::SDM) {
    const Acc p_pos = lp1 * ex(mp0 - m0) / l1, p_neg = st.lneg / l1;
    const Acc logq = lg(Acc(1) / fmax(st.n, Acc(1)) + Acc(kSdmEps));
    value = st.w / l1 - lg(l1) - p_pos * logq - p_neg * Acc(-18.420680743952367);
  } else {
    value = (m0 - mp0) + lg(l1) - lg(lp1);
  }
  value = (st.n > Acc(0) && has_l && has_lp) ? value : Acc(0);
  loss[k] = value;
  // m + log l in double: not rounded at |S|
  stats[k * kStats + 0] = has_l ? double(m0) + double(lg(l1)) : -double(inf);
  stats[k * kStats + 1] = has_lp ? double(mp0) + double(lg(lp1)) : -double(inf);
  stats[k * kStats + 2] = double(st.n);
  stats[k * kStats + 3] = has_l ? double(st.w) / double(l1) - log(double(l1)) : 0.0;  // sum p (S - LSE)
}

// Backward constants of one row / column; inactive ones (no positive, non-finite stats) are all
// zero so that they contribute exactly nothing and never meet inf - inf. The float64 statistics
// are split into Acc parts, LSE = lse + lse_lo (lse = LSE rounded to Acc, lse_lo = the rest rounded
// to Acc; 0 for double), and likewise the positive LSE: log p = (S - lse) - lse_lo keeps Acc's
// relative precision at any |S| (S - lse is exact wherever p is not negligible).
template <typename Acc>
struct Side {
  Acc g, lse, lse_lo, lsep, lsep_lo, loss, logq;
};

template <typename Acc>
__device__ __forceinline__ void split(double x, Acc& hi, Acc& lo) {
  hi = Acc(x);
  lo = Acc(x - double(hi));
}

template <typename Acc>
__device__ __forceinline__ Side<Acc> side_consts(const Acc* grad, const Acc* loss, const double* stats, int64_t k) {
  const double lse = stats[k * kStats + 0], lsep = stats[k * kStats + 1], n = stats[k * kStats + 2];
  const bool active = n > 0.0 && isfinite(lse) && isfinite(lsep);
  Side<Acc> s;
  s.g = active ? grad[k] : Acc(0);
  split(active ? lse : 0.0, s.lse, s.lse_lo);
  split(active ? lsep : 0.0, s.lsep, s.lsep_lo);
  s.loss = active ? loss[k] : Acc(0);
  s.logq = active ? lg(Acc(1) / fmax(Acc(n), Acc(1)) + Acc(kSdmEps)) : Acc(0);
  return s;
}

// The constants the backward of LOSS reads for row / column k. Sigmoid reads only the upstream
// gradient: every row and column is active (a row without positives keeps its negative terms).
template <Loss LOSS, typename Acc>
__device__ __forceinline__ Side<Acc> side_of(const Acc* grad, const Acc* loss, const double* stats, int64_t k) {
  if constexpr (LOSS == Loss::SIGMOID)
    return Side<Acc>{grad[k], Acc(0), Acc(0), Acc(0), Acc(0), Acc(0), Acc(0)};
  else
    return side_consts(grad, loss, stats, k);
}

// g * dL/dS of one side for a valid entry with logit s (the softmax losses), rounded once (mul_rn):
// the backward adds the two sides' terms with add_rn, so that the compiler cannot contract one of
// the products into an FMA with the sum, which would make the row- and the column-owner launches
// (whose "own" side differs) form different bits of the same dS.
template <Loss LOSS, typename Acc>
__device__ __forceinline__ Acc dloss_dlogit(Acc s, bool pos, Acc g, Acc lse, Acc lse_lo, Acc lsep, Acc lsep_lo,
                                            Acc loss, Acc logq) {
  static_assert(LOSS != Loss::SIGMOID, "the sigmoid loss uses sigmoid_pair_dlogit");
  const Acc x = fmin((s - lse) - lse_lo, Acc(0));  // log p
  const Acc p = ex(x);
  Acc d;
  if constexpr (LOSS == Loss::SDM) {
    d = p * (x - (pos ? logq : Acc(-18.420680743952367)) - loss);  // log(1e-8)
  } else {
    d = p - (pos ? ex(fmin((s - lsep) - lsep_lo, Acc(0))) : Acc(0));
  }
  return mul_rn(g, d);
}

// The sigmoid loss of a valid pair with logit s, y = +1 (pos) or -1: l = softplus(x), x = -y s, and
// dl/ds = -y sigma(x). Stable for every finite s: e = exp(-|x|) never overflows (it underflows to 0
// where it should), softplus(x) = max(x, 0) + log1p(e), sigma(x) = (x >= 0 ? 1 : e) / (1 + e).
template <typename Acc>
__device__ __forceinline__ Acc sigmoid_pair_loss(Acc s, bool pos) {
  const Acc x = pos ? -s : s;
  return fmax(x, Acc(0)) + lg1p(ex(-fabs(x)));
}

template <typename Acc>
__device__ __forceinline__ Acc sigmoid_pair_dlogit(Acc s, bool pos) {
  const Acc x = pos ? -s : s;
  const Acc e = ex(-fabs(x));
  const Acc sig = (x >= Acc(0) ? Acc(1) : e) / (Acc(1) + e);
  return pos ? -sig : sig;
}

}  // namespace
}  // namespace cuda
}  // namespace uca
