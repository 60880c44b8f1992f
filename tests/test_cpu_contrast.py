"""The fused C++ CPU backend against the float64 reference: forward, every gradient, edge cases,
determinism, torch.library registration and torch.compile."""

from __future__ import annotations

import itertools

import pytest
import torch

import uca_kernels as uk
from uca_kernels import _ext, dispatch
from uca_kernels._registry import STATS_DTYPE
from helpers import (FLOOR, GRAD_NAMES, OFFSET_BIASES, OpLog, assert_matches_oracle, check_offset_logits,
                     check_row_shares, check_split_rows, grad_mass, make_problem, max_rel_err, reference_fn, run_with_grads, scale_mass,
                     shift_masses, stats_oracle)

pytestmark = pytest.mark.skipif(not _ext.has_op("contrast_forward"), reason=f"uca_kernels._C not loaded: {_ext.load_error()}")

LOSSES = ["sdm", "infonce", "sigmoid"]


def cpu_fn(loss, exclude_self):
    def fn(A, B, r, c, sc, bi, la, lb):
        return uk.contrast(A, B, r, c, sc, bi, la, lb, loss=loss, exclude_self=exclude_self, backend="cpu")

    return fn


def check_against_reference(M, N, E, *, loss, labels, exclude_self, dtype, scale=-0.5, spread=1.0, seed=0,
                            requires=(True,) * 6, floor=None):
    tensors = make_problem(M, N, E, labels=labels, scale=scale, seed=seed, exclude_self=exclude_self, spread=spread)
    g = torch.Generator().manual_seed(seed + 1)
    gr, gc = torch.randn(M, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)
    oracle = run_with_grads(reference_fn(loss, exclude_self), tensors, gr, gc, torch.float64, requires)
    ref_same = run_with_grads(reference_fn(loss, exclude_self), tensors, gr, gc, dtype, requires)
    fused = run_with_grads(cpu_fn(loss, exclude_self), tensors, gr, gc, dtype, requires)
    mass = grad_mass(gr, gc, loss)
    assert_matches_oracle(fused, oracle, ref_same, floor=FLOOR[dtype] if floor is None else floor,
                          grad_l1=mass, mass=shift_masses(M, N, loss, scale, mass) | scale_mass(*tensors[:4], mass))
    return fused, oracle


SIZES = [(1, 1), (7, 7), (129, 7), (7, 129), (129, 129), (1000, 1000), (1000, 129)]


@pytest.mark.parametrize("M,N", SIZES)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sizes_against_reference(M, N, loss, dtype):
    check_against_reference(M, N, 33, loss=loss, labels="repeats", exclude_self=False, dtype=dtype)


@pytest.mark.parametrize("E", [1, 2, 17, 256, 1024])
@pytest.mark.parametrize("loss", LOSSES)
def test_feature_widths(E, loss):
    check_against_reference(70, 50, E, loss=loss, labels="repeats", exclude_self=False, dtype=torch.float32)


@pytest.mark.parametrize("labels", ["unique", "repeats", "one"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("exclude_self", [False, True])
def test_labels_and_exclude_self(labels, loss, exclude_self):
    check_against_reference(129, 129, 20, loss=loss, labels=labels, exclude_self=exclude_self, dtype=torch.float32)
    check_against_reference(40, 40, 5, loss=loss, labels=labels, exclude_self=exclude_self, dtype=torch.float64)


@pytest.mark.parametrize("labels", ["unique", "repeats", "one"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("M,N", [(23, 70), (70, 23), (1, 9), (9, 1)])
def test_exclude_self_rectangular(labels, loss, M, N):
    """Local rows against columns that start with them (the data-parallel intra-modal term): pairs
    (i, i), i < min(M, N), are dropped, also across small tiles."""
    check_against_reference(M, N, 6, loss=loss, labels=labels, exclude_self=True, dtype=torch.float64)
    check_against_reference(M, N, 6, loss=loss, labels=labels, exclude_self=True, dtype=torch.float32)


def test_exclude_self_rectangular_small_tiles(monkeypatch):
    monkeypatch.setenv("UCA_CPU_TILE_ROWS", "5")
    monkeypatch.setenv("UCA_CPU_TILE_COLS", "7")
    for loss in LOSSES:
        check_against_reference(13, 31, 6, loss=loss, labels="repeats", exclude_self=True, dtype=torch.float64)
        check_against_reference(31, 13, 6, loss=loss, labels="repeats", exclude_self=True, dtype=torch.float64)


@pytest.mark.parametrize("loss", ["sdm", "infonce"])
def test_stats(loss):
    A, B, r, c, sc, bi, la, lb = make_problem(70, 45, 20, labels="repeats", seed=9)
    lb = lb + 3  # some rows and columns without positives
    _, _, row_stats, col_stats = torch.ops.uca.contrast_forward(A, B, r, c, sc, bi, la, lb, loss, False)
    S = sc * (A @ B.T + r[:, None] + c[None, :]) + bi
    pos = la[:, None] == lb[None, :]
    for stats, S_, pos_ in ((row_stats, S, pos), (col_stats, S.T, pos.T)):
        want = stats_oracle(S_, pos_)
        assert stats.dtype == STATS_DTYPE and torch.equal(torch.isfinite(stats), torch.isfinite(want))
        finite = torch.isfinite(want)
        assert max_rel_err(stats[finite], want[finite]) <= 1e-12


@pytest.mark.parametrize("loss", ["sdm", "infonce"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_split_rows_combine_to_the_whole(loss, dtype):
    """contrast.combine_stats of row shares' column statistics = the whole problem's, and the
    shares' backwards fed them add up to the whole backward (helpers.check_split_rows)."""
    check_split_rows(torch.ops.uca.contrast_forward, torch.ops.uca.contrast_backward, loss, dtype=dtype,
                     tol=1e-10 if dtype == torch.float64 else FLOOR[torch.float32])


@pytest.mark.parametrize("loss", ["sdm", "infonce"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_shares_equal_the_whole(loss, dtype):
    """contrast_row_share on three row shares = contrast() on the whole (helpers.check_row_shares)."""
    check_row_shares("cpu", loss, dtype=dtype, tol=1e-10 if dtype == torch.float64 else FLOOR[torch.float32])


def test_row_share_needs_an_op_pair():
    A = torch.randn(4, 3)
    with pytest.raises(ValueError, match="backend 'reference' has no forward/backward op pair"):
        uk.contrast_row_share(A, A, torch.zeros(4), torch.zeros(4), labels_a=torch.arange(4), labels_b=torch.arange(4),
                              backend="reference", gather_stats=lambda p: p[None], sum_col_grads=lambda g: g)
    with pytest.raises(ValueError, match="loss='sigmoid' is not one of 'sdm', 'infonce'"):
        uk.contrast_row_share(A, A, torch.zeros(4), torch.zeros(4), loss="sigmoid", backend="cpu",
                              gather_stats=lambda p: p[None], sum_col_grads=lambda g: g)


@pytest.mark.parametrize("loss", ["sdm", "infonce"])
def test_rows_without_positive(loss):
    """M != N with independent unique labels: most rows have no positive (loss 0, no gradient)."""
    fused, oracle = check_against_reference(60, 45, 8, loss=loss, labels="unique", exclude_self=False,
                                            dtype=torch.float64)
    assert (oracle[0] == 0).any() and torch.equal(fused[0] == 0, oracle[0] == 0)


def test_sigmoid_rows_without_positive_keep_their_terms():
    """M != N with independent unique labels: no positives, yet every row and column has a loss
    (all its pairs are negatives) and a gradient."""
    fused, oracle = check_against_reference(60, 45, 8, loss="sigmoid", labels="unique", exclude_self=False,
                                            dtype=torch.float64)
    assert (oracle[0] > 0).all() and (oracle[1] > 0).all() and (fused[2].abs().sum(1) > 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sigmoid_stats_are_zeros_and_sums_agree(dtype):
    """The sigmoid forward keeps the schema's stats (shape [·, 3], the output dtype) as zeros; its row
    and column losses sum the same pairs."""
    A, B, r, c, sc, bi, la, lb = (x.to(dtype) if x.is_floating_point() else x
                                  for x in make_problem(50, 37, 9, labels="repeats", seed=12))
    rows, cols, row_stats, col_stats = torch.ops.uca.contrast_forward(A, B, r, c, sc, bi, la, lb, "sigmoid", False)
    assert row_stats.shape == (50, 4) and col_stats.shape == (37, 4) and row_stats.dtype == col_stats.dtype == STATS_DTYPE
    assert not row_stats.any() and not col_stats.any()
    torch.testing.assert_close(rows.double().sum(), cols.double().sum(), rtol=1e-6 if dtype == torch.float32 else 1e-13,
                               atol=0)


@pytest.mark.parametrize("labels", [None, "one"])
def test_sigmoid_diagonal_and_single_identity(labels):
    """labels=None (diagonal positives, the SigLIP setting) and one identity (every pair positive)."""
    A, B, r, c, sc, bi, la, lb = make_problem(33, 33, 6, labels="one", seed=13, scale=2.0, bias=-3.0)
    if labels is None:
        la = lb = None
    g = torch.Generator().manual_seed(14)
    gr, gc = torch.randn(33, generator=g, dtype=torch.float64), torch.randn(33, generator=g, dtype=torch.float64)
    outs = {}
    for backend in ("reference", "cpu"):
        leaves = [x.clone().requires_grad_() for x in (A, B, r, c, sc, bi)]
        rows, cols = uk.contrast(*leaves, la, lb, loss="sigmoid", backend=backend)
        grads = torch.autograd.grad((rows * gr).sum() + (cols * gc).sum(), leaves)
        outs[backend] = (rows, cols, *grads)
    for x, y in zip(outs["cpu"], outs["reference"]):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("tiles", [("5", "7"), ("1", "3"), ("64", "1")])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("exclude_self", [False, True])
def test_many_small_tiles(monkeypatch, tiles, loss, exclude_self):
    """Tiles much smaller than the problem exercise the online merge across row and column tiles."""
    monkeypatch.setenv("UCA_CPU_TILE_ROWS", tiles[0])
    monkeypatch.setenv("UCA_CPU_TILE_COLS", tiles[1])
    check_against_reference(23, 23, 6, loss=loss, labels="repeats", exclude_self=exclude_self, dtype=torch.float64)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("scale", [-100.0, 100.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_scales(loss, scale, dtype):
    """|scale| = 100 on distances up to ~1e3 (logits up to ~1e5): finite and still accurate."""
    fused, _ = check_against_reference(50, 50, 4, loss=loss, labels="repeats", exclude_self=False, dtype=dtype,
                                       scale=scale, spread=60.0, floor=FLOOR[dtype] * 10)
    assert all(torch.isfinite(x).all() for x in fused)


@pytest.mark.parametrize("loss", ["sdm", "infonce"])
@pytest.mark.parametrize("bias", OFFSET_BIASES)
def test_offset_logits_keep_p_exact(loss, bias):
    """float32 inputs, exact logits around ±1e5: the statistics are float64, so the backward's
    p = exp(S − LSE) is as exact as at |S| ~ 1 (helpers.offset_logit_problem)."""
    check_offset_logits(cpu_fn(loss, False), loss, bias)


@pytest.mark.parametrize("requires", [(True, False, False, False, False, False), (False, True, False, True, False, False),
                                      (False, False, False, False, True, True)])
@pytest.mark.parametrize("loss", ["sdm", "sigmoid"])
def test_only_some_inputs_require_grad(requires, loss):
    check_against_reference(30, 20, 7, loss=loss, labels="repeats", exclude_self=False, dtype=torch.float64,
                            requires=requires)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("exclude_self", [False, True])
def test_gradcheck_float64(loss, exclude_self):
    A, B, r, c, sc, bi, la, lb = make_problem(9, 9, 4, labels="repeats", exclude_self=True, seed=3)
    inputs = [x.requires_grad_() for x in (A, B, r, c, sc, bi)]

    def f(A, B, r, c, sc, bi):
        return uk.contrast(A, B, r, c, sc, bi, la, lb, loss=loss, exclude_self=exclude_self, backend="cpu")

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("metric", uk.METRICS)
def test_gradients_through_the_maps_to_mu_and_logvar(metric):
    g = torch.Generator().manual_seed(5)
    base = [torch.randn(40, 6, generator=g, dtype=torch.float64) * s for s in (1.0, 0.3, 1.0, 0.3)]
    labels = torch.randint(0, 12, (40,), generator=g)
    grads = {}
    for backend in ("reference", "cpu"):
        leaves = [t.clone().requires_grad_() for t in base]
        value = uk.distribution_contrast_loss(*leaves, labels=labels, metric=metric, scale=0.7, backend=backend)
        grads[backend] = (value.detach(), *torch.autograd.grad(value, leaves))
    for x, y in zip(grads["cpu"], grads["reference"]):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10)


def test_point_contrast_through_cpu_backend_matches_reference():
    g = torch.Generator().manual_seed(6)
    base = [torch.randn(16, 8, generator=g, dtype=torch.float64) * s for s in (1.0, 0.3, 1.0, 0.3)]
    labels = torch.randint(0, 6, (16,), generator=g)
    outs = {}
    for backend in ("reference", "cpu"):
        leaves = [t.clone().requires_grad_() for t in base]
        out = uk.point_contrast_loss(*leaves, labels=labels, num_samples=3,
                                     generator=torch.Generator().manual_seed(0), backend=backend)
        outs[backend] = (*(out[k].detach() for k in ("inter", "intra_image", "intra_text")),
                         *torch.autograd.grad(out["total"], leaves))
    for x, y in zip(outs["cpu"], outs["reference"]):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10)


def test_auto_picks_cpu_for_cpu_tensors():
    A = torch.randn(4, 3)
    assert dispatch.select("auto", A=A, B=A, loss="sdm", exclude_self=False).name == "cpu"
    assert dispatch.select("auto", A=A.bfloat16(), B=A.bfloat16(), loss="sdm", exclude_self=False).name == "cpu"
    assert dispatch.select("auto", A=A.to(torch.float8_e4m3fn), B=A.to(torch.float8_e4m3fn), loss="sdm",
                           exclude_self=False).name == "reference"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(dtype):
    """fp16/bf16 features are upcast: the fused error obeys the 2x-of-reference rule in that dtype."""
    for loss in LOSSES:
        check_against_reference(90, 70, 24, loss=loss, labels="repeats", exclude_self=False, dtype=dtype, floor=FLOOR[torch.float32])


@pytest.mark.parametrize("loss", ["sdm", "sigmoid"])
def test_bit_identical_reruns(loss):
    A, B, r, c, sc, bi, la, lb = (x.float() if x.is_floating_point() else x
                                  for x in make_problem(700, 600, 64, labels="repeats", seed=8))
    runs = []
    for _ in range(2):
        leaves = [x.clone().requires_grad_() for x in (A, B, r, c, sc, bi)]
        rows, cols = uk.contrast(*leaves, la, lb, loss=loss, backend="cpu")
        grads = torch.autograd.grad(rows.sum() + 2 * cols.sum(), leaves)
        runs.append((rows, cols, *grads))
    for x, y in zip(*runs):
        assert torch.equal(x, y)


def _in_nan_buffer(x, offset, fill):
    """``x`` copied into rows ``[offset, offset + len(x))`` of a buffer of ``2·len(x) + 3`` rows that is
    otherwise ``fill``: a *contiguous* view at a non-zero storage offset. ``.contiguous()`` returns it
    as it is, so the kernel reads it through ``data_ptr`` and must honour the offset."""
    n = x.shape[0]
    big = torch.full((2 * n + 3, *x.shape[1:]), fill, dtype=x.dtype)
    view = big[offset : offset + n]
    view.copy_(x)
    assert view.is_contiguous() and view.storage_offset() > 0 and view.contiguous().data_ptr() == view.data_ptr()
    return view


def _outputs_and_grads(loss, reduction, leaves, la, lb, g_rows, g_cols):
    """(rows, cols) or the sigmoid sum, then the gradients of every leaf (A, B, r, c, scale, bias)."""
    leaves = [x.detach().requires_grad_() for x in leaves]  # detach keeps the view's storage and offset
    out = uk.contrast(*leaves, la, lb, loss=loss, reduction=reduction, backend="cpu")
    if reduction == "none":
        outs = list(out)
        total = (out[0] * g_rows).sum() + (out[1] * g_cols).sum()
    else:  # the scalar sigmoid: uca.sigmoid_loss_and_grads, a second op that reads the inputs
        outs = [out]
        total = 0.7 * out
    return [o.detach() for o in outs] + list(torch.autograd.grad(total, leaves))


@pytest.mark.parametrize("loss,reduction", [("sdm", "none"), ("infonce", "none"), ("sigmoid", "none"),
                                            ("sigmoid", "sum")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tiles", [None, ("8", "5")])
def test_nan_around_offset_views_does_not_leak(loss, reduction, dtype, tiles, monkeypatch):
    """Every input a contiguous view at a non-zero storage offset into a buffer that is NaN (features,
    r, c, scale, bias) or an unused identity (labels) everywhere else. The backend hands these views
    to the kernel as they are, so a kernel that ignored the offset, or read a row, column or label
    past its tile, would see NaN or the wrong identities. Outputs and all six gradients must be
    finite and equal to those of clean copies (same data, same kernel, same tiles) to a few units
    of rounding: not bit for bit, because the BLAS may take another code path for data that is not
    aligned as a fresh allocation is (seen on an AMD EPYC: 1 ulp in float32), while a wrong row,
    column or label moves a value by far more than that."""
    if tiles is not None:  # several row and column tiles: every tile's pointer is offset from the base
        monkeypatch.setenv("UCA_CPU_TILE_ROWS", tiles[0])
        monkeypatch.setenv("UCA_CPU_TILE_COLS", tiles[1])
    M, N = 31, 29
    A, B, r, c, sc, bi, la, lb = (x.to(dtype) if x.is_floating_point() else x
                                  for x in make_problem(M, N, 10, labels="repeats", seed=9))
    g = torch.Generator().manual_seed(10)
    g_rows, g_cols = (torch.randn(n, generator=g, dtype=torch.float64).to(dtype) for n in (M, N))
    unused_id = int(torch.cat([la, lb]).max()) + 1
    nan = float("nan")
    offset_views = [_in_nan_buffer(A, 7, nan), _in_nan_buffer(B, 3, nan), _in_nan_buffer(r, 5, nan),
                    _in_nan_buffer(c, 2, nan), _in_nan_buffer(sc.reshape(1), 1, nan).reshape(()),
                    _in_nan_buffer(bi.reshape(1), 2, nan).reshape(())]
    la_view, lb_view = _in_nan_buffer(la, 4, unused_id), _in_nan_buffer(lb, 6, unused_id)
    assert offset_views[4].storage_offset() > 0 and offset_views[5].storage_offset() > 0

    clean = _outputs_and_grads(loss, reduction, [x.clone() for x in (A, B, r, c, sc, bi)], la.clone(), lb.clone(),
                               g_rows, g_cols)
    dirty = _outputs_and_grads(loss, reduction, offset_views, la_view, lb_view, g_rows, g_cols)
    names = (["loss_rows", "loss_cols"] if reduction == "none" else ["loss_sum"]) + [f"d{k}" for k in GRAD_NAMES]
    # dbias and dscale of the softmax losses are cancelling sums (Σⱼ dSᵢⱼ = 0): their rounding scales
    # with Σ|dS| (·max|t|), not with their own value (the rule of helpers.assert_matches_oracle)
    masses = {}
    if loss != "sigmoid":
        mass = grad_mass(g_rows, g_cols, loss)
        masses = {"dbias": mass, "dscale": scale_mass(A, B, r, c, mass)["scale"]}
    for name, x, y in zip(names, clean, dirty, strict=True):
        assert torch.isfinite(y).all(), f"{name}: NaN/inf read from outside the views"
        tol = 8 * torch.finfo(dtype).eps * max(float(x.abs().max()), 1.0, masses.get(name, 0.0))
        err = float((x - y).abs().max())
        assert err <= tol, f"{name}: differs from the clean copies by {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("loss", LOSSES)
def test_nan_in_row_padding_does_not_leak(loss):
    """A and B with NaN-padded rows (row stride E + 5) and r, c every other element of a NaN buffer.
    These views are not contiguous, so CpuBackend.contrast copies them (``.contiguous()``) and the
    kernel never sees the padding: this passes by that copy, and checks that it is made (and that
    the gradients come back in the views' shapes); the kernel's own indexing is what the offset
    test above checks."""
    A, B, r, c, sc, bi, la, lb = (x.float() if x.is_floating_point() else x
                                  for x in make_problem(31, 29, 10, labels="repeats", seed=9))

    def padded(x, extra_cols=5):
        big = torch.full((x.shape[0] * 2, *(x.shape[1:] if x.dim() == 1 else (x.shape[1] + extra_cols,))), float("nan"))
        view = big[::2] if x.dim() == 1 else big[:x.shape[0], : x.shape[1]]
        view.copy_(x)
        assert not view.is_contiguous()
        return view

    g = torch.Generator().manual_seed(10)
    g_rows, g_cols = torch.randn(31, generator=g), torch.randn(29, generator=g)
    clean = _outputs_and_grads(loss, "none", [A, B, r, c, sc, bi], la, lb, g_rows, g_cols)
    dirty = _outputs_and_grads(loss, "none", [padded(A), padded(B), padded(r), padded(c), sc, bi], la, lb,
                               g_rows, g_cols)
    for name, x, y in zip(["loss_rows", "loss_cols", *GRAD_NAMES], clean, dirty, strict=True):
        assert torch.isfinite(y).all() and x.shape == y.shape and torch.equal(x, y), name


def test_opcheck_registered_ops():
    A, B, r, c, sc, bi, la, lb = make_problem(12, 10, 5, labels="repeats", seed=10)
    args = (A.requires_grad_(), B.requires_grad_(), r.requires_grad_(), c, sc.requires_grad_(), bi, la, lb)
    for loss, excl in itertools.product(LOSSES, (False,)):
        torch.library.opcheck(torch.ops.uca.contrast_forward.default, (*args, loss, excl))
    for loss in ("sdm", "sigmoid"):
        out = torch.ops.uca.contrast_forward(*(x.detach() for x in args), loss, False)
        bwd_args = (torch.randn(12, dtype=torch.float64), torch.randn(10, dtype=torch.float64),
                    *(x.detach() for x in args), *out, loss, False)
        torch.library.opcheck(torch.ops.uca.contrast_backward.default, bwd_args)
    sq = make_problem(9, 9, 4, labels="repeats", seed=15, exclude_self=True)
    torch.library.opcheck(torch.ops.uca.contrast_forward.default,
                          (*(x.requires_grad_() if x.is_floating_point() else x for x in sq), "sigmoid", True))


def test_backward_gets_the_forward_precision():
    """The float32 product precision is an op argument: autograd hands the backward the forward's
    value (it must recompute the same logits), not whatever is configured when backward runs."""
    A, B, r, c, sc, bi, la, lb = (x.float() if x.is_floating_point() else x
                                  for x in make_problem(9, 7, 5, labels="repeats", seed=3))
    A.requires_grad_()
    log = OpLog()
    with log:
        rows, cols = torch.ops.uca.contrast_forward(A, B, r, c, sc, bi, la, lb, "sdm", False, "tf32")[:2]
        (rows.sum() + cols.sum()).backward()
    backward = [args for func, args in log.calls if func == torch.ops.uca.contrast_backward.default]
    assert len(backward) == 1 and backward[0][-1] == "tf32", backward
    with pytest.raises(RuntimeError, match="precision must be 'ieee' or 'tf32', got 'half'"):
        torch.ops.uca.contrast_forward(A.detach(), B, r, c, sc, bi, la, lb, "sdm", False, "half")


def test_kernel_level_errors_name_the_argument():
    A = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="r must have shape"):
        torch.ops.uca.contrast_forward(A, A, torch.zeros(5), torch.zeros(4), torch.tensor(1.0), torch.tensor(0.0),
                                       torch.arange(4), torch.arange(4), "sdm", False)
    with pytest.raises(RuntimeError, match="loss must be 'sdm', 'infonce' or 'sigmoid'"):
        torch.ops.uca.contrast_forward(A, A, torch.zeros(4), torch.zeros(4), torch.tensor(1.0), torch.tensor(0.0),
                                       torch.arange(4), torch.arange(4), "hinge", False)
    args = (A, A, torch.zeros(4), torch.zeros(4), torch.tensor(1.0), torch.tensor(0.0), torch.arange(4), torch.arange(4))
    rows, cols, row_stats, col_stats = torch.ops.uca.contrast_forward(*args, "sdm", False)
    with pytest.raises(RuntimeError, match="row_stats must be a contiguous float64 tensor"):
        torch.ops.uca.contrast_backward(torch.ones(4), torch.ones(4), *args, rows, cols, row_stats.float(), col_stats,
                                        "sdm", False)


@pytest.mark.parametrize("loss", ["sdm", "sigmoid"])
def test_torch_compile_fullgraph(loss):
    """A small model whose loss is the fused op compiles with fullgraph=True and matches eager."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(11)
    head = torch.nn.Linear(8, 12, dtype=torch.float64)
    x, y = torch.randn(20, 8, generator=g, dtype=torch.float64), torch.randn(20, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (20,), generator=g)

    def step(x, y):
        mu_v, lv_v = head(x).chunk(2, dim=1)
        mu_t, lv_t = head(y).chunk(2, dim=1)
        return uk.distribution_contrast_loss(mu_v, lv_v, mu_t, lv_t, labels, metric="w2", loss=loss, scale=0.5,
                                             backend="cpu")

    eager = step(x, y)
    (eager_grad,) = torch.autograd.grad(eager, head.weight)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(x, y)
    (compiled_grad,) = torch.autograd.grad(compiled, head.weight)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled_grad, eager_grad)


@pytest.mark.parametrize("loss", LOSSES)
def test_property_random_shapes_and_tiles(loss, monkeypatch):
    """Hypothesis: any shape, label pattern and tile size agrees with the float64 reference."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
    @hypothesis.given(M=st.integers(1, 40), N=st.integers(1, 40), E=st.integers(1, 16), n_ids=st.integers(1, 12),
                      tile_rows=st.integers(1, 50), tile_cols=st.integers(1, 50), self_pairs=st.booleans(),
                      seed=st.integers(0, 2**16))
    def check(M, N, E, n_ids, tile_rows, tile_cols, self_pairs, seed):
        if self_pairs:
            N = M
        g = torch.Generator().manual_seed(seed)
        A, B = torch.randn(M, E, generator=g, dtype=torch.float64), torch.randn(N, E, generator=g, dtype=torch.float64)
        r, c = torch.randn(M, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)
        la = torch.randint(0, n_ids, (M,), generator=g)
        lb = la.clone() if self_pairs else torch.randint(0, n_ids, (N,), generator=g)
        sc, bi = torch.tensor(-1.3, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
        gr, gc = torch.randn(M, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)
        monkeypatch.setenv("UCA_CPU_TILE_ROWS", str(tile_rows))
        monkeypatch.setenv("UCA_CPU_TILE_COLS", str(tile_cols))
        tensors = (A, B, r, c, sc, bi, la, lb)
        want = run_with_grads(reference_fn(loss, self_pairs), tensors, gr, gc, torch.float64)
        got = run_with_grads(cpu_fn(loss, self_pairs), tensors, gr, gc, torch.float64)
        for x, y in zip(got, want):
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10)

    check()
