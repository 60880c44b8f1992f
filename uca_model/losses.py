"""The model's contrastive loss terms (DCL, PCL, the baseline's) over the global batch of a
data-parallel run, and the single-process case.

The maths of doing each pair's work once across ranks, the collectives and the terms themselves are
the library's (:mod:`uca_kernels.distributed`); this module only fixes the model's feature maps.

**Scaling convention.** Every function here returns rank k's *share* ``W · L_k`` of the global loss
L (``Σ_k L_k = L``): its *mean over ranks* is L, and its gradient, *averaged over ranks* as
DistributedDataParallel does, is the global gradient. (For an input tensor of rank k the local
``.grad`` is therefore ``W · ∂L/∂x_k``.) Unlike the library's functions, which return L itself on
every rank, the shares need no extra all-reduce per term. Local means such as a reconstruction
cross-entropy follow the same convention as they are. With W = 1 everything reduces to the plain
single-process loss: the same code, no communication.

Every rank must resolve the same contrast backend: the softmax terms run different collectives on
a fused backend and on the reference (:func:`uca_kernels.distributed.check_same_backend`).
"""

from __future__ import annotations

import torch

from uca_kernels import feature_maps
from uca_kernels.distributed import DistContext, cross_share
from uca_kernels.losses import point_contrast_shares, point_maps

__all__ = ["dcl_loss", "pcl_loss", "cosine_contrast_loss"]


def dcl_loss(mu_v, logvar_v, mu_t, logvar_t, labels, *, metric="w2", loss="sdm", scale=1.0, bias=0.0,
             backend="auto", ctx: DistContext = DistContext()) -> torch.Tensor:
    """Distribution contrast (images = rows, texts = columns) over the global batch.

    Args:
        mu_v, logvar_v, mu_t, logvar_t: [b, D] local image and text Gaussians (pair i ↔ i).
        labels: [b] identities, or None (global diagonal positives). loss: ``sdm`` | ``infonce`` | ``sigmoid``.
        scale: positive number or 0-d tensor; bias: number or 0-d tensor (logits = −scale·d + bias;
            the softmax losses do not depend on the bias, ``sigmoid`` does).

    The logit of (image i, text j) is −scale·d(N_v_i, N_t_j) + bias, image first (``kl``:
    KL(image ‖ text)); retrieval ranks by the same pair distance (:func:`uca_model.evaluation.score_fn`).
    The value is mean over rows + mean over columns, or for ``sigmoid`` Σᵢⱼ softplus(−yᵢⱼ Sᵢⱼ) / B
    over the B global pairs (each pair once), with the scaling convention of the module docstring.
    """

    def maps(a, b):
        return (*feature_maps(a[0], a[1], b[0], b[1], metric), -scale, bias)

    return cross_share(maps, (mu_v, logvar_v), (mu_t, logvar_t), labels, labels, loss=loss, ctx=ctx, backend=backend)


def pcl_loss(z_v: torch.Tensor, z_t: torch.Tensor, labels: torch.Tensor, *, similarity="cosine", scale=50.0,
             loss="sdm", bias=0.0, intra=True, backend="auto",
             ctx: DistContext = DistContext()) -> dict[str, torch.Tensor]:
    """Point contrast over the global batch (:func:`uca_kernels.losses.point_contrast_shares`).

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
    return point_contrast_shares(z_v, z_t, labels, similarity=similarity, scale=scale, bias=bias, loss=loss,
                                 intra=intra, backend=backend, ctx=ctx)


def cosine_contrast_loss(f_v: torch.Tensor, f_t: torch.Tensor, labels: torch.Tensor | None, *, scale=50.0,
                         loss="sdm", bias=0.0, backend="auto", ctx: DistContext = DistContext()) -> torch.Tensor:
    """The baseline's SDM (or InfoNCE, or sigmoid) on logits scale·cos + bias of fixed-point
    embeddings [b, D] (the model's config offers the softmax losses only); labels None: global
    diagonal positives."""

    def maps(a, b):
        A, B, r, c, _ = point_maps(a[0], b[0], "cosine")
        return A, B, r, c, scale, bias

    return cross_share(maps, (f_v,), (f_t,), labels, labels, loss=loss, ctx=ctx, backend=backend)
