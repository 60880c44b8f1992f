"""Loads the compiled extension ``uca_kernels._C`` once; a failure logs one line and is remembered.

The extension registers the ``torch.ops.uca`` operators (schema in ``csrc/bindings.cpp``); this
module attaches their fake kernels and autograd formulas (:mod:`uca_kernels._registry`).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("uca_kernels")

_C = None
_ERROR: str | None = None
_WITH_CUDA = False  # read once at load: a plain bool, so torch.compile traces dispatch without a graph break


def _load():
    global _C, _ERROR, _WITH_CUDA
    try:
        from . import _C as ext  # noqa: F401  (importing registers the torch.ops.uca operators)
    except Exception as e:  # ImportError, undefined symbols, ABI mismatch, ...
        _ERROR = f"{type(e).__name__}: {e}"
        log.warning("uca_kernels._C failed to load, fused CPU/CUDA backends disabled: %s", _ERROR)
        return
    _C = ext
    _WITH_CUDA = bool(ext.built_with_cuda())
    from ._registry import register_contrast_autograd, register_sigmoid_sum_autograd

    register_contrast_autograd(torch.ops.uca.contrast_forward.default, torch.ops.uca.contrast_backward.default)
    if hasattr(torch.ops.uca, "sigmoid_loss_and_grads"):
        register_sigmoid_sum_autograd(torch.ops.uca.sigmoid_loss_and_grads.default)


def module():
    """The loaded extension module, or None."""
    return _C


def load_error() -> str | None:
    return _ERROR


def has_op(name: str) -> bool:
    return _C is not None and hasattr(torch.ops.uca, name)


def built_with_cuda() -> bool:
    return _C is not None and _WITH_CUDA


_load()
