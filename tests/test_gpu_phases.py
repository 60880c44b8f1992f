"""The GPU check's Python parts (benchmarks/gpu_check.sh) run their code paths on the CPU at tiny
sizes, Triton in its interpreter: the headline (every provider, the ratio tables, the targets, the
files), the profiler step, the training step, the per-launch timing; and the chunked plain-PyTorch
provider the fused path is compared with computes the library's loss."""

from __future__ import annotations

import csv
import json

import pytest
import torch

pytest.importorskip("triton")
from uca_kernels import triton_contrast as tc  # noqa: E402

interpreter_only = pytest.mark.skipif(
    torch.cuda.is_available() or not tc.INTERPRET,
    reason="the dry run uses Triton's CPU interpreter (a GPU runs it in gpu_check.sh)")


@interpreter_only
def test_dry_run_times_every_launch(tmp_path):
    from benchmarks import gpu_phases

    assert gpu_phases.main(["--device", "cpu", "--dry", "--dtypes", "float32", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "gpu-phases.json").read_text())["rows"]
    phases = {(r["backend"], r["phase"]) for r in rows}
    assert phases == {("torch", "one matmul"), ("triton", "forward op"), ("triton", "backward op"),
                      ("triton", "fwd rows"), ("triton", "fwd cols"), ("triton", "bwd rows"), ("triton", "bwd cols")}
    assert all(r["ms"] > 0 and r["per_matmul"] > 0 for r in rows)
    assert "| triton | bwd rows | float32 | 40 |" in (tmp_path / "gpu-phases.md").read_text()


@interpreter_only
def test_gpu_headline_dry_run_writes_every_provider_and_the_ratios(tmp_path, monkeypatch):
    """Two cases, both passes of providers, the large-batch step: every provider is measured or
    skipped with its reason, each measured row carries its ratio to the floor of the same run, and
    the markdown has the targets, the ratio tables and every row."""
    from benchmarks import gpu_headline

    monkeypatch.setenv("UCA_BENCH_TRITON_CPU", "1")
    argv = ["--device", "cpu", "--dry", "--out", str(tmp_path), "--name", "h", "--cases", "w2-sdm,clip-sigmoid",
            "--dtypes", "float32", "--batches", "8,16", "--large-batch", "32"]
    assert gpu_headline.main(argv) == 0
    data = json.loads((tmp_path / "h.json").read_text())
    rows = data["rows"]
    by = {}
    for r in rows:
        by.setdefault(r["provider"], []).append(r)
    ok = {p for p, rs in by.items() if any(r["status"] == "ok" and not r.get("large_batch") for r in rs)}
    assert {"matmul4", "triton", "reference", "chunked"} <= ok
    assert all(r["status"] == "skipped" and "CUDA" in r["reason"] for r in by["cuda"] + by["cuda-tiles"])
    # the tile kernels: measured where the op takes chunk_rows, else skipped with that reason
    assert all(r["status"] == "ok" or "chunk_rows" in r.get("reason", "") for r in by["triton-tiles"])
    assert all(r["status"] == "skipped" for r in by["compile"])  # not run in a dry run
    # open_clip only on the clip-sigmoid case (measured where installed, else skipped with the reason)
    assert {r["case_group"] for r in by.get("open_clip", [])} <= {"clip-sigmoid"}
    # the non-fused providers stop at --b-max-others (8 in a dry run); the fused and the floor go on
    assert max(r["B"] for r in by["reference"] if r["status"] == "ok") == 8
    assert max(r["B"] for r in by["triton"] if r["status"] == "ok" and not r.get("large_batch")) == 16
    for r in rows:
        if r["status"] == "ok" and r["provider"] != "matmul4" and not r.get("large_batch"):
            assert r["time_over_matmul4"] > 0 and r["design"] in (None, "chunked", "tiles"), r
    large = [r for r in rows if r.get("large_batch")]
    assert {r["provider"] for r in large} == {"triton", "cuda"} and large[0]["B"] == 32
    assert next(r for r in large if r["provider"] == "triton")["status"] == "ok"
    with open(tmp_path / "h.csv") as f:
        assert "time_over_matmul4" in next(csv.reader(f))
    md = (tmp_path / "h.md").read_text()
    for part in ("## Targets", "### E = 16, float32: time ÷ four matmuls", "peak extra memory", "## All rows",
                 "B = 32 runs on one card", "| clip-sigmoid | 8 | 1 ("):
        assert part in md, part
    assert (tmp_path / "h.png").stat().st_size > 10_000


@interpreter_only
def test_gpu_profile_dry_run_appends_a_table_per_backend(tmp_path, monkeypatch):
    from benchmarks import gpu_profile

    out = tmp_path / "p.txt"
    assert gpu_profile.main(["--device", "cpu", "--dry", "--out", str(out), "--dtypes", "float32",
                             "--backends", "triton,cuda"]) == 0
    text = out.read_text()
    assert "## triton (" in text and "GEMM" in text and "Self CPU" in text
    assert "## cuda (" in text and "skipped" in text


@pytest.mark.slow
def test_train_step_dry_run_builds_the_preset_and_times_a_step(tmp_path):
    pytest.importorskip("transformers")
    from benchmarks import train_step

    out = tmp_path / "t.txt"
    assert train_step.main(["--device", "cpu", "--dry", "--steps", "1", "--backends", "cpu,cuda",
                            "--out", str(out)]) == 0
    text = out.read_text()
    assert "- `cpu` (cpu):" in text and "ms per step" in text and "pcl_intra_text" in text and "amlr" in text
    assert "- `cuda`: skipped" in text


@pytest.mark.parametrize("loss", ["sdm", "infonce", "sigmoid"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_chunked_provider_equals_the_reference(loss, exclude_self):
    """benchmarks.providers.chunked_contrast (row chunks of 5 rows, not dividing M = 37) gives the
    library's mean loss and its gradients, in float64, to rounding."""
    from benchmarks.providers import chunked_contrast
    from uca_kernels.reference import contrast_reference

    g = torch.Generator().manual_seed(0)
    M, E = 37, 9
    A = torch.randn(M, E, generator=g, dtype=torch.float64, requires_grad=True)
    B = (A.detach() + 0.3 * torch.randn(M, E, generator=g, dtype=torch.float64)).requires_grad_()
    r, c = torch.randn(M, generator=g, dtype=torch.float64), torch.randn(M, generator=g, dtype=torch.float64)
    labels = torch.arange(M) // 3  # every row has a positive, also without itself
    scale, bias = torch.tensor(2.0, dtype=torch.float64), torch.tensor(-1.0, dtype=torch.float64)
    rows, cols = contrast_reference(A, B, r, c, scale, bias, labels, labels, loss, exclude_self)
    want = rows.sum() / M if loss == "sigmoid" else rows.mean() + cols.mean()
    got = chunked_contrast(A, B, r, c, 2.0, -1.0, labels, labels, loss, exclude_self, rows=5)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    for x, y in zip(torch.autograd.grad(got, (A, B)), torch.autograd.grad(want, (A, B))):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_chunked_provider_passes_the_benchmark_check():
    """On the benchmark's own cases (float32, the float64 reference as the oracle)."""
    from benchmarks.cases import Case
    from benchmarks.harness import check

    for case in (Case("dist", 8, True, metric="kl", loss="infonce"),
                 Case("clip", 16, True, loss="sigmoid", diagonal=True),
                 Case("point", 16, True, K=4, intra=True, loss="sdm")):
        res = check("chunked", case, 32, "cpu")
        assert res["check_ok"], (case.name, res)
