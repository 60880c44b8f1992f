r"""The Triton backend's chunked path: vendor GEMMs in row chunks with fused Triton epilogues.

Maths and the op contract: ``contrast.py``. Where this design comes from: a GEMM is fastest in the
vendor library (cuBLAS through ``torch.mm``), and everything the op adds to the GEMMs — logits,
online log-sum-exp statistics, dS — is elementwise or a row / column reduction over S. So S is
formed one chunk of c rows at a time, ``S_c = A_c Bᵀ`` ([c, N], float32; float64 for float64
features; fp16/bf16 features multiply with fp32 accumulation and an fp32 output), and memory-bound
Triton kernels run over the chunk:

Forward, chunks in increasing order:

``_rows_fwd_kernel`` — programs own BLOCK_R rows of the chunk and sweep its N columns: t = S + (r + c),
    s = scale·t + bias, the online statistics of each row (``_triton_common._online_step``); a row
    sees all N columns inside its chunk, so its loss and stats (LSE, LSEᴾ, n, H) are final.
``_cols_fwd_kernel`` — programs own BLOCK_N columns and sweep the chunk's rows, continuing each
    column's running statistics (m, l, w, lneg, mp, lp, npos: a [7, N] buffer carried from chunk to
    chunk). One program per column block and chunks in a fixed order: deterministic, no atomics.
``_cols_finish_kernel`` — after the last chunk, the columns' losses and stats from their running state.

Backward, chunks in the same order (S recomputed by the same GEMM on the same shapes, so its bits
equal the forward's and p = exp(S − LSE) is consistent with the saved LSE):

``_chunk_bwd_kernel`` — a 2-D grid of [BLOCK_R, BLOCK_N] tiles: dS from both sides' saved stats (the
    formulas of ``_triton_common._dloss_dlogit``; sigmoid: (g_row + g_col)·(−y·σ(−y·S))), dT = scale·dS
    written over S in place (and, for fp16/bf16 features, a copy rounded to their dtype for the tensor
    cores), per-tile row sums of dS and dS·t and column sums of dS written as partials, reduced
    afterwards by torch in a fixed order. Then ``dA_c = dT_c B`` and ``dB += dT_cᵀ A_c`` by the vendor
    GEMM (fp32 accumulation into an fp32 / fp64 buffer).

GEMM passes: 4 for a softmax loss's forward + backward (the floor), 3 for the scalar sigmoid loss
(:func:`sigmoid_loss_and_grads`: the backward epilogue with g_row = 1, g_col = 0 also sums ℓ, so
one sweep forms the loss and every gradient). Memory: the chunk (c·N values, plus c·N fp16/bf16 dT)
and O((M + N)·E); c comes from ``chunk_rows`` (``_registry.resolve_chunk_rows``: a scratch budget,
512 MiB by default). ``precision`` "tf32" allows TF32 in these GEMMs; "ieee" and "tf32x3" do not
(cuBLAS has no 3×TF32 mode: "tf32x3" runs exact fp32 products).

CPU tensors (tests, under ``TRITON_INTERPRET=1``) run the same driver with CPU ``torch.mm`` as the
vendor GEMM; fp16/bf16 operands are widened to fp32 there (their products are exact in fp32, as in
the GPU's fp32 accumulation).
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from . import _triton_common as _tc
from ._registry import DEFAULT_SCRATCH_MB, N_STATS, STATS_DTYPE, auto_chunk_rows, grad_prescale, out_dtype

triton, tl = _tc.triton, _tc.tl

__all__ = ["backward", "forward", "sigmoid_loss_and_grads"]

_LOW = (torch.float16, torch.bfloat16)

# Epilogue tiles (rows, columns, warps). They are memory-bound passes over the chunk; the GPU sizes
# are first guesses to retune with the profiler. The interpreter is fastest with large tiles.
_GPU_TILES = {"rows_fwd": (16, 256, 4), "cols_fwd": (64, 64, 4), "bwd": (32, 128, 4)}
_INTERPRETER_TILES = {"rows_fwd": (64, 64, 1), "cols_fwd": (64, 64, 1), "bwd": (64, 64, 1)}

if triton is not None:
    _online_step, _finish_stats = _tc._online_step, _tc._finish_stats
    _fresh_stats, _store_loss_stats = _tc._fresh_stats, _tc._store_loss_stats
    _softplus, _logistic, _round_to = _tc._softplus, _tc._logistic, _tc._round_to
    _side_consts, _dloss_dlogit = _tc._side_consts, _tc._dloss_dlogit

    @triton.jit
    def _chunk_tile(
        s_ptr,  # *[rows, N] raw GEMM values A_c Bᵀ of the chunk (ACC), unit stride along N
        r_ptr,  # *[M] row term (whole problem)
        c_ptr,  # *[N] column term
        la_ptr,  # *[M] int64 row labels (whole problem)
        lb_ptr,  # *[N] int64 column labels
        scale,  # logit scale (a value)
        bias,  # logit bias (a value)
        offs_i,  # [BLOCK_R] chunk-local row indices
        offs_j,  # [BLOCK_N] column indices
        mask_i,  # [BLOCK_R] offs_i < rows
        mask_j,  # [BLOCK_N] offs_j < N
        row0,  # global index of the chunk's first row
        stride_s,  # elements between rows of the chunk buffer
        EXCLUDE_SELF: tl.constexpr,  # drop pairs i == j (global indices)
    ):
        """The tile [rows, columns] of the chunk: raw values t, logits s, valid pairs, positives, and
        the logits masked to valid pairs (sv) and to positives (sp), -inf elsewhere."""
        rows_g = row0 + offs_i  # global row indices
        g = tl.load(s_ptr + offs_i[:, None] * stride_s + offs_j[None, :],
                    mask=mask_i[:, None] & mask_j[None, :], other=0.0)
        r = tl.load(r_ptr + rows_g, mask=mask_i, other=0.0)
        c = tl.load(c_ptr + offs_j, mask=mask_j, other=0.0)
        t = g + (r[:, None] + c[None, :])
        s = scale * t + bias
        valid = mask_i[:, None] & mask_j[None, :]
        if EXCLUDE_SELF:
            valid = valid & (rows_g[:, None] != offs_j[None, :])
        la = tl.load(la_ptr + rows_g, mask=mask_i, other=0)
        lb = tl.load(lb_ptr + offs_j, mask=mask_j, other=0)
        pos = la[:, None] == lb[None, :]
        sv = tl.where(valid, s, float("-inf"))
        sp = tl.where(pos, sv, float("-inf"))
        return t, s, valid, pos, sv, sp

    @triton.jit
    def _rows_fwd_kernel(
        s_ptr,  # *[rows, N] raw values of the chunk (ACC)
        r_ptr,  # *[M] row term (ACC: sets the accumulator dtype)
        c_ptr,  # *[N] column term
        la_ptr,  # *[M] int64 row labels
        lb_ptr,  # *[N] int64 column labels
        scale_ptr,  # *[] logit scale (read on the device)
        bias_ptr,  # *[] logit bias
        loss_ptr,  # *[M] out: row losses (the chunk's rows are written)
        stats_ptr,  # *[M, 4] float64 out: row stats (LSE, LSEᴾ, n, H), contiguous
        rows,  # rows in this chunk
        N,  # columns
        row0,  # global index of the chunk's first row
        stride_s,  # elements between rows of the chunk buffer
        IS_SDM: tl.constexpr,  # loss: sdm (else infonce)
        IS_SIGMOID: tl.constexpr,  # loss: pairwise sigmoid (stats written as zeros)
        EXCLUDE_SELF: tl.constexpr,  # drop pairs i == j
        SDM_EPS: tl.constexpr,  # ε in log(q + ε)
        LOG_SDM_EPS: tl.constexpr,  # log ε
        BLOCK_R: tl.constexpr,  # rows per program
        BLOCK_N: tl.constexpr,  # columns per step of the sweep
    ):
        ACC: tl.constexpr = r_ptr.dtype.element_ty
        offs_i = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        mask_i = offs_i < rows
        scale = tl.load(scale_ptr)
        bias = tl.load(bias_ptr)
        out = row0 + offs_i
        if IS_SIGMOID:
            # -- Σ over columns of ℓ = softplus(−y·S) --
            total = tl.zeros([BLOCK_R], ACC)
            for j0 in range(0, N, BLOCK_N):
                offs_j = j0 + tl.arange(0, BLOCK_N)
                t, s, valid, pos, sv, sp = _chunk_tile(s_ptr, r_ptr, c_ptr, la_ptr, lb_ptr, scale, bias, offs_i, offs_j,
                                                       mask_i, offs_j < N, row0, stride_s, EXCLUDE_SELF)
                total += tl.sum(tl.where(valid, _softplus(tl.where(pos, -s, s)), 0.0), 1)
            tl.store(loss_ptr + out, total, mask=mask_i)
            zero = tl.zeros([BLOCK_R], tl.float64)  # the schema's stats, unused by this loss
            for k in tl.static_range(4):
                tl.store(stats_ptr + out * 4 + k, zero, mask=mask_i)
        else:
            # -- online statistics of each row over all N columns --
            m, l, w, lneg, mp, lp, npos = _fresh_stats(BLOCK_R, ACC)
            for j0 in range(0, N, BLOCK_N):
                offs_j = j0 + tl.arange(0, BLOCK_N)
                t, s, valid, pos, sv, sp = _chunk_tile(s_ptr, r_ptr, c_ptr, la_ptr, lb_ptr, scale, bias, offs_i, offs_j,
                                                       mask_i, offs_j < N, row0, stride_s, EXCLUDE_SELF)
                m, l, w, lneg, mp, lp, npos = _online_step(m, l, w, lneg, mp, lp, npos, sv, sp, IS_SDM, 1)
            # -- the rows are complete: loss and stats --
            value, lse, lsep, n64, h = _finish_stats(m, l, w, lneg, mp, lp, npos, IS_SDM, SDM_EPS, LOG_SDM_EPS)
            _store_loss_stats(loss_ptr, stats_ptr, out, mask_i, value, lse, lsep, n64, h)

    @triton.jit
    def _load_state(state_ptr, offs, mask, N):
        """Columns' running statistics (m, l, w, lneg, mp, lp, npos) from the [7, N] state buffer."""
        m = tl.load(state_ptr + 0 * N + offs, mask=mask, other=float("-inf"))
        l = tl.load(state_ptr + 1 * N + offs, mask=mask, other=0.0)
        w = tl.load(state_ptr + 2 * N + offs, mask=mask, other=0.0)
        lneg = tl.load(state_ptr + 3 * N + offs, mask=mask, other=0.0)
        mp = tl.load(state_ptr + 4 * N + offs, mask=mask, other=float("-inf"))
        lp = tl.load(state_ptr + 5 * N + offs, mask=mask, other=0.0)
        npos = tl.load(state_ptr + 6 * N + offs, mask=mask, other=0.0)
        return m, l, w, lneg, mp, lp, npos

    @triton.jit
    def _cols_fwd_kernel(
        s_ptr,  # *[rows, N] raw values of the chunk (ACC)
        r_ptr,  # *[M] row term (ACC)
        c_ptr,  # *[N] column term
        la_ptr,  # *[M] int64 row labels
        lb_ptr,  # *[N] int64 column labels
        scale_ptr,  # *[] logit scale
        bias_ptr,  # *[] logit bias
        state_ptr,  # *[7, N] ACC in/out: each column's running (m, l, w, lneg, mp, lp, npos); sigmoid: row 0 = Σ ℓ
        rows,  # rows in this chunk
        N,  # columns
        row0,  # global index of the chunk's first row
        stride_s,  # elements between rows of the chunk buffer
        IS_SDM: tl.constexpr,  # loss: sdm (else infonce)
        IS_SIGMOID: tl.constexpr,  # loss: pairwise sigmoid (a running sum)
        EXCLUDE_SELF: tl.constexpr,  # drop pairs i == j
        BLOCK_R: tl.constexpr,  # rows per step of the sweep
        BLOCK_N: tl.constexpr,  # columns per program
    ):
        offs_j = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_j = offs_j < N
        scale = tl.load(scale_ptr)
        bias = tl.load(bias_ptr)
        if IS_SIGMOID:
            total = tl.load(state_ptr + offs_j, mask=mask_j, other=0.0)
            for i0 in range(0, rows, BLOCK_R):
                offs_i = i0 + tl.arange(0, BLOCK_R)
                t, s, valid, pos, sv, sp = _chunk_tile(s_ptr, r_ptr, c_ptr, la_ptr, lb_ptr, scale, bias, offs_i, offs_j,
                                                       offs_i < rows, mask_j, row0, stride_s, EXCLUDE_SELF)
                total += tl.sum(tl.where(valid, _softplus(tl.where(pos, -s, s)), 0.0), 0)
            tl.store(state_ptr + offs_j, total, mask=mask_j)
        else:
            # -- continue each column's running statistics over this chunk's rows --
            m, l, w, lneg, mp, lp, npos = _load_state(state_ptr, offs_j, mask_j, N)
            for i0 in range(0, rows, BLOCK_R):
                offs_i = i0 + tl.arange(0, BLOCK_R)
                t, s, valid, pos, sv, sp = _chunk_tile(s_ptr, r_ptr, c_ptr, la_ptr, lb_ptr, scale, bias, offs_i, offs_j,
                                                       offs_i < rows, mask_j, row0, stride_s, EXCLUDE_SELF)
                m, l, w, lneg, mp, lp, npos = _online_step(m, l, w, lneg, mp, lp, npos, sv, sp, IS_SDM, 0)
            tl.store(state_ptr + 0 * N + offs_j, m, mask=mask_j)
            tl.store(state_ptr + 1 * N + offs_j, l, mask=mask_j)
            tl.store(state_ptr + 2 * N + offs_j, w, mask=mask_j)
            tl.store(state_ptr + 3 * N + offs_j, lneg, mask=mask_j)
            tl.store(state_ptr + 4 * N + offs_j, mp, mask=mask_j)
            tl.store(state_ptr + 5 * N + offs_j, lp, mask=mask_j)
            tl.store(state_ptr + 6 * N + offs_j, npos, mask=mask_j)

    @triton.jit
    def _cols_finish_kernel(
        state_ptr,  # *[7, N] ACC: the columns' complete running statistics (sigmoid: row 0 = Σ ℓ)
        loss_ptr,  # *[N] out: column losses
        stats_ptr,  # *[N, 4] float64 out: column stats, contiguous
        N,  # columns
        IS_SDM: tl.constexpr,  # loss: sdm (else infonce)
        IS_SIGMOID: tl.constexpr,  # loss: pairwise sigmoid
        SDM_EPS: tl.constexpr,  # ε in log(q + ε)
        LOG_SDM_EPS: tl.constexpr,  # log ε
        BLOCK_N: tl.constexpr,  # columns per program
    ):
        offs_j = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_j = offs_j < N
        if IS_SIGMOID:
            tl.store(loss_ptr + offs_j, tl.load(state_ptr + offs_j, mask=mask_j, other=0.0), mask=mask_j)
            zero = tl.zeros([BLOCK_N], tl.float64)
            for k in tl.static_range(4):
                tl.store(stats_ptr + offs_j * 4 + k, zero, mask=mask_j)
        else:
            m, l, w, lneg, mp, lp, npos = _load_state(state_ptr, offs_j, mask_j, N)
            value, lse, lsep, n64, h = _finish_stats(m, l, w, lneg, mp, lp, npos, IS_SDM, SDM_EPS, LOG_SDM_EPS)
            _store_loss_stats(loss_ptr, stats_ptr, offs_j, mask_j, value, lse, lsep, n64, h)

    @triton.jit
    def _chunk_bwd_kernel(
        s_ptr,  # *[rows, N] in: raw values of the chunk; out: dT = scale·dS (ACC), in place
        low_ptr,  # *[rows, N] out (WRITE_LOW): dT rounded to the feature dtype
        r_ptr,  # *[M] row term (ACC)
        c_ptr,  # *[N] column term
        la_ptr,  # *[M] int64 row labels
        lb_ptr,  # *[N] int64 column labels
        scale_ptr,  # *[] logit scale
        bias_ptr,  # *[] logit bias
        g_row_ptr,  # *[M] upstream gradient of the row losses
        g_col_ptr,  # *[N] upstream gradient of the column losses
        loss_row_ptr,  # *[M] row losses from the forward
        loss_col_ptr,  # *[N] column losses
        stats_row_ptr,  # *[M, 4] float64 row stats, contiguous
        stats_col_ptr,  # *[N, 4] float64 column stats, contiguous
        rsum_ptr,  # *[n_col_blocks, rows_cap] out: Σ dS over each tile's columns, per row
        rdst_ptr,  # *[n_col_blocks, rows_cap] out: Σ dS·t likewise
        rloss_ptr,  # *[n_col_blocks, rows_cap] out (WRITE_LOSS): Σ ℓ likewise (sigmoid)
        csum_ptr,  # *[n_row_blocks, N] out: Σ dS over each tile's rows, per column
        rows,  # rows in this chunk
        rows_cap,  # row stride of the row partials
        N,  # columns
        row0,  # global index of the chunk's first row
        stride_s,  # elements between rows of the chunk buffer (and of the low copy)
        IS_SDM: tl.constexpr,  # loss: sdm (else infonce)
        IS_SIGMOID: tl.constexpr,  # loss: pairwise sigmoid (reads no stats)
        EXCLUDE_SELF: tl.constexpr,  # drop pairs i == j
        WRITE_LOW: tl.constexpr,  # also write dT in the feature dtype (fp16/bf16 features)
        WRITE_LOSS: tl.constexpr,  # also sum ℓ (the scalar sigmoid loss's one sweep)
        UPCAST_DOT: tl.constexpr,  # interpreter: round dT to the feature dtype by hand
        SDM_EPS: tl.constexpr,  # ε in log(q + ε)
        LOG_SDM_EPS: tl.constexpr,  # log ε
        BLOCK_R: tl.constexpr,  # rows per tile
        BLOCK_N: tl.constexpr,  # columns per tile
    ):
        pid_j = tl.program_id(0)  # column blocks on the grid's x axis (CUDA limits y and z to 65535)
        pid_i = tl.program_id(1)
        offs_i = pid_i * BLOCK_R + tl.arange(0, BLOCK_R)
        offs_j = pid_j * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_i = offs_i < rows
        mask_j = offs_j < N
        scale = tl.load(scale_ptr)
        bias = tl.load(bias_ptr)
        t, s, valid, pos, sv, sp = _chunk_tile(s_ptr, r_ptr, c_ptr, la_ptr, lb_ptr, scale, bias, offs_i, offs_j,
                                               mask_i, mask_j, row0, stride_s, EXCLUDE_SELF)
        rows_g = row0 + offs_i
        if IS_SIGMOID:
            # -- dS = (g_row + g_col)·∂ℓ/∂S, ∂ℓ/∂S = −y·σ(−y·S) (0 where not a valid pair) --
            g_i = tl.load(g_row_ptr + rows_g, mask=mask_i, other=0.0)
            g_j = tl.load(g_col_ptr + offs_j, mask=mask_j, other=0.0)
            x = tl.where(pos, -s, s)  # −y·S
            sig = _logistic(x)
            ds = tl.where(valid, (g_i[:, None] + g_j[None, :]) * tl.where(pos, -sig, sig), 0.0)
            if WRITE_LOSS:
                tl.store(rloss_ptr + pid_j * rows_cap + offs_i, tl.sum(tl.where(valid, _softplus(x), 0.0), 1),
                         mask=mask_i)
        else:
            # -- dS from both sides' saved stats (0 where not a valid pair) --
            g_i, lse_i, lse_lo_i, lsep_i, lsep_lo_i, loss_i, logq_i = _side_consts(
                g_row_ptr, loss_row_ptr, stats_row_ptr, rows_g, mask_i, SDM_EPS)
            g_j, lse_j, lse_lo_j, lsep_j, lsep_lo_j, loss_j, logq_j = _side_consts(
                g_col_ptr, loss_col_ptr, stats_col_ptr, offs_j, mask_j, SDM_EPS)
            ds = _dloss_dlogit(sv, sp, g_i[:, None], lse_i[:, None], lse_lo_i[:, None], lsep_i[:, None],
                               lsep_lo_i[:, None], loss_i[:, None], logq_i[:, None], IS_SDM, LOG_SDM_EPS)
            ds += _dloss_dlogit(sv, sp, g_j[None, :], lse_j[None, :], lse_lo_j[None, :], lsep_j[None, :],
                                lsep_lo_j[None, :], loss_j[None, :], logq_j[None, :], IS_SDM, LOG_SDM_EPS)
        # -- dT in place, its low-precision copy, and the partial sums --
        dt = scale * ds
        tile = offs_i[:, None] * stride_s + offs_j[None, :]
        in_bounds = mask_i[:, None] & mask_j[None, :]
        tl.store(s_ptr + tile, dt, mask=in_bounds)
        if WRITE_LOW:
            tl.store(low_ptr + tile, _round_to(dt, low_ptr.dtype.element_ty, UPCAST_DOT), mask=in_bounds)
        tl.store(rsum_ptr + pid_j * rows_cap + offs_i, tl.sum(ds, 1), mask=mask_i)
        tl.store(rdst_ptr + pid_j * rows_cap + offs_i, tl.sum(ds * t, 1), mask=mask_i)
        tl.store(csum_ptr + pid_i * N + offs_j, tl.sum(ds, 0), mask=mask_j)


# -- host side -------------------------------------------------------------------------------------


def _tiles():
    return _INTERPRETER_TILES if _tc.INTERPRET else _GPU_TILES


@contextlib.contextmanager
def _cublas_fp32(precision: str, device: torch.device):
    """cuBLAS float32 GEMMs with TF32 allowed ("tf32") or not (anything else) inside the block, the
    global setting restored after it (a CPU GEMM has no such mode)."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9; the legacy flag must not be mixed with it
        old = matmul.fp32_precision
        matmul.fp32_precision = "tf32" if precision == "tf32" else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = old
    else:
        old = matmul.allow_tf32
        matmul.allow_tf32 = precision == "tf32"
        try:
            yield
        finally:
            matmul.allow_tf32 = old


_MIXED_GEMM: dict = {}  # device type -> whether torch.mm / addmm take out_dtype there (probed once)


def _mm(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor, accumulate: bool = False) -> None:
    """out (+)= x @ y by the vendor GEMM, in out's dtype (fp32 accumulation for fp16/bf16 operands).

    fp16/bf16 operands on a GPU go through torch's ``out_dtype`` GEMMs (tensor cores, fp32 output);
    where this torch has none, and on the CPU, they are widened to out's dtype first (exact products)."""
    if x.dtype != out.dtype:
        key = x.device.type
        if x.is_cuda and _MIXED_GEMM.get(key, True):
            try:
                if accumulate:
                    torch.addmm(out, x, y, out_dtype=out.dtype, out=out)
                else:
                    torch.mm(x, y, out_dtype=out.dtype, out=out)
                _MIXED_GEMM[key] = True
                return
            except (TypeError, RuntimeError, NotImplementedError) as e:
                if key in _MIXED_GEMM:  # it worked before: a real error
                    raise
                _MIXED_GEMM[key] = False
                warnings.warn(f"uca_kernels: torch {torch.__version__} has no fp16/bf16 GEMM with an fp32 output "
                              f"({type(e).__name__}); the chunked Triton path widens those operands to fp32", stacklevel=3)
        x, y = x.to(out.dtype), y.to(out.dtype)
    if accumulate:
        out.addmm_(x, y)
    else:
        torch.mm(x, y, out=out)


def _chunks(M: int, N: int, dtype: torch.dtype, chunk_rows: int):
    """Rows per chunk and the chunks' row ranges. A chunk holds fewer than 2³¹ entries (the epilogue
    kernels index it with int32 offsets); forward and backward cap it the same way."""
    rows = min(chunk_rows, M) if chunk_rows > 0 else auto_chunk_rows(M, N, dtype, DEFAULT_SCRATCH_MB << 20)
    rows = max(1, min(rows, (2**31 - 1) // max(N, 1)))
    return rows, [(i0, min(i0 + rows, M)) for i0 in range(0, M, rows)]


def _eps_flags(flags: dict) -> dict:
    return dict(SDM_EPS=flags["SDM_EPS"], LOG_SDM_EPS=flags["LOG_SDM_EPS"])


def forward(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self, precision, chunk_rows):
    """The op's forward (contract: ``contrast.py``) with row chunks; inputs already checked and laid out."""
    M, N = A.shape[0], B.shape[0]
    acc = out_dtype(A.dtype)
    flags = _tc._flags(A, loss, exclude_self, precision)
    loss_rows, loss_cols = A.new_empty((M,), dtype=acc), A.new_empty((N,), dtype=acc)
    row_stats, col_stats = A.new_empty((M, N_STATS), dtype=STATS_DTYPE), A.new_empty((N, N_STATS), dtype=STATS_DTYPE)
    rows, chunks = _chunks(M, N, A.dtype, chunk_rows)
    S = A.new_empty((rows, N), dtype=acc)
    # each column's running (m, l, w, lneg, mp, lp, npos); sigmoid uses row 0 as its running sum
    state = A.new_zeros((7, N), dtype=acc)
    if not flags["IS_SIGMOID"]:  # running maxima m and mp start at -inf
        state[0].fill_(float("-inf"))
        state[4].fill_(float("-inf"))
    (rf_r, rf_n, rf_w), (cf_r, cf_n, cf_w) = _tiles()["rows_fwd"], _tiles()["cols_fwd"]
    common = dict(IS_SDM=flags["IS_SDM"], IS_SIGMOID=flags["IS_SIGMOID"], EXCLUDE_SELF=flags["EXCLUDE_SELF"])
    with _tc._device_guard(A), _cublas_fp32(flags["PRECISION"], A.device):
        for i0, i1 in chunks:
            ci = i1 - i0
            S_c = S[:ci]
            # -- S_c = A_c Bᵀ (vendor GEMM) --
            _mm(A[i0:i1], B.t(), S_c)
            # -- rows of the chunk: complete statistics and losses --
            _rows_fwd_kernel[(triton.cdiv(ci, rf_r),)](
                S_c, r, c, labels_a, labels_b, scale, bias, loss_rows, row_stats, ci, N, i0, S_c.stride(0),
                **common, **_eps_flags(flags), BLOCK_R=rf_r, BLOCK_N=rf_n, num_warps=rf_w)
            # -- columns: running statistics, chunks in a fixed order --
            _cols_fwd_kernel[(triton.cdiv(N, cf_n),)](
                S_c, r, c, labels_a, labels_b, scale, bias, state, ci, N, i0, S_c.stride(0),
                **common, BLOCK_R=cf_r, BLOCK_N=cf_n, num_warps=cf_w)
        _cols_finish_kernel[(triton.cdiv(N, cf_n),)](
            state, loss_cols, col_stats, N, IS_SDM=flags["IS_SDM"], IS_SIGMOID=flags["IS_SIGMOID"], **_eps_flags(flags),
            BLOCK_N=cf_n, num_warps=cf_w)
    return loss_rows, loss_cols, row_stats, col_stats


def _sweep(A, B, r, c, scale, bias, labels_a, labels_b, g_rows, g_cols, loss_rows, loss_cols, row_stats, col_stats,
           loss, exclude_self, precision, chunk_rows, want_loss=False):
    """The backward sweep: per chunk, S again, dT and partial sums by the epilogue, dA_c and dB by the
    vendor GEMM. Returns (dA, dB, Σ_j dS per row, Σ_i dS per column, Σ dS·t per row[, Σ ℓ per row]) in
    the accumulator dtype, for the upstream gradients as given (scaling is the caller's)."""
    M, E = A.shape
    N = B.shape[0]
    acc = out_dtype(A.dtype)
    low = A.dtype in _LOW
    flags = _tc._flags(A, loss, exclude_self, precision)
    rows, chunks = _chunks(M, N, A.dtype, chunk_rows)
    br, bn, warps = _tiles()["bwd"]
    n_rb, n_cb = triton.cdiv(rows, br), triton.cdiv(N, bn)
    S = A.new_empty((rows, N), dtype=acc)
    S_low = A.new_empty((rows, N), dtype=A.dtype) if low else S
    rsum, rdst = A.new_empty((n_cb, rows), dtype=acc), A.new_empty((n_cb, rows), dtype=acc)
    rloss = A.new_empty((n_cb, rows), dtype=acc) if want_loss else rsum
    csum = A.new_empty((n_rb, N), dtype=acc)
    dA = A.new_empty((M, E), dtype=acc)
    dB = A.new_zeros((N, E), dtype=acc)
    sum_ds_rows, sum_dst_rows = A.new_empty((M,), dtype=acc), A.new_empty((M,), dtype=acc)
    loss_total_rows = A.new_empty((M,), dtype=acc) if want_loss else None
    sum_ds_cols = A.new_zeros((N,), dtype=acc)
    with _tc._device_guard(A), _cublas_fp32(flags["PRECISION"], A.device):
        for i0, i1 in chunks:
            ci = i1 - i0
            S_c = S[:ci]
            # -- S_c again: the forward's GEMM on the same shapes, so the same bits --
            _mm(A[i0:i1], B.t(), S_c)
            # -- dT in place (and in the feature dtype), row and column partial sums --
            _chunk_bwd_kernel[(n_cb, triton.cdiv(ci, br))](
                S_c, S_low, r, c, labels_a, labels_b, scale, bias, g_rows, g_cols, loss_rows, loss_cols, row_stats,
                col_stats, rsum, rdst, rloss, csum, ci, rows, N, i0, S_c.stride(0),
                IS_SDM=flags["IS_SDM"], IS_SIGMOID=flags["IS_SIGMOID"], EXCLUDE_SELF=flags["EXCLUDE_SELF"],
                WRITE_LOW=low, WRITE_LOSS=want_loss, UPCAST_DOT=flags["UPCAST_DOT"], **_eps_flags(flags),
                BLOCK_R=br, BLOCK_N=bn, num_warps=warps)
            # -- dA_c = dT_c B, dB += dT_cᵀ A_c (vendor GEMMs) --
            dT = S_low[:ci]
            _mm(dT, B, dA[i0:i1])
            _mm(dT.t(), A[i0:i1], dB, accumulate=True)
            # -- fixed-order reductions of the partials --
            sum_ds_rows[i0:i1] = rsum[:, :ci].sum(0)
            sum_dst_rows[i0:i1] = rdst[:, :ci].sum(0)
            if want_loss:
                loss_total_rows[i0:i1] = rloss[:, :ci].sum(0)
            sum_ds_cols += csum[: triton.cdiv(ci, br)].sum(0)
    return dA, dB, sum_ds_rows, sum_ds_cols, sum_dst_rows, loss_total_rows


def backward(grad_rows, grad_cols, A, B, r, c, scale, bias, labels_a, labels_b, loss_rows, loss_cols,
             row_stats, col_stats, loss, exclude_self, precision, chunk_rows):
    """The op's backward with row chunks; inputs already checked and laid out."""
    acc = out_dtype(A.dtype)
    pre = grad_prescale(grad_rows, grad_cols, scale) if A.dtype in _LOW else None
    if pre is not None:  # fp16/bf16: dT is rounded to the feature dtype; run on pre·g so it cannot underflow
        grad_rows, grad_cols = grad_rows * pre.to(acc), grad_cols * pre.to(acc)
    dA, dB, sds_r, sds_c, sdst_r, _ = _sweep(A, B, r, c, scale, bias, labels_a, labels_b, grad_rows, grad_cols,
                                             loss_rows, loss_cols, row_stats, col_stats, loss, exclude_self,
                                             precision, chunk_rows)
    return _tc.finish_grads(A, B, scale, dA, dB, sds_r, sds_c, sdst_r, pre)


def sigmoid_loss_and_grads(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self, precision, chunk_rows):
    """Σᵢⱼ ℓᵢⱼ of the sigmoid loss and all its gradients in one sweep (3 GEMM passes); inputs checked."""
    M, N = A.shape[0], B.shape[0]
    acc = out_dtype(A.dtype)
    g_rows, g_cols = A.new_ones((M,), dtype=acc), A.new_zeros((N,), dtype=acc)
    pre = grad_prescale(g_rows, g_cols, scale) if A.dtype in _LOW else None
    if pre is not None:
        g_rows = g_rows * pre.to(acc)
    stats_r, stats_c = A.new_zeros((M, N_STATS), dtype=STATS_DTYPE), A.new_zeros((N, N_STATS), dtype=STATS_DTYPE)
    dA, dB, sds_r, sds_c, sdst_r, loss_r = _sweep(A, B, r, c, scale, bias, labels_a, labels_b, g_rows, g_cols,
                                                  g_rows, g_cols, stats_r, stats_c, "sigmoid", exclude_self,
                                                  precision, chunk_rows, want_loss=True)
    total = loss_r.sum(dtype=torch.float64).to(acc)
    return (total, *_tc.finish_grads(A, B, scale, dA, dB, sds_r, sds_c, sdst_r, pre))
