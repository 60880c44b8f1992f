"""Training and ranking use one Gaussian distance per (image, caption) pair, in one direction.

DCL's logit of (image j, caption i) is −scale·d(N_v_j, N_t_i) (images are the rows); the retrieval
score of caption i against image j must be −d(N_v_j, N_t_i) too -- for the asymmetric ``kl`` that is
KL(image ‖ text) in both.
"""

from __future__ import annotations

import pytest
import torch

import uca_kernels as uk
from uca_model.evaluation import score_fn
from uca_model.metrics import GaussianScores, gaussian_scores

N_IMG, N_TXT, D = 7, 11, 5


def _gaussians(n, seed):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, D, generator=g, dtype=torch.float64)
    return mu, 0.8 * torch.randn(n, D, generator=g, dtype=torch.float64)


def _training_distance(mu_v, lv_v, mu_t, lv_t, metric):
    """[images, texts]: the distance DCL's logits are made of (what distribution_contrast_loss feeds)."""
    return uk.gaussian_distance(mu_v, lv_v, mu_t, lv_t, metric)


@pytest.mark.parametrize("metric", uk.METRICS)
def test_dcl_logits_are_minus_scale_times_the_image_first_distance(metric):
    # distribution_contrast_loss is the contrast of S = −scale·d(image, text) + bias, images as rows:
    # feed that S through an identity feature map (A = S, B = I) and compare both directions
    mu_v, lv_v = _gaussians(N_IMG, 0)
    mu_t, lv_t = _gaussians(N_IMG, 1)  # square batch: a transposed d would also fit the shapes
    labels = torch.tensor([0, 1, 0, 2, 3, 1, 4])
    scale = 0.7
    rows, cols = uk.distribution_contrast_loss(mu_v, lv_v, mu_t, lv_t, labels, metric=metric, loss="infonce",
                                               scale=scale, reduction="none", backend="reference")
    d = _training_distance(mu_v, lv_v, mu_t, lv_t, metric)
    eye, zero = torch.eye(N_IMG, dtype=d.dtype), torch.zeros(N_IMG, dtype=d.dtype)
    want_rows, want_cols = uk.contrast(d, eye, zero, zero, -scale, 0.0, labels, labels, loss="infonce",
                                       backend="reference")
    torch.testing.assert_close(rows, want_rows, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(cols, want_cols, rtol=1e-9, atol=1e-9)
    # the same maps the loss uses reproduce that distance
    A, B, r, c = uk.feature_maps(mu_v, lv_v, mu_t, lv_t, metric)
    torch.testing.assert_close(A @ B.T + r[:, None] + c[None, :], d, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("metric", uk.METRICS)
def test_evaluation_score_is_minus_the_training_pair_distance(metric):
    mu_v, lv_v = _gaussians(N_IMG, 2)
    mu_t, lv_t = _gaussians(N_TXT, 3)
    d = _training_distance(mu_v, lv_v, mu_t, lv_t, metric)  # [images, texts]
    txt, img = {"mu": mu_t, "logvar": lv_t}, {"mu": mu_v, "logvar": lv_v}
    fn = score_fn(txt, img, "distance", metric)
    s = fn(0, N_TXT)  # [captions, images]
    assert s.shape == (N_TXT, N_IMG)
    torch.testing.assert_close(s, -d.T, rtol=1e-9, atol=1e-9)  # s[i, j] == -d[j, i]
    # chunk by chunk, as retrieval_metrics calls it
    torch.testing.assert_close(torch.cat([fn(a, min(N_TXT, a + 4)) for a in range(0, N_TXT, 4)]), -d.T,
                               rtol=1e-9, atol=1e-9)
    # the exact formulas on small tiles agree with the GEMM form evaluation uses
    for method in ("direct", "gemm"):
        tiled = GaussianScores(mu_t, lv_t, mu_v, lv_v, metric, first="gallery", method=method, max_elements=20)
        torch.testing.assert_close(tiled(0, N_TXT), -d.T, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gaussian_scores(mu_t, lv_t, mu_v, lv_v, metric, chunk_size=3, first="gallery"), -d.T,
                               rtol=1e-9, atol=1e-9)


def test_kl_is_asymmetric_so_the_direction_matters():
    mu_v, lv_v = _gaussians(N_IMG, 2)
    mu_t, lv_t = _gaussians(N_TXT, 3)
    image_first = -_training_distance(mu_v, lv_v, mu_t, lv_t, "kl").T
    text_first = GaussianScores(mu_t, lv_t, mu_v, lv_v, "kl")(0, N_TXT)  # KL(text ‖ image)
    assert not torch.allclose(image_first, text_first, rtol=1e-3, atol=1e-3)
    evaluated = score_fn({"mu": mu_t, "logvar": lv_t}, {"mu": mu_v, "logvar": lv_v}, "distance", "kl")(0, N_TXT)
    torch.testing.assert_close(evaluated, image_first, rtol=1e-9, atol=1e-9)


def test_gaussian_scores_rejects_a_bad_first():
    mu, lv = _gaussians(3, 0)
    with pytest.raises(ValueError, match="first='text' is not 'query' or 'gallery'"):
        GaussianScores(mu, lv, mu, lv, "kl", first="text")
