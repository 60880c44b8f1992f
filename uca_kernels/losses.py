"""The method's losses on top of the fused contrast op.

- :func:`distribution_contrast_loss` (DCL): contrast on logits ``S = −scale·d(N_vᵢ, N_tⱼ) + bias``
  from a Gaussian metric between image (rows) and text (columns) distributions.
- :func:`point_contrast_loss` (PCL): K reparameterised samples ``z = μ + σ ⊙ ε`` per distribution;
  inter-modal (image points vs text points) and intra-modal (image vs image, text vs text, a point
  never its own pair) contrast with identity positives.
- :func:`prior_kl`: KL(N(μ, σ²) ‖ N(0, I)), the regulariser that keeps σ from collapsing.

Every contrast goes through :func:`uca_kernels.contrast`, so the backend choice (``backend=``,
``UCA_BACKEND``, auto) applies to all of them. For ``sdm`` / ``infonce`` each direction's loss is
averaged over its rows, and a term is the sum of its two directions. For the pairwise ``sigmoid``
loss both directions hold the same pairs, so a term counts each pair once: Σᵢⱼ ℓᵢⱼ / M (SigLIP's
normalisation, M = the number of rows) for ``mean``, Σᵢⱼ ℓᵢⱼ for ``sum``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._validation import check_choice, check_features, check_labels, check_same_device, check_scalar
from .contrast import LOSSES, REDUCTIONS, contrast
from .gaussian import METRICS, check_gaussians, feature_maps

__all__ = [
    "distribution_contrast_loss",
    "point_contrast_loss",
    "point_maps",
    "prior_kl",
    "sample_points",
    "DistributionContrastLoss",
    "PointContrastLoss",
]

SIMILARITIES = ("cosine", "euclidean")
DEFAULT_POINT_SCALE = {"cosine": 1 / 0.02, "euclidean": 1.0}  # IRRA's temperature for cosine


def _labels_or_arange(labels, n: int, device: torch.device, name: str = "labels") -> torch.Tensor:
    if labels is None:
        return torch.arange(n, device=device)
    return check_labels(name, labels, n, device)


def distribution_contrast_loss(
    mu_v: torch.Tensor,
    logvar_v: torch.Tensor,
    mu_t: torch.Tensor,
    logvar_t: torch.Tensor,
    labels: torch.Tensor | None = None,
    metric: str = "w2",
    loss: str = "sdm",
    scale=None,
    bias=0.0,
    reduction: str = "mean",
    backend: str = "auto",
    *,
    labels_t: torch.Tensor | None = None,
):
    """Distribution contrast learning between image and text Gaussians.

    Args:
        mu_v, logvar_v: [M, D] image distributions (rows, the image→text direction).
        mu_t, logvar_t: [N, D] text distributions (columns).
        labels: [M] integer identities (of both sides when ``labels_t`` is None, then M == N);
            None means diagonal positives (pair i of the batch matches only pair i).
        metric: ``w2`` | ``kl`` (KL(image ‖ text)) | ``jeffreys`` | ``csd`` | ``ce`` (H(image, text)).
        loss: ``sdm`` | ``infonce`` | ``sigmoid`` (pairwise, SigLIP / PCME++ style).
        scale: positive number or 0-d tensor (learnable allowed); logits are −scale·d + bias.
            Default 1.0.
        bias: number or 0-d tensor.
        reduction: ``mean`` (mean over rows + mean over columns; for ``sigmoid`` Σᵢⱼ ℓᵢⱼ / M,
            each pair once), ``sum`` (rows + columns; for ``sigmoid`` Σᵢⱼ ℓᵢⱼ), or ``none`` to
            get ``(loss_rows [M], loss_cols [N])``.
        backend: ``auto`` or a backend name (see :mod:`uca_kernels.dispatch`).
        labels_t: [N] identities of the text side when they differ from ``labels``.

    Returns:
        A scalar (or the two per-row vectors for ``reduction="none"``).
    """
    check_choice("metric", metric, METRICS)
    check_choice("loss", loss, LOSSES)
    check_choice("reduction", reduction, REDUCTIONS)
    check_gaussians(mu_v, logvar_v, mu_t, logvar_t, names=("mu_v", "logvar_v", "mu_t", "logvar_t"))
    M, N = mu_v.shape[0], mu_t.shape[0]
    if labels_t is not None and labels is None:
        raise ValueError("labels_t given without labels (the image identities)")
    if labels_t is None and M != N:
        raise ValueError(f"image and text batches differ (M={M}, N={N}): pass labels and labels_t")
    la = _labels_or_arange(labels, M, mu_v.device)
    lb = la if labels_t is None else check_labels("labels_t", labels_t, N, mu_v.device)
    scale = check_scalar("scale", 1.0 if scale is None else scale, mu_v)
    A, B, r, c = feature_maps(mu_v, logvar_v, mu_t, logvar_t, metric)
    return contrast(A, B, r, c, -scale, bias, la, lb, loss=loss, backend=backend, reduction=reduction)


def sample_points(mu: torch.Tensor, logvar: torch.Tensor, num_samples: int, eps=None, generator=None, name="eps"):
    """K reparameterised samples per row: [B, D] → [B·K, D] (row b's samples are rows b·K … b·K+K−1)."""
    Bsz, D = mu.shape
    if eps is None:
        eps = torch.randn(Bsz, num_samples, D, device=mu.device, dtype=mu.dtype, generator=generator)
    else:
        check_features(name, eps, ndim=3)
        if tuple(eps.shape) != (Bsz, num_samples, D):
            raise ValueError(f"{name} must have shape {(Bsz, num_samples, D)}, got {tuple(eps.shape)}")
        check_same_device(mu=mu, **{name: eps})
    z = mu[:, None, :] + (0.5 * logvar).exp()[:, None, :] * eps.to(mu.dtype)
    return z.reshape(Bsz * num_samples, D)


def point_maps(za: torch.Tensor, zb: torch.Tensor, similarity: str):
    """The fused op's arguments ``(A, B, r, c, sign)`` of a point similarity: cosine → the normalised
    points (sign +); euclidean → the maps of −‖zᵢ − zⱼ‖² (sign −; the points shifted by their mean
    first, which distances do not see, so large offsets cost no precision). The logits are
    ``sign · scale · (A Bᵀ + r + c) + bias``."""
    if similarity == "cosine":
        a, b = nn.functional.normalize(za, dim=1), nn.functional.normalize(zb, dim=1)
        zeros_a, zeros_b = a.new_zeros(a.shape[0]), b.new_zeros(b.shape[0])
        return a, b, zeros_a, zeros_b, 1.0
    shift = torch.cat([za, zb]).mean(0).detach()
    za, zb = za - shift, zb - shift
    return za, -2.0 * zb, za.square().sum(1), zb.square().sum(1), -1.0


def point_contrast_loss(
    mu_v: torch.Tensor,
    logvar_v: torch.Tensor,
    mu_t: torch.Tensor,
    logvar_t: torch.Tensor,
    labels: torch.Tensor | None = None,
    num_samples: int = 4,
    eps_v: torch.Tensor | None = None,
    eps_t: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    similarity: str = "cosine",
    scale=None,
    loss: str = "sdm",
    intra: bool = True,
    backend: str = "auto",
    *,
    bias=0.0,
) -> dict[str, torch.Tensor]:
    """Point contrast learning on K samples of each distribution.

    Args:
        mu_v, logvar_v, mu_t, logvar_t: [B, D] image and text distributions (one pair per row).
        labels: [B] integer identities; None means each pair is its own identity.
        num_samples: K ≥ 1 samples per distribution.
        eps_v, eps_t: optional [B, K, D] standard-normal noise (else drawn with ``generator``).
        similarity: ``cosine`` (logit = scale·cos) or ``euclidean`` (logit = −scale·‖zᵢ − zⱼ‖²).
        scale: positive number or 0-d tensor; default 1/0.02 for cosine, 1 for euclidean.
        loss: ``sdm`` | ``infonce`` | ``sigmoid`` (pairwise; its terms count each pair once,
            Σᵢⱼ ℓᵢⱼ / (B·K)).
        bias: number or 0-d tensor added to every logit (keyword only). The softmax losses do not
            depend on it; ``sigmoid`` does (SigLIP starts from −10 with scale 10).
        intra: also compute the image–image and text–text terms (a point is never its own pair;
            its other K−1 samples and same-identity points are its positives; a point with no
            positive, e.g. K = 1 and a unique identity, contributes 0 to the softmax losses and
            its negative terms to ``sigmoid``).
        backend: ``auto`` or a backend name.

    Returns:
        ``{"inter", "intra_image", "intra_text", "total"}`` scalars (intra terms are 0 when
        ``intra=False``). Each term is mean over rows + mean over columns of its contrast
        (``sigmoid``: Σᵢⱼ ℓᵢⱼ / (B·K), each pair once).
    """
    check_choice("similarity", similarity, SIMILARITIES)
    check_choice("loss", loss, LOSSES)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    check_gaussians(mu_v, logvar_v, mu_t, logvar_t, names=("mu_v", "logvar_v", "mu_t", "logvar_t"))
    Bsz = mu_v.shape[0]
    if mu_t.shape[0] != Bsz:
        raise ValueError(f"mu_v and mu_t must have the same batch size, got {Bsz} and {mu_t.shape[0]}")
    lab = _labels_or_arange(labels, Bsz, mu_v.device).repeat_interleave(num_samples)
    scale = check_scalar("scale", DEFAULT_POINT_SCALE[similarity] if scale is None else scale, mu_v)
    bias = check_scalar("bias", bias, mu_v)
    zv = sample_points(mu_v, logvar_v, num_samples, eps_v, generator, "eps_v")
    zt = sample_points(mu_t, logvar_t, num_samples, eps_t, generator, "eps_t")

    def term(za, zb, exclude_self):
        A, B, r, c, sign = point_maps(za, zb, similarity)
        return contrast(A, B, r, c, sign * scale, bias, lab, lab, loss=loss, exclude_self=exclude_self,
                        backend=backend, reduction="mean")

    out = {"inter": term(zv, zt, False)}
    zero = out["inter"].new_zeros(())
    out["intra_image"] = term(zv, zv, True) if intra else zero
    out["intra_text"] = term(zt, zt, True) if intra else zero
    out["total"] = out["inter"] + out["intra_image"] + out["intra_text"]
    return out


def prior_kl(mu: torch.Tensor, logvar: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_d (σ² + μ² − 1 − log σ²) per row; mean/sum/none over rows."""
    check_choice("reduction", reduction, REDUCTIONS)
    check_features("mu", mu)
    check_features("logvar", logvar, rows=mu.shape[0], cols=mu.shape[1])
    check_same_device(mu=mu, logvar=logvar)
    kl = 0.5 * (logvar.exp() + mu.square() - 1.0 - logvar).sum(1)
    return kl if reduction == "none" else (kl.sum() if reduction == "sum" else kl.mean())


class _ScaleMixin(nn.Module):
    def _init_scale(self, scale: float, learn_scale: bool) -> None:
        if not (isinstance(scale, (int, float)) and scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")
        if learn_scale:
            self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))
        else:
            self.register_buffer("log_scale", torch.tensor(math.log(scale)), persistent=False)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()


class DistributionContrastLoss(_ScaleMixin):
    """Module form of :func:`distribution_contrast_loss` with an optionally learnable scale (kept
    positive through its log) and bias.

    Defaults: scale 1, bias 0 for the softmax losses (which ignore the bias). For ``sigmoid`` they
    follow SigLIP, whose start is the logit 10·cos − 10: on unit-norm μ with small σ a distance is
    d ≈ 2 − 2 cos (W2, CSD), so −5·d + 0 gives those very logits; the sigmoid defaults are
    therefore scale 5 and bias 0. ``learn_scale`` / ``learn_bias`` make them learnable (SigLIP
    learns both)."""

    def __init__(self, metric: str = "w2", loss: str = "sdm", scale: float | None = None, learn_scale: bool = False,
                 bias: float | None = None, learn_bias: bool = False, backend: str = "auto"):
        super().__init__()
        self.metric = check_choice("metric", metric, METRICS)
        self.loss = check_choice("loss", loss, LOSSES)
        self.backend = backend
        self._init_scale((5.0 if loss == "sigmoid" else 1.0) if scale is None else scale, learn_scale)
        b = torch.tensor(0.0 if bias is None else float(bias))
        self.bias = nn.Parameter(b) if learn_bias else b

    def forward(self, mu_v, logvar_v, mu_t, logvar_t, labels=None, *, labels_t=None):
        bias = self.bias.to(mu_v.device) if isinstance(self.bias, torch.Tensor) else self.bias
        return distribution_contrast_loss(mu_v, logvar_v, mu_t, logvar_t, labels, self.metric, self.loss,
                                          self.scale.to(mu_v.dtype), bias.to(mu_v.dtype), "mean", self.backend,
                                          labels_t=labels_t)


class PointContrastLoss(_ScaleMixin):
    """Module form of :func:`point_contrast_loss`; returns the dict of named terms.

    Defaults: scale 1/0.02 on cosine (IRRA), 1 on euclidean, bias 0; for ``sigmoid`` on cosine
    SigLIP's start, scale 10 and bias −10 (``learn_scale`` / ``learn_bias`` to learn them)."""

    def __init__(self, num_samples: int = 4, similarity: str = "cosine", scale: float | None = None,
                 learn_scale: bool = False, loss: str = "sdm", intra: bool = True, backend: str = "auto",
                 bias: float | None = None, learn_bias: bool = False):
        super().__init__()
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        self.num_samples = num_samples
        self.similarity = check_choice("similarity", similarity, SIMILARITIES)
        self.loss = check_choice("loss", loss, LOSSES)
        self.intra, self.backend = intra, backend
        siglip = loss == "sigmoid" and similarity == "cosine"
        if scale is None:
            scale = 10.0 if siglip else DEFAULT_POINT_SCALE[similarity]
        self._init_scale(scale, learn_scale)
        b = torch.tensor((-10.0 if siglip else 0.0) if bias is None else float(bias))
        self.bias = nn.Parameter(b) if learn_bias else b

    def forward(self, mu_v, logvar_v, mu_t, logvar_t, labels=None, generator=None):
        return point_contrast_loss(mu_v, logvar_v, mu_t, logvar_t, labels, self.num_samples, generator=generator,
                                   similarity=self.similarity, scale=self.scale.to(mu_v.dtype), loss=self.loss,
                                   intra=self.intra, backend=self.backend,
                                   bias=self.bias.to(mu_v.device, mu_v.dtype))
