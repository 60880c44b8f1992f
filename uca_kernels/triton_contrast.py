r"""Triton backend of the fused contrast op (maths, contract and float64 oracle: ``contrast.py``).

The op works on ``S = scale·(A Bᵀ + r 1ᵀ + 1 cᵀ) + bias`` (A [M,E], B [N,E]) without ever holding
an M×N matrix. Rows and columns play symmetric roles (the column loss is the row loss of Sᵀ, and
dSᵢⱼ has one row term and one column term), so each kernel is written once for an *owner* side
and launched twice: ``COLUMNS=False`` (programs own BLOCK_A rows of A and sweep B) and
``COLUMNS=True`` (programs own BLOCK_B rows of B and sweep A).

``_contrast_fwd_kernel`` — per tile, G = A_blk B_blkᵀ with ``tl.dot`` (fp32 accumulation, fp64 for
    float64 inputs) over E in BLOCK_E chunks, then an online log-sum-exp over the owner's rows:
    running max m, Σe, Σe·(s−m), Σ over negatives e, and with a separate running max the sum over
    positives; the epilogue writes the loss and the float64 stats (LSE, LSEᴾ, n, Σ p·(S − LSE)). Row stats come from the
    row launch, column stats from the column launch: every output is written by exactly one
    program, with no partials and no atomics (2 passes of 2·M·N·E flops).

    ``sigmoid`` (``IS_SIGMOID``) needs no log-sum-exp: the same sweep sums ℓ = softplus(−y·S) over
    the other side and writes zero stats.

``_contrast_bwd_kernel`` — recomputes each S tile, forms dS from both sides' saved stats (the
    formulas of ``contrast.py``; ``sigmoid`` reads no stats, dS = (g_row + g_col)·(−y·σ(−y·S)))
    and accumulates dX = (scale·dS)·Y for its own rows X, plus per-row Σ dS and (row launch only)
    Σ dS·t. The row launch gives dA, dr = scale·Σⱼ dS and per-row parts
    of dbias = Σ dS and dscale = Σ dS·t; the column launch gives dB and dc. The per-row parts are
    summed by torch afterwards in a fixed order: no float atomics, results bit-identical run to
    run (4 passes of 2·M·N·E flops).

    When E ≤ BLOCK_E the dX accumulator [rows, BLOCK_E] lives in registers across the sweep.
    Otherwise it does not fit: after each tile the program adds dT·Y[:, chunk] into its *own* rows
    of dX in global memory (read-modify-write of rows no other program touches; fp32 scratch for
    fp16/bf16 features), chunk by chunk, with a CTA barrier between tiles — L2 traffic instead of
    recomputing S once per chunk of E.

Consistent logits. p = exp(S − LSE) must use the same bits of S as the LSE it is divided by,
or a dominant entry gets p = exp(±ulp(S)) ≠ 1 and at |S| ~ 1e5 the SDM gradient is noise. So a
tile is always computed as A_blk·B_blkᵀ of shape [BLOCK_A, BLOCK_B] (transposed in registers for
column launches), and all four launches of one problem share one tile config: the forward row
launch autotunes it (``@triton.autotune`` over a few shapes on a GPU, one fixed 64×64×64 tile in
the interpreter) and the others reuse it (:data:`_TILE_CONFIGS`).

Precision: ``tl.dot`` on float32 inputs uses ``input_precision`` "ieee" (exact fp32 products, the
default), "tf32" or "tf32x3"; choose with :func:`set_input_precision` or the environment variable
``UCA_TRITON_PRECISION`` (the setter wins). fp16/bf16 features use the tensor cores with fp32
accumulation (dT is rounded to the feature dtype for the dX GEMM, as flash-attention does);
float64 uses "ieee". ``r``, ``c``, ``scale``, ``bias`` are float32 (float64 for float64 inputs);
``scale``/``bias`` are read on the device (no host sync).

CPU tensors run only through Triton's interpreter: ``TRITON_INTERPRET=1`` set before this module
is imported, and ``backend="triton"`` named explicitly (``auto`` never picks it for CPU tensors).
Two interpreter quirks are handled there, and only there (``UPCAST_DOT``): its bf16 ``tl.dot`` is
wrong, so fp16/bf16 operands are widened to fp32 first (their products are exact in fp32, as in
the GPU's fp32 accumulation), and its fp32 → bf16 cast truncates, so dT is rounded to nearest even
by hand.
"""

from __future__ import annotations

import math
import sys

import torch

from ._precision import precision_from_env
from ._registry import (LOSSES, N_STATS, SDM_EPS, STATS_DTYPE, grad_prescale, out_dtype, register_contrast_autograd,
                        register_sigmoid_sum_autograd, resolve_chunk_rows)

__all__ = [
    "PRECISIONS",
    "available_reasons",
    "compile_for_target",
    "contrast",
    "get_input_precision",
    "not_supported_reasons",
    "set_input_precision",
]

from ._triton_common import (  # noqa: F401  (the backend's names: tc.INTERPRET, tc.triton, ...)
    _IMPORT_ERROR, INTERPRET, _device_guard, _flags, finish_grads, tl, triton)

if triton is not None:
    from ._triton_common import (_dloss_dlogit, _finish_stats, _fresh_stats, _logistic, _online_step,  # noqa: F401
                                 _round_to, _side_consts, _softplus, _store_loss_stats)

_FEATURE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# -- precision of tl.dot on float32 inputs -----------------------------------------------------------

PRECISIONS = ("ieee", "tf32", "tf32x3")
_precision_override: str | None = None


def set_input_precision(precision: str | None) -> None:
    """Set ``tl.dot``'s input precision for float32 inputs: "ieee" (default), "tf32" or "tf32x3".
    ``None`` goes back to the ``UCA_TRITON_PRECISION`` environment variable (default "ieee")."""
    global _precision_override
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"input precision {precision!r} is not one of {', '.join(map(repr, PRECISIONS))}")
    _precision_override = precision


def get_input_precision() -> str:
    """The precision used for float32 inputs: the setter, else ``UCA_TRITON_PRECISION``, else
    PyTorch's float32 matmul precision ("highest" -> "ieee", "high" / "medium" -> "tf32").

    Read at every forward call and passed to the op; autograd gives the backward the forward's
    value, so changing it between a forward and its backward is safe."""
    if _precision_override is not None:
        return _precision_override
    return precision_from_env("UCA_TRITON_PRECISION", PRECISIONS)


# -- kernels ---------------------------------------------------------------------------------------

if triton is not None:
    from triton.runtime.errors import OutOfResources

    # Tile candidates on a GPU: (BLOCK_A, BLOCK_B, BLOCK_E, num_warps, num_stages, dot paths).
    # A path is how tl.dot runs: "f16" (fp16/bf16 tensor cores), "tf32" (fp32 with tf32/tf32x3),
    # "ieee" (fp32 FMA), "f64". Chosen so that the *backward* kernels do not spill on sm_90
    # (ptxas stack 0–32 bytes, compiled for sm_90 here); larger tiles (128×64, 128×128) spill
    # hundreds of bytes per thread in the backward. Retune with a profiler on the GPU.
    _GPU_TILES = [
        (64, 64, 32, 8, 2, ("f16", "tf32")),
        (64, 64, 32, 8, 3, ("f16", "tf32", "ieee")),
        (64, 64, 32, 8, 4, ("f16", "tf32")),
        (64, 64, 64, 8, 3, ("f16",)),
        (32, 64, 32, 4, 3, ("f16", "tf32", "ieee")),
        (64, 64, 16, 8, 3, ("ieee", "f64")),
        (32, 32, 16, 4, 2, ("f64",)),
    ]
    _INTERPRETER_TILE = (64, 64, 64, 4, 1, ("f16", "tf32", "ieee", "f64"))

    def _tile_id(ba, bb, be, w, s):
        return ba, bb, be, w, s

    _TILE_PATHS = {_tile_id(*t[:5]): t[5] for t in _GPU_TILES + [_INTERPRETER_TILE]}

    def _configs():
        tiles = [_INTERPRETER_TILE] if INTERPRET else _GPU_TILES
        return [triton.Config({"BLOCK_A": ba, "BLOCK_B": bb, "BLOCK_E": be}, num_warps=w, num_stages=s)
                for ba, bb, be, w, s, _ in tiles]

    @triton.jit
    def _mma(a, b, acc, UPCAST_DOT: tl.constexpr, PRECISION: tl.constexpr):
        """acc + a·b. UPCAST_DOT (interpreter only): widen fp16/bf16 to fp32 first."""
        if UPCAST_DOT:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        return tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)

    @triton.jit
    def _gram_tile(
        a_ptr,  # *A [M, E] unit stride along E
        b_ptr,  # *B [N, E] unit stride along E
        offs_a,  # [BLOCK_A] row indices into A
        offs_b,  # [BLOCK_B] row indices into B
        mask_a,  # [BLOCK_A] offs_a < M
        mask_b,  # [BLOCK_B] offs_b < N
        E,  # feature width
        stride_a,  # elements between rows of A
        stride_b,  # elements between rows of B
        ACC: tl.constexpr,  # accumulator dtype (fp32, or fp64 for fp64 inputs)
        UPCAST_DOT: tl.constexpr,  # interpreter only: widen fp16/bf16 before tl.dot
        PRECISION: tl.constexpr,  # tl.dot input_precision for fp32 inputs
        BLOCK_A: tl.constexpr,  # rows of A per tile
        BLOCK_B: tl.constexpr,  # rows of B per tile
        BLOCK_E: tl.constexpr,  # features per chunk
    ):
        """G = A[offs_a] · B[offs_b]ᵀ over all E features in BLOCK_E chunks (masked, zero-filled).

        Always in this orientation and with the same tile shape, whichever side owns the program:
        the four launches then compute bit-identical logits for every pair, so probabilities
        formed from one launch's logits and another launch's LSE are consistent (p of a dominant
        entry is exactly 1 even when |S| ~ 1e5)."""
        acc = tl.zeros([BLOCK_A, BLOCK_B], dtype=ACC)
        for e0 in range(0, E, BLOCK_E):
            offs_e = e0 + tl.arange(0, BLOCK_E)
            mask_e = offs_e < E
            a = tl.load(a_ptr + offs_a[:, None] * stride_a + offs_e[None, :],
                        mask=mask_a[:, None] & mask_e[None, :], other=0.0)
            b = tl.load(b_ptr + offs_b[:, None] * stride_b + offs_e[None, :],
                        mask=mask_b[:, None] & mask_e[None, :], other=0.0)
            acc = _mma(a, tl.trans(b), acc, UPCAST_DOT, PRECISION)
        return acc

    @triton.jit
    def _owner_tile(
        a_ptr,  # *A [M, E] unit stride along E
        b_ptr,  # *B [N, E] unit stride along E
        r_ptr,  # *[M] row term
        c_ptr,  # *[N] column term
        offs_own,  # [BLOCK_OWN] row indices of the owner side (A rows, or B rows when COLUMNS)
        offs_oth,  # [BLOCK_OTH] row indices of the other side
        mask_own,  # [BLOCK_OWN] bounds mask of offs_own
        mask_oth,  # [BLOCK_OTH] bounds mask of offs_oth
        E,  # feature width
        stride_a,  # elements between rows of A
        stride_b,  # elements between rows of B
        COLUMNS: tl.constexpr,  # the owner side is B (column launch) instead of A (row launch)
        ACC: tl.constexpr,  # accumulator dtype
        UPCAST_DOT: tl.constexpr,  # interpreter only: widen fp16/bf16 before tl.dot
        PRECISION: tl.constexpr,  # tl.dot input_precision for fp32 inputs
        BLOCK_A: tl.constexpr,  # rows of A per tile
        BLOCK_B: tl.constexpr,  # rows of B per tile
        BLOCK_E: tl.constexpr,  # features per chunk
    ):
        """Raw values t = ⟨a, b⟩ + (r + c) of a tile, laid out [owner rows, other rows]."""
        if COLUMNS:
            g = tl.trans(_gram_tile(a_ptr, b_ptr, offs_oth, offs_own, mask_oth, mask_own, E, stride_a, stride_b,
                                    ACC, UPCAST_DOT, PRECISION, BLOCK_A, BLOCK_B, BLOCK_E))
            r = tl.load(r_ptr + offs_oth, mask=mask_oth, other=0.0)
            c = tl.load(c_ptr + offs_own, mask=mask_own, other=0.0)
            t = g + (c[:, None] + r[None, :])  # r + c is commutative: the same bits as below
        else:
            g = _gram_tile(a_ptr, b_ptr, offs_own, offs_oth, mask_own, mask_oth, E, stride_a, stride_b,
                           ACC, UPCAST_DOT, PRECISION, BLOCK_A, BLOCK_B, BLOCK_E)
            r = tl.load(r_ptr + offs_own, mask=mask_own, other=0.0)
            c = tl.load(c_ptr + offs_oth, mask=mask_oth, other=0.0)
            t = g + (r[:, None] + c[None, :])
        return t

    @triton.jit
    def _pair_tile(
        a_ptr, b_ptr, r_ptr, c_ptr, l_oth_ptr, scale, bias, l_own, offs_own, mask_own, k0, n_oth, E, stride_a, stride_b,
        COLUMNS: tl.constexpr, EXCLUDE_SELF: tl.constexpr, ACC: tl.constexpr, UPCAST_DOT: tl.constexpr,
        PRECISION: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_E: tl.constexpr,
        BLOCK_OTH: tl.constexpr,
    ):
        """The tile [owner, other rows k0 ...]: the other side's indices, bounds mask and labels, the
        raw values t, the logits s, the valid pairs, and the logits masked to valid pairs (sv) and
        to positives (sp), -inf elsewhere."""
        offs_oth = k0 + tl.arange(0, BLOCK_OTH)
        mask_oth = offs_oth < n_oth
        l_oth = tl.load(l_oth_ptr + offs_oth, mask=mask_oth, other=0)
        t = _owner_tile(a_ptr, b_ptr, r_ptr, c_ptr, offs_own, offs_oth, mask_own, mask_oth, E,
                        stride_a, stride_b, COLUMNS, ACC, UPCAST_DOT, PRECISION, BLOCK_A, BLOCK_B, BLOCK_E)
        s = scale * t + bias
        valid = mask_own[:, None] & mask_oth[None, :]
        if EXCLUDE_SELF:
            valid = valid & (offs_own[:, None] != offs_oth[None, :])
        sv = tl.where(valid, s, float("-inf"))
        sp = tl.where(l_own[:, None] == l_oth[None, :], sv, float("-inf"))
        return offs_oth, mask_oth, l_oth, t, s, valid, sv, sp

    @triton.jit
    def _contrast_fwd_kernel(
        a_ptr,  # *A [M, E] row features, unit stride along E
        b_ptr,  # *B [N, E] column features, unit stride along E
        r_ptr,  # *[M] row term (fp32/fp64: sets the accumulator dtype)
        c_ptr,  # *[N] column term
        la_ptr,  # *[M] int64 row labels
        lb_ptr,  # *[N] int64 column labels
        scale_ptr,  # *[] logit scale (read on the device)
        bias_ptr,  # *[] logit bias
        loss_ptr,  # *[M] or *[N] out: loss of each owner row / column
        stats_ptr,  # *[M, 4] or *[N, 4] float64 out: (LSE, positive LSE, #positives, Σ p·(S − LSE)), contiguous
        M,  # rows of A
        N,  # rows of B
        E,  # feature width
        stride_a,  # elements between rows of A
        stride_b,  # elements between rows of B
        COLUMNS: tl.constexpr,  # False: programs own rows of A (row stats); True: rows of B (column stats)
        IS_SDM: tl.constexpr,  # loss: True for sdm, False for infonce
        IS_SIGMOID: tl.constexpr,  # loss: pairwise sigmoid (overrides IS_SDM; stats written as zeros)
        EXCLUDE_SELF: tl.constexpr,  # drop pairs i == j (i < min(M, N))
        UPCAST_DOT: tl.constexpr,  # interpreter only: widen fp16/bf16 before tl.dot
        PRECISION: tl.constexpr,  # tl.dot input_precision for fp32 inputs
        SDM_EPS: tl.constexpr,  # ε in log(q + ε)
        LOG_SDM_EPS: tl.constexpr,  # log ε
        BLOCK_A: tl.constexpr,  # rows of A per tile
        BLOCK_B: tl.constexpr,  # rows of B per tile
        BLOCK_E: tl.constexpr,  # features per tl.dot chunk
    ):
        ACC: tl.constexpr = r_ptr.dtype.element_ty
        BLOCK_OWN: tl.constexpr = BLOCK_B if COLUMNS else BLOCK_A
        BLOCK_OTH: tl.constexpr = BLOCK_A if COLUMNS else BLOCK_B
        n_own = N if COLUMNS else M
        n_oth = M if COLUMNS else N
        l_own_ptr = lb_ptr if COLUMNS else la_ptr
        l_oth_ptr = la_ptr if COLUMNS else lb_ptr

        pid = tl.program_id(0)
        offs_own = pid * BLOCK_OWN + tl.arange(0, BLOCK_OWN)
        mask_own = offs_own < n_own
        l_own = tl.load(l_own_ptr + offs_own, mask=mask_own, other=0)
        scale = tl.load(scale_ptr)
        bias = tl.load(bias_ptr)

        if IS_SIGMOID:
            # -- pairwise sigmoid: Σ over the other side of ℓ = softplus(−y·S); no statistics --
            total = tl.zeros([BLOCK_OWN], ACC)
            for k0 in range(0, n_oth, BLOCK_OTH):
                offs_oth, mask_oth, l_oth, t, s, valid, sv, sp = _pair_tile(
                    a_ptr, b_ptr, r_ptr, c_ptr, l_oth_ptr, scale, bias, l_own, offs_own, mask_own, k0, n_oth, E, stride_a,
                    stride_b, COLUMNS, EXCLUDE_SELF, ACC, UPCAST_DOT, PRECISION, BLOCK_A, BLOCK_B, BLOCK_E, BLOCK_OTH)
                x = tl.where(l_own[:, None] == l_oth[None, :], -s, s)  # −y·S
                total += tl.sum(tl.where(valid, _softplus(x), 0.0), 1)
            tl.store(loss_ptr + offs_own, total, mask=mask_own)
            zero = tl.zeros([BLOCK_OWN], tl.float64)  # the schema's stats, unused by this loss
            for k in tl.static_range(4):
                tl.store(stats_ptr + offs_own * 4 + k, zero, mask=mask_own)
        else:
            # -- running statistics of the owned rows (_online_step) --
            m, l, w, lneg, mp, lp, npos = _fresh_stats(BLOCK_OWN, ACC)

            for k0 in range(0, n_oth, BLOCK_OTH):
                # -- logits of the tile [owner, other] --
                offs_oth, mask_oth, l_oth, t, s, valid, sv, sp = _pair_tile(
                    a_ptr, b_ptr, r_ptr, c_ptr, l_oth_ptr, scale, bias, l_own, offs_own, mask_own, k0, n_oth, E, stride_a,
                    stride_b, COLUMNS, EXCLUDE_SELF, ACC, UPCAST_DOT, PRECISION, BLOCK_A, BLOCK_B, BLOCK_E, BLOCK_OTH)
                m, l, w, lneg, mp, lp, npos = _online_step(m, l, w, lneg, mp, lp, npos, sv, sp, IS_SDM, 1)

            # -- epilogue: stats and loss (0 for rows without positives) --
            value, lse, lsep, npos64, neg_entropy = _finish_stats(m, l, w, lneg, mp, lp, npos, IS_SDM, SDM_EPS,
                                                                   LOG_SDM_EPS)
            _store_loss_stats(loss_ptr, stats_ptr, offs_own, mask_own, value, lse, lsep, npos64, neg_entropy)

    def _dot_path(dtype: torch.dtype, precision: str) -> str:
        if dtype in (torch.float16, torch.bfloat16):
            return "f16"
        if dtype == torch.float64:
            return "f64"
        return "ieee" if precision == "ieee" else "tf32"

    def _prune_tiles(configs, named_args, **kwargs):
        """Keep the candidates of this dot path (see _GPU_TILES) whose BLOCK_E is not far above E."""
        path = _dot_path(named_args["a_ptr"].dtype, kwargs.get("PRECISION", "ieee"))
        cap = max(16, triton.next_power_of_2(named_args["E"]))
        paths = lambda c: _TILE_PATHS.get(  # noqa: E731
            _tile_id(c.kwargs["BLOCK_A"], c.kwargs["BLOCK_B"], c.kwargs["BLOCK_E"], c.num_warps, c.num_stages), ())
        ours = [cfg for cfg in configs if path in paths(cfg)] or configs
        return [cfg for cfg in ours if cfg.kwargs["BLOCK_E"] <= cap] or [min(ours, key=lambda c: c.kwargs["BLOCK_E"])]

    # The row launch picks the tile of a problem; every other launch reuses it (_TILE_CONFIGS).
    _contrast_fwd_tuned = triton.autotune(configs=_configs(), key=["M", "N", "E", "PRECISION"],
                                          prune_configs_by={"early_config_prune": _prune_tiles})(_contrast_fwd_kernel)

    @triton.jit
    def _contrast_bwd_kernel(
        a_ptr,  # *A [M, E] row features, unit stride along E
        b_ptr,  # *B [N, E] column features, unit stride along E
        r_ptr,  # *[M] row term (fp32/fp64: sets the accumulator dtype)
        c_ptr,  # *[N] column term
        la_ptr,  # *[M] int64 row labels
        lb_ptr,  # *[N] int64 column labels
        scale_ptr,  # *[] logit scale
        bias_ptr,  # *[] logit bias
        g_own_ptr,  # *[n_own] upstream gradient of the owner side's losses
        g_oth_ptr,  # *[n_oth] upstream gradient of the other side's losses
        loss_own_ptr,  # *[n_own] owner-side losses from the forward
        loss_oth_ptr,  # *[n_oth] other-side losses
        stats_own_ptr,  # *[n_own, 4] float64 owner-side stats (LSE, LSEᴾ, n, Σ p·(S − LSE)), contiguous
        stats_oth_ptr,  # *[n_oth, 4] float64 other-side stats
        dx_ptr,  # *[n_own, E] out: gradient of the owner features (fp32 scratch for fp16/bf16)
        sum_ds_ptr,  # *[n_own] out: Σ_other dS per owner row
        sum_dst_ptr,  # *[n_own] out (WRITE_DST): Σ_other dS·t per owner row
        M,  # rows of A
        N,  # rows of B
        E,  # feature width
        stride_a,  # elements between rows of A
        stride_b,  # elements between rows of B
        stride_dx,  # elements between rows of dX (unit stride along E)
        COLUMNS: tl.constexpr,  # False: programs own rows of A (dA); True: rows of B (dB)
        IS_SDM: tl.constexpr,  # loss: True for sdm, False for infonce
        IS_SIGMOID: tl.constexpr,  # loss: pairwise sigmoid (overrides IS_SDM; reads no stats)
        EXCLUDE_SELF: tl.constexpr,  # drop pairs i == j (i < min(M, N))
        WRITE_DST: tl.constexpr,  # also write Σ dS·t (one of the two launches)
        DX_IN_REGS: tl.constexpr,  # E ≤ BLOCK_E: dX accumulates in registers
        UPCAST_DOT: tl.constexpr,  # interpreter only: widen fp16/bf16 before tl.dot
        PRECISION: tl.constexpr,  # tl.dot input_precision for fp32 inputs
        SDM_EPS: tl.constexpr,  # ε in log(q + ε)
        LOG_SDM_EPS: tl.constexpr,  # log ε
        BLOCK_A: tl.constexpr,  # rows of A per tile
        BLOCK_B: tl.constexpr,  # rows of B per tile
        BLOCK_E: tl.constexpr,  # features per tl.dot chunk (and per dX chunk)
    ):
        ACC: tl.constexpr = r_ptr.dtype.element_ty
        BLOCK_OWN: tl.constexpr = BLOCK_B if COLUMNS else BLOCK_A
        BLOCK_OTH: tl.constexpr = BLOCK_A if COLUMNS else BLOCK_B
        n_own = N if COLUMNS else M
        n_oth = M if COLUMNS else N
        l_own_ptr = lb_ptr if COLUMNS else la_ptr
        l_oth_ptr = la_ptr if COLUMNS else lb_ptr
        y_ptr = a_ptr if COLUMNS else b_ptr  # the other side's features (dX = dT · Y)
        stride_y = stride_a if COLUMNS else stride_b

        pid = tl.program_id(0)
        offs_own = pid * BLOCK_OWN + tl.arange(0, BLOCK_OWN)
        mask_own = offs_own < n_own
        offs_d = tl.arange(0, BLOCK_E)
        l_own = tl.load(l_own_ptr + offs_own, mask=mask_own, other=0)
        scale = tl.load(scale_ptr)
        bias = tl.load(bias_ptr)
        if IS_SIGMOID:  # no statistics: every row and column takes its upstream gradient as is
            g_x = tl.load(g_own_ptr + offs_own, mask=mask_own, other=0.0)
        else:
            g_x, lse_x, lse_lo_x, lsep_x, lsep_lo_x, loss_x, logq_x = _side_consts(
                g_own_ptr, loss_own_ptr, stats_own_ptr, offs_own, mask_own, SDM_EPS)

        sum_ds = tl.zeros([BLOCK_OWN], ACC)
        sum_dst = tl.zeros([BLOCK_OWN], ACC)
        dx_acc = tl.zeros([BLOCK_OWN, BLOCK_E], ACC)  # used when DX_IN_REGS

        for k0 in range(0, n_oth, BLOCK_OTH):
            # -- recompute the logits of the tile [owner, other] (same bits as the forward) --
            offs_oth, mask_oth, l_oth, t, s, valid, sv, sp = _pair_tile(
                a_ptr, b_ptr, r_ptr, c_ptr, l_oth_ptr, scale, bias, l_own, offs_own, mask_own, k0, n_oth, E, stride_a,
                stride_b, COLUMNS, EXCLUDE_SELF, ACC, UPCAST_DOT, PRECISION, BLOCK_A, BLOCK_B, BLOCK_E, BLOCK_OTH)
            if IS_SIGMOID:
                g_y = tl.load(g_oth_ptr + offs_oth, mask=mask_oth, other=0.0)
            else:
                g_y, lse_y, lse_lo_y, lsep_y, lsep_lo_y, loss_y, logq_y = _side_consts(
                    g_oth_ptr, loss_oth_ptr, stats_oth_ptr, offs_oth, mask_oth, SDM_EPS)

            if IS_SIGMOID:
                # -- dS = (g_own + g_oth)·∂ℓ/∂S, ∂ℓ/∂S = −y·σ(−y·S) (exactly 0 where not a valid pair) --
                pos = l_own[:, None] == l_oth[None, :]
                sig = _logistic(tl.where(pos, -s, s))
                ds = tl.where(valid, (g_x[:, None] + g_y[None, :]) * tl.where(pos, -sig, sig), 0.0)
            else:
                # -- dS from both sides' stats (exactly 0 where not a valid pair) --
                ds = _dloss_dlogit(sv, sp, g_x[:, None], lse_x[:, None], lse_lo_x[:, None], lsep_x[:, None],
                                   lsep_lo_x[:, None], loss_x[:, None], logq_x[:, None], IS_SDM, LOG_SDM_EPS)
                ds += _dloss_dlogit(sv, sp, g_y[None, :], lse_y[None, :], lse_lo_y[None, :], lsep_y[None, :],
                                    lsep_lo_y[None, :], loss_y[None, :], logq_y[None, :], IS_SDM, LOG_SDM_EPS)
            sum_ds += tl.sum(ds, 1)
            if WRITE_DST:
                sum_dst += tl.sum(ds * t, 1)
            dt = _round_to(scale * ds, a_ptr.dtype.element_ty, UPCAST_DOT)  # dT in the feature dtype for the GEMM

            # -- dX += dT · Y --
            if DX_IN_REGS:
                y = tl.load(y_ptr + offs_oth[:, None] * stride_y + offs_d[None, :],
                            mask=mask_oth[:, None] & (offs_d[None, :] < E), other=0.0)
                dx_acc = _mma(dt, y, dx_acc, UPCAST_DOT, PRECISION)
            else:
                # read-modify-write of this program's own rows of dX, one chunk of E at a time
                for e0 in range(0, E, BLOCK_E):
                    offs_e = e0 + offs_d
                    mask_e = offs_e < E
                    y = tl.load(y_ptr + offs_oth[:, None] * stride_y + offs_e[None, :],
                                mask=mask_oth[:, None] & mask_e[None, :], other=0.0)
                    dx_ptrs = dx_ptr + offs_own[:, None] * stride_dx + offs_e[None, :]
                    dx_mask = mask_own[:, None] & mask_e[None, :]
                    part = tl.load(dx_ptrs, mask=dx_mask & (k0 > 0), other=0.0).to(ACC)  # 0 on the first tile
                    part = _mma(dt, y, part, UPCAST_DOT, PRECISION)
                    tl.store(dx_ptrs, part, mask=dx_mask)
                tl.debug_barrier()  # this tile's stores are visible to the whole program before the next loads

        # -- epilogue --
        if DX_IN_REGS:
            tl.store(dx_ptr + offs_own[:, None] * stride_dx + offs_d[None, :], dx_acc,
                     mask=mask_own[:, None] & (offs_d[None, :] < E))
        tl.store(sum_ds_ptr + offs_own, sum_ds, mask=mask_own)
        if WRITE_DST:
            tl.store(sum_dst_ptr + offs_own, sum_dst, mask=mask_own)


# -- host launchers --------------------------------------------------------------------------------


def _check(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self, precision="ieee"):
    if _IMPORT_ERROR is not None:
        raise RuntimeError(f"the Triton backend needs triton ({_IMPORT_ERROR})")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))}, got {loss!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    if A.dim() != 2 or B.dim() != 2 or A.shape[1] != B.shape[1]:
        raise ValueError(f"A must be [M, E] and B [N, E], got {tuple(A.shape)} and {tuple(B.shape)}")
    M, N = A.shape[0], B.shape[0]
    if M == 0 or N == 0 or A.shape[1] == 0:
        raise ValueError(f"empty input: A {tuple(A.shape)}, B {tuple(B.shape)}")
    if A.dtype not in _FEATURE_DTYPES or B.dtype != A.dtype:
        raise TypeError(f"A and B must share a dtype in {_FEATURE_DTYPES}, got {A.dtype} and {B.dtype}")
    odt = out_dtype(A.dtype)
    for name, x, shape in (("r", r, (M,)), ("c", c, (N,)), ("scale", scale, ()), ("bias", bias, ())):
        if x.dtype != odt or tuple(x.shape) != shape:
            raise ValueError(f"{name} must be a {odt} tensor of shape {list(shape)}, got {x.dtype} {list(x.shape)}")
    for name, x, n in (("labels_a", labels_a, M), ("labels_b", labels_b, N)):
        if x.dtype != torch.int64 or tuple(x.shape) != (n,):
            raise ValueError(f"{name} must be an int64 tensor of shape [{n}], got {x.dtype} {list(x.shape)}")
    for name, x in (("B", B), ("r", r), ("c", c), ("scale", scale), ("bias", bias),
                    ("labels_a", labels_a), ("labels_b", labels_b)):
        if x.device != A.device:
            raise ValueError(f"{name} is on {x.device} but A is on {A.device}")


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x with unit stride along features (row stride free: padded rows are not copied); the
    kernels index with int32 offsets."""
    x = x if x.stride(1) == 1 or x.shape[1] == 1 else x.contiguous()
    if x.shape[0] * max(x.stride(0), x.shape[1]) >= 2**31:
        raise ValueError(f"features of shape {tuple(x.shape)} (row stride {x.stride(0)}) span 2**31 elements or "
                         "more; the Triton kernels use int32 offsets")
    return x


# Tile config per problem: (device, dtype, M, N, E, precision) -> triton.Config. Every launch of
# one problem (forward rows and columns, backward rows and columns) must use the same tile shape
# so that the logits are recomputed bit-identically; the forward row launch autotunes it.
_TILE_CONFIGS: dict = {}


def _tile_key(A, B, flags):
    return (A.device, A.dtype, A.shape[0], B.shape[0], A.shape[1], flags["PRECISION"])


def _launch_opts(cfg) -> dict:
    return dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _fwd_launch(A, B, r, c, labels_a, labels_b, scale, bias, loss_out, stats_out, columns, flags, cfg=None):
    """One forward launch; without ``cfg`` through the autotuner (row launch), returning the tile."""
    M, E = A.shape
    N = B.shape[0]
    args = (A, B, r, c, labels_a, labels_b, scale, bias, loss_out, stats_out, M, N, E, A.stride(0), B.stride(0))
    if cfg is None:
        grid = lambda meta: (triton.cdiv(N if columns else M, meta["BLOCK_B" if columns else "BLOCK_A"]),)  # noqa: E731
        _contrast_fwd_tuned[grid](*args, COLUMNS=columns, **flags)
        return _contrast_fwd_tuned.best_config
    grid = (triton.cdiv(N if columns else M, cfg.kwargs["BLOCK_B" if columns else "BLOCK_A"]),)
    _contrast_fwd_kernel[grid](*args, COLUMNS=columns, **flags, **_launch_opts(cfg))
    return cfg


def _forward(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self, precision="ieee", chunk_rows=0):
    _check(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self, precision)
    A, B = _rows(A), _rows(B)
    r, c, labels_a, labels_b = r.contiguous(), c.contiguous(), labels_a.contiguous(), labels_b.contiguous()
    if chunk_rows >= 0:  # vendor GEMMs in row chunks + Triton epilogues (triton_chunked.py)
        from . import triton_chunked

        return triton_chunked.forward(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self, precision,
                                      chunk_rows)
    M, N = A.shape[0], B.shape[0]
    odt = out_dtype(A.dtype)
    loss_rows, loss_cols = A.new_empty((M,), dtype=odt), A.new_empty((N,), dtype=odt)
    row_stats, col_stats = A.new_empty((M, N_STATS), dtype=STATS_DTYPE), A.new_empty((N, N_STATS), dtype=STATS_DTYPE)
    flags = _flags(A, loss, exclude_self, precision)
    key = _tile_key(A, B, flags)
    with _device_guard(A):
        # -- row statistics (softmax over columns); picks the tile on a new problem --
        cfg = _fwd_launch(A, B, r, c, labels_a, labels_b, scale, bias, loss_rows, row_stats, False, flags,
                          _TILE_CONFIGS.get(key))
        _TILE_CONFIGS[key] = cfg
        # -- column statistics (softmax over rows), same tile --
        _fwd_launch(A, B, r, c, labels_a, labels_b, scale, bias, loss_cols, col_stats, True, flags, cfg)
    return loss_rows, loss_cols, row_stats, col_stats


def _tile_for_backward(A, B, r, c, scale, bias, labels_a, labels_b, flags):
    key = _tile_key(A, B, flags)
    if key not in _TILE_CONFIGS:  # backward without a forward in this process: tune like the forward
        M = A.shape[0]
        scratch_loss, scratch_stats = r.new_empty((M,)), r.new_empty((M, N_STATS), dtype=STATS_DTYPE)
        _TILE_CONFIGS[key] = _fwd_launch(A, B, r, c, labels_a, labels_b, scale, bias, scratch_loss,
                                         scratch_stats, False, flags)
    return _TILE_CONFIGS[key]


def _bwd_launch(A, B, r, c, labels_a, labels_b, scale, bias, g_own, g_oth, loss_own, loss_oth, st_own, st_oth,
                dX, sds, sdst, columns, flags, cfg):
    """One backward launch: the row owners (dA, Σ dS, Σ dS·t) or, with ``columns``, the column
    owners (dB, Σ dS) of a problem whose tile ``cfg`` the forward chose."""
    M, E = A.shape
    N = B.shape[0]
    opts = _launch_opts(cfg)
    flags = dict(flags, DX_IN_REGS=E <= cfg.kwargs["BLOCK_E"])
    grid = (triton.cdiv(N if columns else M, cfg.kwargs["BLOCK_B" if columns else "BLOCK_A"]),)
    args = (A, B, r, c, labels_a, labels_b, scale, bias, g_own, g_oth, loss_own, loss_oth, st_own, st_oth,
            dX, sds, sdst, M, N, E, A.stride(0), B.stride(0), dX.stride(0))
    try:
        _contrast_bwd_kernel[grid](*args, COLUMNS=columns, WRITE_DST=not columns, **flags, **opts)
    except OutOfResources:
        # the dX GEMM needs more shared memory than the forward: fewer pipeline stages
        # (the arithmetic, hence the logits, do not depend on the stage count)
        opts["num_stages"] = 1
        _contrast_bwd_kernel[grid](*args, COLUMNS=columns, WRITE_DST=not columns, **flags, **opts)


def _backward(grad_rows, grad_cols, A, B, r, c, scale, bias, labels_a, labels_b,
              loss_rows, loss_cols, row_stats, col_stats, loss, exclude_self, precision="ieee", chunk_rows=0):
    _check(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self, precision)
    A, B = _rows(A), _rows(B)
    r, c, labels_a, labels_b = r.contiguous(), c.contiguous(), labels_a.contiguous(), labels_b.contiguous()
    M, E = A.shape
    N = B.shape[0]
    odt = out_dtype(A.dtype)
    for name, st, n in (("row_stats", row_stats, M), ("col_stats", col_stats, N)):
        if st.dtype != STATS_DTYPE or tuple(st.shape) != (n, N_STATS) or st.device != A.device:
            raise ValueError(f"{name} must be the forward's statistics: a {STATS_DTYPE} tensor of shape [{n}, {N_STATS}] "
                             f"on {A.device}, got {st.dtype} {list(st.shape)} on {st.device}")
    grad_rows, grad_cols = grad_rows.to(odt).contiguous(), grad_cols.to(odt).contiguous()
    loss_rows, loss_cols = loss_rows.contiguous(), loss_cols.contiguous()
    row_stats, col_stats = row_stats.contiguous(), col_stats.contiguous()
    if chunk_rows >= 0:  # vendor GEMMs in row chunks + Triton epilogues (triton_chunked.py)
        from . import triton_chunked

        return triton_chunked.backward(grad_rows, grad_cols, A, B, r, c, scale, bias, labels_a, labels_b, loss_rows,
                                       loss_cols, row_stats, col_stats, loss, exclude_self, precision, chunk_rows)
    # fp16/bf16: dT is rounded to the feature dtype; run on pre·g so it cannot underflow (grad_prescale)
    pre = grad_prescale(grad_rows, grad_cols, scale) if A.dtype in (torch.float16, torch.bfloat16) else None
    if pre is not None:
        grad_rows, grad_cols = grad_rows * pre.to(odt), grad_cols * pre.to(odt)
    # dA/dB accumulate in fp32 (fp64) scratch when the features are fp16/bf16
    dA = torch.empty((M, E), dtype=odt, device=A.device)
    dB = torch.empty((N, E), dtype=odt, device=A.device)
    sum_ds_rows, sum_dst_rows = A.new_empty((M,), dtype=odt), A.new_empty((M,), dtype=odt)
    sum_ds_cols = A.new_empty((N,), dtype=odt)
    flags = _flags(A, loss, exclude_self, precision)
    with _device_guard(A):
        cfg = _tile_for_backward(A, B, r, c, scale, bias, labels_a, labels_b, flags)
        for columns, g_own, g_oth, loss_own, loss_oth, st_own, st_oth, dX, sds, sdst in (
            (False, grad_rows, grad_cols, loss_rows, loss_cols, row_stats, col_stats, dA, sum_ds_rows, sum_dst_rows),
            (True, grad_cols, grad_rows, loss_cols, loss_rows, col_stats, row_stats, dB, sum_ds_cols, sum_ds_cols),
        ):
            _bwd_launch(A, B, r, c, labels_a, labels_b, scale, bias, g_own, g_oth, loss_own, loss_oth, st_own, st_oth,
                        dX, sds, sdst, columns, flags, cfg)
    return finish_grads(A, B, scale, dA, dB, sum_ds_rows, sum_ds_cols, sum_dst_rows, pre)



# -- ahead-of-time compilation for a GPU target (no GPU needed) ---------------------------------------

_TRITON_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


def compile_for_target(arch: int = 90, dtypes=_FEATURE_DTYPES, losses=LOSSES, designs=("tiles", "chunked")) -> list[str]:
    """Compile the kernels for ``cuda`` compute capability ``arch`` without a GPU (Triton's front
    end, LLVM and its bundled ptxas). ``tiles``: with the first tile of each dot path (``_GPU_TILES``),
    for every dtype (float32 with "ieee" and "tf32") and loss, the forward and backward row launches,
    and for SDM the column launches too (the backward's with dX in registers). ``chunked``: the
    epilogue kernels of ``triton_chunked`` with their GPU tiles, for every loss (row and column
    forward, per accumulator dtype; the backward, per feature dtype; the column finish). Returns one
    line per variant: "ok ... shared BYTES" or "FAIL ...: error" (also when the shared memory exceeds
    the 227 KiB a Hopper block can have). The interpreter never runs Triton's front end, so a kernel
    it passes can still fail to compile on a GPU (Triton 3.6 rejected float64 ``tl.dot`` with the
    default fp32 ``out_dtype``); this finds such failures on any machine. Needs an import without
    ``TRITON_INTERPRET`` (the kernels must be JIT functions, not interpreted ones)."""
    if triton is None:
        raise RuntimeError(f"triton is not importable ({_IMPORT_ERROR})")
    if INTERPRET:
        raise RuntimeError("compile_for_target needs the kernels jitted for a GPU: import without TRITON_INTERPRET=1")
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", arch, 32)
    variants = (_tile_variants(dtypes, losses) if "tiles" in designs else []) + \
        (_chunked_variants(dtypes, losses) if "chunked" in designs else [])
    results = []
    for name, kernel, dtype, consts, options in variants:
        label = f"{name} sm_{arch}"
        try:
            compiled = triton.compile(_ast_source(kernel, dtype, consts), target=target, options=options)
            shared = compiled.metadata.shared
            ok = shared <= 227 * 1024
            results.append(f"{'ok' if ok else 'FAIL'} {label} shared {shared}"
                           + ("" if ok else ": more shared memory than a block can have"))
        except Exception as e:  # the compiler's own error, reported per variant
            root = e
            while root.__cause__ is not None:
                root = root.__cause__
            where = (str(e).strip().splitlines() or [""])[0]  # "at LINE:COL:" in the kernel
            results.append(f"FAIL {label}: {type(e).__name__} {where} caused by "
                           f"{type(root).__name__}: {str(root).strip()[:200]}")
    return results


def _loss_flags(loss: str) -> dict:
    return dict(IS_SDM=loss == "sdm", IS_SIGMOID=loss == "sigmoid", EXCLUDE_SELF=True)


def _tile_variants(dtypes, losses) -> list:
    """(label, kernel, dtype, constexprs, options) of the fully fused tile kernels to compile."""
    out = []
    for dtype in dtypes:
        for precision in (("ieee", "tf32") if dtype == torch.float32 else ("ieee",)):
            path = _dot_path(dtype, precision)
            ba, bb, be, warps, stages = next(t[:5] for t in _GPU_TILES if path in t[5])
            for loss in losses:
                base = dict(_loss_flags(loss), UPCAST_DOT=False, PRECISION=precision, SDM_EPS=SDM_EPS,
                            LOG_SDM_EPS=math.log(SDM_EPS), BLOCK_A=ba, BLOCK_B=bb, BLOCK_E=be)
                launches = [("forward rows", _contrast_fwd_kernel, dict(COLUMNS=False)),
                            ("backward rows", _contrast_bwd_kernel, dict(COLUMNS=False, WRITE_DST=True, DX_IN_REGS=False))]
                if loss == "sdm":
                    launches += [("forward columns", _contrast_fwd_kernel, dict(COLUMNS=True)),
                                 ("backward columns", _contrast_bwd_kernel,
                                  dict(COLUMNS=True, WRITE_DST=False, DX_IN_REGS=True))]
                out += [(f"tiles {name} {dtype} {precision} {loss}", kernel, dtype, dict(base, **extra),
                         dict(num_warps=warps, num_stages=stages)) for name, kernel, extra in launches]
    return out


def _chunked_variants(dtypes, losses) -> list:
    """(label, kernel, dtype, constexprs, options) of the chunked path's epilogue kernels to compile:
    the forward kernels and the finish once per accumulator dtype (float32, float64), the backward
    per feature dtype (fp16/bf16 write dT in their dtype too)."""
    from . import triton_chunked as tk

    eps = dict(SDM_EPS=SDM_EPS, LOG_SDM_EPS=math.log(SDM_EPS))
    tiles = tk._GPU_TILES
    out = []
    for dtype in dtypes:
        acc_owner = dtype in (torch.float32, torch.float64)  # the forward kernels see only ACC tensors
        for loss in losses:
            flags = _loss_flags(loss)
            launches = []
            if acc_owner:
                launches += [("forward rows", tk._rows_fwd_kernel, dict(flags, **eps), tiles["rows_fwd"]),
                             ("forward columns", tk._cols_fwd_kernel, dict(flags), tiles["cols_fwd"]),
                             ("column finish", tk._cols_finish_kernel,
                              dict(IS_SDM=flags["IS_SDM"], IS_SIGMOID=flags["IS_SIGMOID"], **eps), tiles["cols_fwd"])]
            launches.append(("backward", tk._chunk_bwd_kernel,
                             dict(flags, WRITE_LOW=dtype in (torch.float16, torch.bfloat16), WRITE_LOSS=loss == "sigmoid",
                                  UPCAST_DOT=False, **eps), tiles["bwd"]))
            for name, kernel, consts, (br, bn, warps) in launches:
                consts = dict(consts, BLOCK_N=bn) if kernel is tk._cols_finish_kernel else dict(consts, BLOCK_R=br, BLOCK_N=bn)
                out.append((f"chunked {name} {dtype} {loss}", kernel, dtype, consts, dict(num_warps=warps, num_stages=1)))
    return out


def _ast_source(kernel, dtype: torch.dtype, consts: dict):
    """Triton's compile input for ``kernel`` with features of ``dtype`` and the given constexprs."""
    from triton.compiler import ASTSource

    feat = "*" + _TRITON_DTYPES[dtype]
    acc = "*fp64" if dtype == torch.float64 else "*fp32"
    ptrs = {name: (feat if name in ("a_ptr", "b_ptr", "low_ptr") else "*i64" if name in ("la_ptr", "lb_ptr")
                   else "*fp64" if "stats" in name else acc)
            for name in kernel.arg_names if name.endswith("_ptr")}
    ints = {name: "i32" for name in kernel.arg_names
            if name in ("M", "N", "E", "rows", "row0", "rows_cap") or name.startswith("stride_")}
    sig = ptrs | ints | {k: "constexpr" for k in consts}
    return ASTSource(kernel, {k: sig[k] for k in kernel.arg_names}, consts)


# -- registered ops --------------------------------------------------------------------------------

if triton is not None:

    @torch.library.custom_op("uca::triton_contrast_forward", mutates_args=())
    def triton_contrast_forward(
        A: torch.Tensor,
        B: torch.Tensor,
        r: torch.Tensor,
        c: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor,
        labels_a: torch.Tensor,
        labels_b: torch.Tensor,
        loss: str,
        exclude_self: bool,
        precision: str = "ieee",
        chunk_rows: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward of the contrast op (contract in ``contrast.py``) with the Triton kernels;
        ``precision``: the float32 products (PRECISIONS); ``chunk_rows``: rows per vendor-GEMM chunk
        (0: 512 MiB of scratch; negative: the fully fused tile kernels)."""
        return _forward(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self, precision, chunk_rows)

    @torch.library.custom_op("uca::triton_contrast_backward", mutates_args=())
    def triton_contrast_backward(
        grad_rows: torch.Tensor,
        grad_cols: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        r: torch.Tensor,
        c: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor,
        labels_a: torch.Tensor,
        labels_b: torch.Tensor,
        loss_rows: torch.Tensor,
        loss_cols: torch.Tensor,
        row_stats: torch.Tensor,
        col_stats: torch.Tensor,
        loss: str,
        exclude_self: bool,
        precision: str = "ieee",
        chunk_rows: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Backward of the contrast op: (dA, dB, dr, dc, dscale, dbias), with its forward's precision
        and chunk rows."""
        return _backward(grad_rows, grad_cols, A, B, r, c, scale, bias, labels_a, labels_b,
                         loss_rows, loss_cols, row_stats, col_stats, loss, exclude_self, precision, chunk_rows)

    register_contrast_autograd(triton_contrast_forward, triton_contrast_backward)

    @torch.library.custom_op("uca::triton_sigmoid_loss_and_grads", mutates_args=())
    def triton_sigmoid_loss_and_grads(
        A: torch.Tensor,
        B: torch.Tensor,
        r: torch.Tensor,
        c: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor,
        labels_a: torch.Tensor,
        labels_b: torch.Tensor,
        exclude_self: bool,
        precision: str = "ieee",
        chunk_rows: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Σᵢⱼ ℓᵢⱼ of the sigmoid loss and (dA, dB, dr, dc, dscale, dbias) in one sweep of row chunks
        (3 GEMM passes; ``contrast.py``, "Scalar sigmoid loss in one sweep"). ``chunk_rows`` ≥ 0."""
        _check(A, B, r, c, scale, bias, labels_a, labels_b, "sigmoid", exclude_self, precision)
        if chunk_rows < 0:
            raise ValueError("sigmoid_loss_and_grads runs in row chunks: chunk_rows must be >= 0")
        from . import triton_chunked

        return triton_chunked.sigmoid_loss_and_grads(_rows(A), _rows(B), r.contiguous(), c.contiguous(), scale, bias,
                                                     labels_a.contiguous(), labels_b.contiguous(), exclude_self,
                                                     precision, chunk_rows)

    register_sigmoid_sum_autograd(triton_sigmoid_loss_and_grads)


# -- what the dispatcher calls ---------------------------------------------------------------------


def kernel_modules() -> tuple:
    """The modules whose source decides the Triton kernels (part of the self-test's cache key)."""
    from . import _triton_common, triton_chunked

    return (sys.modules[__name__], _triton_common, triton_chunked)


def available_reasons() -> list[str]:
    """Reasons independent of the inputs (triton missing)."""
    return [] if _IMPORT_ERROR is None else [f"triton is not importable ({_IMPORT_ERROR})"]


def not_supported_reasons(*, A, B, loss, exclude_self, explicit=False) -> list[str]:
    """Why these inputs cannot run here (empty: they can). CUDA tensors run the compiled kernels;
    CPU tensors only the interpreter, and only when the backend was named explicitly."""
    reasons = available_reasons()
    if A.device.type == "cpu":
        if not INTERPRET:
            reasons.append("CPU tensors need TRITON_INTERPRET=1 (set before uca_kernels.triton_contrast "
                           "is imported) and backend='triton'")
        elif not explicit:
            reasons.append("CPU tensors run only in Triton's interpreter, which is used only when "
                           "backend='triton' is named explicitly")
    elif A.device.type != "cuda":
        reasons.append(f"needs CUDA tensors, got {A.device.type}")
    if A.dtype not in _FEATURE_DTYPES:
        reasons.append(f"needs float16, bfloat16, float32 or float64 inputs, got {A.dtype}")
    if loss not in LOSSES:
        reasons.append(f"unknown loss {loss!r}")
    return reasons


def contrast(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self):
    """Run the op through the registered (autograd-aware) Triton forward.

    Shapes as in :func:`uca_kernels.contrast.contrast`: A [M, E], B [N, E] (fp16/bf16/fp32/fp64),
    r [M], c [N], scale [], bias [] (float32, float64 for float64 inputs), labels_a [M],
    labels_b [N] int64. Returns ``(loss_rows [M], loss_cols [N])``. float32 features use
    :func:`get_input_precision` as read now; the backward gets the same precision from autograd.
    """
    out = torch.ops.uca.triton_contrast_forward(A, B, r, c, scale, bias, labels_a, labels_b, loss, bool(exclude_self),
                                                get_input_precision(), resolve_chunk_rows(A.shape[0], B.shape[0], A.dtype))
    return out[0], out[1]
