"""How the GPU backends multiply float32 features unless told otherwise: as PyTorch's own setting says.

``torch.get_float32_matmul_precision()`` is what a user already sets for every other float32 matmul
(``torch.set_float32_matmul_precision("high")`` turns on TF32): "highest" → "ieee" (exact float32
products), "high" / "medium" → "tf32". The environment variables ``UCA_CUDA_PRECISION`` /
``UCA_TRITON_PRECISION`` (and Triton's setter) override it, for builds and tests. The CPU kernels
have "ieee" only. A leaf module: it imports only torch.
"""

from __future__ import annotations

import os

import torch

__all__ = ["FROM_TORCH", "default_precision", "precision_from_env"]

FROM_TORCH = {"highest": "ieee", "high": "tf32", "medium": "tf32"}


@torch.compiler.assume_constant_result  # torch.compile: read once while tracing, a constant in the graph
def default_precision() -> str:
    """The op's float32 precision that PyTorch's float32 matmul precision asks for."""
    return FROM_TORCH.get(torch.get_float32_matmul_precision(), "ieee")


def precision_from_env(variable: str, allowed: tuple[str, ...]) -> str:
    """``variable``'s value when set (checked against ``allowed``), else :func:`default_precision`.

    Raises:
        ValueError: the variable holds a value not in ``allowed`` (the message names it).
    """
    value = os.environ.get(variable, "").strip()
    if not value:
        return default_precision()
    if value not in allowed:
        raise ValueError(f"{variable}={value!r} is not one of {', '.join(map(repr, allowed))}")
    return value
