"""The method's losses on top of the fused contrast op, as functions and as modules.

- :func:`distribution_contrast_loss` (DCL): contrast on logits ``S = −scale·d(N_vᵢ, N_tⱼ) + bias``
  from a Gaussian metric between image (rows) and text (columns) distributions.
- :func:`point_contrast_loss` (PCL): K reparameterised samples ``z = μ + σ ⊙ ε`` per distribution;
  inter-modal (image points vs text points) and intra-modal (image vs image, text vs text, a point
  never its own pair) contrast with identity positives.
- :func:`prior_kl`: KL(N(μ, σ²) ‖ N(0, I)), the regulariser that keeps σ from collapsing.

Every contrast goes through :func:`uca_kernels.contrast`, so the backend choice (``backend=``,
``UCA_BACKEND``, auto) applies to all of them. ``reduction`` means what it means for
:func:`uca_kernels.contrast`: for ``sdm`` / ``infonce`` ``"mean"`` is the mean over rows plus the
mean over columns (the sum of the two directions' means; open_clip's ``ClipLoss`` is half of it,
:class:`uca_kernels.ClipLoss`), for the pairwise ``sigmoid`` loss, whose two directions hold the
same pairs, each pair once: Σᵢⱼ ℓᵢⱼ / M (SigLIP's normalisation, M = the number of rows);
``"sum"``: the sums.

**Defaults** (one set, shared by each function and its module; :func:`dcl_defaults`,
:func:`pcl_defaults`): softmax losses scale 1 (DCL) or 1/0.02 (PCL on cosine, IRRA's temperature),
bias 0 (a softmax does not depend on it). ``sigmoid`` starts where SigLIP does, at the logit
10·cos − 10: PCL on cosine takes scale 10, bias −10; DCL takes scale 5, bias 0, because on unit-norm
μ with small σ a distance is d ≈ 2 − 2 cos (W2, CSD) and −5·d = 10·cos − 10. Euclidean PCL: scale 1,
bias 0 (−10 for sigmoid).

**Data parallel.** The functions compute the batch they are given unless ``ctx`` (a
:class:`uca_kernels.distributed.DistContext`) says this process is one of several; the modules
take ``rank`` / ``world_size`` / ``group`` (default: the initialised process group, if any). Then
each pair is computed once across the ranks, the value is the loss of the global batch on every
rank, and each rank's gradient is world_size × the global gradient of its inputs, so that
DistributedDataParallel's averaging gives the global gradient (:mod:`uca_kernels.distributed`).
``labels=None`` means diagonal positives of the *global* batch.

**torch.compile.** The modules compile with ``fullgraph=True``; PCL's noise is drawn outside the
graph when it comes from a ``torch.Generator`` (pass ``eps_v`` / ``eps_t``, e.g. from
:meth:`PointContrastLoss.noise`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._validation import check_choice, check_features, check_labels, check_same_device, check_scalar
from .contrast import LOSSES, REDUCTIONS
from .distributed import DistContext, cross_share, gather, gather_labels, global_labels, global_value, self_share
from .gaussian import METRICS, check_gaussians, feature_maps

__all__ = [
    "SIMILARITIES",
    "dcl_defaults",
    "distribution_contrast_loss",
    "pcl_defaults",
    "point_contrast_loss",
    "point_contrast_shares",
    "point_maps",
    "prior_kl",
    "register_logit_tensor",
    "sample_points",
    "scale_of",
    "DistributionContrastLoss",
    "PointContrastLoss",
    "PriorKLLoss",
]

SIMILARITIES = ("cosine", "euclidean")
SIGLIP_SCALE, SIGLIP_BIAS = 10.0, -10.0  # SigLIP's initial logit 10·cos − 10


def dcl_defaults(loss: str) -> tuple[float, float]:
    """``(scale, bias)`` of DCL when not given: (1, 0); ``sigmoid`` (5, 0), SigLIP's start on a
    distance (module docstring)."""
    return (SIGLIP_SCALE / 2, 0.0) if loss == "sigmoid" else (1.0, 0.0)


def pcl_defaults(loss: str, similarity: str) -> tuple[float, float]:
    """``(scale, bias)`` of PCL when not given: cosine (1/0.02, 0), ``sigmoid`` on cosine SigLIP's
    (10, −10); euclidean (1, 0), ``sigmoid`` (1, −10)."""
    bias = SIGLIP_BIAS if loss == "sigmoid" else 0.0
    if similarity == "cosine":
        return (SIGLIP_SCALE if loss == "sigmoid" else 1 / 0.02), bias
    return 1.0, bias


def _ctx(ctx: DistContext | None) -> DistContext:
    if ctx is None:
        return DistContext()
    if not isinstance(ctx, DistContext):
        raise TypeError(f"ctx must be a uca_kernels.distributed.DistContext or None, got {type(ctx).__name__}")
    return ctx


def _labels(name: str, labels, n: int, device) -> torch.Tensor | None:
    return None if labels is None else check_labels(name, labels, n, device)


# -- distribution contrast -------------------------------------------------------------------------


def distribution_contrast_loss(
    mu_v: torch.Tensor,
    logvar_v: torch.Tensor,
    mu_t: torch.Tensor,
    logvar_t: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    labels_t: torch.Tensor | None = None,
    metric: str = "w2",
    loss: str = "sdm",
    scale=None,
    bias=None,
    reduction: str = "mean",
    backend: str = "auto",
    ctx: DistContext | None = None,
):
    """Distribution contrast learning between image and text Gaussians.

    Args:
        mu_v, logvar_v: [M, D] image distributions (rows, the image→text direction).
        mu_t, logvar_t: [N, D] text distributions (columns).
        labels: [M] integer identities (of both sides when ``labels_t`` is None, then M == N);
            None means diagonal positives (pair i of the batch matches only pair i).
        labels_t: [N] identities of the text side when they differ from ``labels``.
        metric: ``w2`` | ``kl`` (KL(image ‖ text)) | ``jeffreys`` | ``csd`` | ``ce`` (H(image, text)).
        loss: ``sdm`` | ``infonce`` | ``sigmoid`` (pairwise, SigLIP / PCME++ style).
        scale: positive number or 0-d tensor (learnable allowed); logits are −scale·d + bias.
            Default :func:`dcl_defaults`.
        bias: number or 0-d tensor; default :func:`dcl_defaults`.
        reduction: ``mean`` (mean over rows + mean over columns; for ``sigmoid`` Σᵢⱼ ℓᵢⱼ / M,
            each pair once), ``sum`` (rows + columns; for ``sigmoid`` Σᵢⱼ ℓᵢⱼ), or ``none`` to
            get ``(loss_rows [M], loss_cols [N])`` (one process only).
        backend: ``auto`` or a backend name (see :mod:`uca_kernels.dispatch`).
        ctx: data-parallel context (None: this process's batch alone; module docstring).

    Returns:
        A scalar (or the two per-row vectors for ``reduction="none"``).
    """
    check_choice("metric", metric, METRICS)
    check_choice("loss", loss, LOSSES)
    check_choice("reduction", reduction, REDUCTIONS)
    check_gaussians(mu_v, logvar_v, mu_t, logvar_t, names=("mu_v", "logvar_v", "mu_t", "logvar_t"))
    ctx = _ctx(ctx)
    M, N = mu_v.shape[0], mu_t.shape[0]
    if labels_t is not None and labels is None:
        raise ValueError("labels_t given without labels (the image identities)")
    if labels_t is None and M != N:
        raise ValueError(f"image and text batches differ (M={M}, N={N}): pass labels and labels_t")
    la = _labels("labels", labels, M, mu_v.device)
    lb = la if labels_t is None else check_labels("labels_t", labels_t, N, mu_v.device)
    d_scale, d_bias = dcl_defaults(loss)
    scale = check_scalar("scale", d_scale if scale is None else scale, mu_v)
    bias = check_scalar("bias", d_bias if bias is None else bias, mu_v)

    def maps(a, b):
        return (*feature_maps(a[0], a[1], b[0], b[1], metric), -scale, bias)

    share = cross_share(maps, (mu_v, logvar_v), (mu_t, logvar_t), la, lb, loss=loss, ctx=ctx, backend=backend,
                        reduction=reduction)
    return global_value(share, ctx)


# -- point contrast --------------------------------------------------------------------------------


def sample_points(mu: torch.Tensor, logvar: torch.Tensor, num_samples: int, eps=None, generator=None, name="eps"):
    """K reparameterised samples per row: [B, D] → [B·K, D] (row b's samples are rows b·K … b·K+K−1).

    ``eps``: [B, K, D] standard-normal noise, else drawn here (with ``generator`` if given)."""
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


def point_contrast_shares(z_v: torch.Tensor, z_t: torch.Tensor, labels: torch.Tensor | None, *,
                          similarity: str = "cosine", scale, bias=0.0, loss: str = "sdm", intra: bool = True,
                          backend: str = "auto", ctx: DistContext = DistContext(),
                          num_samples: int = 1) -> dict[str, torch.Tensor]:
    """Point contrast on sampled points, as this rank's shares W·L_k (:mod:`uca_kernels.distributed`;
    on one process the terms themselves).

    Args:
        z_v, z_t: [b·K, D] local sampled points (row i·K + k is sample k of pair i).
        labels: [b·K] identities of the points, or None: pair i's K points are the positives of
            each other only (global pairs under ``ctx``); ``num_samples`` = K is then needed.
        similarity, scale, bias, loss, backend: as :func:`point_contrast_loss` (scale, bias given).
        intra: also the image–image and text–text terms (self pairs excluded).

    Returns:
        ``{"inter", "intra_image", "intra_text"}`` (intra terms absent when ``intra`` is False).
        Each point gather serves the inter and both intra terms (each gather's backward is an
        all-reduce: one gather per modality also halves those).
    """
    n = z_v.shape[0]
    if labels is None:
        if n % num_samples:
            raise ValueError(f"{n} points are not a whole number of pairs of {num_samples} samples")
        lab, gl = global_labels(None, n // num_samples, z_v.device, ctx, repeat=num_samples)
    else:
        lab, gl = labels, gather_labels(labels, ctx)
    scale_t, bias_t = check_scalar("scale", scale, z_v), check_scalar("bias", bias, z_v)

    def maps(a, b):
        A, B, r, c, sign = point_maps(a[0], b[0], similarity)
        return A, B, r, c, sign * scale_t, bias_t

    g_t = gather(z_t, ctx)
    g_v = gather(z_v, ctx) if intra else None  # the inter term needs only z_t's (or gathers z_v itself: reference)
    kw = dict(loss=loss, ctx=ctx, backend=backend)
    out = {"inter": cross_share(maps, (z_v,), (z_t,), lab, lab, global_a=gl, global_b=gl,
                                gathered=(None if g_v is None else (g_v,), (g_t,)), **kw)}
    if intra:
        for name, z, g in (("intra_image", z_v, g_v), ("intra_text", z_t, g_t)):
            out[name] = self_share(maps, (z,), lab, global_x=gl, gathered=(g,), **kw)
    return out


def point_contrast_loss(
    mu_v: torch.Tensor,
    logvar_v: torch.Tensor,
    mu_t: torch.Tensor,
    logvar_t: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    num_samples: int = 4,
    eps_v: torch.Tensor | None = None,
    eps_t: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    similarity: str = "cosine",
    scale=None,
    bias=None,
    loss: str = "sdm",
    intra: bool = True,
    backend: str = "auto",
    ctx: DistContext | None = None,
) -> dict[str, torch.Tensor]:
    """Point contrast learning on K samples of each distribution.

    Args:
        mu_v, logvar_v, mu_t, logvar_t: [B, D] image and text distributions (one pair per row).
        labels: [B] integer identities; None means each pair is its own identity.
        num_samples: K ≥ 1 samples per distribution.
        eps_v, eps_t: optional [B, K, D] standard-normal noise (else drawn with ``generator``;
            under ``torch.compile(fullgraph=True)`` draw it outside and pass it).
        similarity: ``cosine`` (logit = scale·cos + bias) or ``euclidean`` (−scale·‖zᵢ − zⱼ‖² + bias).
        scale, bias: numbers or 0-d tensors; default :func:`pcl_defaults`.
        loss: ``sdm`` | ``infonce`` | ``sigmoid`` (pairwise; its terms count each pair once,
            Σᵢⱼ ℓᵢⱼ / (B·K)).
        intra: also compute the image–image and text–text terms (a point is never its own pair;
            its other K−1 samples and same-identity points are its positives; a point with no
            positive, e.g. K = 1 and a unique identity, contributes 0 to the softmax losses and
            its negative terms to ``sigmoid``).
        backend: ``auto`` or a backend name.
        ctx: data-parallel context (None: this process's batch alone; module docstring).

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
    ctx = _ctx(ctx)
    Bsz = mu_v.shape[0]
    if mu_t.shape[0] != Bsz:
        raise ValueError(f"mu_v and mu_t must have the same batch size, got {Bsz} and {mu_t.shape[0]}")
    lab = _labels("labels", labels, Bsz, mu_v.device)
    d_scale, d_bias = pcl_defaults(loss, similarity)
    scale = check_scalar("scale", d_scale if scale is None else scale, mu_v)
    bias = check_scalar("bias", d_bias if bias is None else bias, mu_v)
    zv = sample_points(mu_v, logvar_v, num_samples, eps_v, generator, "eps_v")
    zt = sample_points(mu_t, logvar_t, num_samples, eps_t, generator, "eps_t")
    out = point_contrast_shares(zv, zt, None if lab is None else lab.repeat_interleave(num_samples),
                                similarity=similarity, scale=scale, bias=bias, loss=loss, intra=intra,
                                backend=backend, ctx=ctx, num_samples=num_samples)
    out = global_value(out, ctx)
    zero = out["inter"].new_zeros(())
    out.setdefault("intra_image", zero)
    out.setdefault("intra_text", zero)
    out["total"] = out["inter"] + out["intra_image"] + out["intra_text"]
    return out


# -- prior -----------------------------------------------------------------------------------------


def prior_kl(mu: torch.Tensor, logvar: torch.Tensor, reduction: str = "mean", *,
             ctx: DistContext | None = None) -> torch.Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_d (σ² + μ² − 1 − log σ²) per row; mean/sum/none over rows
    (over the global batch under ``ctx``, equal local batches)."""
    check_choice("reduction", reduction, REDUCTIONS)
    check_features("mu", mu)
    check_features("logvar", logvar, rows=mu.shape[0], cols=mu.shape[1])
    check_same_device(mu=mu, logvar=logvar)
    ctx = _ctx(ctx)
    kl = 0.5 * (logvar.exp() + mu.square() - 1.0 - logvar).sum(1)
    if reduction == "none":
        if ctx.distributed:
            raise ValueError("reduction='none' has no data-parallel form: use 'mean' or 'sum'")
        return kl
    # share W·L_k: a mean over W·b rows is the local mean; a sum is W × the local sum
    share = kl.mean() if reduction == "mean" else ctx.world_size * kl.sum()
    return global_value(share, ctx)


# -- modules ---------------------------------------------------------------------------------------


def register_logit_tensor(module: nn.Module, name: str, value: float, learnable: bool) -> None:
    """Hold a logit scale's log or a logit bias in ``module`` under ``name``: an ``nn.Parameter``
    when ``learnable``, else a buffer (in ``state_dict``, moved by ``.to`` / ``.double()`` like the
    rest of the module). The one rule for every loss module here and the model's terms."""
    t = torch.tensor(float(value))
    if learnable:
        setattr(module, name, nn.Parameter(t))
    else:
        module.register_buffer(name, t)


def check_scale(scale) -> float:
    """A logit scale given as a number: positive and finite (it is kept through its log)."""
    if isinstance(scale, bool) or not (isinstance(scale, (int, float)) and scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return float(scale)


def scale_of(log_scale: torch.Tensor, max_scale: float | None = None) -> torch.Tensor:
    """The logit scale exp(log_scale), clamped at ``max_scale`` (CLIP clamps at 100) when given."""
    if max_scale is not None:
        log_scale = log_scale.clamp(max=math.log(max_scale))
    return log_scale.exp()


class _ContrastModule(nn.Module):
    """A loss module's logit scale (kept positive through its log, optionally learnable and clamped)
    and bias (optionally learnable), and the data-parallel context it runs under."""

    def _init_common(self, scale: float, learn_scale: bool, bias: float, learn_bias: bool, max_scale,
                     backend: str, rank, world_size, group) -> None:
        register_logit_tensor(self, "log_scale", math.log(check_scale(scale)), learn_scale)
        if isinstance(bias, bool) or not (isinstance(bias, (int, float)) and math.isfinite(bias)):
            raise ValueError(f"bias must be a finite number, got {bias!r}")
        register_logit_tensor(self, "bias", bias, learn_bias)
        if max_scale is not None:
            check_scale(max_scale)
        self.max_scale, self.backend = max_scale, backend
        self.rank, self.world_size, self.group = rank, world_size, group

    @property
    def scale(self) -> torch.Tensor:
        return scale_of(self.log_scale, self.max_scale)

    def dist_context(self) -> DistContext:
        """The context of this call: explicit rank / world_size, else the process group (if any)."""
        return DistContext.resolve(self.rank, self.world_size, self.group)

    def _common_repr(self) -> str:
        learn = [n for n in ("log_scale", "bias") if isinstance(getattr(self, n), nn.Parameter)]
        s = f"scale={float(self.scale.detach()):g}, bias={float(self.bias.detach()):g}"
        s += f", learn={'+'.join(learn)}" if learn else ""
        s += f", max_scale={self.max_scale:g}" if self.max_scale is not None else ""
        s += f", backend={self.backend!r}" if self.backend != "auto" else ""
        if self.world_size is not None:
            s += f", rank={self.rank}, world_size={self.world_size}"
        return s


class DistributionContrastLoss(_ContrastModule):
    """Module form of :func:`distribution_contrast_loss` (same defaults, :func:`dcl_defaults`) with
    an optionally learnable scale (kept positive through its log) and bias, data-parallel aware.

    ``forward(mu_v, logvar_v, mu_t, logvar_t, labels=None, *, labels_t=None)`` returns the scalar
    loss (``reduction="mean"`` or ``"sum"``)."""

    def __init__(self, metric: str = "w2", loss: str = "sdm", *, scale: float | None = None, learn_scale: bool = False,
                 bias: float | None = None, learn_bias: bool = False, max_scale: float | None = None,
                 reduction: str = "mean", backend: str = "auto", rank: int | None = None,
                 world_size: int | None = None, group=None):
        super().__init__()
        self.metric = check_choice("metric", metric, METRICS)
        self.loss = check_choice("loss", loss, LOSSES)
        self.reduction = check_choice("reduction", reduction, ("mean", "sum"))
        d_scale, d_bias = dcl_defaults(loss)
        self._init_common(d_scale if scale is None else scale, learn_scale, d_bias if bias is None else bias,
                          learn_bias, max_scale, backend, rank, world_size, group)

    def forward(self, mu_v, logvar_v, mu_t, logvar_t, labels=None, *, labels_t=None):
        return distribution_contrast_loss(mu_v, logvar_v, mu_t, logvar_t, labels, labels_t=labels_t, metric=self.metric,
                                          loss=self.loss, scale=self.scale.to(mu_v.dtype),
                                          bias=self.bias.to(mu_v.dtype), reduction=self.reduction,
                                          backend=self.backend, ctx=self.dist_context())

    def extra_repr(self) -> str:
        return f"metric={self.metric!r}, loss={self.loss!r}, reduction={self.reduction!r}, {self._common_repr()}"


class PointContrastLoss(_ContrastModule):
    """Module form of :func:`point_contrast_loss` (same defaults, :func:`pcl_defaults`); returns the
    dict of named terms; data-parallel aware.

    ``forward(mu_v, logvar_v, mu_t, logvar_t, labels=None, *, eps_v=None, eps_t=None,
    generator=None)``: the noise is drawn with ``generator`` unless given; under
    ``torch.compile(fullgraph=True)`` pass ``eps_v`` / ``eps_t`` (:meth:`noise` draws them)."""

    def __init__(self, num_samples: int = 4, similarity: str = "cosine", *, loss: str = "sdm",
                 scale: float | None = None, learn_scale: bool = False, bias: float | None = None,
                 learn_bias: bool = False, max_scale: float | None = None, intra: bool = True,
                 backend: str = "auto", rank: int | None = None, world_size: int | None = None, group=None):
        super().__init__()
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        self.num_samples = num_samples
        self.similarity = check_choice("similarity", similarity, SIMILARITIES)
        self.loss = check_choice("loss", loss, LOSSES)
        self.intra = bool(intra)
        d_scale, d_bias = pcl_defaults(loss, similarity)
        self._init_common(d_scale if scale is None else scale, learn_scale, d_bias if bias is None else bias,
                          learn_bias, max_scale, backend, rank, world_size, group)

    def noise(self, mu_v: torch.Tensor, mu_t: torch.Tensor, generator: torch.Generator | None = None):
        """``(eps_v, eps_t)``: [B, K, D] standard-normal noise for a batch like ``mu_v`` / ``mu_t``,
        drawn as :meth:`forward` would (outside a compiled graph)."""
        kw = dict(device=mu_v.device, dtype=mu_v.dtype, generator=generator)
        eps_v = torch.randn(mu_v.shape[0], self.num_samples, mu_v.shape[1], **kw)
        eps_t = torch.randn(mu_t.shape[0], self.num_samples, mu_t.shape[1], **kw)
        return eps_v, eps_t

    def forward(self, mu_v, logvar_v, mu_t, logvar_t, labels=None, *, eps_v=None, eps_t=None, generator=None):
        if generator is not None and torch.compiler.is_compiling():
            raise RuntimeError("a torch.Generator cannot be traced by torch.compile: draw the noise outside "
                               "(eps_v, eps_t = loss.noise(mu_v, mu_t, generator)) and pass eps_v=, eps_t=")
        return point_contrast_loss(mu_v, logvar_v, mu_t, logvar_t, labels, num_samples=self.num_samples,
                                   eps_v=eps_v, eps_t=eps_t, generator=generator, similarity=self.similarity,
                                   scale=self.scale.to(mu_v.dtype), bias=self.bias.to(mu_v.dtype), loss=self.loss,
                                   intra=self.intra, backend=self.backend, ctx=self.dist_context())

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, similarity={self.similarity!r}, loss={self.loss!r}, "
                f"intra={self.intra}, {self._common_repr()}")


class PriorKLLoss(nn.Module):
    """Module form of :func:`prior_kl`, over the global batch under a process group (or explicit
    ``rank`` / ``world_size`` / ``group``)."""

    def __init__(self, reduction: str = "mean", *, rank: int | None = None, world_size: int | None = None, group=None):
        super().__init__()
        self.reduction = check_choice("reduction", reduction, ("mean", "sum"))
        self.rank, self.world_size, self.group = rank, world_size, group

    def forward(self, mu, logvar):
        return prior_kl(mu, logvar, self.reduction, ctx=DistContext.resolve(self.rank, self.world_size, self.group))

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
