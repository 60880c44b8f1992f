r"""The fused contrast op: identity-aware contrastive losses on ``S = scale·(A Bᵀ + r 1ᵀ + 1 cᵀ) + bias``.

Maths
-----
Raw value and logit of pair (i, j), i ∈ [0, M) a row (query), j ∈ [0, N) a column (key)::

    t_ij = ⟨A_i, B_j⟩ + r_i + c_j          S_ij = scale · t_ij + bias

Valid pairs: all, or all but (i, i) for i < min(M, N) when ``exclude_self`` (row i's own point is
column i: a set against itself, or a rank's local rows against columns that start with them). Positives
P(i) = {j valid : labels_a[i] == labels_b[j]}, n_i = |P(i)|. Row softmax over valid j:
p_ij = exp(S_ij − LSE_i), LSE_i = log Σ_valid exp S_ij, LSEᴾ_i = log Σ_{P(i)} exp S_ij.

- ``infonce``:  L_i = LSE_i − LSEᴾ_i
- ``sdm``:      L_i = Σ_valid p_ij (log p_ij − log(q_ij + ε)),  q_ij = [j ∈ P(i)] / n_i,  ε = 1e-8
- ``sigmoid``:  pairwise (SigLIP / PCME++), no softmax: y_ij = +1 for j ∈ P(i), −1 for the other
  valid j; ℓ_ij = softplus(−y_ij S_ij) = −log σ(y_ij S_ij), L_i = Σ_valid j ℓ_ij

For ``infonce`` and ``sdm`` a row with no positive (n_i = 0) has L_i = 0 and no gradient; columns
are the same with the roles of A and B swapped (softmax over i for each j), giving ``loss_cols``.
For ``sigmoid`` the columns sum the same pairs the other way, L'_j = Σ_valid i ℓ_ij (so
Σ loss_rows = Σ loss_cols), and a row without positives keeps its negative terms.

Gradient (g = upstream gradient of the row / column loss vectors)::

    infonce:  ∂L_i/∂S_ij = p_ij − [j ∈ P(i)] exp(S_ij − LSEᴾ_i)
    sdm:      ∂L_i/∂S_ij = p_ij (log p_ij − log(q_ij + ε) − L_i)
    dS_ij = g_row_i ∂L_i/∂S_ij + g_col_j ∂L'_j/∂S_ij        dT = scale · dS
    sigmoid:  dS_ij = (g_row_i + g_col_j) ∂ℓ_ij/∂S_ij,  ∂ℓ_ij/∂S_ij = −y_ij σ(−y_ij S_ij)
    dA = dT B    dB = dTᵀ A    dr = dT 1    dc = dTᵀ 1    dscale = Σ dS ⊙ t    dbias = Σ dS

``sigmoid`` is evaluated with a stable softplus / sigmoid (max(x, 0) + log1p(e^−|x|)): finite
for any finite logit (tested at |S| = 1e3).

Op contract (every fused backend)
---------------------------------
``contrast_forward(A[M,E], B[N,E], r[M], c[N], scale[], bias[], labels_a[M] int64,
labels_b[N] int64, loss: str, exclude_self: bool, precision: str = "ieee")
-> (loss_rows[M], loss_cols[N], row_stats[M,4], col_stats[N,4])``

with stats columns ``(LSE, LSEᴾ, n, H)`` (LSEᴾ = −inf where n = 0; LSE = −inf for a row with no
valid column; H = Σ_valid p·(S − LSE), the softmax's negative entropy, 0 without a valid column).
With the LSEs, H is what assembles a softmax over a set split into parts (:func:`combine_stats`:
a data-parallel rank's rows are one part of every column's softmax). ``sigmoid`` needs no statistics (its backward recomputes S and reads only g_row,
g_col): its stats keep the shape and dtype of the schema and are all zeros. The backward is

``contrast_backward(grad_rows[M], grad_cols[N], A, B, r, c, scale, bias, labels_a, labels_b,
loss_rows, loss_cols, row_stats, col_stats, loss, exclude_self, precision) -> (dA, dB, dr, dc, dscale,
dbias)``. ``precision`` is how float32 features are multiplied: "ieee" (exact products; the only one
the CPU kernels have), "tf32" (CUDA and Triton), "tf32x3" (Triton). It is an argument, not a
setting the kernels read, so that autograd gives a backward its forward's precision: the backward
recomputes the forward's logits bit for bit.

Losses are float64 for float64 inputs and float32 otherwise; the stats are float64 for every input
dtype (``STATS_DTYPE``): at |S| ~ 1e5 float32's spacing is 2⁻⁷, and an LSE rounded there would
shift every p = exp(S − LSE) of its row by up to 4e-3 in the backward. A float32 kernel reads each
LSE as hi + lo (hi = LSE rounded to float32, lo = the rest) and forms log p = (S − hi) − lo, where
S − hi is exact wherever p is not negligible. Backends never hold an M×N matrix;
:func:`contrast_reference` does (it is the float64 oracle).

Scalar sigmoid loss in one sweep
--------------------------------
When only the scalar ``Σᵢⱼ ℓᵢⱼ`` of the sigmoid loss is wanted (``reduction`` ``"sum"`` or
``"mean"``), its gradient is the backward with g_row = 1, g_col = 0, which needs no statistics. A
backend with the op

``sigmoid_loss_and_grads(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self)
-> (total[], dA, dB, dr, dc, dscale, dbias)``

forms the gradients in the forward's own sweep over the tiles (as fused linear cross-entropy
does): three GEMM passes per tile (S, dT·B, dTᵀ·A) instead of the two-call path's four, extra
memory O((M + N)·E). Its backward only scales the saved gradients by the incoming one. It runs when
autograd will need the gradients; without them (``torch.no_grad``, no input requiring grad) the
forward alone does. ``reduction="none"`` always takes the two-call path.
"""

from __future__ import annotations

import math

import torch

from . import dispatch
from ._registry import (  # noqa: F401  (re-exported: the op's constants and registration)
    LOSSES,
    N_STATS,
    REDUCTIONS,
    SDM_EPS,
    STATS_DTYPE,
    out_dtype,
    register_contrast_autograd,
    register_sigmoid_sum_autograd,
)
from ._validation import (
    check_choice,
    check_features,
    check_labels,
    check_same_device,
    check_scalar,
)
from .reference import contrast_reference  # noqa: F401  (re-exported)

__all__ = [
    "LOSSES",
    "REDUCTIONS",
    "SDM_EPS",
    "combine_stats",
    "contrast",
    "contrast_row_share",
    "row_share_supported",
    "contrast_reference",
    "out_dtype",
    "reduce_losses",
    "register_contrast_autograd",
    "register_sigmoid_sum_autograd",
]

def combine_stats(parts: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Statistics and losses of ``sdm`` / ``infonce`` softmaxes over a set split into parts.

    Args:
        parts: [P, K, N_STATS] float64: part p's statistics of K rows (or columns), each a softmax
            over part p's share of the other side (what the op returns for that share).
        loss: ``"sdm"`` or ``"infonce"``.

    Returns:
        ``(stats [K, N_STATS], losses [K])``: what the op returns over the whole set (up to
        rounding; the order of the parts is the order of the sums, so every caller gets the same
        bits). With LSE = log Σₚ exp LSEₚ and ωₚ = exp(LSEₚ − LSE): LSEᴾ likewise, n = Σₚ nₚ,
        H = Σₚ ωₚ·(Hₚ + LSEₚ − LSE); infonce L = LSE − LSEᴾ; sdm L = H − πᴾ·log(1/n + ε) −
        (1 − πᴾ)·log ε with πᴾ = exp(LSEᴾ − LSE) (Σ p over the positives). L = 0 where n = 0.
        Feeding these to the op's backward with a part's own share gives that share's exact dS.
    """
    check_choice("loss", loss, ("sdm", "infonce"))
    if parts.dim() != 3 or parts.shape[-1] != N_STATS or parts.dtype != STATS_DTYPE:
        raise ValueError(f"parts must be a {STATS_DTYPE} tensor [P, K, {N_STATS}], got {parts.dtype} {list(parts.shape)}")
    lse_p, lsep_p, n_p, h_p = parts.unbind(-1)
    lse, lsep, n = torch.logsumexp(lse_p, 0), torch.logsumexp(lsep_p, 0), n_p.sum(0)
    has_p, has = torch.isfinite(lse_p), torch.isfinite(lse)
    gap = torch.where(has_p, lse_p - torch.where(has, lse, 0.0), 0.0)
    h = torch.where(has_p, gap.exp() * (h_p + gap), 0.0).sum(0)
    active = (n > 0) & has & torch.isfinite(lsep)
    if loss == "infonce":
        value = lse - lsep
    else:
        p_pos = torch.exp(torch.where(active, lsep - lse, 0.0))
        value = h - p_pos * torch.log(1.0 / n.clamp_min(1.0) + SDM_EPS) - (1.0 - p_pos) * math.log(SDM_EPS)
    value = torch.where(active, value, 0.0)
    return torch.stack([lse, lsep, n, h], -1), value


def reduce_losses(rows: torch.Tensor, cols: torch.Tensor, reduction: str, loss: str):
    """The scalar of ``(loss_rows, loss_cols)``: for ``sdm`` / ``infonce`` mean over rows + mean over
    columns (``"sum"``: the sums); for ``sigmoid``, whose rows and columns hold the same pairs, each
    pair once: Σᵢⱼ ℓᵢⱼ / M (``"sum"``: Σᵢⱼ ℓᵢⱼ). ``"none"`` returns the pair as it is."""
    if reduction == "none":
        return rows, cols
    if loss == "sigmoid":
        total = rows.sum()
        return total if reduction == "sum" else total / rows.shape[0]
    if reduction == "sum":
        return rows.sum() + cols.sum()
    return rows.mean() + cols.mean()


# -- public function -------------------------------------------------------------------------------


def _checked_args(A, B, r, c, scale, bias, labels_a, labels_b) -> tuple:
    """The op's tensor arguments from what a user passes (named errors for bad input): r, c None →
    zeros, labels None → diagonal positives, scale and bias → 0-d tensors, r, c, scale, bias in the
    op's dtype."""
    check_features("A", A)
    M, E = A.shape
    check_features("B", B, cols=E)
    N = B.shape[0]
    if B.dtype != A.dtype:
        raise TypeError(f"A and B must share a dtype, got A {A.dtype} and B {B.dtype}")
    rc_dtype = A.dtype if A.dtype in (torch.float32, torch.float64) else torch.float32
    r = A.new_zeros(M, dtype=rc_dtype) if r is None else r
    c = B.new_zeros(N, dtype=rc_dtype) if c is None else c
    check_features("r", r, ndim=1, rows=M)
    check_features("c", c, ndim=1, rows=N)
    device = check_same_device(A=A, B=B, r=r, c=c)
    if (labels_a is None) != (labels_b is None):
        raise ValueError("labels_a and labels_b must both be given or both be None")
    if labels_a is None:
        if M != N:
            raise ValueError(f"diagonal positives (labels=None) need M == N, got M={M}, N={N}")
        labels_a = labels_b = torch.arange(M, device=device)
    else:
        labels_a = check_labels("labels_a", labels_a, M, device)
        labels_b = check_labels("labels_b", labels_b, N, device)
    scale = check_scalar("scale", scale, A)
    bias = check_scalar("bias", bias, A)
    r, c = r.to(rc_dtype), c.to(rc_dtype)
    scale, bias = scale.to(rc_dtype), bias.to(rc_dtype)
    return A, B, r, c, scale, bias, labels_a, labels_b


def contrast(
    A: torch.Tensor,
    B: torch.Tensor,
    r: torch.Tensor | None = None,
    c: torch.Tensor | None = None,
    scale=1.0,
    bias=0.0,
    labels_a: torch.Tensor | None = None,
    labels_b: torch.Tensor | None = None,
    *,
    loss: str = "sdm",
    exclude_self: bool = False,
    backend: str = "auto",
    reduction: str = "none",
):
    """Identity-aware contrastive loss on ``S = scale·(A Bᵀ + r + c) + bias``, both directions.

    Args:
        A: [M, E] row features (float16/bfloat16/float32/float64).
        B: [N, E] column features, same dtype and device as ``A``.
        r: [M] row term; c: [N] column term (None: zeros, e.g. for a plain dot product).
        scale, bias: numbers or 0-d tensors (a tensor that requires grad gets its gradient).
            A distance enters with a negative scale.
        labels_a: [M] integer identities of the rows; labels_b: [N] of the columns. Both ``None``
            means diagonal positives (requires M == N).
        loss: ``"sdm"``, ``"infonce"`` or ``"sigmoid"`` (pairwise; its rows and columns sum the
            same pairs' terms, see the module docstring).
        exclude_self: drop the pairs (i, i), i < min(M, N) (intra-modal contrast: row i is column i;
            M != N for local rows against columns that start with the same points).
        backend: ``"auto"`` or a name from :func:`uca_kernels.dispatch.backend_names`.
        reduction: ``"none"`` (the two vectors), ``"mean"`` or ``"sum"`` (a scalar, see
            :func:`reduce_losses`: for ``sdm`` / ``infonce`` the mean over rows *plus* the mean over
            columns, the sum of the two directions, which is twice open_clip's ``ClipLoss`` (the
            mean of the two; :class:`uca_kernels.ClipLoss` gives that); for ``sigmoid`` each pair
            once, Σᵢⱼ ℓᵢⱼ / M, SigLIP's value. ``sigmoid`` takes the one-sweep path where the
            backend has one, see the module docstring). Every loss of the library means the same
            by it.

    Returns:
        ``(loss_rows [M], loss_cols [N])``: per-row (A→B) and per-column (B→A) losses,
        float64 for float64 inputs and float32 otherwise; a 0-d tensor for ``"mean"`` / ``"sum"``.
    """
    check_choice("loss", loss, LOSSES)
    check_choice("reduction", reduction, REDUCTIONS)
    args = _checked_args(A, B, r, c, scale, bias, labels_a, labels_b)
    A, B, M = args[0], args[1], args[0].shape[0]
    impl = dispatch.select(backend, A=A, B=B, loss=loss, exclude_self=exclude_self)
    if loss == "sigmoid" and reduction != "none":
        total = impl.sigmoid_sum(*args, bool(exclude_self))
        return total if reduction == "sum" else total / M
    rows, cols = impl.contrast(*args, loss, bool(exclude_self))
    return reduce_losses(rows, cols, reduction, loss)


# -- a share of the rows (data-parallel softmax terms) ---------------------------------------------


class _RowShare(torch.autograd.Function):
    """This share's rows against every column; column losses from every share's statistics."""

    @staticmethod
    def forward(ctx, A, B, r, c, scale, bias, labels_a, labels_b, loss, ops, gather_stats, sum_col_grads):
        forward, backward = ops
        rows, _, row_stats, part = forward(A, B, r, c, scale, bias, labels_a, labels_b, loss)
        col_stats, cols = combine_stats(gather_stats(part), loss)
        cols = cols.to(rows.dtype)
        ctx.save_for_backward(A, B, r, c, scale, bias, labels_a, labels_b, rows, cols, row_stats, col_stats)
        ctx.loss, ctx.backward_op, ctx.sum_col_grads = loss, backward, sum_col_grads
        return rows, cols

    @staticmethod
    def backward(ctx, g_rows, g_cols):
        A, B, r, c, scale, bias, labels_a, labels_b, rows, cols, row_stats, col_stats = ctx.saved_tensors
        g_rows = torch.zeros_like(rows) if g_rows is None else g_rows
        # every share's weight of every column: dS of this share's rows needs them all
        g_cols = ctx.sum_col_grads(torch.zeros_like(cols) if g_cols is None else g_cols.contiguous())
        grads = ctx.backward_op(g_rows, g_cols, A, B, r, c, scale, bias, labels_a, labels_b, rows, cols,
                                row_stats, col_stats, ctx.loss)
        grads = [g if need else None for g, need in zip(grads, ctx.needs_input_grad[:6])]
        return (*grads, None, None, None, None, None, None)


def row_share_supported(A: torch.Tensor, B: torch.Tensor, loss: str, backend: str = "auto") -> bool:
    """Whether :func:`contrast_row_share` can run these inputs: a softmax loss on a backend with the
    op pair (the fused ones; not the reference, which materialises S)."""
    if loss not in ("sdm", "infonce"):
        return False
    return dispatch.select(backend, A=A, B=B, loss=loss, exclude_self=False).op_pair() is not None


def contrast_row_share(A, B, r=None, c=None, scale=1.0, bias=0.0, labels_a=None, labels_b=None, loss: str = "sdm", *,
                       gather_stats, sum_col_grads, backend: str = "auto"):
    """A softmax loss whose rows are one share of a larger set of rows, each pair computed once
    across the shares (a data-parallel rank's local rows against every rank's columns).

    The column losses are softmaxes over *all* shares' rows: this share's column statistics go
    through ``gather_stats`` to every share, :func:`combine_stats` assembles them, and in the
    backward this share forms dS of its own rows against every column from the assembled
    statistics and every share's upstream gradient of the column losses (``sum_col_grads``). The
    alternative, every share's rows against this share's columns as a second call, does each pair
    twice across the shares.

    Args:
        A, B, r, c, scale, bias, labels_a, labels_b, backend: as :func:`contrast` (A: this share's
            rows; B: every column).
        loss: ``"sdm"`` or ``"infonce"``.
        gather_stats: this share's column statistics [N, N_STATS] (float64) → every share's,
            stacked [P, N, N_STATS] in an order all shares agree on (an all-gather).
        sum_col_grads: this share's upstream gradient of ``loss_cols`` [N] → its sum over the
            shares (an all-reduce); called in the backward, by every share.

    Returns:
        ``(loss_rows [M] of this share's rows, loss_cols [N] over every share's rows)``; gradients
        of this share's inputs: its rows' share of every column's loss included.

    Raises:
        ValueError: the backend has no op pair (:func:`row_share_supported`), or bad input as in
            :func:`contrast`.
    """
    check_choice("loss", loss, ("sdm", "infonce"))
    args = _checked_args(A, B, r, c, scale, bias, labels_a, labels_b)
    impl = dispatch.select(backend, A=args[0], B=args[1], loss=loss, exclude_self=False)
    ops = impl.op_pair()
    if ops is None:
        raise ValueError(f"backend {impl.name!r} has no forward/backward op pair: contrast_row_share needs a "
                         "fused backend (cpu, cuda, triton)")
    return _RowShare.apply(*args, loss, ops, gather_stats, sum_col_grads)
