"""The float64 reference oracle against independent oracles (not against its own formulas)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Independent, Normal, kl_divergence

import uca_kernels as uk
from uca_kernels.contrast import SDM_EPS, contrast_reference



@pytest.fixture(autouse=True)
def _float64():
    """Every tensor in this file is float64 (the oracle's precision)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def gaussians(M, N, D, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(M, D, generator=g) * spread, torch.randn(M, D, generator=g) * 0.5,
            torch.randn(N, D, generator=g) * spread, torch.randn(N, D, generator=g) * 0.5)


def _normal(mu, logvar):
    return Independent(Normal(mu, (0.5 * logvar).exp()), 1)


# -- distances ---------------------------------------------------------------------------------------


def test_kl_matches_torch_distributions():
    mu_a, lv_a, mu_b, lv_b = gaussians(5, 7, 6)
    want = kl_divergence(_normal(mu_a[:, None], lv_a[:, None]), _normal(mu_b[None], lv_b[None]))
    torch.testing.assert_close(uk.gaussian_distance(mu_a, lv_a, mu_b, lv_b, "kl"), want, rtol=1e-12, atol=1e-12)


def test_jeffreys_is_kl_both_ways():
    mu_a, lv_a, mu_b, lv_b = gaussians(4, 6, 5, seed=1)
    pa, pb = _normal(mu_a[:, None], lv_a[:, None]), _normal(mu_b[None], lv_b[None])
    want = kl_divergence(pa, pb) + kl_divergence(pb, pa)
    torch.testing.assert_close(uk.gaussian_distance(mu_a, lv_a, mu_b, lv_b, "jeffreys"), want, rtol=1e-12, atol=1e-12)


def _sqrtm_psd(S):
    w, V = torch.linalg.eigh(S)
    return V @ torch.diag(w.clamp_min(0).sqrt()) @ V.T


def test_w2_matches_general_gaussian_formula():
    """W2² = ‖Δμ‖² + tr(Σ₁ + Σ₂ − 2(Σ₂^½ Σ₁ Σ₂^½)^½), evaluated on full covariance matrices after a
    common random rotation (W2 is rotation-invariant, so the diagonal case must agree)."""
    mu_a, lv_a, mu_b, lv_b = gaussians(3, 4, 5, seed=2)
    Q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(9)))
    got = uk.gaussian_distance(mu_a, lv_a, mu_b, lv_b, "w2")
    for i in range(3):
        for j in range(4):
            S1 = Q @ torch.diag(lv_a[i].exp()) @ Q.T
            S2 = Q @ torch.diag(lv_b[j].exp()) @ Q.T
            r2 = _sqrtm_psd(S2)
            cross = _sqrtm_psd(r2 @ S1 @ r2)
            want = (Q @ (mu_a[i] - mu_b[j])).square().sum() + torch.trace(S1 + S2 - 2 * cross)
            assert math.isclose(got[i, j].item(), want.item(), rel_tol=1e-9, abs_tol=1e-9)


def test_csd_is_expected_squared_distance_monte_carlo():
    mu_a, lv_a, mu_b, lv_b = gaussians(2, 3, 4, seed=3)
    g = torch.Generator().manual_seed(4)
    n = 400_000
    za = mu_a[:, None, None] + (0.5 * lv_a).exp()[:, None, None] * torch.randn(2, 1, n, 4, generator=g)
    zb = mu_b[None, :, None] + (0.5 * lv_b).exp()[None, :, None] * torch.randn(1, 3, n, 4, generator=g)
    mc = (za - zb).square().sum(-1).mean(-1)
    got = uk.gaussian_distance(mu_a, lv_a, mu_b, lv_b, "csd")
    torch.testing.assert_close(got, mc, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("metric", uk.METRICS)
@pytest.mark.parametrize("center", [True, False])
def test_feature_maps_reproduce_distances(metric, center):
    mu_a, lv_a, mu_b, lv_b = gaussians(6, 9, 7, seed=5, spread=3.0)
    A, B, r, c = uk.feature_maps(mu_a, lv_a, mu_b, lv_b, metric, center=center)
    E = {"w2": 14, "kl": 14, "jeffreys": 28, "csd": 7, "ce": 14}[metric]
    assert A.shape == (6, E) and B.shape == (9, E) and r.shape == (6,) and c.shape == (9,)
    torch.testing.assert_close(A @ B.T + r[:, None] + c[None, :], uk.gaussian_distance(mu_a, lv_a, mu_b, lv_b, metric),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("metric", uk.METRICS)
def test_centering_reduces_cancellation_error(metric):
    """Far from the origin, close pairs: centred maps in float32 stay near the float64 distance."""
    mu_a, lv_a, mu_b, lv_b = gaussians(8, 8, 16, seed=6, spread=0.05)
    mu_a, mu_b = mu_a + 100.0, mu_b + 100.0
    want = uk.gaussian_distance(mu_a, lv_a, mu_b, lv_b, metric)
    errs = {}
    for center in (True, False):
        A, B, r, c = uk.feature_maps(*(t.float() for t in (mu_a, lv_a, mu_b, lv_b)), metric, center=center)
        errs[center] = ((A @ B.T + r[:, None] + c[None, :]).double() - want).abs().max().item()
    assert errs[True] < 1e-2 * max(errs[False], 1e-12) or errs[True] < 1e-4 * want.abs().max().item()


# -- losses --------------------------------------------------------------------------------------------


def test_infonce_diagonal_is_clip_cross_entropy_both_ways():
    g = torch.Generator().manual_seed(7)
    A, B = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    r, c = torch.zeros(6), torch.zeros(6)
    rows, cols = uk.contrast(A, B, r, c, 2.0, 0.0, loss="infonce", backend="reference")
    S = 2.0 * A @ B.T
    target = torch.arange(6)
    torch.testing.assert_close(rows, F.cross_entropy(S, target, reduction="none"))
    torch.testing.assert_close(cols, F.cross_entropy(S.T, target, reduction="none"))


def sdm_literal(S, labels_a, labels_b):
    """IRRA's similarity distribution matching, transcribed loop by loop from its definition."""
    M, N = S.shape
    out = torch.zeros(M)
    for i in range(M):
        p = torch.softmax(S[i], 0)
        pos = [j for j in range(N) if labels_a[i] == labels_b[j]]
        for j in range(N):
            q = (1.0 / len(pos)) if j in pos else 0.0
            out[i] += p[j] * (math.log(p[j]) - math.log(q + SDM_EPS))
    return out


def test_sdm_matches_literal_definition():
    g = torch.Generator().manual_seed(8)
    A, B = torch.randn(7, 3, generator=g), torch.randn(5, 3, generator=g)
    r, c = torch.randn(7, generator=g), torch.randn(5, generator=g)
    la = torch.tensor([0, 1, 1, 2, 0, 2, 1])
    lb = torch.tensor([1, 0, 2, 2, 1])
    rows, cols = uk.contrast(A, B, r, c, -0.7, 0.3, la, lb, loss="sdm", backend="reference")
    S = -0.7 * (A @ B.T + r[:, None] + c[None, :]) + 0.3
    torch.testing.assert_close(rows, sdm_literal(S, la, lb))
    torch.testing.assert_close(cols, sdm_literal(S.T, lb, la))


@pytest.mark.parametrize("loss", ["sdm", "infonce"])
def test_exclude_self_equals_dropping_the_diagonal(loss):
    g = torch.Generator().manual_seed(9)
    n = 6
    A = torch.randn(n, 3, generator=g)
    r = torch.randn(n, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    rows, cols = uk.contrast(A, A, r, r, 1.5, 0.0, labels, labels, loss=loss, exclude_self=True, backend="reference")
    S = 1.5 * (A @ A.T + r[:, None] + r[None, :])
    for i in range(n):
        keep = [j for j in range(n) if j != i]
        pos = [k for k, j in enumerate(keep) if labels[j] == labels[i]]
        Si = S[i, keep]
        if not pos:  # a row with no positive contributes nothing
            assert rows[i] == 0
            continue
        if loss == "infonce":
            want = torch.logsumexp(Si, 0) - torch.logsumexp(Si[pos], 0)
        else:
            want = sdm_literal(Si[None], [0], [0 if k in pos else 1 for k in range(n - 1)])[0]
        torch.testing.assert_close(rows[i], want)
    torch.testing.assert_close(rows, cols)  # symmetric S: both directions agree


def test_rows_without_positive_have_zero_loss_and_gradient():
    A = torch.randn(3, 2, requires_grad=True)
    B = torch.randn(4, 2)
    rows, cols = uk.contrast(A, B, torch.zeros(3), torch.zeros(4), 1.0, 0.0, torch.tensor([0, 1, 9]),
                             torch.tensor([0, 1, 1, 5]), loss="infonce", backend="reference")
    assert rows[2] == 0 and cols[3] == 0
    (grad,) = torch.autograd.grad(rows[2] + cols[3], A, allow_unused=True)
    assert grad is None or torch.count_nonzero(grad) == 0


def sigmoid_literal(S, labels_a, labels_b, exclude_self=False):
    """The pairwise sigmoid loss as binary cross-entropy with logits, target 1 for a same-identity
    pair and 0 otherwise (y = 2·target − 1), each valid pair's term summed over rows and columns."""
    y = torch.where(labels_a[:, None] == labels_b[None, :], 1.0, -1.0)
    ell = F.binary_cross_entropy_with_logits(S, (y + 1) / 2, reduction="none")
    if exclude_self:
        ell = ell * (1 - torch.eye(*S.shape))
    return ell.sum(1), ell.sum(0)


@pytest.mark.parametrize("labels", ["none", "repeats", "one", "unique"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_sigmoid_matches_bce_with_logits(labels, exclude_self):
    g = torch.Generator().manual_seed(20)
    M = 7
    N = M if labels == "none" or exclude_self else 5
    A = torch.randn(M, 3, generator=g)
    B = A if exclude_self else torch.randn(N, 3, generator=g)
    r = torch.randn(M, generator=g)
    c = r if exclude_self else torch.randn(N, generator=g)
    la = {"none": None, "repeats": torch.tensor([0, 1, 1, 2, 0, 2, 1]), "one": torch.zeros(M, dtype=torch.long),
          "unique": torch.arange(M)}[labels]
    if la is None or exclude_self:
        lb = la
    else:  # unique: no pair shares an identity (every term a negative)
        lb = torch.arange(N) + 100 if labels == "unique" else la[:N]
    rows, cols = uk.contrast(A, B, r, c, -0.7, 0.3, la, lb, loss="sigmoid", exclude_self=exclude_self,
                             backend="reference")
    S = -0.7 * (A @ B.T + r[:, None] + c[None, :]) + 0.3
    if la is None:
        la = lb = torch.arange(M)
    want_rows, want_cols = sigmoid_literal(S, la, lb, exclude_self)
    torch.testing.assert_close(rows, want_rows, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(cols, want_cols, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(rows.sum(), cols.sum(), rtol=1e-14, atol=1e-14)  # the same pairs, twice


def test_sigmoid_rows_without_positive_keep_their_negative_terms():
    """Unlike the softmax losses, a row (or column) with no positive still has loss and gradient."""
    A = torch.randn(3, 2, requires_grad=True)
    B = torch.randn(4, 2)
    la, lb = torch.tensor([0, 1, 9]), torch.tensor([0, 1, 1, 5])
    rows, cols = uk.contrast(A, B, torch.zeros(3), torch.zeros(4), 1.0, 0.0, la, lb, loss="sigmoid",
                             backend="reference")
    S = A.detach() @ B.T
    torch.testing.assert_close(rows[2], F.softplus(S[2]).sum())  # all negatives: softplus(S)
    torch.testing.assert_close(cols[3], F.softplus(S[:, 3]).sum())
    (grad,) = torch.autograd.grad(rows[2] + cols[3], A)
    assert torch.count_nonzero(grad[2]) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sigmoid_extreme_logits_are_finite_and_exact(dtype):
    """|S| = 1e3: softplus(−yS) is 0 or 1e3 (to rounding) and its slope −y·σ(−yS) is 0 or −y."""
    A = torch.tensor([[1.0], [-1.0], [1.0]], dtype=dtype, requires_grad=True)
    B = torch.tensor([[1.0], [-1.0]], dtype=dtype)
    zeros = torch.zeros(3, dtype=dtype), torch.zeros(2, dtype=dtype)
    scale = torch.tensor(1e3, dtype=dtype, requires_grad=True)
    la, lb = torch.tensor([0, 0, 1]), torch.tensor([0, 1])
    rows, cols = uk.contrast(A, B, *zeros, scale, 0.0, la, lb, loss="sigmoid", backend="reference")
    S = 1e3 * (A.detach() @ B.T).double()  # [[1e3, -1e3], [-1e3, 1e3], [1e3, -1e3]]
    y = torch.where(la[:, None] == lb[None, :], 1.0, -1.0)
    ell = (-y * S).clamp(min=0)  # log1p(e^-1000) = 0 in any precision
    torch.testing.assert_close(rows.double(), ell.sum(1))
    torch.testing.assert_close(cols.double(), ell.sum(0))
    dA, dscale = torch.autograd.grad(rows.sum() * 0.5 + cols.sum() * 2.0, [A, scale])
    dS = 2.5 * -y * (-y * S > 0)  # σ(−yS) is exactly 0 or 1 here
    assert torch.isfinite(dA).all() and torch.isfinite(dscale)
    torch.testing.assert_close(dA.double(), 1e3 * dS @ B.double())
    torch.testing.assert_close(dscale.double(), (dS * (S / 1e3)).sum())


@pytest.mark.parametrize("loss", ["sdm", "infonce", "sigmoid"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_reference_gradcheck(loss, exclude_self):
    g = torch.Generator().manual_seed(10)
    n = 5
    A = torch.randn(n, 3, generator=g, requires_grad=True)
    B = torch.randn(n, 3, generator=g, requires_grad=True)
    r = torch.randn(n, generator=g, requires_grad=True)
    c = torch.randn(n, generator=g, requires_grad=True)
    sc = torch.tensor(-0.8, requires_grad=True)
    bi = torch.tensor(0.2, requires_grad=True)
    la = torch.tensor([0, 1, 0, 2, 1])

    def f(A, B, r, c, sc, bi):
        return contrast_reference(A, B, r, c, sc, bi, la, la, loss, exclude_self)

    assert torch.autograd.gradcheck(f, (A, B, r, c, sc, bi))


# -- the method's losses ---------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", uk.METRICS)
def test_distribution_contrast_equals_contrast_on_distances(metric):
    mu_v, lv_v, mu_t, lv_t = gaussians(6, 6, 4, seed=11)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    got = uk.distribution_contrast_loss(mu_v, lv_v, mu_t, lv_t, labels, metric=metric, loss="sdm", scale=0.3, bias=1.0,
                                        backend="reference")
    S = -0.3 * uk.gaussian_distance(mu_v, lv_v, mu_t, lv_t, metric) + 1.0
    want = sdm_literal(S, labels, labels).mean() + sdm_literal(S.T, labels, labels).mean()
    torch.testing.assert_close(got, want)


def test_distribution_contrast_learnable_scale_and_bias_get_gradients():
    mu_v, lv_v, mu_t, lv_t = gaussians(5, 5, 3, seed=12)
    scale = torch.tensor(0.5, requires_grad=True)
    bias = torch.tensor(0.1, requires_grad=True)
    loss = uk.distribution_contrast_loss(mu_v, lv_v, mu_t, lv_t, scale=scale, bias=bias, backend="reference")
    loss.backward()
    assert scale.grad is not None and scale.grad != 0 and bias.grad is not None
    rows, cols = uk.distribution_contrast_loss(mu_v, lv_v, mu_t, lv_t, reduction="none", backend="reference")
    assert rows.shape == (5,) and cols.shape == (5,)


def test_point_contrast_matches_hand_built_terms():
    mu_v, lv_v, mu_t, lv_t = gaussians(4, 4, 3, seed=13)
    K = 3
    g = torch.Generator().manual_seed(14)
    eps_v, eps_t = torch.randn(4, K, 3, generator=g), torch.randn(4, K, 3, generator=g)
    labels = torch.tensor([5, 5, 6, 7])
    out = uk.point_contrast_loss(mu_v, lv_v, mu_t, lv_t, labels, num_samples=K, eps_v=eps_v, eps_t=eps_t,
                                 scale=10.0, loss="infonce", backend="reference")
    zv = (mu_v[:, None] + (0.5 * lv_v).exp()[:, None] * eps_v).reshape(-1, 3)
    zt = (mu_t[:, None] + (0.5 * lv_t).exp()[:, None] * eps_t).reshape(-1, 3)
    lab = labels.repeat_interleave(K)

    def term(za, zb, exclude_self):
        S = 10.0 * F.normalize(za, dim=1) @ F.normalize(zb, dim=1).T
        pos = lab[:, None] == lab[None, :]
        if exclude_self:
            S = S.masked_fill(torch.eye(len(lab), dtype=torch.bool), float("-inf"))
            pos &= ~torch.eye(len(lab), dtype=torch.bool)
        rows = torch.logsumexp(S, 1) - torch.logsumexp(S.masked_fill(~pos, float("-inf")), 1)
        cols = torch.logsumexp(S, 0) - torch.logsumexp(S.masked_fill(~pos, float("-inf")), 0)
        return rows.mean() + cols.mean()

    torch.testing.assert_close(out["inter"], term(zv, zt, False))
    torch.testing.assert_close(out["intra_image"], term(zv, zv, True))
    torch.testing.assert_close(out["intra_text"], term(zt, zt, True))
    torch.testing.assert_close(out["total"], out["inter"] + out["intra_image"] + out["intra_text"])


@pytest.mark.parametrize("metric", ["w2", "kl"])
def test_distribution_contrast_sigmoid_counts_each_pair_once(metric):
    """mean = Σᵢⱼ ℓᵢⱼ / M (SigLIP's normalisation, not rows mean + cols mean), sum = Σᵢⱼ ℓᵢⱼ,
    none = both per-row vectors; with M != N (text identities of their own)."""
    mu_v, lv_v, mu_t, lv_t = gaussians(6, 4, 3, seed=21)
    la, lt = torch.tensor([0, 0, 1, 2, 2, 3]), torch.tensor([2, 0, 5, 3])
    kw = dict(labels_t=lt, metric=metric, loss="sigmoid", scale=0.6, bias=1.5, backend="reference")
    S = -0.6 * uk.gaussian_distance(mu_v, lv_v, mu_t, lv_t, metric) + 1.5
    want_rows, want_cols = sigmoid_literal(S, la, lt)
    torch.testing.assert_close(uk.distribution_contrast_loss(mu_v, lv_v, mu_t, lv_t, la, **kw), want_rows.sum() / 6)
    torch.testing.assert_close(uk.distribution_contrast_loss(mu_v, lv_v, mu_t, lv_t, la, reduction="sum", **kw),
                               want_rows.sum())
    rows, cols = uk.distribution_contrast_loss(mu_v, lv_v, mu_t, lv_t, la, reduction="none", **kw)
    torch.testing.assert_close(rows, want_rows)
    torch.testing.assert_close(cols, want_cols)


def test_distribution_contrast_sigmoid_gradients_match_the_literal_loss():
    base = gaussians(5, 5, 3, seed=22)
    labels = torch.tensor([0, 1, 1, 2, 0])
    scale, bias = torch.tensor(2.0, requires_grad=True), torch.tensor(-1.0, requires_grad=True)
    leaves = [t.clone().requires_grad_() for t in base]
    got = uk.distribution_contrast_loss(*leaves, labels, metric="csd", loss="sigmoid", scale=scale, bias=bias,
                                        backend="reference")
    grads = torch.autograd.grad(got, [*leaves, scale, bias])
    leaves2 = [t.clone().requires_grad_() for t in base]
    scale2, bias2 = torch.tensor(2.0, requires_grad=True), torch.tensor(-1.0, requires_grad=True)
    S = -scale2 * uk.gaussian_distance(*leaves2, "csd") + bias2
    want = sigmoid_literal(S, labels, labels)[0].sum() / 5
    want_grads = torch.autograd.grad(want, [*leaves2, scale2, bias2])
    torch.testing.assert_close(got, want)
    for x, y in zip(grads, want_grads):
        torch.testing.assert_close(x, y)


def test_point_contrast_sigmoid_matches_hand_built_terms():
    mu_v, lv_v, mu_t, lv_t = gaussians(4, 4, 3, seed=23)
    K = 2
    g = torch.Generator().manual_seed(24)
    eps_v, eps_t = torch.randn(4, K, 3, generator=g), torch.randn(4, K, 3, generator=g)
    labels = torch.tensor([5, 5, 6, 7])
    out = uk.point_contrast_loss(mu_v, lv_v, mu_t, lv_t, labels, num_samples=K, eps_v=eps_v, eps_t=eps_t,
                                 scale=10.0, bias=-10.0, loss="sigmoid", backend="reference")
    zv = (mu_v[:, None] + (0.5 * lv_v).exp()[:, None] * eps_v).reshape(-1, 3)
    zt = (mu_t[:, None] + (0.5 * lv_t).exp()[:, None] * eps_t).reshape(-1, 3)
    lab = labels.repeat_interleave(K)

    def term(za, zb, exclude_self):
        S = 10.0 * F.normalize(za, dim=1) @ F.normalize(zb, dim=1).T - 10.0
        return sigmoid_literal(S, lab, lab, exclude_self)[0].sum() / len(lab)

    torch.testing.assert_close(out["inter"], term(zv, zt, False))
    torch.testing.assert_close(out["intra_image"], term(zv, zv, True))
    torch.testing.assert_close(out["intra_text"], term(zt, zt, True))


def test_point_contrast_bias_does_not_change_softmax_losses():
    mu_v, lv_v, mu_t, lv_t = gaussians(3, 3, 2, seed=25)
    kw = dict(num_samples=2, generator=None, loss="infonce", backend="reference")
    a = uk.point_contrast_loss(mu_v, lv_v, mu_t, lv_t, eps_v=torch.ones(3, 2, 2), eps_t=torch.ones(3, 2, 2), **kw)
    b = uk.point_contrast_loss(mu_v, lv_v, mu_t, lv_t, eps_v=torch.ones(3, 2, 2), eps_t=torch.ones(3, 2, 2),
                               bias=-7.0, **kw)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_modules_accept_the_sigmoid_loss():
    mu_v, lv_v, mu_t, lv_t = gaussians(4, 4, 3, seed=26)
    dcl = uk.DistributionContrastLoss(metric="w2", loss="sigmoid", scale=10.0, learn_scale=True, bias=-10.0,
                                      learn_bias=True, backend="reference")
    got = dcl(mu_v, lv_v, mu_t, lv_t)
    want = uk.distribution_contrast_loss(mu_v, lv_v, mu_t, lv_t, loss="sigmoid", scale=10.0, bias=-10.0,
                                         backend="reference")
    torch.testing.assert_close(got, want)
    got.backward()
    assert dcl.log_scale.grad is not None and dcl.bias.grad is not None
    pcl = uk.PointContrastLoss(num_samples=2, loss="sigmoid", backend="reference")
    out = pcl(mu_v, lv_v, mu_t, lv_t, generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in out.values())


def test_point_contrast_euclidean_and_generator_reproducible():
    mu_v, lv_v, mu_t, lv_t = gaussians(3, 3, 2, seed=15)
    a = uk.point_contrast_loss(mu_v, lv_v, mu_t, lv_t, num_samples=2, similarity="euclidean",
                               generator=torch.Generator().manual_seed(1), backend="reference")
    b = uk.point_contrast_loss(mu_v, lv_v, mu_t, lv_t, num_samples=2, similarity="euclidean",
                               generator=torch.Generator().manual_seed(1), backend="reference")
    assert torch.equal(a["total"], b["total"]) and torch.isfinite(a["total"])
    off = uk.point_contrast_loss(mu_v, lv_v, mu_t, lv_t, num_samples=2, intra=False,
                                 generator=torch.Generator().manual_seed(1), backend="reference")
    assert off["intra_image"] == 0 and off["intra_text"] == 0 and off["total"] == off["inter"]


def test_prior_kl_matches_torch_distributions():
    mu, lv, _, _ = gaussians(4, 1, 3, seed=16)
    want = kl_divergence(_normal(mu, lv), _normal(torch.zeros_like(mu), torch.zeros_like(lv)))
    torch.testing.assert_close(uk.prior_kl(mu, lv, reduction="none"), want)
    torch.testing.assert_close(uk.prior_kl(mu, lv), want.mean())


def test_modules_wrap_the_functions():
    mu_v, lv_v, mu_t, lv_t = gaussians(4, 4, 3, seed=17)
    dcl = uk.DistributionContrastLoss(metric="kl", loss="infonce", scale=0.4, learn_scale=True)
    want = uk.distribution_contrast_loss(mu_v, lv_v, mu_t, lv_t, metric="kl", loss="infonce", scale=0.4)
    got = dcl(mu_v, lv_v, mu_t, lv_t)
    torch.testing.assert_close(got, want)
    got.backward()
    assert dcl.log_scale.grad is not None
    pcl = uk.PointContrastLoss(num_samples=2)
    out = pcl(mu_v, lv_v, mu_t, lv_t, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"inter", "intra_image", "intra_text", "total"}


@pytest.mark.parametrize("metric", uk.METRICS)
@pytest.mark.parametrize("center", [True, False])
def test_feature_map_backward_matches_autograd(metric, center):
    """The hand-written backward of the maps equals autograd through the plain formulas, and passes
    gradcheck."""
    from uca_kernels.gaussian import _centres, _maps_impl

    base = gaussians(5, 4, 3, seed=18, spread=2.0)
    g = torch.Generator().manual_seed(19)
    outs = uk.feature_maps(*base, metric, center=center)
    cot = [torch.randn(o.shape, generator=g) for o in outs]
    leaves = [t.clone().requires_grad_() for t in base]
    got = torch.autograd.grad(uk.feature_maps(*leaves, metric, center=center), leaves, cot)
    leaves2 = [t.clone().requires_grad_() for t in base]
    want = torch.autograd.grad(_maps_impl(*leaves2, metric, *_centres(*base, metric, center)), leaves2, cot)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    leaves3 = [t.clone().requires_grad_() for t in base]
    assert torch.autograd.gradcheck(lambda *t: uk.feature_maps(*t, metric, center=False), leaves3)


def test_sigmoid_modules_start_from_siglip():
    """loss='sigmoid' defaults: points on cosine start from SigLIP's 10·cos − 10; distributions from
    −5·d + 0, the same logits for unit μ and small σ (d ≈ 2 − 2 cos); softmax defaults unchanged."""
    pcl = uk.PointContrastLoss(loss="sigmoid", learn_scale=True, learn_bias=True)
    assert float(pcl.scale.detach()) == pytest.approx(10.0) and float(pcl.bias.detach()) == -10.0
    assert isinstance(pcl.bias, torch.nn.Parameter) and isinstance(pcl.log_scale, torch.nn.Parameter)
    dcl = uk.DistributionContrastLoss(metric="csd", loss="sigmoid")
    assert float(dcl.scale) == pytest.approx(5.0) and float(dcl.bias) == 0.0
    assert float(uk.DistributionContrastLoss().scale) == pytest.approx(1.0)
    assert float(uk.PointContrastLoss().scale) == pytest.approx(50.0) and float(uk.PointContrastLoss().bias) == 0.0
    # the module's bias reaches the loss: same value as the function with SigLIP's start
    mu_v, lv_v, mu_t, lv_t = gaussians(4, 4, 3, seed=27)
    g = torch.Generator().manual_seed(3)
    got = uk.PointContrastLoss(num_samples=2, loss="sigmoid", backend="reference")(mu_v, lv_v, mu_t, lv_t, generator=g)
    want = uk.point_contrast_loss(mu_v, lv_v, mu_t, lv_t, num_samples=2, loss="sigmoid", scale=10.0, bias=-10.0,
                                  generator=torch.Generator().manual_seed(3), backend="reference")
    torch.testing.assert_close(got["total"], want["total"])
    u = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    v = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    tiny = torch.full((6, 8), -20.0)
    d = uk.gaussian_distance(u, tiny, v, tiny, "csd")
    torch.testing.assert_close(-5.0 * d, 10.0 * (u @ v.T) - 10.0, rtol=0, atol=1e-6)
