"""The CUDA C++ backend (csrc/cuda) against the float64 reference.

Everything that runs kernels needs a CUDA device and an extension built with CUDA sources; without
them those tests are skipped and only the build checks run (the kernel is registered for the CUDA
dispatch key; ptxas reports no spills for sm_80 and sm_90).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import uca_kernels as uk
from uca_kernels import _ext, contrast_reference, dispatch
from helpers import assert_matches_oracle, make_problem, reference_fn, run_with_grads

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
BUILT = _ext.built_with_cuda()
on_gpu = pytest.mark.skipif(not (HAS_CUDA and BUILT), reason="needs a CUDA device and uca_kernels._C built with CUDA")
LEAVES = ("A", "B", "r", "c", "scale", "bias")
OUT_NAMES = ("loss_rows", "loss_cols") + LEAVES


def cuda_fn(loss, exclude_self):
    def fn(A, B, r, c, sc, bi, la, lb):
        return uk.contrast(A, B, r, c, sc, bi, la, lb, loss=loss, exclude_self=exclude_self, backend="cuda")

    return fn


def low_reference_fn(loss, exclude_self):
    """The materialised reference in the features' own dtype (fp16/bf16 GEMM on the GPU)."""

    def fn(A, B, r, c, sc, bi, la, lb):
        return contrast_reference(A, B, r, c, sc, bi, la, lb, loss, exclude_self)

    return fn


def compare(M, N, E, *, loss, labels="repeats", exclude_self=False, dtype=torch.float32, scale=-0.5, seed=0,
            spread=1.0):
    """(fused, float64 oracle, same-dtype reference, Σ|upstream|) on the GPU, all as float64."""
    tensors = make_problem(M, N, E, labels=labels, scale=scale, seed=seed, exclude_self=exclude_self,
                           spread=spread, device="cuda")
    if dtype in (torch.float16, torch.bfloat16):  # inputs exactly representable in dtype
        tensors[0], tensors[1] = tensors[0].to(dtype).double(), tensors[1].to(dtype).double()
    g = torch.Generator().manual_seed(seed + 1)
    gr = torch.randn(M, generator=g, dtype=torch.float64).cuda()
    gc = torch.randn(N, generator=g, dtype=torch.float64).cuda()
    oracle = run_with_grads(reference_fn(loss, exclude_self), tensors, gr, gc, torch.float64)
    same = run_with_grads(low_reference_fn(loss, exclude_self), tensors, gr, gc, dtype)
    fused = run_with_grads(cuda_fn(loss, exclude_self), tensors, gr, gc, dtype)
    return fused, oracle, same, float(gr.abs().sum() + gc.abs().sum())


# -- build checks (no GPU needed) ------------------------------------------------------------------


@pytest.mark.skipif(not BUILT, reason="uca_kernels._C was built without CUDA sources")
def test_cuda_kernels_are_registered():
    for op in ("uca::contrast_forward", "uca::contrast_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"), op


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


def test_sigmoid_is_not_offered_by_the_cuda_backend():
    """The CUDA kernels implement the softmax losses only: dispatch says so, even when named."""
    meta = torch.empty(4, 4, device="meta")
    reasons = dispatch.get_backend("cuda").not_supported_reasons(A=meta, B=meta, loss="sigmoid", exclude_self=False,
                                                                 explicit=True)
    assert any("do not implement loss='sigmoid'" in r for r in reasons)


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
]


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("loss", ["sdm", "infonce"])
@pytest.mark.parametrize("labels,M,N,E,exclude_self", SHAPES)
@pytest.mark.parametrize("dtype,precision,floor", [
    (torch.float32, "ieee", 5e-5),
    (torch.float64, "ieee", 1e-10),
    (torch.float32, "tf32", 5e-3),
])
def test_matches_reference(labels, M, N, E, exclude_self, loss, dtype, precision, floor, monkeypatch):
    monkeypatch.setenv("UCA_CUDA_PRECISION", precision)
    fused, oracle, same, mass = compare(M, N, E, loss=loss, labels=labels, exclude_self=exclude_self, dtype=dtype)
    # tf32 products carry ~1e-3 relative error: only the floor bounds it (comparing against the
    # oracle itself makes the "2 x same-dtype reference" term zero)
    assert_matches_oracle(fused, oracle, same if precision == "ieee" else oracle, floor=floor, grad_l1=mass)


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss", ["sdm", "infonce"])
@pytest.mark.parametrize("M,N,E", [(70, 130, 100), (1000, 1200, 256), (130, 70, 33)])
def test_low_precision_within_twice_reference_error(M, N, E, dtype, loss):
    fused, oracle, same, mass = compare(M, N, E, loss=loss, dtype=dtype, seed=23)
    assert fused[2].dtype == torch.float64  # run_with_grads returns float64 copies
    assert_matches_oracle(fused, oracle, same, floor=1e-3, grad_l1=mass)


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_bit_identical_reruns(dtype):
    tensors = make_problem(300, 257, 200, seed=5, device="cuda")
    gr, gc = torch.rand(300, dtype=torch.float64, device="cuda"), torch.rand(257, dtype=torch.float64, device="cuda")
    first = run_with_grads(cuda_fn("sdm", False), tensors, gr, gc, dtype)
    second = run_with_grads(cuda_fn("sdm", False), tensors, gr, gc, dtype)
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
        want = torch.stack([S_.logsumexp(1), S_.masked_fill(~pos_, float("-inf")).logsumexp(1), pos_.sum(1).double()], 1)
        assert torch.equal(stats[:, 1] == float("-inf"), want[:, 1] == float("-inf"))
        finite = want.isfinite()
        torch.testing.assert_close(stats.double()[finite], want[finite], rtol=1e-5, atol=1e-5)
        assert (losses[~pos_.any(1)] == 0).all()


@pytest.mark.gpu
@on_gpu
def test_opcheck():
    A, B, r, c, sc, bi, la, lb = make_problem(9, 7, 5, seed=31, device="cuda")
    args = [A.float(), B.float(), r.float(), c.float(), sc.float(), bi.float(), la, lb]
    for x in args[:6]:
        x.requires_grad_(True)
    for loss in ("sdm", "infonce"):
        torch.library.opcheck(torch.ops.uca.contrast_forward.default, (*args, loss, False))
    plain = [a.detach() for a in args]
    out = torch.ops.uca.contrast_forward(*plain, "sdm", False)
    grads = (torch.rand(9, device="cuda"), torch.rand(7, device="cuda"))
    torch.library.opcheck(torch.ops.uca.contrast_backward.default, (*grads, *plain, *out, "sdm", False))


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
    with pytest.raises(RuntimeError, match="loss='sigmoid' is not implemented by the CUDA kernels"):
        torch.ops.uca.contrast_forward(A, A, r, r, s, s, la, la, "sigmoid", False)
    with pytest.raises(RuntimeError, match="labels_b is on|labels_b must"):
        torch.ops.uca.contrast_forward(A, A, r, r, s, s, la, la.cpu(), "sdm", False)


@pytest.mark.gpu
@on_gpu
def test_peak_extra_memory_below_one_percent_of_reference():
    M = N = 8192
    tensors = make_problem(M, N, 256, seed=47, device="cuda")
    gr = torch.ones(M, dtype=torch.float64, device="cuda")
    gc = torch.ones(N, dtype=torch.float64, device="cuda")
    extra = {}
    for name, fn in (("cuda", cuda_fn("sdm", False)), ("reference", low_reference_fn("sdm", False))):
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
@pytest.mark.skipif(not (HAS_CUDA and BUILT) or shutil.which("compute-sanitizer") is None,
                    reason="needs a CUDA device, a CUDA build and compute-sanitizer")
def test_compute_sanitizer_memcheck():
    code = (
        "import sys; sys.path.insert(0, 'tests'); import torch, uca_kernels as uk; from helpers import make_problem;"
        "t = make_problem(70, 130, 33, seed=3, device='cuda');"
        "[x.requires_grad_(True) for x in t[:6]];"
        "rows, cols = uk.contrast(*t, loss='sdm', backend='cuda'); (rows.sum() + cols.sum()).backward();"
        "torch.cuda.synchronize(); print('ok')"
    )
    proc = subprocess.run(["compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "3", sys.executable, "-c", code],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
