"""benchmarks/gpu_phases.py, the per-launch timing of the GPU backends, runs its code path on the
CPU (Triton's interpreter, tiny sizes) and writes one row per launch and op."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("triton")
from uca_kernels import triton_contrast as tc  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available() or not tc.INTERPRET,
                                reason="the dry run uses Triton's CPU interpreter (a GPU runs it in gpu_check.sh)")


def test_dry_run_times_every_launch(tmp_path):
    from benchmarks import gpu_phases

    assert gpu_phases.main(["--device", "cpu", "--dry", "--dtypes", "float32", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "gpu-phases.json").read_text())["rows"]
    phases = {(r["backend"], r["phase"]) for r in rows}
    assert phases == {("torch", "one matmul"), ("triton", "forward op"), ("triton", "backward op"),
                      ("triton", "fwd rows"), ("triton", "fwd cols"), ("triton", "bwd rows"), ("triton", "bwd cols")}
    assert all(r["ms"] > 0 and r["per_matmul"] > 0 for r in rows)
    assert "| triton | bwd rows | float32 | 40 |" in (tmp_path / "gpu-phases.md").read_text()
