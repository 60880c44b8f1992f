"""The ``ce`` metric: the cross-entropy H(N_a, N_b) (less ½ D log 2π) between diagonal Gaussians, its
GEMM maps and the fused op's reference backend, in float64."""

from __future__ import annotations

import math

import torch
from torch.distributions import Independent, Normal, kl_divergence

import uca_kernels as uk


def _gaussians(M, N, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    f64 = dict(generator=g, dtype=torch.float64)
    return (torch.randn(M, D, **f64), 0.5 * torch.randn(M, D, **f64),
            torch.randn(N, D, **f64), 0.5 * torch.randn(N, D, **f64))


def _normal(mu, logvar):
    return Independent(Normal(mu, (0.5 * logvar).exp()), 1)


def test_ce_is_kl_plus_the_entropy_of_the_first_argument():
    """H(p, q) = KL(p ‖ q) + H(p); the metric drops the constant ½ D log 2π."""
    mu_a, lv_a, mu_b, lv_b = _gaussians(5, 7, 6)
    pa, pb = _normal(mu_a[:, None], lv_a[:, None]), _normal(mu_b[None], lv_b[None])
    want = kl_divergence(pa, pb) + pa.entropy() - 0.5 * 6 * math.log(2 * math.pi)
    got = uk.gaussian_distance(mu_a, lv_a, mu_b, lv_b, "ce")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # ... and it is the expected negative log-density of a sample of N_a under N_b (Monte Carlo)
    g = torch.Generator().manual_seed(1)
    z = mu_a[0] + (0.5 * lv_a[0]).exp() * torch.randn(200_000, 6, generator=g, dtype=torch.float64)
    nll = -_normal(mu_b[2], lv_b[2]).log_prob(z).mean() - 0.5 * 6 * math.log(2 * math.pi)
    assert abs(float(nll) - float(got[0, 2])) < 0.02 * abs(float(got[0, 2])) + 0.05


def test_ce_maps_reproduce_the_direct_formula():
    mu_a, lv_a, mu_b, lv_b = _gaussians(9, 11, 5, seed=2)
    direct = 0.5 * (lv_b[None] + (lv_a.exp()[:, None] + (mu_a[:, None] - mu_b[None]).square())
                    / lv_b.exp()[None]).sum(-1)
    for center in (True, False):
        A, B, r, c = uk.feature_maps(mu_a, lv_a, mu_b, lv_b, "ce", center=center)
        assert A.shape == (9, 10) and B.shape == (11, 10)
        assert torch.equal(r, torch.zeros_like(r))
        torch.testing.assert_close(A @ B.T + r[:, None] + c[None, :], direct, rtol=1e-10, atol=1e-10)


def test_ce_through_the_fused_op_reference_backend():
    """DCL with metric="ce" is the contrast of −scale·H(image, text) + bias, value and gradients."""
    base = _gaussians(8, 8, 4, seed=3)
    labels = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4])
    leaves = [t.clone().requires_grad_() for t in base]
    got = uk.distribution_contrast_loss(*leaves, labels, metric="ce", loss="sigmoid", scale=0.4, bias=-1.0,
                                        backend="reference")
    leaves2 = [t.clone().requires_grad_() for t in base]
    S = -0.4 * uk.gaussian_distance(*leaves2, "ce") + -1.0
    y = (labels[:, None] == labels[None, :]).double() * 2 - 1
    want = torch.nn.functional.softplus(-y * S).sum() / 8
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for a, b in zip(torch.autograd.grad(got, leaves), torch.autograd.grad(want, leaves2)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_a_captions_sigma_decides_which_dimensions_rank():
    """Two images differ from the caption's mean in one dimension each (0 and 1, by the same amount);
    the caption is vague in dimension 1. ``ce`` ranks the image that differs where the caption is vague
    first; ``csd`` (one σ sum per pair) cannot tell them apart."""
    mu_t = torch.zeros(1, 2, dtype=torch.float64)
    lv_t = torch.tensor([[math.log(0.01), math.log(1.0)]], dtype=torch.float64)  # sure of dim 0, vague in dim 1
    mu_v = torch.tensor([[0.5, 0.0], [0.0, 0.5]], dtype=torch.float64)
    lv_v = torch.full((2, 2), math.log(1e-3), dtype=torch.float64)
    d_ce = uk.gaussian_distance(mu_v, lv_v, mu_t, lv_t, "ce")[:, 0]  # image first, as in training
    assert d_ce[1] < d_ce[0]
    d_csd = uk.gaussian_distance(mu_v, lv_v, mu_t, lv_t, "csd")[:, 0]
    assert torch.allclose(d_csd[0], d_csd[1])
