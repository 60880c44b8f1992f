"""The model's contrastive loss terms (DCL, PCL, the baseline's) over the global batch of a
data-parallel run, and the single-process case; the gathers are :mod:`uca_model.distributed`.

With W processes each holding a local batch of b pairs (global batch B = W·b), the loss we want is
the single-process loss on the concatenated batch: mean over the B rows (image→text) plus mean over
the B columns (text→image) for the softmax losses ``sdm`` / ``infonce`` (``sigmoid``: below). On rank k:

- **cross-modal terms** (DCL, PCL inter, the baseline's SDM): gather the columns' modality from all
  ranks with gradients (an all-gather whose backward all-reduces), compute the local rows against
  the global columns, and each local column's loss over every rank's rows (below: the column
  statistics are combined across ranks), keep the local rows and the local columns:
  ``L_k = (rows_k.sum() + cols_k.sum()) / B`` and ``Σ_k L_k = L``. The all-gather's backward sums
  every rank's gradient into the owner of each row.
- **intra-modal point terms**: a point is never its own pair. Rank k computes its local rows
  against the global columns ordered *local points first* (then the other ranks' points), so that
  its own pairs are (i, i), i < b, which the fused op's ``exclude_self`` drops on a rectangular
  problem too. The similarity is symmetric and both sides carry the same labels, so column j's
  loss equals row j's and the whole term is ``2 · Σᵢ rowsᵢ / n`` (softmax) over the n global
  points: ``L_k = 2 · rows_k.sum() / n``, each pair computed once across the group (b × n per rank
  instead of n × n).

**The pairwise ``sigmoid`` loss** (SigLIP / PCME++: ℓᵢⱼ = softplus(−yᵢⱼ Sᵢⱼ), y = ±1 for
positives / negatives) has no softmax: its rows and columns sum the *same* pairs, and a term counts
each pair once, ``L = Σᵢⱼ ℓᵢⱼ / M`` over the M global rows (:mod:`uca_kernels.losses`' ``mean``).
So a cross-modal sigmoid term on rank k computes only its local rows against the gathered global
columns and returns ``W · rows_k.sum() / B`` (B = global rows): ``Σ_k rows_k.sum()`` holds every
global pair exactly once, and a second "global rows × local columns" pass would count them twice.
The gradient of a column (the other modality) reaches its owner through the all-gather's backward,
which sums what every rank's rows contributed. Intra-modal sigmoid terms are local rows against the
global columns as above, ``L_k = rows_k.sum() / n`` (self pairs excluded). One process:
``rows.sum() / M``.

**Softmax cross-modal terms, each pair once.** A column's softmax sums over every rank's rows. Rank
k computes its local rows against the gathered columns once; the op's column statistics of that
share (LSE, LSEᴾ, n, Σ p·(S − LSE)) are all-gathered and assembled into every column's statistics
and loss (:func:`uca_kernels.combine_stats`); the backward all-reduces the column losses' upstream
gradients and forms dS of the local rows against every column from the assembled statistics
(:func:`uca_kernels.contrast_row_share`). Rank k keeps its local columns' losses. The reference
backend has no op pair and makes a second call, global rows × local columns, instead. The two paths
run different collectives, so every rank must resolve the same backend (ranks on one device kind
do; name it in the config to be sure).

**Scaling convention.** Every function here returns a value whose *mean over ranks* is the global
loss and whose gradient, *averaged over ranks* as DistributedDataParallel does, is the global
gradient: every term returns ``W · L_k``, rank k's share of the global loss L. (For an input tensor of rank k
the local ``.grad`` is therefore ``W · ∂L/∂x_k``.) Local means such as a reconstruction
cross-entropy follow the same convention as they are. With W = 1 everything reduces to the plain
single-process loss: the same code, no communication.
"""

from __future__ import annotations

import torch

from uca_kernels import contrast, contrast_row_share, feature_maps
from uca_kernels.contrast import row_share_supported
from uca_kernels.losses import point_maps

from .distributed import DistContext, gather, gather_labels, gather_parts, local_first, sum_over_ranks

__all__ = ["dcl_loss", "pcl_loss", "cosine_contrast_loss"]


def _reduce(rows: torch.Tensor, cols: torch.Tensor, loss: str) -> torch.Tensor:
    """A whole (single-process) term: mean over rows + mean over columns; ``sigmoid``: Σᵢⱼ ℓᵢⱼ / M,
    each pair once (rows and columns hold the same pairs)."""
    if loss == "sigmoid":
        return rows.sum() / rows.shape[0]
    return rows.mean() + cols.mean()


def _cross_term(maps, a: tuple, b: tuple, labels: torch.Tensor, ctx: DistContext, loss: str, backend: str,
                global_labels: torch.Tensor | None = None, gathered: tuple | None = None) -> torch.Tensor:
    """A cross-modal term with the scaling convention of the module docstring. ``maps(rows_side,
    cols_side) -> (A, B, r, c, scale, bias)`` gives the fused op's arguments of two sides (tuples
    of tensors with rows in dim 0). Distributed: local rows × global columns; the softmax losses'
    column losses from every rank's column statistics (:func:`uca_kernels.contrast_row_share`,
    each pair once across the group) where the backend has the op pair, else also global rows ×
    local columns as a second call (the reference). ``gathered``: (gather of each tensor of ``a``,
    of ``b``) when the caller already has them (None entries are gathered here)."""

    def run(x, y, la, lb):
        A, B, r, c, scale, bias = maps(x, y)
        return contrast(A, B, r, c, scale, bias, la, lb, loss=loss, backend=backend)

    if not ctx.distributed:
        rows, cols = run(a, b, labels, labels)
        return _reduce(rows, cols, loss)
    gl = gather_labels(labels, ctx) if global_labels is None else global_labels
    n_global, n_local = gl.shape[0], labels.shape[0]
    ga, gb = gathered if gathered is not None else (None, None)
    gb = gb if gb is not None else tuple(gather(x, ctx) for x in b)
    A, B, r, c, scale, bias = maps(a, gb)
    if loss == "sigmoid":  # every global pair is in exactly one rank's local rows
        rows, _ = contrast(A, B, r, c, scale, bias, labels, gl, loss=loss, backend=backend)
        return ctx.world_size * rows.sum() / n_global
    if row_share_supported(A, B, loss, backend):
        rows, cols = contrast_row_share(A, B, r, c, scale, bias, labels, gl, loss=loss, backend=backend,
                                        gather_stats=lambda part: gather_parts(part, ctx),
                                        sum_col_grads=lambda g: sum_over_ranks(g, ctx))
        mine = cols[ctx.rank * n_local:(ctx.rank + 1) * n_local]  # this rank's columns' losses
        return ctx.world_size * (rows.sum() + mine.sum()) / n_global
    rows, _ = contrast(A, B, r, c, scale, bias, labels, gl, loss=loss, backend=backend)
    ga = ga if ga is not None else tuple(gather(x, ctx) for x in a)
    _, cols = run(ga, b, gl, labels)
    return ctx.world_size * (rows.sum() + cols.sum()) / n_global


def dcl_loss(mu_v, logvar_v, mu_t, logvar_t, labels, *, metric="w2", loss="sdm", scale=1.0, bias=0.0,
             backend="auto", ctx: DistContext = DistContext()) -> torch.Tensor:
    """Distribution contrast (images = rows, texts = columns) over the global batch.

    Args:
        mu_v, logvar_v, mu_t, logvar_t: [b, D] local image and text Gaussians (pair i ↔ i).
        labels: [b] identities. loss: ``sdm`` | ``infonce`` | ``sigmoid``.
        scale: positive number or 0-d tensor; bias: number or 0-d tensor (logits = −scale·d + bias;
            the softmax losses do not depend on the bias, ``sigmoid`` does).

    The logit of (image i, text j) is −scale·d(N_v_i, N_t_j) + bias, image first (``kl``:
    KL(image ‖ text)); retrieval ranks by the same pair distance (:func:`uca_model.evaluation.score_fn`).
    The value is mean over rows + mean over columns, or for ``sigmoid`` Σᵢⱼ softplus(−yᵢⱼ Sᵢⱼ) / B
    over the B global pairs (each pair once), with the scaling convention of the module docstring.
    """

    def maps(a, b):
        return (*feature_maps(a[0], a[1], b[0], b[1], metric), -scale, bias)

    return _cross_term(maps, (mu_v, logvar_v), (mu_t, logvar_t), labels, ctx, loss, backend)


def pcl_loss(z_v: torch.Tensor, z_t: torch.Tensor, labels: torch.Tensor, *, similarity="cosine", scale=50.0,
             loss="sdm", bias=0.0, intra=True, backend="auto",
             ctx: DistContext = DistContext()) -> dict[str, torch.Tensor]:
    """Point contrast over the global batch.

    Args:
        z_v, z_t: [b·K, D] local sampled points (row i·K + k is sample k of pair i).
        labels: [b·K] identities of the points (``pids.repeat_interleave(K)``).
        similarity, scale, loss, backend: as :func:`uca_kernels.point_contrast_loss`.
        bias: number or 0-d tensor added to every logit (scale·cos + bias, or −scale·‖zᵢ − zⱼ‖² + bias);
            only ``sigmoid`` depends on it.
        intra: compute the image–image and text–text terms (self pairs excluded).

    Returns:
        ``{"inter", "intra_image", "intra_text"}`` (intra terms absent when ``intra`` is False). Each
        is mean over rows + mean over columns, or for ``sigmoid`` Σᵢⱼ ℓᵢⱼ / n over the n = B·K global
        points (each pair once), with the scaling convention of the module docstring.
    """

    def maps(a, b):
        A, B, r, c, sign = point_maps(a[0], b[0], similarity)
        return A, B, r, c, sign * scale, bias

    # labels and points gathered once for the inter and both intra terms (each all-gather's backward
    # is an all-reduce: reusing one gather also halves those)
    gl = gather_labels(labels, ctx)
    g_t = gather(z_t, ctx)
    g_v = gather(z_v, ctx) if intra else None  # the inter term needs only z_t's (or gathers z_v itself: reference)
    out = {"inter": _cross_term(maps, (z_v,), (z_t,), labels, ctx, loss, backend, gl,
                                gathered=(None if g_v is None else (g_v,), (g_t,)))}
    if intra:
        cols_labels = local_first(gl, labels, ctx)
        for name, z, g in (("intra_image", z_v, g_v), ("intra_text", z_t, g_t)):
            out[name] = _intra_term(z, local_first(g, z, ctx), labels, cols_labels, similarity,
                                    scale, bias, loss, backend, ctx)
    return out


def _intra_term(z, cols, labels, cols_labels, similarity, scale, bias, loss, backend, ctx) -> torch.Tensor:
    """One modality's points against themselves: local rows × the global columns, local first
    (pairs (i, i) are the self pairs), with the scaling convention of the module docstring."""
    A, B, r, c, sign = point_maps(z, cols, similarity)
    rows, _ = contrast(A, B, r, c, sign * scale, bias, labels, cols_labels, loss=loss, exclude_self=True,
                       backend=backend)
    per_rank = rows.sum() if loss == "sigmoid" else 2.0 * rows.sum()  # rows and columns hold the same losses
    return ctx.world_size * per_rank / cols.shape[0]


def cosine_contrast_loss(f_v: torch.Tensor, f_t: torch.Tensor, labels: torch.Tensor, *, scale=50.0, loss="sdm",
                         bias=0.0, backend="auto", ctx: DistContext = DistContext()) -> torch.Tensor:
    """The baseline's SDM (or InfoNCE, or sigmoid) on logits scale·cos + bias of fixed-point
    embeddings [b, D] (the model's config offers the softmax losses only)."""

    def maps(a, b):
        A, B, r, c, _ = point_maps(a[0], b[0], "cosine")
        return A, B, r, c, scale, bias

    return _cross_term(maps, (f_v,), (f_t,), labels, ctx, loss, backend)
