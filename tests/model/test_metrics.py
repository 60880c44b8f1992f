"""Retrieval metrics: hand-computed cases, the tie rule, agreement with a per-query brute force,
chunking, score callables and the Gaussian / cosine gallery ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import uca_kernels
from uca_model import metrics
from uca_model.metrics import (
    CHUNK_ELEMENTS,
    CosineScores,
    GaussianScores,
    cosine_scores,
    gaussian_scores,
    retrieval_metrics,
)


def brute_force(scores: np.ndarray, qp: np.ndarray, gp: np.ndarray, ties: str = "pessimistic",
                ks=(1, 5, 10)) -> dict[str, float]:
    """Per-query reference: sort each row by (score desc, tie key, index) and read the ranks."""
    hits = np.zeros(len(ks))
    ap = inp = 0.0
    for i in range(scores.shape[0]):
        pos = gp == qp[i]
        tie_key = (lambda j: int(pos[j])) if ties == "pessimistic" else (lambda j: int(not pos[j]))
        order = sorted(range(len(gp)), key=lambda j: (-scores[i, j], tie_key(j), j))
        ranks = np.nonzero(pos[order])[0] + 1
        hits += np.array([ranks[0] <= k for k in ks])
        ap += np.mean(np.arange(1, len(ranks) + 1) / ranks)
        inp += len(ranks) / ranks[-1]
    q = scores.shape[0]
    out = {f"R{k}": 100 * h / q for k, h in zip(ks, hits)}
    out.update(mAP=100 * ap / q, mINP=100 * inp / q)
    return out


def assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-9), (k, a, b)


# -- hand-computed ---------------------------------------------------------------------------


def test_hand_computed_case():
    gallery = [1, 2, 1, 3]
    queries = [1, 3]
    s = torch.tensor([[0.9, 0.8, 0.1, 0.5],   # positives g0, g2 at ranks 1 and 4
                      [0.2, 0.9, 0.3, 0.1]])  # positive g3 at rank 4
    m = retrieval_metrics(s, query_pids=queries, gallery_pids=gallery)
    # q0: hit@1, AP = (1/1 + 2/4)/2 = 0.75, INP = 2/4; q1: hit@5, AP = 1/4, INP = 1/4
    assert m == pytest.approx({"R1": 50.0, "R5": 100.0, "R10": 100.0, "mAP": 50.0, "mINP": 37.5})
    d = retrieval_metrics(distances=-s, query_pids=queries, gallery_pids=gallery)
    assert d == pytest.approx(m)
    m2 = retrieval_metrics(s.numpy(), query_pids=np.array(queries), gallery_pids=np.array(gallery), ks=(1, 2, 3))
    assert m2["R2"] == pytest.approx(50.0) and m2["R3"] == pytest.approx(50.0)


def test_ties_pessimistic_and_optimistic_by_hand():
    # gallery: two positives and one negative tied at 5, one negative at 7
    g = [0, 1, 0, 2]
    s = torch.tensor([[5.0, 5.0, 5.0, 7.0]])
    pes = retrieval_metrics(s, query_pids=[0], gallery_pids=g)
    # order: neg7, neg5, pos, pos -> ranks 3, 4
    assert pes["R1"] == 0.0 and pes["R5"] == 100.0
    assert pes["mAP"] == pytest.approx(100 * (1 / 3 + 2 / 4) / 2)
    assert pes["mINP"] == pytest.approx(100 * 2 / 4)
    opt = retrieval_metrics(s, query_pids=[0], gallery_pids=g, ties="optimistic")
    # order: neg7, pos, pos, neg5 -> ranks 2, 3
    assert opt["mAP"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    assert opt["mINP"] == pytest.approx(100 * 2 / 3)


def test_constant_scores_are_worst_case_and_independent_of_gallery_order():
    g = torch.tensor([3, 1, 2, 0, 4])
    s = torch.zeros(5, 5)
    m = retrieval_metrics(s, query_pids=torch.arange(5), gallery_pids=g)
    assert m["R1"] == 0.0 and m["mAP"] == pytest.approx(100 / 5)
    perm = torch.tensor([4, 2, 0, 1, 3])
    assert retrieval_metrics(s[:, perm], query_pids=torch.arange(5), gallery_pids=g[perm]) == m
    assert retrieval_metrics(s, query_pids=torch.arange(5), gallery_pids=g, ties="optimistic")["R1"] == 100.0


# -- brute-force agreement -------------------------------------------------------------------


@st.composite
def retrieval_problem(draw):
    n_ids = draw(st.integers(1, 5))
    G = draw(st.integers(1, 25))
    gp = np.array(draw(st.lists(st.integers(0, n_ids - 1), min_size=G, max_size=G)))
    Q = draw(st.integers(1, 12))
    qp = np.array(draw(st.lists(st.sampled_from(sorted(set(gp.tolist()))), min_size=Q, max_size=Q)))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["normal", "ints", "infs"]))
    if kind == "normal":
        s = rng.normal(size=(Q, G)).astype(np.float32)
    else:  # few distinct values: many ties
        s = rng.integers(0, 3, (Q, G)).astype(np.float32)
        if kind == "infs":
            s[rng.random((Q, G)) < 0.3] = np.inf
            s[rng.random((Q, G)) < 0.3] = -np.inf
    chunk = draw(st.integers(1, Q + 2))
    ties = draw(st.sampled_from(["pessimistic", "optimistic"]))
    return s, qp, gp, chunk, ties


@pytest.fixture(params=["compare", "searchsorted"])
def count_path(request, monkeypatch):
    """Run a test through both ways of counting the items above each positive."""
    monkeypatch.setattr(metrics, "_COMPARE_MAX_P", 16 if request.param == "compare" else 0)
    return request.param


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=retrieval_problem())
def test_agrees_with_brute_force(problem, count_path):
    s, qp, gp, chunk, ties = problem
    got = retrieval_metrics(torch.from_numpy(s), query_pids=qp, gallery_pids=gp, chunk_size=chunk, ties=ties)
    assert_close(got, brute_force(s.astype(np.float64), qp, gp, ties))


def test_agrees_with_brute_force_larger_random(count_path):
    rng = np.random.default_rng(1)
    gp = rng.integers(0, 40, 300)
    gp[:40] = 7  # one identity with many positives (more than the comparison path takes)
    qp = rng.choice(gp, 120)
    s = rng.normal(size=(120, 300)).astype(np.float32)
    s[:, :50] = np.round(s[:, :50])  # a block of ties
    for ties in ("pessimistic", "optimistic"):
        assert_close(retrieval_metrics(s, query_pids=qp, gallery_pids=gp, ties=ties, chunk_size=17),
                     brute_force(s.astype(np.float64), qp, gp, ties))


# -- chunking and callables ------------------------------------------------------------------


def test_chunk_size_and_callable_give_identical_results():
    torch.manual_seed(0)
    gp = torch.randint(0, 30, (200,))
    qp = gp[torch.randint(0, 200, (90,))]
    s = torch.randn(90, 200)
    ref = retrieval_metrics(s, query_pids=qp, gallery_pids=gp)
    for c in (1, 7, 90, 1000):
        assert retrieval_metrics(s, query_pids=qp, gallery_pids=gp, chunk_size=c) == ref
    calls = []

    def fn(a, b):
        calls.append((a, b))
        return s[a:b]

    assert retrieval_metrics(fn, query_pids=qp, gallery_pids=gp, chunk_size=32) == ref
    assert calls == [(0, 32), (32, 64), (64, 90)]


def test_default_chunk_bounds_memory_for_wide_gallery():
    G = 50_000
    gp = torch.arange(G)
    qp = torch.arange(0, G, 997)[:40]
    sizes = []

    def fn(a, b):
        sizes.append(b - a)
        out = torch.zeros(b - a, G)
        out[torch.arange(b - a), qp[a:b]] = 1.0  # the positive on top
        return out

    m = retrieval_metrics(fn, query_pids=qp, gallery_pids=gp)
    assert m["R1"] == 100.0 and m["mAP"] == 100.0
    assert max(sizes) * G <= CHUNK_ELEMENTS and sum(sizes) == len(qp)


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(scores=torch.zeros(2, 3), distances=torch.zeros(2, 3)), "exactly one"),
    (dict(), "exactly one"),
    (dict(scores=torch.zeros(3, 3)), r"shape \(3, 3\), expected"),
    (dict(scores=torch.tensor([[0.0, float("nan"), 1.0], [0, 0, 0]])), "NaN"),
    (dict(scores=torch.zeros(2, 3), ties="random"), "ties="),
    (dict(scores=torch.zeros(2, 3), chunk_size=0), "chunk_size"),
    (dict(scores=torch.zeros(2, 3), ks=(0,)), "ks"),
    (dict(scores=lambda a, b: torch.zeros(b - a, 2)), r"returned \(\d, 2\)"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(**kwargs, query_pids=[0, 1], gallery_pids=[0, 1, 1])


def test_query_without_positive_is_an_error():
    with pytest.raises(ValueError, match=r"1 of 2 queries .*pids \[7\]"):
        retrieval_metrics(torch.zeros(2, 2), query_pids=[0, 7], gallery_pids=[0, 1])


def test_bad_pids_and_scores_types():
    with pytest.raises(TypeError, match="query_pids"):
        retrieval_metrics(torch.zeros(1, 1), query_pids=[0.5], gallery_pids=[0])
    with pytest.raises(ValueError, match="gallery_pids must be 1-D"):
        retrieval_metrics(torch.zeros(1, 1), query_pids=[0], gallery_pids=[[0]])
    with pytest.raises(TypeError, match="scores must be"):
        retrieval_metrics("scores", query_pids=[0], gallery_pids=[0])


# -- score functions -------------------------------------------------------------------------


def _gaussians(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("metric", uca_kernels.METRICS)
def test_gaussian_scores_match_the_distance_oracle(metric):
    mq, lq = _gaussians(13, 6, 0)
    mg, lg = _gaussians(29, 6, 1)
    ref = -uca_kernels.gaussian_distance(mq, lq, mg, lg, metric)
    direct = gaussian_scores(mq, lq, mg, lg, metric, chunk_size=4)
    torch.testing.assert_close(direct, ref, rtol=0, atol=1e-12)
    # tiles smaller than the gallery, and the GEMM form
    tiled = GaussianScores(mq, lq, mg, lg, metric, max_elements=50)(0, 13)
    torch.testing.assert_close(tiled, ref, rtol=0, atol=1e-12)
    gemm = gaussian_scores(mq, lq, mg, lg, metric, chunk_size=5, method="gemm")
    torch.testing.assert_close(gemm, ref, rtol=1e-9, atol=1e-9)


def test_gaussian_ranking_retrieves_the_matching_distribution():
    """25 identities with two gallery images each, all with the same variances (so W2 ranks by
    ‖μ_q − μ_g‖): image 0 of identity k at 10k·e₀, image 1 at 10k·e₀ + 15·e₁; query k is image 0
    plus noise of 0.01. Query k's distances: its own image 0 ≈ 0, image 0 of identity k ± 1 = 10,
    its own image 1 = 15, everything else ≥ √(10² + 15²) ≈ 18 (images 1 of k ± 1) or 20 (k ± 2).
    So its positives rank 1 and 4 (1 and 3 for k = 0 and 24, which have one neighbour):
    AP = (1/1 + 2/4)/2 = 3/4 and INP = 2/4 (AP = 5/6, INP = 2/3 at the ends)."""
    torch.manual_seed(0)
    n_ids, d = 25, 8
    gp = torch.arange(2 * n_ids) // 2  # two images per identity
    mg = torch.zeros(2 * n_ids, d)
    mg[:, 0] = 10.0 * gp
    mg[1::2, 1] = 15.0
    lg = torch.full((2 * n_ids, d), -2.0)
    qp = gp[::2]
    mq = mg[::2] + 0.01 * torch.randn(n_ids, d)
    lq = torch.full((n_ids, d), -2.0)
    fn = GaussianScores(mq, lq, mg, lg, "w2")
    m = retrieval_metrics(fn, query_pids=qp, gallery_pids=gp, chunk_size=7)
    dense = retrieval_metrics(gaussian_scores(mq, lq, mg, lg, "w2"), query_pids=qp, gallery_pids=gp)
    want = {"R1": 100.0, "R5": 100.0, "R10": 100.0,
            "mAP": 100 * (23 * 3 / 4 + 2 * 5 / 6) / 25,  # 75.667
            "mINP": 100 * (23 * 2 / 4 + 2 * 2 / 3) / 25}  # 51.333
    assert m.keys() == dense.keys() == want.keys()
    for k in want:
        assert m[k] == pytest.approx(want[k], abs=1e-6), (k, m)
        assert dense[k] == pytest.approx(want[k], abs=1e-6), (k, dense)


def test_cosine_scores():
    torch.manual_seed(0)
    q, g = torch.randn(7, 5), torch.randn(11, 5)
    ref = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(g, dim=1).T
    torch.testing.assert_close(cosine_scores(q, g, chunk_size=3), ref)
    assert CosineScores(q, g).shape == (7, 11)
    with pytest.raises(ValueError, match="gallery has 4 features, expected 5"):
        CosineScores(q, torch.randn(3, 4))


def test_gaussian_scores_bad_arguments():
    mq, lq = _gaussians(3, 4, 0)
    with pytest.raises(ValueError, match="metric='l2'"):
        GaussianScores(mq, lq, mq, lq, "l2")
    with pytest.raises(ValueError, match="method='fast'"):
        GaussianScores(mq, lq, mq, lq, "w2", method="fast")
    with pytest.raises(ValueError, match="logvar_g has 3 features, expected 4"):
        GaussianScores(mq, lq, mq, lq[:, :3], "w2")
    with pytest.raises(TypeError, match="mu_q must be a torch.Tensor"):
        GaussianScores(mq.numpy(), lq, mq, lq, "w2")
