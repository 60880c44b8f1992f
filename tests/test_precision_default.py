"""The GPU backends' float32 precision follows PyTorch's own setting unless an environment variable says otherwise."""

from __future__ import annotations

import pytest
import torch

from uca_kernels._precision import default_precision, precision_from_env


@pytest.fixture
def matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("torch_setting, want", [("highest", "ieee"), ("high", "tf32"), ("medium", "tf32")])
def test_default_follows_torch(matmul_precision, monkeypatch, torch_setting, want):
    matmul_precision(torch_setting)
    monkeypatch.delenv("UCA_CUDA_PRECISION", raising=False)
    assert default_precision() == want
    assert precision_from_env("UCA_CUDA_PRECISION", ("ieee", "tf32")) == want


def test_environment_overrides_torch(matmul_precision, monkeypatch):
    matmul_precision("high")
    monkeypatch.setenv("UCA_CUDA_PRECISION", "ieee")
    assert precision_from_env("UCA_CUDA_PRECISION", ("ieee", "tf32")) == "ieee"
    monkeypatch.setenv("UCA_CUDA_PRECISION", "fast")
    with pytest.raises(ValueError, match="UCA_CUDA_PRECISION='fast' is not one of 'ieee', 'tf32'"):
        precision_from_env("UCA_CUDA_PRECISION", ("ieee", "tf32"))
