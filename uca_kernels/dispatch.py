"""One place that decides which backend runs the contrast op.

Order of choice: an explicit ``backend=`` argument, else the ``UCA_BACKEND`` environment variable,
else the first backend in :data:`PRIORITY` whose :meth:`Backend.not_supported_reasons` is empty.
An explicit choice that cannot run, or no backend that can, raises ``ValueError`` listing every
backend's reasons.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from . import _ext

__all__ = ["Backend", "PRIORITY", "backend_names", "get_backend", "select", "usable_backends"]


@dataclass(frozen=True)
class Backend:
    """A backend of the contrast op; subclasses say what they support and how to run it."""

    name: str

    def not_supported_reasons(
        self, *, A: torch.Tensor, B: torch.Tensor, loss: str, exclude_self: bool, explicit: bool = False
    ) -> list[str]:
        """Why this backend cannot run these inputs (empty: it can). ``explicit`` is True when the
        user named this backend (some, like Triton's CPU interpreter, run only on request)."""
        raise NotImplementedError

    def available_reasons(self) -> list[str]:
        """Reasons independent of the inputs (not built, not installed)."""
        return []

    def contrast(self, A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self):
        raise NotImplementedError


class ReferenceBackend(Backend):
    def not_supported_reasons(self, *, A, B, loss, exclude_self, explicit=False):
        return []

    def contrast(self, A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self):
        from .contrast import contrast_reference

        if A.dtype in (torch.float16, torch.bfloat16):  # compute in fp32 like the fused backends
            A, B = A.float(), B.float()
        return contrast_reference(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self)


class CpuBackend(Backend):
    def available_reasons(self):
        return [] if _ext.has_op("contrast_forward") else [f"extension uca_kernels._C not loaded ({_ext.load_error()})"]

    def not_supported_reasons(self, *, A, B, loss, exclude_self, explicit=False):
        reasons = self.available_reasons()
        if A.device.type != "cpu":
            reasons.append(f"needs CPU tensors, got {A.device.type}")
        if A.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            reasons.append(f"needs float16/bfloat16/float32/float64 inputs, got {A.dtype}")
        return reasons

    def contrast(self, A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self):
        if A.dtype in (torch.float16, torch.bfloat16):  # CPU kernels compute in float32
            A, B = A.float(), B.float()
        out = torch.ops.uca.contrast_forward(
            A.contiguous(), B.contiguous(), r.contiguous(), c.contiguous(), scale, bias,
            labels_a.contiguous(), labels_b.contiguous(), loss, exclude_self,
        )
        return out[0], out[1]


class TritonBackend(Backend):
    def available_reasons(self):
        from . import triton_contrast

        return triton_contrast.available_reasons()

    def not_supported_reasons(self, *, A, B, loss, exclude_self, explicit=False):
        from . import triton_contrast

        return triton_contrast.not_supported_reasons(A=A, B=B, loss=loss, exclude_self=exclude_self, explicit=explicit)

    def contrast(self, A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self):
        from . import triton_contrast

        return triton_contrast.contrast(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self)


# The CUDA kernels (csrc/cuda) compile in CI but have not yet passed their tests on a GPU. Until
# they do, ``auto`` does not pick them (Triton serves CUDA tensors); naming the backend
# (``backend="cuda"`` or ``UCA_BACKEND=cuda``) runs them. Set to True once
# ``benchmarks/gpu_check.sh`` passes tests/test_cuda_contrast.py on a GPU.
CUDA_VERIFIED_ON_GPU = False


class CudaBackend(Backend):
    def available_reasons(self):
        if not _ext.has_op("contrast_forward"):
            return [f"extension uca_kernels._C not loaded ({_ext.load_error()})"]
        if not _ext.built_with_cuda():
            return ["uca_kernels._C was built without CUDA sources (UCA_BUILD_CUDA=1 to build them)"]
        return []

    def not_supported_reasons(self, *, A, B, loss, exclude_self, explicit=False):
        reasons = self.available_reasons()
        if A.device.type != "cuda":
            reasons.append(f"needs CUDA tensors, got {A.device.type}")
        if A.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            reasons.append(f"needs float16/bfloat16/float32/float64 inputs, got {A.dtype}")
        if loss == "sigmoid":
            reasons.append("the CUDA kernels do not implement loss='sigmoid' yet")
        if not explicit and not CUDA_VERIFIED_ON_GPU:
            reasons.append("not yet verified on a GPU, so 'auto' skips it (name backend='cuda' or UCA_BACKEND=cuda)")
        return reasons

    def contrast(self, A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self):
        # fp16/bf16 features go to the tensor cores as they are (fp32 accumulation)
        out = torch.ops.uca.contrast_forward(
            A.contiguous(), B.contiguous(), r.contiguous(), c.contiguous(), scale, bias,
            labels_a.contiguous(), labels_b.contiguous(), loss, exclude_self,
        )
        return out[0], out[1]


_BACKENDS = {
    b.name: b
    for b in (
        CudaBackend("cuda"),
        TritonBackend("triton"),
        CpuBackend("cpu"),
        ReferenceBackend("reference"),
    )
}
PRIORITY = ("cuda", "triton", "cpu", "reference")


def backend_names() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose 'auto' or one of {', '.join(map(repr, _BACKENDS))}")
    return _BACKENDS[name]


def _reasons_table(reasons: dict[str, list[str]]) -> str:
    return "\n".join(f"  {name}: {'; '.join(rs) if rs else 'ok'}" for name, rs in reasons.items())


def select(backend: str = "auto", *, A, B, loss, exclude_self) -> Backend:
    """The backend that runs these inputs (see the module docstring for the order of choice)."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    requested = backend if backend != "auto" else os.environ.get("UCA_BACKEND", "auto") or "auto"
    kwargs = dict(A=A, B=B, loss=loss, exclude_self=exclude_self)
    if requested != "auto":
        chosen = get_backend(requested)
        reasons = chosen.not_supported_reasons(**kwargs, explicit=True)
        if reasons:
            src = "backend=" if backend != "auto" else "UCA_BACKEND="
            raise ValueError(f"backend {src}{requested!r} cannot run these inputs: {'; '.join(reasons)}")
        return chosen
    reasons = {}
    for name in PRIORITY:
        reasons[name] = _BACKENDS[name].not_supported_reasons(**kwargs)
        if not reasons[name]:
            return _BACKENDS[name]
    raise ValueError("no backend can run these inputs:\n" + _reasons_table(reasons))


def usable_backends(device: str = "cpu", dtype: torch.dtype = torch.float32, explicit: bool = True) -> dict[str, list[str]]:
    """Each backend's reasons for a small probe input on ``device`` (empty list = usable when
    named explicitly, or, with ``explicit=False``, for ``auto``)."""
    A = torch.zeros(2, 2, device=device, dtype=dtype)
    return {n: b.not_supported_reasons(A=A, B=A, loss="sdm", exclude_self=False, explicit=explicit)
            for n, b in _BACKENDS.items()}
