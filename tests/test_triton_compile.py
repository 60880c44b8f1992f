"""The Triton kernels compile for a Hopper GPU (sm_90) in every dtype, precision and loss, row and
column launches, within a block's shared memory, and the chunked path's epilogue kernels for an Ampere
one (sm_80) too, on any machine: Triton's front end, LLVM and its
bundled ptxas run without a GPU. The interpreter that runs the other Triton tests on the CPU never
runs the front end, so it passed kernels that did not compile on an H200 (float64 ``tl.dot`` under
Triton 3.6)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia")

SCRIPT = """
from uca_kernels.triton_contrast import compile_for_target
for line in compile_for_target(90) + compile_for_target(80, designs=("chunked",)):
    print(line)
"""


def test_every_kernel_variant_compiles_for_sm90_and_the_chunked_ones_for_sm80(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compile for real, not from a cache
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    # tiles, sm_90: (fp16, bf16, fp64: 1 precision; fp32: ieee and tf32) x (row launches: 2 per loss; SDM's
    # column launches: 2); chunked, sm_90 and sm_80: fp32, fp64: 4 epilogue kernels per loss; fp16, bf16: the backward
    chunked = 2 * 3 * 4 + 2 * 3
    assert len(lines) == 5 * (2 * 3 + 2) + 2 * chunked, out.stdout
    assert sum("chunked" in line and "sm_80" in line for line in lines) == chunked
    failed = [line for line in lines if not line.startswith("ok ")]
    assert not failed, "\n".join(failed)
