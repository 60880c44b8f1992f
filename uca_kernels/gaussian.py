r"""Distances between diagonal Gaussians and their GEMM feature maps.

Each modality maps an input to :math:`\mathcal N(\mu, \operatorname{diag}\sigma^2)`; the public
parameterisation is ``(mu, logvar)`` with ``logvar = log σ²``. With :math:`\Delta\mu = \mu_i-\mu_j`:

==========  ==================================================================================
metric      d(i, j)
==========  ==================================================================================
``w2``      ‖Δμ‖² + ‖σᵢ − σⱼ‖²                          (squared 2-Wasserstein)
``kl``      ½ Σ [log σⱼ² − log σᵢ² + (σᵢ² + Δμ²)/σⱼ² − 1]  (KL(Nᵢ ‖ Nⱼ))
``jeffreys``½ Σ [(σᵢ² + Δμ²)/σⱼ² + (σⱼ² + Δμ²)/σᵢ² − 2]   (symmetric KL)
``csd``     ‖Δμ‖² + Σ (σᵢ² + σⱼ²)                       (E‖zᵢ − zⱼ‖², PCME++)
``ce``      ½ Σ [log σⱼ² + (σᵢ² + Δμ²)/σⱼ²]              (cross-entropy H(Nᵢ, Nⱼ) − ½D log 2π)
==========  ==================================================================================

``ce`` is the cross-entropy of Nⱼ relative to Nᵢ, i.e. KL(Nᵢ ‖ Nⱼ) plus the entropy of Nᵢ, without the
constant ½ D log 2π: KL's image-only term −½ Σ log σᵢ² (which, with i = image and j = caption, puts
diffuse images first in every query) is gone, and what remains ranks the images of one caption j by
Σ_d (σᵢ,d² + Δμ_d²) / σⱼ,d²: the caption's σ decides per dimension how much a difference counts.

Every metric is a dot product of per-row maps plus a row and a column term,
``d(i, j) = ⟨a_i, b_j⟩ + r_i + c_j`` (:func:`feature_maps`), which is what the fused kernels consume:

- ``w2``:       a = [μ, σ],                    b = −2[μ, σ],           r = ‖μ‖²+‖σ‖², c = ‖μ‖²+‖σ‖²
- ``kl``:       a = [σ²+μ², μ],                b = ½[1/σ², −2μ/σ²],    r = −½Σlog σ² − D/2,
                c = ½Σ(μ²/σ² + log σ²)
- ``jeffreys``: a = [σ²+μ², μ, 1/σ², μ/σ²],   b = ½[1/σ², −2μ/σ², σ²+μ², −2μ],
                r = ½Σμ²/σ² − D/2,            c = ½Σμ²/σ² − D/2
- ``csd``:      a = μ,                         b = −2μ,                r = ‖μ‖²+Σσ², c = ‖μ‖²+Σσ²
- ``ce``:       a = [σ²+μ², μ],                b = ½[1/σ², −2μ/σ²],    r = 0,
                c = ½Σ(μ²/σ² + log σ²)       (kl without its row term: ½Σ(σᵢ²+μᵢ²)/σⱼ² − Σμᵢμⱼ/σⱼ² + c)

The expanded form cancels catastrophically for close pairs. All five metrics depend on μ only
through Δμ, and ``w2`` on σ only through σᵢ − σⱼ, so the maps first subtract the (detached) batch
mean of the two sides; this changes no distance and no gradient but keeps the cancelling terms
small.
"""

from __future__ import annotations

import torch

from ._validation import check_choice, check_features, check_same_device

__all__ = ["METRICS", "gaussian_distance", "feature_maps", "check_gaussians"]

METRICS = ("w2", "kl", "jeffreys", "csd", "ce")


def check_gaussians(mu_a, logvar_a, mu_b, logvar_b, *, names=("mu_a", "logvar_a", "mu_b", "logvar_b")):
    """Validate two batches of diagonal Gaussians: [M, D] and [N, D], one device, finite."""
    na, nla, nb, nlb = names
    check_same_device(**{na: mu_a, nla: logvar_a, nb: mu_b, nlb: logvar_b})
    check_features(na, mu_a)
    check_features(nla, logvar_a, rows=mu_a.shape[0], cols=mu_a.shape[1])
    check_features(nb, mu_b, cols=mu_a.shape[1])
    check_features(nlb, logvar_b, rows=mu_b.shape[0], cols=mu_b.shape[1])


def gaussian_distance(
    mu_a: torch.Tensor,
    logvar_a: torch.Tensor,
    mu_b: torch.Tensor,
    logvar_b: torch.Tensor,
    metric: str = "w2",
) -> torch.Tensor:
    """Pairwise distance between diagonal Gaussians, from the direct formulas (materialises).

    Args:
        mu_a, logvar_a: [M, D] means and log-variances of the first set.
        mu_b, logvar_b: [N, D] means and log-variances of the second set.
        metric: ``"w2"``, ``"kl"`` (KL(a ‖ b)), ``"jeffreys"``, ``"csd"`` or ``"ce"`` (H(a, b) − ½D log 2π).

    Returns:
        [M, N] distances. Memory is O(M·N·D): this is the oracle, not the fast path.
    """
    check_choice("metric", metric, METRICS)
    check_gaussians(mu_a, logvar_a, mu_b, logvar_b)
    dmu2 = (mu_a[:, None, :] - mu_b[None, :, :]).square()  # [M, N, D]
    var_a, var_b = logvar_a.exp()[:, None, :], logvar_b.exp()[None, :, :]
    if metric == "w2":
        dsig2 = ((0.5 * logvar_a).exp()[:, None, :] - (0.5 * logvar_b).exp()[None, :, :]).square()
        return (dmu2 + dsig2).sum(-1)
    if metric == "kl":
        log_ratio = logvar_b[None, :, :] - logvar_a[:, None, :]
        return 0.5 * (log_ratio + (var_a + dmu2) / var_b - 1.0).sum(-1)
    if metric == "jeffreys":
        return 0.5 * ((var_a + dmu2) / var_b + (var_b + dmu2) / var_a - 2.0).sum(-1)
    if metric == "ce":
        return 0.5 * (logvar_b[None, :, :] + (var_a + dmu2) / var_b).sum(-1)
    return (dmu2 + var_a + var_b).sum(-1)  # csd


def _maps_impl(mu_a, logvar_a, mu_b, logvar_b, metric: str, shift, sshift):
    """The maps as plain differentiable PyTorch (``shift``/``sshift``: detached centres or None)."""
    if shift is not None:
        mu_a, mu_b = mu_a - shift, mu_b - shift
    d = mu_a.shape[1]
    if metric == "w2":
        sig_a, sig_b = (0.5 * logvar_a).exp(), (0.5 * logvar_b).exp()
        if sshift is not None:
            sig_a, sig_b = sig_a - sshift, sig_b - sshift
        A = torch.cat([mu_a, sig_a], 1)
        B = -2.0 * torch.cat([mu_b, sig_b], 1)
        r = mu_a.square().sum(1) + sig_a.square().sum(1)
        c = mu_b.square().sum(1) + sig_b.square().sum(1)
    elif metric in ("kl", "ce"):
        var_a, inv_b = logvar_a.exp(), (-logvar_b).exp()
        A = torch.cat([var_a + mu_a.square(), mu_a], 1)
        B = 0.5 * torch.cat([inv_b, -2.0 * mu_b * inv_b], 1)
        # ce: r = 0, written as a function of the input so that autograd through these maps sees it
        r = -0.5 * logvar_a.sum(1) - 0.5 * d if metric == "kl" else 0.0 * logvar_a.sum(1)
        c = 0.5 * (mu_b.square() * inv_b + logvar_b).sum(1)
    elif metric == "jeffreys":
        var_a, inv_a = logvar_a.exp(), (-logvar_a).exp()
        var_b, inv_b = logvar_b.exp(), (-logvar_b).exp()
        A = torch.cat([var_a + mu_a.square(), mu_a, inv_a, mu_a * inv_a], 1)
        B = 0.5 * torch.cat([inv_b, -2.0 * mu_b * inv_b, var_b + mu_b.square(), -2.0 * mu_b], 1)
        r = 0.5 * (mu_a.square() * inv_a).sum(1) - 0.5 * d
        c = 0.5 * (mu_b.square() * inv_b).sum(1) - 0.5 * d
    else:  # csd
        A, B = mu_a, -2.0 * mu_b
        r = mu_a.square().sum(1) + logvar_a.exp().sum(1)
        c = mu_b.square().sum(1) + logvar_b.exp().sum(1)
    return A, B, r, c


def _centres(mu_a, logvar_a, mu_b, logvar_b, metric: str, center: bool):
    if not center:
        return None, None
    n = mu_a.shape[0] + mu_b.shape[0]
    with torch.no_grad():  # joint means without concatenating the two sides
        shift = (mu_a.sum(0) + mu_b.sum(0)) / n
        sshift = None
        if metric == "w2":
            sshift = ((0.5 * logvar_a).exp().sum(0) + (0.5 * logvar_b).exp().sum(0)) / n
    return shift, sshift


class _FeatureMaps(torch.autograd.Function):
    """The maps with a hand-written backward that saves only the inputs.

    Autograd through :func:`_maps_impl` keeps a dozen [B, D] intermediates alive until the backward
    (about 280 MiB at B = 8192, D = 256 for ``w2``, far more than the fused op itself needs); this
    recomputes the few it needs from (mu, logvar). Gradients (μ̃ = μ − shift, v = σ², iv = 1/v;
    d* are the incoming gradients of A, B, r, c, split into D-wide blocks)::

        w2:   dμa = dA₁ + 2 dr μ̃a         dlogvar_a = (dA₂ + 2 dr σ̃a) σa / 2
              dμb = −2 dB₁ + 2 dc μ̃b      dlogvar_b = (−2 dB₂ + 2 dc σ̃b) σb / 2
        kl:   dμa = 2 dA₁ μ̃a + dA₂        dlogvar_a = dA₁ va − dr / 2
              dμb = −dB₂ ivb + dc μ̃b ivb
              dlogvar_b = −dB₁ ivb / 2 + dB₂ μ̃b ivb + dc (1 − μ̃b² ivb) / 2
        ce:   as kl, but r = 0: dlogvar_a = dA₁ va
        jeffreys: dμa = 2 dA₁ μ̃a + dA₂ + dA₄ iva + dr μ̃a iva
              dlogvar_a = dA₁ va − dA₃ iva − dA₄ μ̃a iva − dr μ̃a² iva / 2
              dμb = −dB₂ ivb + dB₃ μ̃b − dB₄ + dc μ̃b ivb
              dlogvar_b = −dB₁ ivb / 2 + dB₂ μ̃b ivb + dB₃ vb / 2 − dc μ̃b² ivb / 2
        csd:  dμa = dA + 2 dr μ̃a          dlogvar_a = dr va
              dμb = −2 dB + 2 dc μ̃b       dlogvar_b = dc vb
    """

    @staticmethod
    def forward(ctx, mu_a, logvar_a, mu_b, logvar_b, metric, center):
        shift, sshift = _centres(mu_a, logvar_a, mu_b, logvar_b, metric, center)
        ctx.save_for_backward(mu_a, logvar_a, mu_b, logvar_b)
        ctx.metric, ctx.shift, ctx.sshift = metric, shift, sshift
        if metric not in ("w2", "csd") or torch.compiler.is_compiling():  # (dynamo rejects out= views)
            return _maps_impl(mu_a, logvar_a, mu_b, logvar_b, metric, shift, sshift)
        # w2 and csd written straight into A and B (no [B, D] temporaries; same values as _maps_impl)
        D = mu_a.shape[1]
        A = mu_a.new_empty(mu_a.shape[0], _WIDTH[metric] * D)
        B = mu_b.new_empty(mu_b.shape[0], _WIDTH[metric] * D)
        for out, mu, logvar in ((A, mu_a, logvar_a), (B, mu_b, logvar_b)):
            torch.sub(mu, shift, out=out[:, :D]) if shift is not None else out[:, :D].copy_(mu)
            if metric == "w2":
                torch.mul(logvar, 0.5, out=out[:, D:]).exp_()
                if sshift is not None:
                    out[:, D:].sub_(sshift)
        r = torch.linalg.vector_norm(A, dim=1).square_()
        c = torch.linalg.vector_norm(B, dim=1).square_()
        if metric == "csd":
            r.add_(logvar_a.exp().sum(1))
            c.add_(logvar_b.exp().sum(1))
        B.mul_(-2.0)
        return A, B, r, c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dA, dB, dr, dc):
        mu_a, logvar_a, mu_b, logvar_b = ctx.saved_tensors
        metric, shift, sshift = ctx.metric, ctx.shift, ctx.sshift
        D = mu_a.shape[1]
        dA = torch.zeros_like(mu_a).repeat(1, _WIDTH[metric]) if dA is None else dA
        dB = torch.zeros_like(mu_b).repeat(1, _WIDTH[metric]) if dB is None else dB
        dr = (mu_a.new_zeros(mu_a.shape[0]) if dr is None else dr)[:, None]
        dc = (mu_b.new_zeros(mu_b.shape[0]) if dc is None else dc)[:, None]
        ma = mu_a - shift if shift is not None else mu_a
        mb = mu_b - shift if shift is not None else mu_b
        blk = lambda x, k: x[:, k * D:(k + 1) * D]  # noqa: E731
        if metric == "w2":
            # one side at a time, in place, so at most one [B, D] temporary is alive
            dmu_a = torch.addcmul(blk(dA, 0), dr, ma, value=2.0)
            del ma
            sa = (0.5 * logvar_a).exp()
            dlv_a = torch.addcmul(blk(dA, 1), dr, sa, value=2.0)
            if sshift is not None:
                dlv_a.sub_(2.0 * dr * sshift)
            dlv_a.mul_(sa).mul_(0.5)
            del sa
            dmu_b = torch.mul(blk(dB, 0), -2.0).addcmul_(dc, mb, value=2.0)
            del mb
            sb = (0.5 * logvar_b).exp()
            dlv_b = torch.mul(blk(dB, 1), -2.0).addcmul_(dc, sb, value=2.0)
            if sshift is not None:
                dlv_b.sub_(2.0 * dc * sshift)
            dlv_b.mul_(sb).mul_(0.5)
        elif metric in ("kl", "ce"):
            va, ivb = logvar_a.exp(), (-logvar_b).exp()
            dmu_a = torch.addcmul(blk(dA, 1), blk(dA, 0), ma, value=2.0)
            dlv_a = torch.mul(blk(dA, 0), va)
            if metric == "kl":
                dlv_a.sub_(0.5 * dr)
            mivb = mb * ivb
            dmu_b = (dc * mivb).sub_(blk(dB, 1) * ivb)
            dlv_b = (blk(dB, 1) * mivb).addcmul_(blk(dB, 0), ivb, value=-0.5)
            dlv_b.add_(0.5 * dc).addcmul_(dc * mivb, mb, value=-0.5)
        elif metric == "jeffreys":
            va, iva = logvar_a.exp(), (-logvar_a).exp()
            vb, ivb = logvar_b.exp(), (-logvar_b).exp()
            miva, mivb = ma * iva, mb * ivb
            dmu_a = torch.addcmul(blk(dA, 1), blk(dA, 0), ma, value=2.0)
            dmu_a.addcmul_(blk(dA, 3), iva).addcmul_(dr, miva)
            dlv_a = torch.mul(blk(dA, 0), va).addcmul_(blk(dA, 2), iva, value=-1.0)
            dlv_a.addcmul_(blk(dA, 3), miva, value=-1.0).addcmul_(dr * miva, ma, value=-0.5)
            dmu_b = torch.addcmul(blk(dB, 2) * mb, blk(dB, 1), ivb, value=-1.0)
            dmu_b.sub_(blk(dB, 3)).addcmul_(dc, mivb)
            dlv_b = torch.addcmul(blk(dB, 1) * mivb, blk(dB, 0), ivb, value=-0.5)
            dlv_b.addcmul_(blk(dB, 2), vb, value=0.5).addcmul_(dc * mivb, mb, value=-0.5)
        else:  # csd
            dmu_a = torch.addcmul(dA, dr, ma, value=2.0)
            dlv_a = dr * logvar_a.exp()
            dmu_b = torch.addcmul(dB.mul(-2.0), dc, mb, value=2.0)
            dlv_b = dc * logvar_b.exp()
        return dmu_a, dlv_a, dmu_b, dlv_b, None, None


_WIDTH = {"w2": 2, "kl": 2, "jeffreys": 4, "csd": 1, "ce": 2}


def feature_maps(
    mu_a: torch.Tensor,
    logvar_a: torch.Tensor,
    mu_b: torch.Tensor,
    logvar_b: torch.Tensor,
    metric: str = "w2",
    *,
    center: bool = True,
):
    """Maps ``(A, B, r, c)`` with ``A @ B.T + r[:, None] + c[None, :] == gaussian_distance(...)``.

    Args:
        mu_a, logvar_a: [M, D]; mu_b, logvar_b: [N, D].
        metric: one of :data:`METRICS`.
        center: subtract the detached joint batch mean first (exact for every metric; see the
            module docstring). Off only to test the raw expansion.

    Returns:
        A [M, E], B [N, E], r [M], c [N] with E = 2D (w2, kl, ce), 4D (jeffreys) or D (csd).
        Gradients flow back to ``mu`` and ``logvar`` through a hand-written backward that keeps
        only the inputs alive (see :class:`_FeatureMaps`).
    """
    check_choice("metric", metric, METRICS)
    check_gaussians(mu_a, logvar_a, mu_b, logvar_b)
    return _FeatureMaps.apply(mu_a, logvar_a, mu_b, logvar_b, metric, center)
