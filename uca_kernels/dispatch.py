"""One place that decides which backend runs the contrast op.

Order of choice: an explicit ``backend=`` argument, else the ``UCA_BACKEND`` environment variable,
else the first backend in :data:`PRIORITY` whose :meth:`Backend.not_supported_reasons` is empty
*and* that has passed its self-test on this kind of device (:mod:`uca_kernels.selftest`: run the
first time ``auto`` would pick a fused backend there, verdict cached; a failure warns once and
``auto`` falls back to the next backend). On a GPU both GPU backends are self-tested and ``auto``
picks the one whose self-test speed probe (one forward + backward, timed with the self-test) was
faster; PRIORITY's order (Triton first, as the committed GPU benchmarks measured it faster) decides
only when neither was timed. An explicit choice is trusted (no self-test). An explicit
choice that cannot run, or no backend that can, raises ``ValueError`` listing every backend's
reasons.
"""

from __future__ import annotations

import os

import torch

from .backends import _BACKENDS, PRIORITY, Backend, backend_names, get_backend  # noqa: F401  (re-exported)

__all__ = ["Backend", "PRIORITY", "auto_reasons", "backend_names", "get_backend", "select", "usable_backends"]


def _reasons_table(reasons: dict[str, list[str]]) -> str:
    return "\n".join(f"  {name}: {'; '.join(rs) if rs else 'ok'}" for name, rs in reasons.items())


@torch.compiler.assume_constant_result  # torch.compile: evaluated once while tracing, a constant in the graph
def _selftest_failure(name: str, device: str) -> str:
    from . import selftest  # here, not at the top: ``python -m uca_kernels.selftest`` must not find it imported

    return selftest.failure_reason(name, device)


@torch.compiler.assume_constant_result
def _probe_ms(name: str, device: str) -> float:
    from . import selftest

    ms = selftest.probe_ms(name, device)
    return float("inf") if ms is None else ms


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
        src = "backend=" if backend != "auto" else "UCA_BACKEND="
        if requested not in _BACKENDS:
            raise ValueError(f"{src}{requested!r} is not a backend; choose 'auto' or one of "
                             f"{', '.join(map(repr, _BACKENDS))}")
        chosen = _BACKENDS[requested]
        reasons = chosen.not_supported_reasons(**kwargs, explicit=True)
        if reasons:
            raise ValueError(f"backend {src}{requested!r} cannot run these inputs: {'; '.join(reasons)}")
        return chosen
    reasons = {}
    for name in PRIORITY:  # lazily: a backend's self-test runs only when auto would pick it
        reasons[name] = _auto_reasons(_BACKENDS[name], kwargs)
        if not reasons[name]:
            return _fastest_gpu_backend(name, kwargs)
    raise ValueError("no backend can run these inputs:\n" + _reasons_table(reasons))


def _fastest_gpu_backend(first: str, kwargs) -> Backend:
    """``first`` (the first backend in PRIORITY that auto may pick), unless it serves the GPU and another
    GPU backend later in PRIORITY also passed its self-test there with a faster speed probe
    (:func:`uca_kernels.selftest.speed_probe`): on a GPU auto picks the measured fastest."""
    chosen = _BACKENDS[first]
    if kwargs["A"].device.type != "cuda" or chosen.device_type != "cuda":
        return chosen
    device = str(kwargs["A"].device)
    best = _probe_ms(first, device)
    for name in PRIORITY[PRIORITY.index(first) + 1:]:
        other = _BACKENDS[name]
        if other.device_type == "cuda" and not _auto_reasons(other, kwargs):
            ms = _probe_ms(name, device)
            if ms < best:
                chosen, best = other, ms
    return chosen


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
