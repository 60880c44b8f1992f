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
==========  ==================================================================================

Every metric is a dot product of per-row maps plus a row and a column term,
``d(i, j) = ⟨a_i, b_j⟩ + r_i + c_j`` (:func:`feature_maps`), which is what the fused kernels consume:

- ``w2``:       a = [μ, σ],                    b = −2[μ, σ],           r = ‖μ‖²+‖σ‖², c = ‖μ‖²+‖σ‖²
- ``kl``:       a = [σ²+μ², μ],                b = ½[1/σ², −2μ/σ²],    r = −½Σlog σ² − D/2,
                c = ½Σ(μ²/σ² + log σ²)
- ``jeffreys``: a = [σ²+μ², μ, 1/σ², μ/σ²],   b = ½[1/σ², −2μ/σ², σ²+μ², −2μ],
                r = ½Σμ²/σ² − D/2,            c = ½Σμ²/σ² − D/2
- ``csd``:      a = μ,                         b = −2μ,                r = ‖μ‖²+Σσ², c = ‖μ‖²+Σσ²

The expanded form cancels catastrophically for close pairs. All four metrics depend on μ only
through Δμ, and ``w2`` on σ only through σᵢ − σⱼ, so the maps first subtract the (detached) batch
mean of the two sides; this changes no distance and no gradient but keeps the cancelling terms
small.
"""

from __future__ import annotations

import torch

from ._validation import check_choice, check_features, check_same_device

__all__ = ["METRICS", "gaussian_distance", "feature_maps", "check_gaussians"]

METRICS = ("w2", "kl", "jeffreys", "csd")


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
        metric: ``"w2"``, ``"kl"`` (KL(a ‖ b)), ``"jeffreys"`` or ``"csd"``.

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
    return (dmu2 + var_a + var_b).sum(-1)  # csd


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
        A [M, E], B [N, E], r [M], c [N] with E = 2D (w2, kl), 4D (jeffreys) or D (csd).
        Ordinary autograd flows from them back to ``mu`` and ``logvar``.
    """
    check_choice("metric", metric, METRICS)
    check_gaussians(mu_a, logvar_a, mu_b, logvar_b)
    if center:
        shift = torch.cat([mu_a, mu_b]).mean(0).detach()
        mu_a, mu_b = mu_a - shift, mu_b - shift
    d = mu_a.shape[1]
    if metric == "w2":
        sig_a, sig_b = (0.5 * logvar_a).exp(), (0.5 * logvar_b).exp()
        if center:
            sshift = torch.cat([sig_a, sig_b]).mean(0).detach()
            sig_a, sig_b = sig_a - sshift, sig_b - sshift
        A = torch.cat([mu_a, sig_a], 1)
        B = -2.0 * torch.cat([mu_b, sig_b], 1)
        r = mu_a.square().sum(1) + sig_a.square().sum(1)
        c = mu_b.square().sum(1) + sig_b.square().sum(1)
    elif metric == "kl":
        var_a, inv_b = logvar_a.exp(), (-logvar_b).exp()
        A = torch.cat([var_a + mu_a.square(), mu_a], 1)
        B = 0.5 * torch.cat([inv_b, -2.0 * mu_b * inv_b], 1)
        r = -0.5 * logvar_a.sum(1) - 0.5 * d
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
