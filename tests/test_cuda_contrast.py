"""The CUDA C++ backend (csrc/cuda) against the float64 reference.

Two designs answer the op's ``chunk_rows`` argument: >= 0 the chunked path (cuBLAS GEMMs over chunks
of rows + epilogue kernels, csrc/cuda/chunked_*), < 0 the fully fused tile kernels
(csrc/cuda/contrast_cuda.cu). Tests that go through ``uk.contrast`` run whichever the Python side
resolves (the chunked path by default); the ``chunked`` section pins chunk sizes through the op.

Everything that runs kernels needs a CUDA device and an extension built with CUDA sources; without
them those tests are skipped and only the build checks run (the kernels are registered for the CUDA
dispatch key; ptxas reports no spills for sm_80 and sm_90).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import uca_kernels as uk
from uca_kernels import _ext, contrast_reference, dispatch
from uca_kernels._registry import STATS_DTYPE
from helpers import (FLOOR, OFFSET_BIASES, assert_matches_oracle, check_offset_logits, grad_mass, make_problem,
                     max_rel_err, reference_fn, run_with_grads, scale_mass, shift_masses, stats_oracle)

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
BUILT = _ext.built_with_cuda()
on_gpu = pytest.mark.skipif(not (HAS_CUDA and BUILT), reason="needs a CUDA device and uca_kernels._C built with CUDA")
LEAVES = ("A", "B", "r", "c", "scale", "bias")
OUT_NAMES = ("loss_rows", "loss_cols") + LEAVES
LOSSES = ["sdm", "infonce", "sigmoid"]


def cuda_fn(loss, exclude_self):
    def fn(A, B, r, c, sc, bi, la, lb):
        return uk.contrast(A, B, r, c, sc, bi, la, lb, loss=loss, exclude_self=exclude_self, backend="cuda")

    return fn


def low_reference_fn(loss, exclude_self):
    """The materialised reference in the features' own dtype (fp16/bf16 GEMM on the GPU)."""

    def fn(A, B, r, c, sc, bi, la, lb):
        return contrast_reference(A, B, r, c, sc, bi, la, lb, loss, exclude_self)

    return fn


def compare(M, N, E, *, loss, labels="repeats", exclude_self=False, dtype=torch.float32, scale=-0.5, bias=0.25,
            seed=0, spread=1.0, fused_fn=None, oracle_fn=None):
    """(fused, float64 oracle, same-dtype reference, masses) on the GPU, all as float64.

    masses: the Σ|dS| bound (helpers.grad_mass: Σ|g_row| + Σ|g_col| for the softmax losses,
    N·Σ|g_row| + M·Σ|g_col| for sigmoid) and the ``mass=`` dict of the outputs measured against it
    (helpers.shift_masses, helpers.scale_mass). ``fused_fn`` replaces the CUDA call (default cuda_fn(loss, exclude_self));
    ``oracle_fn`` the materialised reference (run in float64 and in ``dtype``)."""
    tensors = make_problem(M, N, E, labels=labels, scale=scale, bias=bias, seed=seed, exclude_self=exclude_self,
                           spread=spread, device="cuda")
    if dtype in (torch.float16, torch.bfloat16):  # inputs exactly representable in dtype
        tensors[0], tensors[1] = tensors[0].to(dtype).double(), tensors[1].to(dtype).double()
    g = torch.Generator().manual_seed(seed + 1)
    gr = torch.randn(M, generator=g, dtype=torch.float64).cuda()
    gc = torch.randn(N, generator=g, dtype=torch.float64).cuda()
    oracle = run_with_grads(oracle_fn or reference_fn(loss, exclude_self), tensors, gr, gc, torch.float64)
    same = run_with_grads(oracle_fn or low_reference_fn(loss, exclude_self), tensors, gr, gc, dtype)
    fused = run_with_grads(fused_fn or cuda_fn(loss, exclude_self), tensors, gr, gc, dtype)
    mass = grad_mass(gr, gc, loss)
    return fused, oracle, same, (mass, shift_masses(M, N, loss, scale, mass) | scale_mass(*tensors[:4], mass))


def check(M, N, E, *, loss, floor, dtype=torch.float32, scale=-0.5, against_oracle=False, **kw):
    """compare(), then the shared rule (helpers.assert_matches_oracle): each output's error vs float64
    ≤ max(2 × the same-dtype reference's, floor). ``against_oracle``: the floor alone bounds it (tf32,
    whose products the same-dtype reference does not share). Returns (fused, oracle)."""
    fused, oracle, same, (mass, masses) = compare(M, N, E, loss=loss, dtype=dtype, scale=scale, **kw)
    assert_matches_oracle(fused, oracle, oracle if against_oracle else same, floor=floor, grad_l1=mass, mass=masses)
    return fused, oracle


# -- build checks (no GPU needed) ------------------------------------------------------------------


@pytest.mark.skipif(not BUILT, reason="uca_kernels._C was built without CUDA sources")
def test_cuda_kernels_are_registered():
    for op in ("uca::contrast_forward", "uca::contrast_backward", "uca::sigmoid_loss_and_grads"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"), op


def test_schema_takes_precision_and_chunk_rows():
    """Every op of the schema ends in (str precision="ieee", int chunk_rows=0): autograd hands the
    backward the forward's values, and the CPU kernels accept and ignore chunk_rows."""
    for name in ("contrast_forward", "contrast_backward", "sigmoid_loss_and_grads"):
        args = getattr(torch.ops.uca, name).default._schema.arguments
        assert [a.name for a in args[-2:]] == ["precision", "chunk_rows"], name
        assert args[-2].default_value == "ieee" and args[-1].default_value == 0, name


def test_cuda_backend_is_verified_by_its_selftest_not_a_flag():
    """No hand-set flag: the only extra condition 'auto' puts on the CUDA kernels is their self-test
    verdict on the device (uca_kernels.selftest), so auto and a named choice see the same reasons."""
    backend = dispatch.get_backend("cuda")
    assert not hasattr(dispatch, "CUDA_VERIFIED_ON_GPU")
    assert backend.needs_selftest and backend.device_type == "cuda"
    meta = torch.empty(4, 4, device="meta")
    auto_reasons = backend.not_supported_reasons(A=meta, B=meta, loss="sdm", exclude_self=False)
    named_reasons = backend.not_supported_reasons(A=meta, B=meta, loss="sdm", exclude_self=False, explicit=True)
    assert auto_reasons == named_reasons


@pytest.mark.gpu
@on_gpu
def test_cuda_backend_passes_its_selftest():
    """What 'auto' runs (in a child process) before it first sends CUDA tensors to these kernels."""
    from uca_kernels import selftest

    v = selftest.run_selftest("cuda", "cuda")
    assert v.ok, v.reason + "\n" + "\n".join(v.details)


@pytest.mark.parametrize("explicit", [False, True])
def test_sigmoid_is_offered_by_the_cuda_backend(explicit):
    """The CUDA kernels implement every loss: dispatch gives sigmoid exactly the reasons it gives sdm
    (here, without a GPU: the device and possibly the build), none about the loss."""
    backend = dispatch.get_backend("cuda")
    for device in ("meta", "cuda") if HAS_CUDA else ("meta",):
        probe = torch.empty(4, 4, device=device)
        by_loss = {loss: backend.not_supported_reasons(A=probe, B=probe, loss=loss, exclude_self=False,
                                                       explicit=explicit) for loss in LOSSES}
        assert by_loss["sigmoid"] == by_loss["sdm"] == by_loss["infonce"], by_loss
        assert not any("sigmoid" in r for r in by_loss["sigmoid"]), by_loss["sigmoid"]


@pytest.mark.skipif(shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"),
                    reason="nvcc not found")
@pytest.mark.skipif(HAS_CUDA, reason="on a GPU machine the build step (-Xptxas=-v) reports the same, and time is short")
def test_ptxas_no_spills_sm80_sm90(tmp_path):
    """The torch-free kernels compile for sm_80 and sm_90 without register spills or local-memory
    stack (benchmarks/ptxas_report.py writes the full report to benchmarks/results/)."""
    out = tmp_path / "ptxas.txt"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ptxas_report.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = out.read_text()
    kernels = re.findall(r"^\| `([^`]+)` \| (sm_\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|", text, re.M)
    assert len(kernels) >= 32, text[:2000]  # 16 kernels x 2 architectures at least
    names = {k[0] for k in kernels}
    for prefix in ("fwd ", "bwd ", "chunk fwd_rows", "chunk fwd_cols_part", "chunk tile", "chunk reduce_rows"):
        assert any(n.startswith(prefix) for n in names), (prefix, sorted(names)[:20])
    spilling = [k for k in kernels if int(k[4]) or int(k[5])]
    assert not spilling, f"kernels with spills (name, arch, regs, smem, spill bytes, stack): {spilling}"


# -- GPU: against the float64 reference ------------------------------------------------------------

SHAPES = [  # (labels, M, N, E, exclude_self)
    ("repeats", 1, 1, 1, False),
    ("repeats", 7, 7, 16, False),
    ("repeats", 70, 130, 100, False),  # ragged M, N, E: partial tiles everywhere
    ("repeats", 130, 70, 33, False),  # E not a multiple of 16 bytes for fp16: synchronous loads
    ("repeats", 1, 200, 65, False),
    ("repeats", 129, 129, 129, True),
    ("one", 20, 30, 12, False),
    ("unique", 20, 20, 12, False),
    ("repeats", 300, 257, 1024, False),  # E = 1024: many dX chunks
    ("repeats", 40, 150, 24, True),  # exclude_self, M < N: local rows against the gathered columns
    ("repeats", 150, 40, 24, True),
]


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("labels,M,N,E,exclude_self", SHAPES)
@pytest.mark.parametrize("dtype,precision,floor", [
    (torch.float32, "ieee", FLOOR[torch.float32]),
    (torch.float64, "ieee", FLOOR[torch.float64]),
    (torch.float32, "tf32", 5e-3),
])
def test_matches_reference(labels, M, N, E, exclude_self, loss, dtype, precision, floor, monkeypatch):
    monkeypatch.setenv("UCA_CUDA_PRECISION", precision)
    # tf32 products carry ~1e-3 relative error: only the floor bounds it (comparing against the
    # oracle itself makes the "2 x same-dtype reference" term zero)
    check(M, N, E, loss=loss, labels=labels, exclude_self=exclude_self, dtype=dtype, floor=floor,
          against_oracle=precision == "tf32")


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("M,N,E", [(70, 130, 100), (1000, 1200, 256), (130, 70, 33)])
def test_low_precision_within_twice_reference_error(M, N, E, dtype, loss):
    fused, _ = check(M, N, E, loss=loss, dtype=dtype, seed=23, floor=1e-3)
    assert fused[2].dtype == torch.float64  # run_with_grads returns float64 copies


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("scale", [-100.0, 100.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sigmoid_extreme_logits(scale, dtype):
    """|scale| = 100 on distances up to ~1e3 (logits up to ~1e5, far past |S| = 1e3): the stable
    softplus / sigmoid stay finite (assert_matches_oracle checks it) and as accurate as the
    same-dtype reference (floor x 10, as in the CPU backend's test_extreme_scales)."""
    kw = dict(scale=scale, bias=-3.0, spread=60.0, seed=0)
    A, B, r, c, sc, bi, _, _ = make_problem(50, 50, 4, device="cuda", **kw)
    assert (sc * (A @ B.T + r[:, None] + c[None, :]) + bi).abs().max() > 1e4
    check(50, 50, 4, loss="sigmoid", dtype=dtype, floor=FLOOR[dtype] * 10, **kw)


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("loss", ["sdm", "infonce"])
@pytest.mark.parametrize("bias", OFFSET_BIASES)
def test_offset_logits_keep_p_exact(loss, bias):
    """float32 inputs, exact logits around ±1e5: the statistics are float64, so the backward's
    p = exp(S − LSE) is as exact as at |S| ~ 1 (helpers.offset_logit_problem)."""
    check_offset_logits(cuda_fn(loss, False), loss, bias, device="cuda")


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("loss", ["sdm", "sigmoid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_bit_identical_reruns(dtype, loss):
    tensors = make_problem(300, 257, 200, seed=5, device="cuda")
    gr, gc = torch.rand(300, dtype=torch.float64, device="cuda"), torch.rand(257, dtype=torch.float64, device="cuda")
    first = run_with_grads(cuda_fn(loss, False), tensors, gr, gc, dtype)
    second = run_with_grads(cuda_fn(loss, False), tensors, gr, gc, dtype)
    for name, a, b in zip(OUT_NAMES, first, second):
        assert torch.equal(a, b), name


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("loss", ["sdm", "infonce"])
def test_stats_and_rows_without_positives(loss):
    A, B, r, c, sc, bi, la, lb = make_problem(70, 45, 20, labels="repeats", seed=9, device="cuda")
    lb = lb + 3  # some rows and columns lose every positive
    args = [A.float(), B.float(), r.float(), c.float(), sc.float(), bi.float(), la, lb]
    rows, cols, row_stats, col_stats = torch.ops.uca.contrast_forward(*args, loss, False)
    S = sc * (A @ B.T + r[:, None] + c[None, :]) + bi
    pos = la[:, None] == lb[None, :]
    for stats, losses, S_, pos_ in ((row_stats, rows, S, pos), (col_stats, cols, S.T, pos.T)):
        want = stats_oracle(S_, pos_)
        assert torch.equal(stats[:, 1] == float("-inf"), want[:, 1] == float("-inf"))
        finite = want.isfinite()
        torch.testing.assert_close(stats.double()[finite], want[finite], rtol=1e-5, atol=1e-5)
        assert (losses[~pos_.any(1)] == 0).all()


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sigmoid_stats_are_zeros_and_rows_without_positives_keep_their_terms(dtype):
    """The sigmoid forward writes the schema's stats (shape [·, 4], float64) as zeros; rows
    and columns without positives keep their negative terms (loss > 0) and their gradient; the row
    and column losses sum the same pairs."""
    A, B, r, c, sc, bi, la, lb = make_problem(70, 45, 20, labels="repeats", seed=9, device="cuda")
    lb = lb + 3  # some rows and columns lose every positive
    args = [x.to(dtype) for x in (A, B, r, c, sc, bi)] + [la, lb]
    rows, cols, row_stats, col_stats = torch.ops.uca.contrast_forward(*args, "sigmoid", False)
    assert row_stats.shape == (70, 4) and col_stats.shape == (45, 4)
    assert row_stats.dtype == col_stats.dtype == STATS_DTYPE and rows.dtype == dtype
    assert not row_stats.any() and not col_stats.any()
    pos = la[:, None] == lb[None, :]
    lonely_rows, lonely_cols = ~pos.any(1), ~pos.any(0)
    assert lonely_rows.any() and lonely_cols.any()
    assert (rows[lonely_rows] > 0).all() and (cols[lonely_cols] > 0).all()
    torch.testing.assert_close(rows.double().sum(), cols.double().sum(), rtol=1e-6 if dtype == torch.float32 else 1e-13,
                               atol=0)
    g = torch.Generator().manual_seed(10)
    gr = torch.randn(70, generator=g, dtype=torch.float64).cuda()
    gc = torch.randn(45, generator=g, dtype=torch.float64).cuda()
    tensors = [A, B, r, c, sc, bi, la, lb]
    fused = run_with_grads(cuda_fn("sigmoid", False), tensors, gr, gc, dtype)
    oracle = run_with_grads(reference_fn("sigmoid", False), tensors, gr, gc, torch.float64)
    same = run_with_grads(low_reference_fn("sigmoid", False), tensors, gr, gc, dtype)
    assert_matches_oracle(fused, oracle, same, floor=FLOOR[dtype], grad_l1=grad_mass(gr, gc, "sigmoid"))
    assert (fused[2][lonely_rows].abs().sum(1) > 0).all() and (fused[3][lonely_cols].abs().sum(1) > 0).all()


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("labels", ["none", "one"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_sigmoid_diagonal_and_single_identity(labels, exclude_self):
    """labels=None (diagonal positives, the SigLIP setting: the oracle sees the equivalent unique
    labels) and one identity (every valid pair positive), with SigLIP-like scale and bias."""
    def fused_fn(A, B, r, c, sc, bi, la, lb):
        la, lb = (None, None) if labels == "none" else (la, lb)
        return uk.contrast(A, B, r, c, sc, bi, la, lb, loss="sigmoid", exclude_self=exclude_self, backend="cuda")

    check(65, 65, 24, loss="sigmoid", labels="unique" if labels == "none" else "one", exclude_self=exclude_self,
          scale=10.0, bias=-10.0, seed=13, floor=FLOOR[torch.float32], fused_fn=fused_fn)


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_sigmoid_scalar_reduction(reduction):
    """reduction "sum" / "mean" on the CUDA backend (Backend.sigmoid_sum: Σ loss_rows of the two-call
    path) against the float64 reference, forward and every gradient, with an upstream gradient ≠ 1."""
    M, N = 130, 70
    A, B, r, c, sc, bi, la, lb = make_problem(M, N, 33, labels="repeats", seed=17, device="cuda")

    def scalar_and_grads(backend, dtype):
        leaves = [x.to(dtype).detach().requires_grad_() for x in (A, B, r, c, sc, bi)]
        if backend == "reference":
            rows, _ = contrast_reference(*leaves, la, lb, "sigmoid")
            total = rows.sum() if reduction == "sum" else rows.sum() / M
        else:
            total = uk.contrast(*leaves, la, lb, loss="sigmoid", backend=backend, reduction=reduction)
        assert total.dim() == 0
        return [total.double().detach().reshape(1)] + [x.double() for x in torch.autograd.grad(0.7 * total, leaves)]

    fused, oracle, same = (scalar_and_grads(b, d) for b, d in (("cuda", torch.float32), ("reference", torch.float64),
                                                                ("reference", torch.float32)))
    norm = 1.0 if reduction == "sum" else 1.0 / M
    assert_matches_oracle(fused, oracle, same, floor=FLOOR[torch.float32], grad_l1=0.7 * M * N * norm,
                          names=("total",) + LEAVES)


@pytest.mark.gpu
@on_gpu
def test_errors_name_the_problem():
    A = torch.randn(8, 4, device="cuda")
    r = torch.zeros(8, device="cuda")
    s = torch.tensor(1.0, device="cuda")
    la = torch.arange(8, device="cuda")
    with pytest.raises(RuntimeError, match="r must have shape"):
        torch.ops.uca.contrast_forward(A, A, r[:5], r, s, s, la, la, "sdm", False)
    with pytest.raises(RuntimeError, match="loss must be"):
        torch.ops.uca.contrast_forward(A, A, r, r, s, s, la, la, "hinge", False)
    with pytest.raises(RuntimeError, match="labels_b is on|labels_b must"):
        torch.ops.uca.contrast_forward(A, A, r, r, s, s, la, la.cpu(), "sdm", False)


@pytest.mark.gpu
@on_gpu
def test_sigmoid_runs_through_the_op():
    """loss='sigmoid' goes through the schema's ops on CUDA tensors like the other losses (it used
    to be refused): finite losses, zero stats, a backward of the schema's shapes, and the same
    values as the CPU kernel on the same inputs."""
    A = torch.randn(8, 4, device="cuda")
    r = torch.zeros(8, device="cuda")
    s = torch.tensor(1.0, device="cuda")
    la = torch.arange(8, device="cuda") % 3
    rows, cols, rs, cs = torch.ops.uca.contrast_forward(A, A, r, r, s, s, la, la, "sigmoid", True)
    assert rows.shape == cols.shape == (8,) and rs.shape == cs.shape == (8, 4)
    assert torch.isfinite(rows).all() and torch.isfinite(cols).all() and not rs.any() and not cs.any()
    g = torch.rand(8, device="cuda")
    out = torch.ops.uca.contrast_backward(g, g, A, A, r, r, s, s, la, la, rows, cols, rs, cs, "sigmoid", True)
    assert [tuple(x.shape) for x in out] == [(8, 4), (8, 4), (8,), (8,), (), ()]
    cpu = torch.ops.uca.contrast_forward(*(x.cpu() for x in (A, A, r, r, s, s, la, la)), "sigmoid", True)
    for x, y in zip((rows, cols), cpu[:2]):
        torch.testing.assert_close(x.cpu(), y, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("loss", ["sdm", "sigmoid"])
@pytest.mark.parametrize("chunk_rows", [-1, 64])
def test_peak_extra_memory_below_one_percent_of_reference(loss, chunk_rows):
    """Extra memory at M = N = 8192 (float32): the tile kernels (chunk_rows -1) and the chunked path
    with 64-row chunks (a 2 MiB chunk buffer; the default 1 GiB budget would hold all of S here)."""
    M = N = 8192
    tensors = make_problem(M, N, 256, seed=47, device="cuda")
    gr = torch.ones(M, dtype=torch.float64, device="cuda")
    gc = torch.ones(N, dtype=torch.float64, device="cuda")
    extra = {}
    for name, fn in (("cuda", chunked_fn(loss, False, chunk_rows)), ("reference", low_reference_fn(loss, False))):
        run_with_grads(fn, tensors, gr, gc, torch.float32)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = run_with_grads(fn, tensors, gr, gc, torch.float32)
        torch.cuda.synchronize()
        kept = sum(x.numel() * x.element_size() for x in out if x is not None)
        extra[name] = torch.cuda.max_memory_allocated() - base - kept
        del out
    assert extra["cuda"] <= 0.01 * extra["reference"], extra


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("loss", LOSSES)
def test_mean_reduced_fp16_gradients_do_not_underflow(loss):
    """fp16 features at B = 8192 with mean-reduced upstream gradients (g = 1/B): a negative pair's
    dT ~ g/N ~ 1.5e-8 is below fp16's smallest subnormal, while dA = dT·B is representable. The
    backward runs on power-of-two-scaled gradients (_registry.grad_prescale): dA within twice the
    error of the float64 oracle's own rounding to fp16. Features share a direction (as embeddings
    do), so the negatives' sum matters."""
    n, E = 8192, 64
    g = torch.Generator().manual_seed(9)
    common = torch.randn(E, generator=g, dtype=torch.float64)
    A, B = ((common + 0.1 * torch.randn(n, E, generator=g, dtype=torch.float64)).half().double().cuda()
            for _ in range(2))
    r, c = torch.zeros(n, dtype=torch.float64, device="cuda"), torch.zeros(n, dtype=torch.float64, device="cuda")
    sc, bi = torch.tensor(0.05, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    labels = torch.arange(n, device="cuda")
    tensors = [A, B, r, c, sc.cuda(), bi.cuda(), labels, labels]
    gr = gc = torch.full((n,), 1.0 / n, dtype=torch.float64, device="cuda")
    got = run_with_grads(cuda_fn(loss, False), tensors, gr, gc, torch.float16, requires=(True,) + (False,) * 5)[2]
    want = run_with_grads(reference_fn(loss, False), tensors, gr, gc, torch.float64,
                          requires=(True,) + (False,) * 5)[2]
    size = float(want.abs().max())
    err = float((got - want).abs().max()) / size
    err_rounding = float((want.half().double() - want).abs().max()) / size
    assert err <= 2 * err_rounding, (err, err_rounding)


# -- GPU: the chunked path, pinned chunk sizes ------------------------------------------------------


def chunked_fn(loss, exclude_self, chunk_rows, precision="ieee"):
    """The op itself with an explicit chunk_rows (autograd hands the backward the same value)."""

    def fn(A, B, r, c, sc, bi, la, lb):
        out = torch.ops.uca.contrast_forward(A, B, r, c, sc, bi, la, lb, loss, exclude_self, precision, chunk_rows)
        return out[0], out[1]

    return fn


def op_labels(labels, M, N, la, lb):
    """'none': the diagonal positives the library passes for labels=None (arange on both sides)."""
    if labels == "none":
        return torch.arange(M, device=la.device), torch.arange(N, device=lb.device)
    return la, lb


CHUNK_SHAPES = [(70, 130, 33), (130, 70, 100)]  # M < N and M > N, ragged E
CHUNK_ROWS = [1, 7, 64, 1000]  # one row, not dividing M, a multiple of the tile rows, >= M


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("chunk_rows", CHUNK_ROWS)
@pytest.mark.parametrize("M,N,E", CHUNK_SHAPES)
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("labels", ["none", "repeats", "one"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_matches_reference(dtype, loss, labels, exclude_self, M, N, E, chunk_rows):
    """Forward and every gradient of the chunked path against the float64 reference: every loss x
    labels x exclude_self (the GLOBAL row index decides i == j, so a chunk boundary must not shift it)
    x M != N x ragged chunks."""

    def fused(A, B, r, c, sc, bi, la, lb):
        la, lb = op_labels(labels, M, N, la, lb)
        return chunked_fn(loss, exclude_self, chunk_rows)(A, B, r, c, sc, bi, la, lb)

    def oracle(A, B, r, c, sc, bi, la, lb):
        la, lb = op_labels(labels, M, N, la, lb)
        return contrast_reference(A, B, r, c, sc, bi, la, lb, loss, exclude_self)

    check(M, N, E, loss=loss, labels="unique" if labels == "none" else labels, exclude_self=exclude_self, dtype=dtype,
          floor=FLOOR[dtype], fused_fn=fused, oracle_fn=oracle)


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("chunk_rows", [7, 0])
def test_chunked_tf32_within_floor(loss, chunk_rows):
    """precision "tf32": the cuBLAS GEMMs run on TF32 tensor cores (~1e-3 relative products)."""
    check(130, 70, 100, loss=loss, dtype=torch.float32, floor=5e-3, against_oracle=True,
          fused_fn=chunked_fn(loss, False, chunk_rows, "tf32"))


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("M,N,E,chunk_rows", [(70, 130, 100, 7), (1000, 1200, 256, 0), (1000, 1200, 256, 300)])
def test_chunked_low_precision_within_twice_reference_error(dtype, loss, exclude_self, M, N, E, chunk_rows):
    """fp16/bf16 features: fp32 GEMM output, dT rounded to the feature dtype for the dX GEMMs
    (pre-scaled: _registry.grad_prescale); each output within 2x the same-dtype reference's error."""
    check(M, N, E, loss=loss, dtype=dtype, seed=23, floor=1e-3, exclude_self=exclude_self,
          fused_fn=chunked_fn(loss, exclude_self, chunk_rows))


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("chunk_rows", [37, 0])
def test_chunked_bit_identical_reruns(dtype, loss, chunk_rows):
    tensors = make_problem(300, 257, 200, seed=5, device="cuda")
    gr, gc = torch.rand(300, dtype=torch.float64, device="cuda"), torch.rand(257, dtype=torch.float64, device="cuda")
    first = run_with_grads(chunked_fn(loss, True, chunk_rows), tensors, gr, gc, dtype)
    second = run_with_grads(chunked_fn(loss, True, chunk_rows), tensors, gr, gc, dtype)
    for name, a, b in zip(OUT_NAMES, first, second):
        assert torch.equal(a, b), name


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_results_do_not_depend_on_the_chunk_size(dtype, loss):
    """The same problem with 1, 37, 256 and all rows per chunk: only the order of float sums differs
    (column statistics merged per segment, partial sums per block), so every output agrees within
    the dtype's floor (relative to its largest magnitude; dbias to the gradient mass)."""
    M, N = 300, 257
    tensors = make_problem(M, N, 64, seed=11, device="cuda")
    g = torch.Generator().manual_seed(12)
    gr, gc = (torch.randn(n, generator=g, dtype=torch.float64).cuda() for n in (M, N))
    runs = {k: run_with_grads(chunked_fn(loss, True, k), tensors, gr, gc, dtype) for k in (1, 37, 256, 0)}
    mass = {"bias": grad_mass(gr, gc, loss)}
    for k in (1, 37, 256):
        for name, x, y in zip(OUT_NAMES, runs[k], runs[0]):
            err = float((x - y).abs().max()) / mass.get(name, float(y.abs().max().clamp_min(1e-2)))
            assert err <= FLOOR[dtype], (k, name, err)


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_tiles_and_chunked_agree(dtype, loss):
    """The two designs (chunk_rows -1: tile kernels; 0 and 50: chunked) on one problem, each within
    the shared rule against the float64 reference; in float32 / float64 also with each other within
    twice the floor (fp16: the rule alone, its same-dtype reference error exceeds any fixed floor)."""
    M, N, E = 130, 200, 48
    fused = {}
    for k in (-1, 0, 50):
        fused[k], _ = check(M, N, E, loss=loss, dtype=dtype, seed=41, exclude_self=True,
                            floor=1e-3 if dtype == torch.float16 else FLOOR[dtype], fused_fn=chunked_fn(loss, True, k))
    if dtype == torch.float16:
        return
    for k in (0, 50):
        for name, x, y in zip(OUT_NAMES, fused[-1], fused[k]):
            if name != "bias":  # exactly 0 in exact arithmetic: measured against the gradient mass in check()
                assert max_rel_err(x, y) <= 2 * FLOOR[dtype], (k, name)


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("chunk_rows", [-1, 0, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_sigmoid_loss_and_grads_op(chunk_rows, dtype, exclude_self):
    """The one-sweep sigmoid op (Σ pair losses and its unit-weight gradients; tiles: forward + backward
    with g_row = 1, g_col = 0) against the float64 reference's scalar and gradients."""
    M, N = 130, 70
    A, B, r, c, sc, bi, la, lb = make_problem(M, N, 33, labels="repeats", seed=17, device="cuda",
                                              exclude_self=exclude_self)
    acc = torch.float64 if dtype == torch.float64 else torch.float32

    def run(kind, dt):
        leaves = [A.to(dt), B.to(dt)] + [x.to(acc if dt != torch.float64 else dt) for x in (r, c, sc, bi)]
        if kind == "op":
            out = torch.ops.uca.sigmoid_loss_and_grads(*leaves, la, lb, exclude_self, "ieee", chunk_rows)
            return [x.double() for x in out]
        leaves = [x.detach().requires_grad_() for x in leaves]
        rows, _ = contrast_reference(*leaves, la, lb, "sigmoid", exclude_self)
        total = rows.sum()
        return [total.double().detach()] + [g.double() for g in torch.autograd.grad(total, leaves)]

    fused, oracle, same = run("op", dtype), run("ref", torch.float64), run("ref", dtype)
    assert_matches_oracle([x.reshape(-1) for x in fused], [x.reshape(-1) for x in oracle],
                          [x.reshape(-1) for x in same], floor=1e-3 if dtype == torch.bfloat16 else FLOOR[dtype],
                          grad_l1=float(M * N), names=("total",) + LEAVES)


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("exclude_self", [False, True])
def test_opcheck(exclude_self):
    """Every op of the schema, both designs (chunk_rows 3 and 0: chunked; -1: tile kernels)."""
    A, B, r, c, sc, bi, la, lb = make_problem(9, 7, 5, seed=31, device="cuda")
    args = [A.float(), B.float(), r.float(), c.float(), sc.float(), bi.float(), la, lb]
    for x in args[:6]:
        x.requires_grad_(True)
    plain = [a.detach() for a in args]
    grads = (torch.rand(9, device="cuda"), torch.rand(7, device="cuda"))
    for chunk_rows in (3, 0, -1):
        for loss in LOSSES:
            torch.library.opcheck(torch.ops.uca.contrast_forward.default,
                                  (*args, loss, exclude_self, "ieee", chunk_rows))
            out = torch.ops.uca.contrast_forward(*plain, loss, exclude_self, "ieee", chunk_rows)
            torch.library.opcheck(torch.ops.uca.contrast_backward.default,
                                  (*grads, *plain, *out, loss, exclude_self, "ieee", chunk_rows))
        torch.library.opcheck(torch.ops.uca.sigmoid_loss_and_grads.default, (*args, exclude_self, "ieee", chunk_rows))


@pytest.mark.gpu
@on_gpu
def test_chunked_errors_name_the_problem():
    A = torch.randn(8, 4, device="cuda")
    r = torch.zeros(8, device="cuda")
    s = torch.tensor(1.0, device="cuda")
    la = torch.arange(8, device="cuda")
    with pytest.raises(RuntimeError, match="precision must be"):
        torch.ops.uca.contrast_forward(A, A, r, r, s, s, la, la, "sdm", False, "fast", 4)
    with pytest.raises(RuntimeError, match="loss must be"):
        torch.ops.uca.contrast_forward(A, A, r, r, s, s, la, la, "hinge", False, "ieee", 4)
    with pytest.raises(RuntimeError, match="precision must be"):
        torch.ops.uca.sigmoid_loss_and_grads(A, A, r, r, s, s, la, la, False, "fast", 4)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and BUILT) or shutil.which("compute-sanitizer") is None,
                    reason="needs a CUDA device, a CUDA build and compute-sanitizer")
@pytest.mark.parametrize("tool", ["memcheck", "racecheck", "synccheck"])
@pytest.mark.parametrize("chunk_rows", [-1, 7])
def test_compute_sanitizer(tool, chunk_rows):
    """Out-of-bounds accesses (memcheck), shared-memory races (racecheck) and barrier misuse
    (synccheck) on a ragged problem (70 x 130 rows, E = 33: partial tiles, the synchronous copy
    path), forward and backward of every loss, for both designs: the tile kernels (chunk_rows -1)
    and the chunked path (7 rows per chunk: a ragged last chunk), float32 and float16 features
    (the rounded dT copy), with exclude_self; and the one-sweep sigmoid op."""
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, 'tests')
        import torch, uca_kernels as uk
        from helpers import make_problem
        t = make_problem(70, 130, 33, seed=3, device='cuda')
        for dt in (torch.float32, torch.float16):
            x = [t[0].to(dt), t[1].to(dt)] + [v.float() for v in t[2:6]]
            [v.requires_grad_(True) for v in x]
            for loss in ('sdm', 'infonce', 'sigmoid'):
                for excl in (False, True):
                    o = torch.ops.uca.contrast_forward(*x, t[6], t[7], loss, excl, 'ieee', {chunk_rows})
                    (o[0].sum() + 2 * o[1].sum()).backward()
            torch.ops.uca.sigmoid_loss_and_grads(*[v.detach() for v in x], t[6], t[7], True, 'ieee', {chunk_rows})
        torch.cuda.synchronize(); print('ok')
    """)
    proc = subprocess.run(["compute-sanitizer", "--tool", tool, "--error-exitcode", "3", sys.executable, "-c", code],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
