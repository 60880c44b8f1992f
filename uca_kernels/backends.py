"""The backends of the contrast op: what each supports, how it runs, what identifies its kernels.

:data:`PRIORITY` is the order in which ``auto`` tries them; the choice itself (and the self-test
that guards it) is :mod:`uca_kernels.dispatch`. This module imports no other part of the package
above the extension loader: the self-test (:mod:`uca_kernels.selftest`) and the dispatcher build on it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import ClassVar

import torch

from . import _ext
from ._registry import resolve_chunk_rows

__all__ = ["Backend", "ExtensionBackend", "PRIORITY", "backend_names", "file_hash", "get_backend"]

_HASHES: dict = {}


def file_hash(path) -> str:
    """sha256 (first 16 hex digits) of a file's contents, memoised per (path, size, mtime)."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    k = (path, st.st_size, st.st_mtime_ns)
    if k not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _HASHES[k] = h.hexdigest()[:16]
    return _HASHES[k]


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

    def precision(self) -> str:
        """How float32 features are multiplied, as the op is called now: "ieee" (exact products) on
        the CPU; the GPU backends follow ``torch.get_float32_matmul_precision()`` ("highest" ->
        "ieee", "high" / "medium" -> "tf32") unless told otherwise (CUDA: UCA_CUDA_PRECISION;
        Triton: its setter or UCA_TRITON_PRECISION). Read at each forward; autograd gives the
        backward the same value."""
        return "ieee"

    def contrast(self, A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self):
        raise NotImplementedError

    def op_pair(self):
        """``(forward, backward)``: the op contract's two calls (:mod:`uca_kernels.contrast`) without
        autograd and without ``exclude_self``, ``forward(A, B, r, c, scale, bias, labels_a, labels_b,
        loss)`` and ``backward(grad_rows, grad_cols, A, B, r, c, scale, bias, labels_a, labels_b,
        loss_rows, loss_cols, row_stats, col_stats, loss)`` (gradients in the inputs' dtypes), for
        callers that assemble statistics themselves; None where there are no such ops (the reference
        materialises S)."""
        return None

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


def _has_chunk_rows(op) -> bool:
    """Whether a registered op's schema has the trailing ``chunk_rows`` argument (the GPU row chunks)."""
    overload = getattr(op, "default", op)
    schema = getattr(overload, "_schema", None)
    return schema is not None and any(a.name == "chunk_rows" for a in schema.arguments)


def _chunk_args(op, A, B) -> tuple:
    """``(chunk_rows,)`` resolved now (:func:`uca_kernels._registry.gpu_chunking`) for an op whose schema
    takes it (the CPU kernels ignore it), else ``()``."""
    return (resolve_chunk_rows(A.shape[0], B.shape[0], A.dtype),) if _has_chunk_rows(op) else ()


def _op_pair(forward_op, backward_op, precision: str, upcast_half: bool):
    """Backend.op_pair of registered ops: contiguous arguments, one precision for both calls, and the
    forward's chunk rows for the backward of the same shapes."""
    chunks: dict = {}

    def forward(A, B, r, c, scale, bias, labels_a, labels_b, loss):
        args = _op_args(A, B, r, c, scale, bias, labels_a, labels_b, upcast_half=upcast_half)
        extra = chunks[(A.shape[0], B.shape[0])] = _chunk_args(forward_op, A, B)
        return forward_op(*args, loss, False, precision, *extra)

    def backward(grad_rows, grad_cols, A, B, r, c, scale, bias, labels_a, labels_b, loss_rows, loss_cols,
                 row_stats, col_stats, loss):
        args = _op_args(A, B, r, c, scale, bias, labels_a, labels_b, upcast_half=upcast_half)
        extra = chunks.get((A.shape[0], B.shape[0])) or _chunk_args(forward_op, A, B)
        grads = backward_op(grad_rows.contiguous(), grad_cols.contiguous(), *args, loss_rows, loss_cols,
                            row_stats.contiguous(), col_stats.contiguous(), loss, False, precision, *extra)
        return (grads[0].to(A.dtype), grads[1].to(B.dtype), *grads[2:])

    return forward, backward


def _grad_needed(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _extension_hash() -> str:
    mod = _ext.module()
    return file_hash(mod.__file__) if mod is not None and getattr(mod, "__file__", None) else "not-loaded"


class ReferenceBackend(Backend):
    needs_selftest = False

    def not_supported_reasons(self, *, A, B, loss, exclude_self, explicit=False):
        return []

    def contrast(self, A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self):
        from .reference import contrast_reference

        if A.dtype in (torch.float16, torch.bfloat16):  # compute in fp32 like the fused backends
            A, B = A.float(), B.float()
        return contrast_reference(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self)


class ExtensionBackend(Backend):
    """A device's kernels in the compiled extension: ``torch.ops.uca.contrast_forward`` (the C++
    dispatcher routes it by the tensors' device). Subclasses name the device and whether fp16/bf16
    features are upcast (the CPU kernels compute in float32; CUDA's tensor cores take them as
    they are, with fp32 accumulation)."""

    upcast_half: ClassVar[bool] = True

    def available_reasons(self):
        return [] if _ext.has_op("contrast_forward") else [f"extension uca_kernels._C not loaded ({_ext.load_error()})"]

    def not_supported_reasons(self, *, A, B, loss, exclude_self, explicit=False):
        reasons = self.available_reasons()
        if A.device.type != self.device_type:
            reasons.append(f"needs {self.device_type.upper()} tensors, got {A.device.type}")
        if A.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            reasons.append(f"needs float16/bfloat16/float32/float64 inputs, got {A.dtype}")
        return reasons

    def fingerprint(self):
        return {"extension": _extension_hash()}

    def contrast(self, A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self):
        args = _op_args(A, B, r, c, scale, bias, labels_a, labels_b, upcast_half=self.upcast_half)
        op = torch.ops.uca.contrast_forward
        out = op(*args, loss, exclude_self, self.precision(), *_chunk_args(op, A, B))
        return out[0], out[1]

    def op_pair(self):
        return _op_pair(torch.ops.uca.contrast_forward, torch.ops.uca.contrast_backward, self.precision(),
                        self.upcast_half)


class CpuBackend(ExtensionBackend):
    device_type = "cpu"

    def sigmoid_sum(self, A, B, r, c, scale, bias, labels_a, labels_b, exclude_self):
        return _extension_sigmoid_sum(self, A, B, r, c, scale, bias, labels_a, labels_b, exclude_self)


def _extension_sigmoid_sum(impl, A, B, r, c, scale, bias, labels_a, labels_b, exclude_self):
    """The scalar sigmoid loss through the extension's one-sweep op (the dispatcher routes it by device)
    when autograd will need the gradients and the op is there; else the two-call path's rows."""
    if not (_ext.has_op("sigmoid_loss_and_grads") and _grad_needed(A, B, r, c, scale, bias)):
        return Backend.sigmoid_sum(impl, A, B, r, c, scale, bias, labels_a, labels_b, exclude_self)
    op = torch.ops.uca.sigmoid_loss_and_grads
    # (precision, chunk_rows) where the schema has them (the CPU kernels check the one, ignore the other)
    extra = (impl.precision(), *_chunk_args(op, A, B)) if _has_chunk_rows(op) else ()
    args = _op_args(A, B, r, c, scale, bias, labels_a, labels_b, upcast_half=impl.upcast_half)
    return op(*args, exclude_self, *extra)[0]


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

        triton = triton_contrast.triton
        return {"triton": getattr(triton, "__version__", "missing"), "cuda": str(torch.version.cuda),
                "kernels": "-".join(file_hash(m.__file__) for m in triton_contrast.kernel_modules()),
                "interpret": str(triton_contrast.INTERPRET),
                "fp32": self.precision()}

    def precision(self):
        from . import triton_contrast

        return triton_contrast.get_input_precision()

    def contrast(self, A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self):
        from . import triton_contrast

        return triton_contrast.contrast(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self)

    def op_pair(self):
        from . import triton_contrast  # noqa: F401  (registers the ops)

        return _op_pair(torch.ops.uca.triton_contrast_forward, torch.ops.uca.triton_contrast_backward,
                        self.precision(), upcast_half=False)

    def sigmoid_sum(self, A, B, r, c, scale, bias, labels_a, labels_b, exclude_self):
        from . import triton_contrast  # noqa: F401  (registers the ops)

        chunk_rows = resolve_chunk_rows(A.shape[0], B.shape[0], A.dtype)
        if chunk_rows < 0 or not _grad_needed(A, B, r, c, scale, bias):  # tiles, or no gradient wanted: rows only
            return super().sigmoid_sum(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self)
        return torch.ops.uca.triton_sigmoid_loss_and_grads(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self,
                                                           self.precision(), chunk_rows)[0]


class CudaBackend(ExtensionBackend):
    device_type = "cuda"
    upcast_half = False

    def available_reasons(self):
        reasons = super().available_reasons()
        if not reasons and not _ext.built_with_cuda():
            reasons = ["uca_kernels._C was built without CUDA sources (UCA_BUILD_CUDA=1 to build them)"]
        return reasons

    def precision(self) -> str:
        """``UCA_CUDA_PRECISION`` ("ieee" or "tf32") when set, else PyTorch's float32 matmul
        precision (:func:`uca_kernels._precision.default_precision`: "highest" -> "ieee")."""
        from ._precision import precision_from_env

        return precision_from_env("UCA_CUDA_PRECISION", ("ieee", "tf32"))

    def fingerprint(self):
        return {**super().fingerprint(), "cuda": str(torch.version.cuda), "fp32": self.precision()}

    def sigmoid_sum(self, A, B, r, c, scale, bias, labels_a, labels_b, exclude_self):
        return _extension_sigmoid_sum(self, A, B, r, c, scale, bias, labels_a, labels_b, exclude_self)


_BACKENDS = {
    b.name: b
    for b in (
        CudaBackend("cuda"),
        TritonBackend("triton"),
        CpuBackend("cpu"),
        ReferenceBackend("reference"),
    )
}
# auto's order. On a GPU the fused backends that passed their self-test are ordered by its speed probe
# (dispatch); this order decides only without timings: Triton first, as measured on the one GPU run
# so far (H200, W2 + SDM, B = 32768, E = 1024, TF32: triton 308 ms, cuda 423 ms).
PRIORITY = ("triton", "cuda", "cpu", "reference")


def backend_names() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose 'auto' or one of {', '.join(map(repr, _BACKENDS))}")
    return _BACKENDS[name]
