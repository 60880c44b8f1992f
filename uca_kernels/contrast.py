r"""The fused contrast op: identity-aware contrastive losses on ``S = scale·(A Bᵀ + r 1ᵀ + 1 cᵀ) + bias``.

Maths
-----
Raw value and logit of pair (i, j), i ∈ [0, M) a row (query), j ∈ [0, N) a column (key)::

    t_ij = ⟨A_i, B_j⟩ + r_i + c_j          S_ij = scale · t_ij + bias

Valid pairs: all, or all but i == j when ``exclude_self`` (then M == N). Positives
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
labels_b[N] int64, loss: str, exclude_self: bool)
-> (loss_rows[M], loss_cols[N], row_stats[M,3], col_stats[N,3])``

with stats columns ``(LSE, LSEᴾ, n)`` (LSEᴾ = −inf where n = 0; LSE = −inf for a row with no
valid column). ``sigmoid`` needs no statistics (its backward recomputes S and reads only g_row,
g_col): its stats keep the shape and dtype of the schema and are all zeros. The backward is

``contrast_backward(grad_rows[M], grad_cols[N], A, B, r, c, scale, bias, labels_a, labels_b,
loss_rows, loss_cols, row_stats, col_stats, loss, exclude_self) -> (dA, dB, dr, dc, dscale, dbias)``.

Outputs and stats are float64 for float64 inputs and float32 otherwise. Backends never hold an
M×N matrix; :func:`contrast_reference` does (it is the float64 oracle).

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

import torch

from ._validation import (
    check_choice,
    check_features,
    check_labels,
    check_same_device,
    check_scalar,
)

__all__ = [
    "LOSSES",
    "REDUCTIONS",
    "SDM_EPS",
    "contrast",
    "contrast_reference",
    "out_dtype",
    "reduce_losses",
    "register_contrast_autograd",
    "register_sigmoid_sum_autograd",
]

LOSSES = ("sdm", "infonce", "sigmoid")
REDUCTIONS = ("none", "sum", "mean")
SDM_EPS = 1e-8


def out_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of losses and statistics for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# -- reference -------------------------------------------------------------------------------------


def _loss_along_rows(S: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor, loss: str) -> torch.Tensor:
    """Row losses of a materialised logit matrix (NaN-free forward and backward)."""
    npos = pos.sum(1)
    has_pos = npos > 0
    has_valid = valid.any(1, keepdim=True)
    # Fill masked entries so that no -inf ever meets a 0 in the backward pass.
    S_valid = torch.where(has_valid, S.masked_fill(~valid, float("-inf")), 0.0)
    lse = torch.logsumexp(S_valid, 1)
    if loss == "infonce":
        S_pos = torch.where(has_pos[:, None], S.masked_fill(~pos, float("-inf")), 0.0)
        per_row = lse - torch.logsumexp(S_pos, 1)
    else:  # sdm
        logp = S.masked_fill(~valid, 0.0) - lse[:, None]
        p = logp.exp() * valid
        q = pos.to(S.dtype) / npos.clamp(min=1).to(S.dtype)[:, None]
        per_row = (p * (logp - torch.log(q + SDM_EPS))).sum(1)
    return torch.where(has_pos, per_row, torch.zeros_like(per_row))


def _pairwise_sigmoid(S: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """ℓ_ij = softplus(−y_ij S_ij) = −log σ(y_ij S_ij) on valid pairs, 0 elsewhere. ``logsigmoid``
    is exact for any finite input (``softplus`` switches to x past its threshold, ~1e-9 off)."""
    y = torch.where(pos, 1.0, -1.0).to(S.dtype)
    return torch.where(valid, -torch.nn.functional.logsigmoid(y * S), 0.0)


def contrast_reference(A, B, r, c, scale, bias, labels_a, labels_b, loss: str = "sdm", exclude_self: bool = False):
    """Materialised plain-PyTorch contrast (the oracle); autograd gives every gradient.

    Shapes as in :func:`contrast`; ``scale``/``bias`` are 0-d tensors. Computes in the input dtype
    (use float64 for the oracle) and returns ``(loss_rows[M], loss_cols[N])``.
    """
    t = A @ B.T + r[:, None] + c[None, :]
    S = scale * t + bias
    valid = torch.ones_like(S, dtype=torch.bool)
    if exclude_self:
        valid &= ~torch.eye(S.shape[0], S.shape[1], dtype=torch.bool, device=S.device)
    pos = (labels_a[:, None] == labels_b[None, :]) & valid
    if loss == "sigmoid":
        ell = _pairwise_sigmoid(S, pos, valid)
        rows, cols = ell.sum(1), ell.sum(0)
    else:
        rows = _loss_along_rows(S, pos, valid, loss)
        cols = _loss_along_rows(S.T, pos.T, valid.T, loss)
    odt = out_dtype(A.dtype)
    return rows.to(odt), cols.to(odt)


# -- autograd for the fused ops --------------------------------------------------------------------


def register_contrast_autograd(forward_op, backward_op) -> None:
    """Attach fake (meta) kernels and autograd to a backend's forward/backward op pair.

    ``forward_op`` / ``backward_op`` are ``torch.ops`` overloads (or ``custom_op`` objects) that
    follow the op contract above. Works for ops defined in C++ (``TORCH_LIBRARY``) and in Python.
    """

    def fake_forward(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self):
        odt = out_dtype(A.dtype)
        M, N = A.shape[0], B.shape[0]
        return (
            A.new_empty((M,), dtype=odt),
            A.new_empty((N,), dtype=odt),
            A.new_empty((M, 3), dtype=odt),
            A.new_empty((N, 3), dtype=odt),
        )

    def fake_backward(grad_rows, grad_cols, A, B, r, c, scale, bias, labels_a, labels_b,
                      loss_rows, loss_cols, row_stats, col_stats, loss, exclude_self):
        return (torch.empty_like(A), torch.empty_like(B), torch.empty_like(r), torch.empty_like(c),
                torch.empty_like(scale), torch.empty_like(bias))

    def setup_context(ctx, inputs, output):
        A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self = inputs
        loss_rows, loss_cols, row_stats, col_stats = output
        ctx.save_for_backward(A, B, r, c, scale, bias, labels_a, labels_b, loss_rows, loss_cols, row_stats, col_stats)
        ctx.loss, ctx.exclude_self = loss, exclude_self

    def backward(ctx, grad_rows, grad_cols, _grad_row_stats, _grad_col_stats):
        A, B, r, c, scale, bias, labels_a, labels_b, loss_rows, loss_cols, row_stats, col_stats = ctx.saved_tensors
        grad_rows = torch.zeros_like(loss_rows) if grad_rows is None else grad_rows.contiguous()
        grad_cols = torch.zeros_like(loss_cols) if grad_cols is None else grad_cols.contiguous()
        grads = backward_op(grad_rows, grad_cols, A, B, r, c, scale, bias, labels_a, labels_b,
                            loss_rows, loss_cols, row_stats, col_stats, ctx.loss, ctx.exclude_self)
        grads = [g if need else None for g, need in zip(grads, ctx.needs_input_grad[:6])]
        return (*grads, None, None, None, None)

    torch.library.register_fake(forward_op)(fake_forward)
    torch.library.register_fake(backward_op)(fake_backward)
    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


def register_sigmoid_sum_autograd(op) -> None:
    """Fake kernel and autograd of a backend's ``sigmoid_loss_and_grads`` op (see the module
    docstring): the backward multiplies the gradients the forward formed by the incoming one."""

    def fake(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self):
        return (A.new_empty((), dtype=out_dtype(A.dtype)), torch.empty_like(A), torch.empty_like(B),
                torch.empty_like(r), torch.empty_like(c), torch.empty_like(scale), torch.empty_like(bias))

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*output[1:])

    def backward(ctx, grad_total, *_unused):
        grads = [g * grad_total if need else None for g, need in zip(ctx.saved_tensors, ctx.needs_input_grad[:6])]
        return (*grads, None, None, None)

    torch.library.register_fake(op)(fake)
    torch.library.register_autograd(op, backward, setup_context=setup_context)


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


def contrast(
    A: torch.Tensor,
    B: torch.Tensor,
    r: torch.Tensor,
    c: torch.Tensor,
    scale=1.0,
    bias=0.0,
    labels_a: torch.Tensor | None = None,
    labels_b: torch.Tensor | None = None,
    loss: str = "sdm",
    exclude_self: bool = False,
    backend: str = "auto",
    reduction: str = "none",
):
    """Identity-aware contrastive loss on ``S = scale·(A Bᵀ + r + c) + bias``, both directions.

    Args:
        A: [M, E] row features (float16/bfloat16/float32/float64).
        B: [N, E] column features, same dtype and device as ``A``.
        r: [M] row term; c: [N] column term.
        scale, bias: numbers or 0-d tensors (a tensor that requires grad gets its gradient).
            A distance enters with a negative scale.
        labels_a: [M] integer identities of the rows; labels_b: [N] of the columns. Both ``None``
            means diagonal positives (requires M == N).
        loss: ``"sdm"``, ``"infonce"`` or ``"sigmoid"`` (pairwise; its rows and columns sum the
            same pairs' terms, see the module docstring).
        exclude_self: drop the pairs i == j (intra-modal contrast; requires M == N).
        backend: ``"auto"`` or a name from :func:`uca_kernels.dispatch.backend_names`.
        reduction: ``"none"`` (the two vectors), ``"mean"`` or ``"sum"`` (a scalar, see
            :func:`reduce_losses`; for ``sigmoid`` it takes the one-sweep path where the backend
            has one, see the module docstring).

    Returns:
        ``(loss_rows [M], loss_cols [N])``: per-row (A→B) and per-column (B→A) losses,
        float64 for float64 inputs and float32 otherwise; a 0-d tensor for ``"mean"`` / ``"sum"``.
    """
    from . import dispatch

    check_choice("loss", loss, LOSSES)
    check_choice("reduction", reduction, REDUCTIONS)
    check_features("A", A)
    M, E = A.shape
    check_features("B", B, cols=E)
    N = B.shape[0]
    if B.dtype != A.dtype:
        raise TypeError(f"A and B must share a dtype, got A {A.dtype} and B {B.dtype}")
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
    if exclude_self and M != N:
        raise ValueError(f"exclude_self=True needs M == N (one set against itself), got M={M}, N={N}")
    scale = check_scalar("scale", scale, A)
    bias = check_scalar("bias", bias, A)
    rc_dtype = A.dtype if A.dtype in (torch.float32, torch.float64) else torch.float32
    r, c = r.to(rc_dtype), c.to(rc_dtype)
    scale, bias = scale.to(rc_dtype), bias.to(rc_dtype)
    impl = dispatch.select(backend, A=A, B=B, loss=loss, exclude_self=exclude_self)
    args = (A, B, r, c, scale, bias, labels_a, labels_b)
    if loss == "sigmoid" and reduction != "none":
        total = impl.sigmoid_sum(*args, bool(exclude_self))
        return total if reduction == "sum" else total / M
    rows, cols = impl.contrast(*args, loss, bool(exclude_self))
    return reduce_losses(rows, cols, reduction, loss)
