"""Shared pieces of the Triton backend's two designs (``triton_contrast.py``: fully fused tiles;
``triton_chunked.py``: vendor GEMMs in row chunks + Triton epilogues): the import of Triton, whether
the kernels run in Triton's CPU interpreter, the elementwise and online-statistics device functions
both designs' kernels call, and the kernels' compile-time flags. The maths: ``contrast.py``."""

from __future__ import annotations

import contextlib
import math
import os

import torch

from ._registry import SDM_EPS

try:
    import triton
    import triton.language as tl

    _IMPORT_ERROR: str | None = None
except Exception as e:  # ImportError, or a broken install
    triton = tl = None
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"


def _interpreting() -> bool:
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


# Whether the kernels below were jitted for Triton's CPU interpreter (decided once, at import).
INTERPRET = triton is not None and _interpreting()


if triton is not None:

    @triton.jit
    def _round_to(x, DTYPE: tl.constexpr, UPCAST_DOT: tl.constexpr):
        """x rounded to the feature dtype (nearest even) as a GEMM operand. Under the interpreter
        (UPCAST_DOT) it stays fp32 holding the rounded value, and bf16 is rounded by hand: the
        interpreter's own fp32 → bf16 cast truncates."""
        if UPCAST_DOT:
            if DTYPE == tl.bfloat16:
                bits = x.to(tl.uint32, bitcast=True)
                bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
                y = bits.to(tl.float32, bitcast=True)
            else:
                y = x.to(DTYPE).to(tl.float32)
        else:
            y = x.to(DTYPE)
        return y

    @triton.jit
    def _softplus(x):
        """log(1 + eˣ) = max(x, 0) + log1p(e^−|x|), finite for every finite x; log1p(e) as
        log(u) − ((u − 1) − e)/u, u = 1 + e (exact to rounding also where u rounds to 1)."""
        e = tl.exp(-tl.abs(x))
        u = 1.0 + e
        return tl.maximum(x, 0.0) + (tl.log(u) - ((u - 1.0) - e) / u)

    @triton.jit
    def _logistic(x):
        """σ(x) = d softplus / dx without overflow: (1 or e^−|x|) / (1 + e^−|x|)."""
        e = tl.exp(-tl.abs(x))
        return tl.where(x >= 0, 1.0, e) / (1.0 + e)

    @triton.jit
    def _online_step(m, l, w, lneg, mp, lp, npos, sv, sp, IS_SDM: tl.constexpr, AXIS: tl.constexpr):
        """One tile of the online statistics of each row (AXIS = 1: rows of the tile; AXIS = 0: its
        columns), reduced along AXIS.

        sv: logits, -inf where not a valid pair; sp: the same, -inf where not a positive. Over valid
        entries, relative to the running max m: l = Σe, w = Σe·(s−m), lneg = Σ_neg e (IS_SDM); over
        positives, relative to their own running max mp: lp = Σe; npos = #positives. Every running
        quantity is a vector of the accumulator dtype; m = mp = -inf and the rest 0 at the start."""
        # -- online log-sum-exp over valid entries --
        m_new = tl.maximum(m, tl.max(sv, AXIS))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # finite point to subtract
        alpha = tl.exp(m - m_ref)  # rescales the old sums; 0 while m = -inf
        shift = tl.where(m == float("-inf"), 0.0, m - m_ref)
        x = tl.maximum(sv - tl.expand_dims(m_ref, AXIS), -1e30)  # ≤ 0; a huge finite value where not valid
        e = tl.exp(x)  # 0 where not valid
        w = alpha * (w + shift * l) + tl.sum(e * x, AXIS)
        l = alpha * l + tl.sum(e, AXIS)
        if IS_SDM:
            lneg = alpha * lneg + tl.sum(tl.where(sp == float("-inf"), e, 0.0), AXIS)
        # -- online log-sum-exp over positives (own running max) --
        mp_new = tl.maximum(mp, tl.max(sp, AXIS))
        mp_ref = tl.where(mp_new == float("-inf"), 0.0, mp_new)
        lp = lp * tl.exp(mp - mp_ref) + tl.sum(tl.exp(sp - tl.expand_dims(mp_ref, AXIS)), AXIS)
        npos += tl.sum((sp > float("-inf")).to(npos.dtype), AXIS)
        return m_new, l, w, lneg, mp_new, lp, npos

    @triton.jit
    def _fresh_stats(BLOCK: tl.constexpr, ACC: tl.constexpr):
        """The online statistics (m, l, w, lneg, mp, lp, npos) of BLOCK rows before any tile."""
        m = tl.full([BLOCK], float("-inf"), ACC)
        mp = tl.full([BLOCK], float("-inf"), ACC)
        zero = tl.zeros([BLOCK], ACC)
        return m, zero, zero, zero, mp, zero, zero

    @triton.jit
    def _store_loss_stats(loss_ptr, stats_ptr, offs, mask, value, lse, lsep, n, h):
        """A side's losses and its [*, 4] float64 stats (LSE, LSEᴾ, n, H) at rows ``offs``."""
        tl.store(loss_ptr + offs, value, mask=mask)
        tl.store(stats_ptr + offs * 4 + 0, lse, mask=mask)
        tl.store(stats_ptr + offs * 4 + 1, lsep, mask=mask)
        tl.store(stats_ptr + offs * 4 + 2, n, mask=mask)
        tl.store(stats_ptr + offs * 4 + 3, h, mask=mask)

    @triton.jit
    def _finish_stats(m, l, w, lneg, mp, lp, npos, IS_SDM: tl.constexpr, SDM_EPS: tl.constexpr,
                      LOG_SDM_EPS: tl.constexpr):
        """Loss and float64 stats (LSE, LSEᴾ, n, H) of rows whose online statistics are complete;
        the loss is 0 for rows without positives."""
        has_l = l > 0
        has_lp = lp > 0
        l1 = tl.where(has_l, l, 1.0)
        lp1 = tl.where(has_lp, lp, 1.0)
        m0 = tl.where(has_l, m, 0.0)
        mp0 = tl.where(has_lp, mp, 0.0)
        # LSE = m + log l added in float64: rounded to float32 at |S| ~ 1e5 it would be off by up
        # to 4e-3, and so would every p = exp(S − LSE) the backward forms from it
        lse = tl.where(has_l, m0.to(tl.float64) + tl.log(l1).to(tl.float64), float("-inf"))
        lsep = tl.where(has_lp, mp0.to(tl.float64) + tl.log(lp1).to(tl.float64), float("-inf"))
        if IS_SDM:
            p_pos = lp1 * tl.exp(mp0 - m0) / l1  # Σ_pos p
            p_neg = lneg / l1  # Σ_neg p
            logq = tl.log(1.0 / tl.maximum(npos, 1.0) + SDM_EPS)
            value = w / l1 - tl.log(l1) - p_pos * logq - p_neg * LOG_SDM_EPS
        else:
            value = (m0 - mp0) + tl.log(l1) - tl.log(lp1)
        value = tl.where((npos > 0) & has_l & has_lp, value, 0.0)
        neg_entropy = tl.where(has_l, w.to(tl.float64) / l1.to(tl.float64) - tl.log(l1).to(tl.float64), 0.0)
        return value, lse, lsep, npos.to(tl.float64), neg_entropy

    @triton.jit
    def _split(x, ACC: tl.constexpr):
        """float64 x = hi + lo: hi = x rounded to ACC, lo = the remainder rounded to ACC (0 for float64)."""
        hi = x.to(ACC)
        return hi, (x - hi.to(tl.float64)).to(ACC)

    @triton.jit
    def _side_consts(g_ptr, loss_ptr, stats_ptr, offs, mask, SDM_EPS: tl.constexpr):
        """Backward constants of one side's rows: upstream grad, LSE and LSEᴾ each as a (hi, lo)
        pair (_split of the float64 stats), loss, log q.
        Rows without positives (or with non-finite stats) get all zeros: no gradient, no inf."""
        ACC: tl.constexpr = g_ptr.dtype.element_ty
        lse = tl.load(stats_ptr + offs * 4 + 0, mask=mask, other=0.0)
        lsep = tl.load(stats_ptr + offs * 4 + 1, mask=mask, other=0.0)
        n = tl.load(stats_ptr + offs * 4 + 2, mask=mask, other=0.0)
        active = (n > 0) & (tl.abs(lse) < float("inf")) & (tl.abs(lsep) < float("inf"))
        g = tl.where(active, tl.load(g_ptr + offs, mask=mask, other=0.0), 0.0)
        loss = tl.where(active, tl.load(loss_ptr + offs, mask=mask, other=0.0), 0.0)
        logq = tl.where(active, tl.log(1.0 / tl.maximum(n.to(ACC), 1.0) + SDM_EPS), 0.0)
        lse_hi, lse_lo = _split(tl.where(active, lse, 0.0), ACC)
        lsep_hi, lsep_lo = _split(tl.where(active, lsep, 0.0), ACC)
        return g, lse_hi, lse_lo, lsep_hi, lsep_lo, loss, logq

    @triton.jit
    def _dloss_dlogit(sv, sp, g, lse, lse_lo, lsep, lsep_lo, loss, logq, IS_SDM: tl.constexpr,
                      LOG_SDM_EPS: tl.constexpr):
        """g · ∂L/∂S for one side (arguments broadcast). sv: logits, -inf where not a valid pair;
        sp: the same, -inf where not a positive. log p = (S − lse) − lse_lo: S − lse is exact
        wherever p is not negligible, so p keeps ACC's relative precision at any |S|. Exponents are
        clamped to [-1e30, 0], so there is no inf and no 0·inf, and invalid pairs get exactly 0."""
        x = tl.minimum(tl.maximum((sv - lse) - lse_lo, -1e30), 0.0)  # log p
        p = tl.exp(x)
        if IS_SDM:
            d = p * (x - tl.where(sp > float("-inf"), logq, LOG_SDM_EPS) - loss)
        else:
            d = p - tl.exp(tl.minimum((sp - lsep) - lsep_lo, 0.0))
        return g * d



def _flags(A: torch.Tensor, loss: str, exclude_self: bool, precision: str = "ieee") -> dict:
    low = A.dtype in (torch.float16, torch.bfloat16)
    return dict(
        IS_SDM=loss == "sdm",
        IS_SIGMOID=loss == "sigmoid",
        EXCLUDE_SELF=bool(exclude_self),
        UPCAST_DOT=INTERPRET and low,
        PRECISION=precision if A.dtype == torch.float32 else "ieee",
        SDM_EPS=SDM_EPS,
        LOG_SDM_EPS=math.log(SDM_EPS),
    )


def _device_guard(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def finish_grads(A, B, scale, dA, dB, sum_ds_rows, sum_ds_cols, sum_dst_rows, pre):
    """The backward's outputs (dA, dB, dr, dc, dscale, dbias) from dA, dB and the sums of dS and dS·t per row
    and of dS per column (accumulator dtype), in both Triton designs; divides out the fp16/bf16
    pre-scaling ``pre`` (None: none). dbias and dscale are summed in float64, in a fixed order."""
    acc = dA.dtype
    if pre is not None:  # exact: pre is a power of two
        inv = torch.reciprocal(pre).to(acc)
        for part in (dA, dB, sum_ds_rows, sum_dst_rows, sum_ds_cols):
            part.mul_(inv)
    dr = scale * sum_ds_rows
    dc = scale * sum_ds_cols
    dbias = sum_ds_rows.sum(dtype=torch.float64).to(acc)
    dscale = sum_dst_rows.sum(dtype=torch.float64).to(acc)
    return dA.to(A.dtype), dB.to(B.dtype), dr, dc, dscale, dbias
