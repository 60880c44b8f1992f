"""One place that decides which backend runs the contrast op.

Order of choice: an explicit ``backend=`` argument, else the ``UCA_BACKEND`` environment variable,
else the first backend in :data:`PRIORITY` whose :meth:`Backend.not_supported_reasons` is empty
*and* that has passed its self-test on this kind of device (:mod:`uca_kernels.selftest`: run the
first time ``auto`` would pick a fused backend there, verdict cached; a failure warns once and
``auto`` falls back to the next backend). An explicit choice is trusted (no self-test). An explicit
choice that cannot run, or no backend that can, raises ``ValueError`` listing every backend's
reasons.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import torch

from . import _ext

__all__ = ["Backend", "PRIORITY", "auto_reasons", "backend_names", "get_backend", "select", "usable_backends"]


@dataclass(frozen=True)
class Backend:
    """A backend of the contrast op; subclasses say what they support and how to run it."""

    name: str
    # Whether ``auto`` needs a passed self-test before it picks this backend (fused kernels do;
    # the reference is the oracle).
    needs_selftest: ClassVar[bool] = True
    # The device kind it serves: where ``python -m uca_kernels.selftest`` tests it by default.
    device_type: ClassVar[str] = "cpu"

    def not_supported_reasons(
        self, *, A: torch.Tensor, B: torch.Tensor, loss: str, exclude_self: bool, explicit: bool = False
    ) -> list[str]:
        """Why this backend cannot run these inputs (empty: it can). ``explicit`` is True when the
        user named this backend (some, like Triton's CPU interpreter, run only on request)."""
        raise NotImplementedError

    def available_reasons(self) -> list[str]:
        """Reasons independent of the inputs (not built, not installed)."""
        return []

    def fingerprint(self) -> dict[str, str]:
        """What, besides the device and torch, decides this backend's kernels (versions, a hash of
        the kernel code, the precision in force): part of its self-test verdict's cache key."""
        return {}

    def contrast(self, A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self):
        raise NotImplementedError

    def sigmoid_sum(self, A, B, r, c, scale, bias, labels_a, labels_b, exclude_self):
        """Σᵢⱼ ℓᵢⱼ of the sigmoid loss as a 0-d tensor (with autograd). This default sums the
        two-call path's rows; a backend with a one-sweep op overrides it."""
        return self.contrast(A, B, r, c, scale, bias, labels_a, labels_b, "sigmoid", exclude_self)[0].sum()


def _op_args(A, B, r, c, scale, bias, labels_a, labels_b, *, upcast_half: bool):
    """The tensor arguments of the extension's ops: contiguous, and fp16/bf16 features in float32
    when the kernels compute in float32 (the CPU ones)."""
    if upcast_half and A.dtype in (torch.float16, torch.bfloat16):
        A, B = A.float(), B.float()
    return (A.contiguous(), B.contiguous(), r.contiguous(), c.contiguous(), scale, bias,
            labels_a.contiguous(), labels_b.contiguous())


def _grad_needed(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _extension_hash() -> str:
    from .selftest import file_hash

    mod = _ext.module()
    return file_hash(mod.__file__) if mod is not None and getattr(mod, "__file__", None) else "not-loaded"


class ReferenceBackend(Backend):
    needs_selftest = False

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

    def fingerprint(self):
        return {"extension": _extension_hash()}

    def contrast(self, A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self):
        args = _op_args(A, B, r, c, scale, bias, labels_a, labels_b, upcast_half=True)  # CPU kernels: float32
        out = torch.ops.uca.contrast_forward(*args, loss, exclude_self)
        return out[0], out[1]

    def sigmoid_sum(self, A, B, r, c, scale, bias, labels_a, labels_b, exclude_self):
        if not (_grad_needed(A, B, r, c, scale, bias) and _ext.has_op("sigmoid_loss_and_grads")):
            return super().sigmoid_sum(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self)
        args = _op_args(A, B, r, c, scale, bias, labels_a, labels_b, upcast_half=True)
        return torch.ops.uca.sigmoid_loss_and_grads(*args, exclude_self)[0]


class TritonBackend(Backend):
    device_type = "cuda"

    def available_reasons(self):
        from . import triton_contrast

        return triton_contrast.available_reasons()

    def not_supported_reasons(self, *, A, B, loss, exclude_self, explicit=False):
        from . import triton_contrast

        return triton_contrast.not_supported_reasons(A=A, B=B, loss=loss, exclude_self=exclude_self, explicit=explicit)

    def fingerprint(self):
        from . import triton_contrast
        from .selftest import file_hash

        triton = triton_contrast.triton
        return {"triton": getattr(triton, "__version__", "missing"), "cuda": str(torch.version.cuda),
                "kernels": file_hash(triton_contrast.__file__), "interpret": str(triton_contrast.INTERPRET),
                "fp32": triton_contrast.get_input_precision()}

    def contrast(self, A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self):
        from . import triton_contrast

        return triton_contrast.contrast(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self)


class CudaBackend(Backend):
    device_type = "cuda"

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
        return reasons

    def fingerprint(self):
        return {"extension": _extension_hash(), "cuda": str(torch.version.cuda),
                "fp32": os.environ.get("UCA_CUDA_PRECISION", "") or "ieee"}

    def contrast(self, A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self):
        # fp16/bf16 features go to the tensor cores as they are (fp32 accumulation)
        args = _op_args(A, B, r, c, scale, bias, labels_a, labels_b, upcast_half=False)
        out = torch.ops.uca.contrast_forward(*args, loss, exclude_self)
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


@torch.compiler.assume_constant_result  # torch.compile: evaluated once while tracing, a constant in the graph
def _selftest_failure(name: str, device: str) -> str:
    from . import selftest

    return selftest.failure_reason(name, device)


def _auto_reasons(impl: Backend, kwargs) -> list[str]:
    """Why ``auto`` must not pick ``impl`` for these inputs: its own reasons, else a failed self-test."""
    reasons = impl.not_supported_reasons(**kwargs)
    if not reasons and impl.needs_selftest:
        failure = _selftest_failure(impl.name, str(kwargs["A"].device))
        if failure:
            reasons = [failure]
    return reasons


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
    for name in PRIORITY:  # lazily: a backend's self-test runs only when auto would pick it
        reasons[name] = _auto_reasons(_BACKENDS[name], kwargs)
        if not reasons[name]:
            return _BACKENDS[name]
    raise ValueError("no backend can run these inputs:\n" + _reasons_table(reasons))


def auto_reasons(*, A, B, loss, exclude_self) -> dict[str, list[str]]:
    """Every backend's reasons not to be picked by ``auto`` for these inputs, self-test included
    (runs the self-test of every backend that could otherwise run them)."""
    kwargs = dict(A=A, B=B, loss=loss, exclude_self=exclude_self)
    return {name: _auto_reasons(_BACKENDS[name], kwargs) for name in PRIORITY}


def usable_backends(device: str = "cpu", dtype: torch.dtype = torch.float32, explicit: bool = True) -> dict[str, list[str]]:
    """Each backend's reasons for a small probe input on ``device`` (empty list = usable when
    named explicitly, or, with ``explicit=False``, for ``auto``, self-test verdicts included)."""
    A = torch.zeros(2, 2, device=device, dtype=dtype)
    if not explicit:
        return {n: _auto_reasons(b, dict(A=A, B=A, loss="sdm", exclude_self=False)) for n, b in _BACKENDS.items()}
    return {n: b.not_supported_reasons(A=A, B=A, loss="sdm", exclude_self=False, explicit=True)
            for n, b in _BACKENDS.items()}
