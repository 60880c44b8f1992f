"""Backend.precision() of the GPU backends follows torch.get_float32_matmul_precision(); the
environment variables still override it (asked of the backends, no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from uca_kernels.backends import get_backend


@pytest.fixture
def matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("backend, variable", [("cuda", "UCA_CUDA_PRECISION"),
                                               ("triton", "UCA_TRITON_PRECISION")])
def test_gpu_backends_follow_torch_unless_told(matmul_precision, monkeypatch, backend, variable):
    if backend == "triton":
        triton_contrast = pytest.importorskip("uca_kernels.triton_contrast")
        monkeypatch.setattr(triton_contrast, "_precision_override", None)
    monkeypatch.delenv(variable, raising=False)
    impl = get_backend(backend)
    matmul_precision("highest")
    assert impl.precision() == "ieee"
    matmul_precision("high")
    assert impl.precision() == "tf32"
    monkeypatch.setenv(variable, "ieee")
    assert impl.precision() == "ieee"
    assert get_backend("cpu").precision() == "ieee"  # the CPU kernels have exact products only
