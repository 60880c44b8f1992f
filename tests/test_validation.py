"""Bad input gets a ValueError/TypeError that names the argument and the problem."""

from __future__ import annotations

import pytest
import torch

import uca_kernels as uk


def g4(M=4, N=4, D=3, dtype=torch.float32):
    return torch.randn(M, D, dtype=dtype), torch.randn(M, D, dtype=dtype), torch.randn(N, D, dtype=dtype), torch.randn(N, D, dtype=dtype)


def contrast_args(M=4, N=4, E=3):
    return torch.randn(M, E), torch.randn(N, E), torch.zeros(M), torch.zeros(N)


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda a: a.__setitem__(1, a[1][:, :2]), ValueError, "logvar_v has 2 columns"),
        (lambda a: a.__setitem__(slice(2, 4), [torch.randn(5, 3), torch.randn(5, 3)]), ValueError,
         "image and text batches differ"),
        (lambda a: a.__setitem__(0, a[0].long()), TypeError, "mu_v must have a floating-point dtype"),
        (lambda a: a.__setitem__(0, a[0][0]), ValueError, "mu_v must be 2-D"),
        (lambda a: a.__setitem__(0, torch.empty(0, 3)), ValueError, "mu_v is an empty batch"),
        (lambda a: a.__setitem__(0, a[0].clone().fill_(float("nan"))), ValueError, "mu_v contains 12 non-finite"),
        (lambda a: a.__setitem__(3, a[3].clone().index_fill_(0, torch.tensor([1]), float("inf"))), ValueError,
         "logvar_t contains 3 non-finite"),
        (lambda a: a.__setitem__(0, [[1.0]]), TypeError, "mu_v must be a torch.Tensor"),
        (lambda a: a.__setitem__(2, a[2].to("meta")), ValueError, "one device"),
    ],
)
def test_distribution_contrast_rejects_bad_gaussians(mutate, exc, match):
    args = list(g4())
    mutate(args)
    with pytest.raises(exc, match=match):
        uk.distribution_contrast_loss(*args)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(metric="wasserstein"), ValueError, "metric='wasserstein' is not one of"),
        (dict(loss="triplet"), ValueError, "loss='triplet' is not one of"),
        (dict(reduction="avg"), ValueError, "reduction='avg'"),
        (dict(labels=torch.tensor([0.0, 1.0, 2.0, 3.0])), TypeError, "labels must have an integer dtype"),
        (dict(labels=torch.tensor([True, False, True, True])), TypeError, "labels must have an integer dtype"),
        (dict(labels=torch.tensor([0, 1, 2])), ValueError, r"labels must have shape \[4\]"),
        (dict(scale=float("nan")), ValueError, "scale=nan is not finite"),
        (dict(scale=torch.ones(2)), ValueError, "scale must be a number or a 0-d tensor"),
        (dict(scale="big"), TypeError, "scale must be a number"),
        (dict(backend="gpu"), ValueError, "backend='gpu' is not a backend"),
        (dict(labels_t=torch.tensor([0, 1, 2, 3])), ValueError, "labels_t given without labels"),
    ],
)
def test_distribution_contrast_rejects_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        uk.distribution_contrast_loss(*g4(), **kwargs)


def test_gaussian_distance_rejects_mismatched_dims():
    mu_a, lv_a, mu_b, lv_b = g4()
    with pytest.raises(ValueError, match="mu_b has 2 columns, expected 3"):
        uk.gaussian_distance(mu_a, lv_a, mu_b[:, :2], lv_b[:, :2], "w2")
    with pytest.raises(ValueError, match="metric='l2'"):
        uk.gaussian_distance(mu_a, lv_a, mu_b, lv_b, "l2")


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (dict(A=torch.randn(4, 3, dtype=torch.float64)), TypeError, "A and B must share a dtype"),
        (dict(r=torch.zeros(5)), ValueError, "r has 5 rows, expected 4"),
        (dict(c=torch.zeros(4, 1)), ValueError, "c must be 1-D"),
        (dict(B=torch.randn(4, 2)), ValueError, "B has 2 columns, expected 3"),
        (dict(labels_a=torch.arange(4)), ValueError, "labels_a and labels_b must both be given"),
        (dict(loss="ce"), ValueError, "loss='ce'"),
        (dict(B=torch.randn(5, 3), c=torch.zeros(5)), ValueError, "diagonal positives .* need M == N"),
        (dict(backend=3), TypeError, "backend must be a string"),
    ],
)
def test_contrast_rejects_bad_input(change, exc, match):
    A, B, r, c = contrast_args()
    kw = dict(A=A, B=B, r=r, c=c)
    kw.update(change)
    with pytest.raises(exc, match=match):
        uk.contrast(**kw)


def test_explicit_backend_that_cannot_run_lists_its_reasons():
    A, B, r, c = contrast_args()
    with pytest.raises(ValueError, match="backend backend='cuda' cannot run these inputs: .*needs CUDA tensors"):
        uk.contrast(A, B, r, c, backend="cuda")


def test_env_backend_is_honoured_and_checked(monkeypatch):
    A, B, r, c = contrast_args()
    monkeypatch.setenv("UCA_BACKEND", "cuda")
    with pytest.raises(ValueError, match="UCA_BACKEND='cuda'"):
        uk.contrast(A, B, r, c)
    monkeypatch.setenv("UCA_BACKEND", "reference")
    rows, _ = uk.contrast(A, B, r, c)
    assert rows.shape == (4,)


def test_unknown_backend_names_where_it_came_from(monkeypatch):
    """UCA_BACKEND=gpu (not a backend) names the variable; backend='gpu' names the argument."""
    A, B, r, c = contrast_args()
    monkeypatch.setenv("UCA_BACKEND", "gpu")
    with pytest.raises(ValueError, match=r"UCA_BACKEND='gpu' is not a backend; choose 'auto' or one of .*'cpu'"):
        uk.contrast(A, B, r, c)
    monkeypatch.delenv("UCA_BACKEND")
    with pytest.raises(ValueError, match=r"backend='gpu' is not a backend"):
        uk.contrast(A, B, r, c, backend="gpu")


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(num_samples=0), ValueError, "num_samples must be an integer >= 1"),
        (dict(num_samples=2.0), ValueError, "num_samples must be an integer >= 1"),
        (dict(similarity="dot"), ValueError, "similarity='dot'"),
        (dict(num_samples=2, eps_v=torch.randn(4, 3, 3)), ValueError, r"eps_v must have shape \(4, 2, 3\)"),
        (dict(num_samples=2, eps_t=torch.full((4, 2, 3), float("nan"))), ValueError, "eps_t contains"),
    ],
)
def test_point_contrast_rejects_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        uk.point_contrast_loss(*g4(), **kwargs)


def test_point_contrast_rejects_batch_mismatch():
    mu_v, lv_v, _, _ = g4()
    _, _, mu_t, lv_t = g4(N=5)
    with pytest.raises(ValueError, match="same batch size"):
        uk.point_contrast_loss(mu_v, lv_v, mu_t, lv_t)


def test_prior_kl_and_modules_reject_bad_input():
    with pytest.raises(ValueError, match="logvar has 4 rows, expected 3"):
        uk.prior_kl(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        uk.DistributionContrastLoss(scale=-1.0)
    with pytest.raises(ValueError, match="num_samples"):
        uk.PointContrastLoss(num_samples=0)


def test_finite_check_can_be_switched_off(monkeypatch):
    args = list(g4())
    args[0][0, 0] = float("nan")
    monkeypatch.setenv("UCA_CHECK_FINITE", "0")
    out = uk.distribution_contrast_loss(*args, backend="reference")
    assert torch.isnan(out)
