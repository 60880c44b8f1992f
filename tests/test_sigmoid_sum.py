"""The scalar sigmoid loss (``reduction`` "sum" / "mean"): the CPU backend's one-sweep op against the
float64 reference, forward and every gradient, and the same public call on every other backend."""

from __future__ import annotations

import pytest
import torch

import uca_kernels as uk
from uca_kernels import _ext
from uca_kernels.contrast import contrast_reference
from helpers import FLOOR, GRAD_NAMES, assert_matches_oracle, make_problem

pytestmark = pytest.mark.skipif(not _ext.has_op("sigmoid_loss_and_grads"),
                                reason=f"uca_kernels._C without the one-sweep op: {_ext.load_error()}")

NAMES = ("total",) + GRAD_NAMES


def scalar_and_grads(tensors, dtype, *, backend, reduction="sum", exclude_self=False, grad_out=1.0,
                     requires=(True,) * 6, labels=True):
    """(scalar, dA, dB, dr, dc, dscale, dbias) in float64 for the inputs cast to ``dtype``."""
    A, B, r, c, sc, bi, la, lb = tensors
    rc = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    leaves = [A.to(dtype), B.to(dtype), r.to(rc), c.to(rc), sc.to(rc), bi.to(rc)]
    leaves = [x.detach().requires_grad_(q) for x, q in zip(leaves, requires)]
    la, lb = (la, lb) if labels else (None, None)
    if backend == "literal":  # the materialised oracle, summed by hand
        A_, B_ = (leaves[0].float(), leaves[1].float()) if dtype in (torch.float16, torch.bfloat16) else leaves[:2]
        rows, _ = contrast_reference(A_, B_, *leaves[2:], la if labels else torch.arange(A.shape[0]),
                                     lb if labels else torch.arange(B.shape[0]), "sigmoid", exclude_self)
        total = rows.sum() if reduction == "sum" else rows.sum() / A.shape[0]
    else:
        total = uk.contrast(*leaves, la, lb, loss="sigmoid", exclude_self=exclude_self, backend=backend,
                            reduction=reduction)
    need = [x for x in leaves if x.requires_grad]
    grads = iter(torch.autograd.grad(total * grad_out, need))
    return [total.double().detach().reshape(1)] + [next(grads).double() if x.requires_grad else None for x in leaves]


def check(M, N, E, *, dtype=torch.float32, labels="repeats", exclude_self=False, scale=-0.5, bias=0.25,
          spread=1.0, reduction="sum", grad_out=1.0, requires=(True,) * 6, diagonal=False, floor=None, seed=0):
    tensors = make_problem(M, N, E, labels=labels, scale=scale, bias=bias, seed=seed, exclude_self=exclude_self,
                           spread=spread)
    kw = dict(reduction=reduction, exclude_self=exclude_self, grad_out=grad_out, requires=requires,
              labels=not diagonal)
    oracle = scalar_and_grads(tensors, torch.float64, backend="literal", **kw)
    ref_same = scalar_and_grads(tensors, dtype, backend="literal", **kw)
    fused = scalar_and_grads(tensors, dtype, backend="cpu", **kw)
    # Σ|dS| ≤ M·N·|grad_out|: the scale of dbias's rounding error (see helpers.assert_matches_oracle)
    norm = 1.0 if reduction == "sum" else 1.0 / M
    assert_matches_oracle(fused, oracle, ref_same, floor=FLOOR.get(dtype, 0.0) if floor is None else floor,
                          grad_l1=M * N * abs(grad_out) * norm, names=NAMES)
    return fused, oracle


@pytest.mark.parametrize("M,N", [(1, 1), (7, 7), (129, 7), (7, 129), (129, 129), (1000, 1000), (1000, 129)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sizes(M, N, dtype):
    check(M, N, 33, dtype=dtype)


@pytest.mark.parametrize("labels", ["unique", "repeats", "one"])
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_labels_exclude_self_reduction(labels, exclude_self, reduction):
    check(129, 129, 20, labels=labels, exclude_self=exclude_self, reduction=reduction)
    check(40, 40, 5, labels=labels, exclude_self=exclude_self, reduction=reduction, dtype=torch.float64)


@pytest.mark.parametrize("M,N", [(23, 70), (70, 23)])
def test_exclude_self_rectangular(M, N):
    check(M, N, 6, exclude_self=True, dtype=torch.float64)
    check(M, N, 6, exclude_self=True, labels="one")


def test_diagonal_labels_siglip_setting():
    check(65, 65, 16, diagonal=True, scale=10.0, bias=-10.0, reduction="mean")


@pytest.mark.parametrize("tiles", [("5", "7"), ("1", "3"), ("64", "1")])
def test_many_small_tiles(monkeypatch, tiles):
    monkeypatch.setenv("UCA_CPU_TILE_ROWS", tiles[0])
    monkeypatch.setenv("UCA_CPU_TILE_COLS", tiles[1])
    check(23, 23, 6, exclude_self=True, dtype=torch.float64)


@pytest.mark.parametrize("scale", [-100.0, 100.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits(scale, dtype):
    """Logits up to ~1e5 in magnitude (|S| ≥ 1e3 on most pairs): finite, still accurate."""
    fused, oracle = check(50, 50, 4, dtype=dtype, scale=scale, spread=60.0, floor=FLOOR[dtype] * 10)
    assert all(torch.isfinite(x).all() for x in fused)
    assert float(oracle[0]) > 1e3  # the problem does reach large pair losses


@pytest.mark.parametrize("requires", [(True, False, False, False, False, False), (False, True, False, True, False, False),
                                      (False, False, False, False, True, True)])
def test_some_inputs_require_grad_and_grad_output(requires):
    check(60, 45, 12, requires=requires, grad_out=-2.5, reduction="mean")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    """Half-precision features are computed in float32: the 2× rule against a same-dtype reference
    (whose error is the features' rounding), with the float32 floor for the outputs that rounding
    does not touch (dbias)."""
    check(90, 70, 24, dtype=dtype, floor=FLOOR[torch.float32])


def test_equals_the_two_call_path_and_is_deterministic():
    """Same scalar and gradients as reduction='none' summed (the two-call path), bit-identical reruns."""
    tensors = make_problem(300, 260, 40, labels="repeats", seed=5)
    one = scalar_and_grads(tensors, torch.float32, backend="cpu")
    again = scalar_and_grads(tensors, torch.float32, backend="cpu")
    for x, y in zip(one, again):
        assert torch.equal(x, y)
    A, B, r, c, sc, bi, la, lb = tensors
    leaves = [x.float().requires_grad_() for x in (A, B, r, c, sc, bi)]
    rows, _ = uk.contrast(*leaves, la, lb, loss="sigmoid", backend="cpu")
    grads = torch.autograd.grad(rows.sum(), leaves)
    torch.testing.assert_close(one[0], rows.sum().double().detach().reshape(1), rtol=1e-6, atol=0)
    for name, x, y in zip(GRAD_NAMES, one[1:], grads):
        torch.testing.assert_close(x, y.double(), rtol=1e-5, atol=1e-5 * float(y.abs().max()), msg=name)


def test_one_sweep_op_runs_only_when_gradients_are_needed(monkeypatch):
    """Under no_grad (or with no input requiring grad) the forward alone runs; with gradients the
    one-sweep op does."""
    calls = []
    real = torch.ops.uca.sigmoid_loss_and_grads

    class Spy:
        def __call__(self, *args):
            calls.append(1)
            return real(*args)

    monkeypatch.setattr(torch.ops.uca, "sigmoid_loss_and_grads", Spy())
    A, B, r, c, sc, bi, la, lb = [x.float() if x.is_floating_point() else x for x in make_problem(30, 20, 8)]
    with torch.no_grad():
        plain = uk.contrast(A.requires_grad_(), B, r, c, sc, bi, la, lb, loss="sigmoid", backend="cpu", reduction="sum")
    assert not calls
    fused = uk.contrast(A, B, r, c, sc, bi, la, lb, loss="sigmoid", backend="cpu", reduction="sum")
    assert calls == [1]
    torch.testing.assert_close(fused.detach(), plain, rtol=1e-6, atol=0)


def test_gradcheck_float64():
    A, B, r, c, sc, bi, la, lb = make_problem(9, 7, 4, labels="repeats", seed=3, scale=1.5, bias=-0.5)
    leaves = [x.clone().requires_grad_() for x in (A, B, r, c, sc, bi)]
    fn = lambda *x: uk.contrast(*x, la, lb, loss="sigmoid", backend="cpu", reduction="sum")  # noqa: E731
    assert torch.autograd.gradcheck(fn, leaves)


def test_opcheck_and_compile_fullgraph():
    A, B, r, c, sc, bi, la, lb = [x.float() if x.is_floating_point() else x
                                  for x in make_problem(33, 21, 8, labels="repeats", seed=4)]
    args = (A.requires_grad_(), B.requires_grad_(), r, c, sc, bi, la, lb, False)
    torch.library.opcheck(torch.ops.uca.sigmoid_loss_and_grads.default, args)

    def f(A, B):
        return uk.contrast(A, B, r, c, sc, bi, la, lb, loss="sigmoid", backend="cpu", reduction="mean")

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got, want = compiled(A, B), f(A, B)
    torch.testing.assert_close(got, want)
    ga, gb = torch.autograd.grad(got, (A, B))
    wa, wb = torch.autograd.grad(want, (A, B))
    torch.testing.assert_close(ga, wa)
    torch.testing.assert_close(gb, wb)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_other_backends_give_the_same_scalar(backend):
    """Backends without the one-sweep op sum the two-call path's rows: same value and gradients."""
    if backend == "triton":
        from uca_kernels import triton_contrast

        if triton_contrast.not_supported_reasons(A=torch.zeros(2, 2), B=torch.zeros(2, 2), loss="sigmoid",
                                                 exclude_self=False, explicit=True):
            pytest.skip("triton interpreter not usable here")
    tensors = make_problem(37, 29, 8, labels="repeats", seed=8)
    want = scalar_and_grads(tensors, torch.float64, backend="literal", reduction="mean", grad_out=0.7)
    got = scalar_and_grads(tensors, torch.float32, backend=backend, reduction="mean", grad_out=0.7)
    for name, x, y in zip(NAMES, got, want):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5 * float(y.abs().max()), msg=name)
