"""Input checks shared by every public entry point.

Each check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape,
device, value) with a message that names the argument and says what was expected. Checks that
need the data (finiteness) are skipped while ``torch.compile`` traces, where they would break
the graph, and can be switched off globally with ``UCA_CHECK_FINITE=0``.

**Finiteness without host synchronisation.** ``bool(torch.isfinite(x).all())`` waits for the device
(on a GPU, every call is a sync). Inside :func:`deferred_finite_checks` the checks stay on the
device: each named input's flag is and-ed into a device tensor, and :meth:`FiniteChecks.check` --
one synchronisation, called e.g. once per logging interval -- raises the same named ``ValueError``
for every input that was non-finite since the last check. Outside it, checks are immediate.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch

__all__ = [
    "check_choice",
    "check_features",
    "check_labels",
    "check_same_device",
    "check_scalar",
    "check_finite",
    "deferred_finite_checks",
    "FiniteChecks",
]


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def check_choice(name: str, value, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")
    return value


class FiniteChecks:
    """Finiteness flags kept on the device, one per argument name, until :meth:`check`."""

    def __init__(self) -> None:
        self._flags: dict[str, torch.Tensor] = {}  # name -> 0-d bool tensor: finite in every call so far

    def add(self, name: str, x: torch.Tensor) -> None:
        ok = torch.isfinite(x).all()
        prev = self._flags.get(name)
        self._flags[name] = ok if prev is None else prev & ok.to(prev.device)

    def check(self) -> None:
        """Raise a ``ValueError`` naming every argument that held NaN/inf since the last check
        (one host synchronisation), and start over."""
        flags, self._flags = self._flags, {}
        if not flags:
            return
        dev = next(iter(flags.values())).device
        ok = _host_bools(torch.stack([f.to(dev) for f in flags.values()]))
        bad = [n for n, good in zip(flags, ok) if not good]
        if bad:
            later = f"; checked after it and also non-finite: {', '.join(bad[1:])}" if len(bad) > 1 else ""
            raise ValueError(f"{bad[0]} contained non-finite value(s) (NaN or inf) at least once since the last check "
                             f"(finiteness checks were deferred{later}; set UCA_CHECK_FINITE=0 to skip them)")


_STATE = threading.local()


@contextmanager
def deferred_finite_checks(checks: FiniteChecks | None = None) -> Iterator[FiniteChecks]:
    """Within this block :func:`check_finite` does not synchronise: call ``.check()`` on the
    returned :class:`FiniteChecks` (a new one, or ``checks`` to keep collecting into it across
    blocks) when a host sync is cheap, e.g. at a training loop's log step."""
    prev = getattr(_STATE, "checks", None)
    _STATE.checks = checks = checks if checks is not None else FiniteChecks()
    try:
        yield checks
    finally:
        _STATE.checks = prev


def _host_bools(flags: torch.Tensor) -> list[bool]:
    """The one place where finiteness flags reach the host (a device synchronisation)."""
    return [bool(v) for v in flags.tolist()]


def check_finite(name: str, x: torch.Tensor) -> None:
    if _compiling() or os.environ.get("UCA_CHECK_FINITE", "1") == "0" or x.device.type == "meta":
        return
    if not x.numel():
        return
    deferred = getattr(_STATE, "checks", None)
    if deferred is not None:
        deferred.add(name, x)
        return
    if not _host_bools(torch.isfinite(x).all().reshape(1))[0]:
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")


def check_features(name: str, x, *, ndim: int = 2, rows: int | None = None, cols: int | None = None) -> torch.Tensor:
    """A floating-point feature tensor of ``ndim`` dims, non-empty, finite."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    if ndim == 2 and x.shape[1] == 0:
        raise ValueError(f"{name} has zero features (shape {tuple(x.shape)})")
    if rows is not None and x.shape[0] != rows:
        raise ValueError(f"{name} has {x.shape[0]} rows, expected {rows} (shape {tuple(x.shape)})")
    if cols is not None and ndim == 2 and x.shape[1] != cols:
        raise ValueError(f"{name} has {x.shape[1]} columns, expected {cols} (shape {tuple(x.shape)})")
    check_finite(name, x)
    return x


def check_labels(name: str, labels, n: int, device: torch.device) -> torch.Tensor:
    """Integer identity labels of shape [n] on ``device``; returned as int64."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer identity labels, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"{name} is on {labels.device} but the features are on {device}")
    return labels.to(torch.int64)


def check_same_device(**tensors: torch.Tensor) -> torch.device:
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    unique = set(devices.values())
    if len(unique) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {desc}")
    return next(iter(unique))


def check_scalar(name: str, value, like: torch.Tensor) -> torch.Tensor:
    """A Python number or 0-d floating tensor, returned as a 0-d tensor on ``like``'s device.

    A tensor keeps its autograd history (so a learnable temperature gets its gradient).
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dim() > 1:
            raise ValueError(f"{name} must be a number or a 0-d tensor, got shape {tuple(value.shape)}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
        if value.device != like.device:
            raise ValueError(f"{name} is on {value.device} but the features are on {like.device}")
        check_finite(name, value)
        return value.reshape(())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or a 0-d tensor, got {type(value).__name__}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name}={value} is not finite")
    dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    return torch.tensor(float(value), dtype=dtype, device=like.device)
