r"""Self-test of the fused backends: no kernel serves ``auto`` on a device where it has not passed.

The rule (docs/design.md, section 3)
------------------------------------
``backend="auto"`` picks the first backend in :data:`uca_kernels.backends.PRIORITY` that can run
the inputs *and* has passed this self-test on that kind of device. The first time ``auto`` would
pick a fused backend (``cpu``, ``triton``, ``cuda``; the ``reference`` backend is the oracle and
needs none) for a device kind, it runs :func:`run_selftest` once, keeps the :class:`Verdict` for
the process and writes it to a cache file; later processes reuse it. A backend that fails is
skipped: one warning line (:class:`SelftestWarning`) names it and the reason, and ``auto`` goes on
to the next backend. An explicit choice (``backend="cuda"`` or ``UCA_BACKEND=cuda``) is trusted
and never self-tested. The CPU backend goes through the same path.

What is tested: forward and backward (all six gradients, upstream gradients ≠ 1, both directions
weighted) of the contrast op against the float64 reference (``contrast.contrast_reference``) on
ragged shapes (:data:`CASES`: 1×1, sizes that cross the Triton/CUDA tiles, E not a multiple of 16,
diagonal and repeated labels with rows that have no positive, ``exclude_self``), every loss in
:data:`uca_kernels.contrast.LOSSES` plus the scalar sigmoid path (:data:`SIGMOID_SUM`), every feature dtype in :data:`DTYPES` that the backend
accepts (what it declines is listed in the details, not failed), all outputs finite, and a rerun of
the largest shape bit-identical (every fused backend claims determinism; a race shows up here
first). Seconds on a GPU once the kernels are compiled; ~1 s for ``cpu`` on one thread.

Tolerances, per feature dtype (errors are relative to each output's largest magnitude, floored at
1e-2; the bias gradient is relative to Σ|dS|'s bound, as in tests/helpers.py): an output passes
when its error vs the float64 oracle is at most ``max(2 × error of the reference run in the same
dtype, FLOOR[dtype])`` (:data:`FLOOR`). float32 run with TF32 products (``UCA_TRITON_PRECISION`` /
``UCA_CUDA_PRECISION=tf32``) is held to :data:`TF32_FLOOR` alone. Kernel bugs (races,
out-of-bounds loads, wrong masks) give errors of order one, far above every bound.

The verdict cache
-----------------
Key: backend, device name (``torch.cuda.get_device_name`` and compute capability, or the CPU model),
torch version (and CUDA version), triton version for ``triton``, the uca_kernels version, a hash of
the kernel code (the compiled extension for ``cpu``/``cuda``, ``triton_contrast.py`` for
``triton``) and of this test and the reference, and the float32 precision in force.

- ``UCA_SELFTEST_CACHE``: the cache file (``*.json``) or a folder for it; default
  ``${XDG_CACHE_HOME:-~/.cache}/uca/selftest.json``. ``0`` / ``off`` / ``false`` / ``no`` turns the
  *cache* off: nothing is read or written, and the self-test runs once per process.
- ``UCA_SELFTEST=0`` (or off/false/no) skips self-testing altogether: ``auto`` trusts every backend
  that says it can run the inputs (as before this rule). For CI speed or a known machine; the
  default is on.
- ``UCA_SELFTEST_ISOLATE``: CUDA-device self-tests run in a child process by default (``1``), so a
  kernel that faults (a sticky CUDA error would poison this process's context, leaving nothing to
  fall back on), hangs or crashes gives a failed verdict instead of a dead job, and so nothing runs
  on the caller's GPU streams (safe under CUDA-graph capture); ``0`` runs them in-process. CPU
  self-tests run in-process unless this is ``1``. ``UCA_SELFTEST_TIMEOUT`` bounds the child (seconds,
  default 600: a cold Triton cache compiles every kernel variant).

The file is written atomically (temporary file + rename), merged with what another process wrote
meanwhile; a corrupt file is ignored with a warning and rewritten. Timeouts and out-of-memory are
not cached (they say nothing about the kernels). To re-test, run ``python -m uca_kernels.selftest``
(it records its verdicts) or delete the file.

Command line: ``python -m uca_kernels.selftest [--backend B] [--device D] [--json] [--no-cache]``
runs the self-test now (all fused backends on the devices they serve when no backend is named) and
exits with status 1 if one fails or cannot run. ``python -m uca_kernels.info`` prints the verdicts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import backends
from ._version import __version__
from .backends import file_hash  # noqa: F401  (part of this module's interface: the cache key's hashes)

__all__ = [
    "CASES",
    "DTYPES",
    "FLOOR",
    "TF32_FLOOR",
    "Case",
    "SelftestWarning",
    "Verdict",
    "cache_key",
    "cache_path",
    "clear_memo",
    "device_name",
    "enabled",
    "failure_reason",
    "main",
    "run_selftest",
    "verdict",
]

CACHE_FORMAT = 1
_OFF = ("0", "off", "false", "no")


class SelftestWarning(UserWarning):
    """A backend failed its self-test (auto falls back), or the verdict cache could not be used."""


@dataclass
class Verdict:
    """The outcome of one backend's self-test on one device kind."""

    ok: bool
    reason: str = ""  # empty when ok; else the first failure (and how many more), one line
    details: list[str] = field(default_factory=list)  # one line per dtype x loss (and per failure)
    seconds: float = 0.0  # wall time of the test itself
    backend: str = ""
    device: str = ""  # device name, as in the cache key
    source: str = "run"  # "run" (this process), "cache" (read from the file), "skipped" (UCA_SELFTEST=0)
    cacheable: bool = True  # False for timeouts, out of memory, "cannot run here": not about the kernels
    # median ms of one forward + backward of the speed probe (SPEED_PROBE) on a GPU; auto prefers the
    # fastest of the GPU backends that passed (None: not timed, e.g. on the CPU)
    probe_ms: float | None = None

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d

    @classmethod
    def from_json(cls, d) -> "Verdict":
        """Inverse of :meth:`to_json`; raises ``ValueError`` on anything malformed."""
        if not isinstance(d, dict):
            raise ValueError(f"a verdict must be an object, got {type(d).__name__}")
        ok, reason, details, seconds = d.get("ok"), d.get("reason", ""), d.get("details", []), d.get("seconds", 0.0)
        if not isinstance(ok, bool) or not isinstance(reason, str) or not isinstance(seconds, (int, float)) \
                or not isinstance(details, list) or not all(isinstance(x, str) for x in details):
            raise ValueError(f"malformed verdict {d!r:.200}")
        probe = d.get("probe_ms")
        if probe is not None and not isinstance(probe, (int, float)):
            raise ValueError(f"malformed verdict {d!r:.200}")
        return cls(ok=ok, reason=reason, details=details, seconds=float(seconds), backend=str(d.get("backend", "")),
                   device=str(d.get("device", "")), cacheable=d.get("cacheable", True) is not False,
                   probe_ms=None if probe is None else float(probe))

    def summary(self) -> str:
        if self.source == "skipped":
            return "not self-tested (UCA_SELFTEST=0): trusted"
        where = {"run": "run now", "cache": "cached"}.get(self.source, self.source)
        head = f"passed in {self.seconds:.2f} s" if self.ok else f"FAILED ({self.reason})"
        speed = f", speed probe {self.probe_ms:.3g} ms" if self.probe_ms is not None else ""
        return f"{head}{speed} [{where}]"


# -- what is tested --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    M: int
    N: int
    E: int
    labels: str  # "diag": labels = arange; "repeats": ids in [0, max(1, M // 3)), some rows without a positive
    exclude_self: bool = False
    scale: float = -1.3
    bias: float = 0.4

    def __str__(self):
        return f"{self.M}x{self.N}x{self.E} {self.labels}{' exclude_self' if self.exclude_self else ''}"


CASES = (
    Case(1, 1, 3, "diag"),
    Case(7, 5, 33, "repeats", scale=2.1, bias=-0.3),  # E crosses a 32-wide chunk; M != N
    Case(65, 130, 17, "repeats"),  # one row and two columns past the 64-wide tiles
    Case(70, 70, 20, "repeats", exclude_self=True, scale=1.7),  # the diagonal mask across tiles
)
DETERMINISM_CASE = CASES[2]
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
# Error floor per feature dtype (see the module docstring). The fused backends accumulate in
# float32 (float64 for float64 inputs); fp16/bf16 features are rounded once, and their GEMM in the
# backward sees dT rounded to the feature dtype (hence the 2x same-dtype reference term).
# float32: the same floor as the test suite's (tests/helpers.py imports it); the backends' float32
# errors on these cases are a few 1e-6 (cpu: 2.8e-6 at worst), so it leaves a margin above 10x.
FLOAT32_FLOOR = 5e-5
FLOOR = {torch.float64: 1e-9, torch.float32: FLOAT32_FLOOR, torch.bfloat16: 3e-3, torch.float16: 1e-3}
TF32_FLOOR = 1e-2
# The scalar sigmoid loss (reduction sum / mean) is checked as a loss of its own: backends with a
# one-sweep op (dispatch.Backend.sigmoid_sum) run a different kernel path for it.
SIGMOID_SUM = "sigmoid-sum"
OUT_NAMES = ("loss_rows", "loss_cols", "dA", "dB", "dr", "dc", "dscale", "dbias")


def _problem(case: Case, seed: int):
    """float64 (A, B, r, c, scale, bias, labels_a, labels_b, grad_rows, grad_cols) on the CPU,
    from a private generator (the global RNG is left alone)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    f64 = dict(generator=g, dtype=torch.float64, device="cpu")
    A = torch.randn(case.M, case.E, **f64) * (2.0 / case.E**0.5)
    B = torch.randn(case.N, case.E, **f64) * (2.0 / case.E**0.5)
    r, c = torch.randn(case.M, **f64) * 0.5, torch.randn(case.N, **f64) * 0.5
    if case.labels == "diag":
        la, lb = torch.arange(case.M), torch.arange(case.N)
    else:
        n_ids = max(1, case.M // 3)
        la = torch.randint(0, n_ids, (case.M,), generator=g)
        lb = la.clone() if case.exclude_self else torch.randint(0, n_ids + 2, (case.N,), generator=g)
    sc, bi = torch.tensor(case.scale, dtype=torch.float64), torch.tensor(case.bias, dtype=torch.float64)
    gr, gc = torch.randn(case.M, **f64), torch.randn(case.N, **f64)
    return A, B, r, c, sc, bi, la, lb, gr, gc


def _run(fn, prob, dtype, device, requires_grad=True):
    """``fn(A, B, r, c, scale, bias, la, lb) -> (rows, cols)`` on copies in ``dtype`` on ``device``;
    returns the 8 outputs (losses and gradients) as float64 on the CPU."""
    A, B, r, c, sc, bi, la, lb, gr, gc = prob
    rc = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    leaves = [A.to(device, dtype), B.to(device, dtype)] + [x.to(device, rc) for x in (r, c, sc, bi)]
    leaves = [x.detach().requires_grad_(requires_grad) for x in leaves]
    rows, cols = fn(*leaves, la.to(device), lb.to(device))
    gr, gc = gr.to(device), gc.to(device)
    total = (rows.double() * gr).sum() + (cols.double() * gc).sum()
    grads = torch.autograd.grad(total, leaves)
    return [x.detach().double().cpu() for x in (rows, cols, *grads)]


def _rel_err(x: torch.Tensor, ref: torch.Tensor, denom: float | None = None) -> float:
    if x.numel() == 0:
        return 0.0
    d = float(ref.abs().max().clamp_min(1e-2)) if denom is None else denom
    return float((x - ref).abs().max()) / d


def _grad_mass(gr, gc, loss) -> float:
    """A bound on Σ|dS|: Σ|g_row| + Σ|g_col| for the softmax losses, N·Σ|g_row| + M·Σ|g_col| for sigmoid."""
    if loss.startswith("sigmoid"):
        return float(len(gc) * gr.abs().sum() + len(gr) * gc.abs().sum()) or 1.0
    return float(gr.abs().sum() + gc.abs().sum()) or 1.0


def _compare(fused, oracle, same, dtype, tf32, mass):
    """(worst ratio error / bound, description of the worst output, failures)."""
    failures, worst, worst_desc = [], 0.0, ""
    for name, x, x64, xs in zip(OUT_NAMES, fused, oracle, same):
        if x.shape != x64.shape:
            failures.append(f"{name} has shape {list(x.shape)}, expected {list(x64.shape)}")
            continue
        if not torch.isfinite(x).all():
            failures.append(f"{name} has {int((~torch.isfinite(x)).sum())} non-finite values")
            continue
        denom = mass if name == "dbias" else None
        err = _rel_err(x, x64, denom)
        if tf32 and dtype == torch.float32:
            bound, how = TF32_FLOOR, f"tf32 floor {TF32_FLOOR:g}"
        else:
            err_same = _rel_err(xs, x64, denom)
            bound = max(2 * err_same, FLOOR[dtype])
            how = f"max(2 x same-dtype reference {err_same:.2g}, floor {FLOOR[dtype]:g})"
        ratio = err / bound
        if ratio > worst:
            worst, worst_desc = ratio, f"{name} {err:.2g} <= {bound:.2g}"
        if err > bound:
            failures.append(f"{name} error {err:.3g} > {how}")
    return worst, worst_desc, failures


@contextlib.contextmanager
def _test_mode(device: torch.device):
    """Autograd on, inference mode and autocast off, whatever the caller's context."""
    no_autocast = (torch.autocast(device.type, enabled=False) if device.type in ("cpu", "cuda")
                   else contextlib.nullcontext())
    with torch.inference_mode(False), torch.enable_grad(), no_autocast:
        yield


def _default_device(backend: str) -> str:
    return backends.get_backend(backend).device_type


def _resolve(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def run_selftest(backend: str, device: str | torch.device | None = None) -> Verdict:
    """Run the self-test of ``backend`` on ``device`` now, in this process (no cache, no memo).

    ``device`` defaults to ``cpu`` for the cpu backend and ``cuda`` for the GPU backends. Never
    raises for a failing backend: exceptions from its kernels are failures in the verdict.
    """
    from ._registry import LOSSES
    from .reference import contrast_reference

    impl = backends.get_backend(backend)
    device = _resolve(device if device is not None else _default_device(backend))
    try:
        name = device_name(device)
    except Exception as e:  # no such device
        return Verdict(False, f"device {device} is not usable: {type(e).__name__}: {e}", backend=backend,
                       device=str(device), cacheable=False)
    t0 = time.perf_counter()
    tf32 = impl.precision() != "ieee"  # float32 products in TF32 (the backend says, as it calls its op)
    details, failures, declined = [], [], {}
    n_checks = 0
    oracles: dict = {}

    def as_rows(total, A, B):  # a scalar as (rows, cols) for _run: rows = total / M each, cols = 0
        return total * total.new_ones(A.shape[0]) / A.shape[0], total.new_zeros(B.shape[0])

    def fused_fn(loss, excl):
        if loss == SIGMOID_SUM:  # the scalar path (the one-sweep op where the backend has one)
            return lambda *a: as_rows(impl.sigmoid_sum(*a, excl), a[0], a[1])
        return lambda *a: impl.contrast(*a, loss, excl)

    def ref_fn(loss, excl):
        if loss == SIGMOID_SUM:
            return lambda *a: as_rows(contrast_reference(*a, "sigmoid", excl)[0].sum(), a[0], a[1])
        return lambda *a: contrast_reference(*a, loss, excl)

    with _test_mode(device):
        for dtype in DTYPES:
            dname = str(dtype).replace("torch.", "")
            for loss in (*LOSSES, SIGMOID_SUM):
                worst, worst_desc, n_ok = 0.0, "", 0
                for i, case in enumerate(CASES):
                    probe = torch.empty(2, 2, dtype=dtype, device=device)
                    why = impl.not_supported_reasons(A=probe, B=probe, loss=loss.split("-")[0],
                                                     exclude_self=case.exclude_self,
                                                     explicit=True)
                    if why:
                        declined.setdefault("; ".join(why), []).append(f"{dname} {loss} {case}")
                        continue
                    label = f"{dname} {loss} {case}"
                    prob = _problem(case, seed=1000 + i)
                    if dtype in (torch.float16, torch.bfloat16):  # inputs exactly representable in dtype
                        prob = (prob[0].to(dtype).double(), prob[1].to(dtype).double(), *prob[2:])
                    try:
                        okey = (i, loss, dtype if dtype in (torch.float16, torch.bfloat16) else None)
                        if okey not in oracles:
                            oracles[okey] = _run(ref_fn(loss, case.exclude_self), prob, torch.float64, device)
                        oracle = oracles[okey]
                        same = _run(ref_fn(loss, case.exclude_self), prob, dtype, device)
                        fused = _run(fused_fn(loss, case.exclude_self), prob, dtype, device)
                        n_checks += 1
                        w, wd, fails = _compare(fused, oracle, same, dtype, tf32, _grad_mass(prob[8], prob[9], loss))
                        if case == DETERMINISM_CASE and not fails:
                            again = _run(fused_fn(loss, case.exclude_self), prob, dtype, device)
                            fails += [f"{n} differs on a rerun (not bit-identical)"
                                      for n, x, y in zip(OUT_NAMES, fused, again) if not torch.equal(x, y)]
                    except torch.OutOfMemoryError as e:
                        return Verdict(False, f"{label}: out of memory ({e})"[:300], details, time.perf_counter() - t0,
                                       backend, name, cacheable=False)
                    except Exception as e:  # a kernel that raises fails the test
                        fails, w, wd = [f"raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"], 0, ""
                    failures += [f"{label}: {f}" for f in fails]
                    if not fails:
                        n_ok += 1
                    if w > worst:
                        worst, worst_desc = w, f"{case}: {wd}"
                if n_ok:
                    details.append(f"{dname} {loss}: {n_ok} shapes ok, worst {worst_desc} (error/bound {worst:.2g})")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    details += [f"FAIL {f}" for f in failures]
    details += [f"declined ({why}): {len(what)} checks, e.g. {what[0]}" for why, what in declined.items()]
    seconds = time.perf_counter() - t0
    if not n_checks and not failures:
        why = "; ".join(declined) or "nothing to test"
        return Verdict(False, f"cannot run on {device}: {why}", details, seconds, backend, name, cacheable=False)
    if failures:
        more = f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""
        return Verdict(False, failures[0] + more, details, seconds, backend, name)
    probe = speed_probe(impl, device) if device.type == "cuda" else None
    if probe is not None:
        details.append(f"speed probe {SPEED_PROBE}: {probe:.3g} ms per forward + backward (median)")
    return Verdict(True, "", details, seconds, backend, name, probe_ms=probe)


# What ``auto`` times on a GPU to order the backends that passed: W2 + SDM-sized, float32, forward +
# backward (M = N, E); the same problem for every backend, so the order follows measurement.
SPEED_PROBE = dict(M=4096, E=256, loss="sdm")


def speed_probe(impl, device: torch.device, repeats: int = 5) -> float | None:
    """Median milliseconds of one forward + backward of SPEED_PROBE with ``impl`` on ``device``
    (after one untimed call that compiles and warms up); None if it cannot run."""
    g = torch.Generator(device="cpu").manual_seed(7)
    M, E = SPEED_PROBE["M"], SPEED_PROBE["E"]
    A, B = (torch.randn(M, E, generator=g).div_(E ** 0.5).to(device) for _ in range(2))
    small = [torch.zeros(M, device=device), torch.zeros(M, device=device), torch.tensor(5.0, device=device),
             torch.tensor(0.0, device=device)]
    labels = torch.randint(0, M // 4, (M,), generator=g).to(device)
    times = []
    try:
        for i in range(repeats + 1):
            x = [A.clone().requires_grad_(), B.clone().requires_grad_()]
            torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            rows, cols = impl.contrast(*x, *small, labels, labels, SPEED_PROBE["loss"], False)
            torch.autograd.grad(rows.sum() + cols.sum(), x)
            torch.cuda.synchronize(device)
            if i:
                times.append((time.perf_counter() - t0) * 1e3)
    except Exception:  # the verdict stays a pass; auto just has no timing for this backend
        return None
    return sorted(times)[len(times) // 2]


def probe_ms(backend: str, device: str) -> float | None:
    """The speed probe of a backend that passed its self-test on ``device`` (None: not timed)."""
    v = verdict(backend, device, warn=True)
    return v.probe_ms if v.ok else None


# -- device names and cache keys ------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_name(device) -> str:
    """What the verdict is kept for: the GPU model and compute capability, or the CPU model."""
    device = _resolve(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    if device.type == "cpu":
        return f"cpu: {_cpu_model()} ({platform.machine()})"
    return device.type


def cache_key(backend: str, device) -> str:
    """The key of a verdict: backend, device name, versions, kernel-code hash, precision in force."""
    here = Path(__file__).resolve().parent
    parts = {
        "backend": backend,
        "device": device_name(device),
        "torch": torch.__version__,
        "uca_kernels": __version__,
        "test": file_hash(here / "selftest.py")[:8] + file_hash(here / "reference.py")[:8],
    }
    parts.update(backends.get_backend(backend).fingerprint())
    return "|".join(f"{k}={v}" for k, v in parts.items())


def enabled() -> bool:
    """False when ``UCA_SELFTEST=0`` (self-testing skipped: auto trusts every backend)."""
    return os.environ.get("UCA_SELFTEST", "1").strip().lower() not in _OFF


def cache_path() -> Path | None:
    """The cache file, or None when ``UCA_SELFTEST_CACHE`` turns caching off."""
    value = os.environ.get("UCA_SELFTEST_CACHE", "").strip()
    if value.lower() in _OFF:
        return None
    if value:
        p = Path(value).expanduser()
        return p if p.suffix == ".json" and not p.is_dir() else p / "selftest.json"
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "uca" / "selftest.json"


def _read_cache(path: Path) -> dict:
    """The verdicts in the cache file (key -> raw entry); {} when missing, {} and a warning when corrupt."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        warnings.warn(f"uca_kernels: cannot read the self-test cache {path} ({e}); re-testing", SelftestWarning,
                      stacklevel=2)
        return {}
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT \
                or not isinstance(data.get("verdicts"), dict):
            raise ValueError(f"not a format-{CACHE_FORMAT} verdict cache")
        return data["verdicts"]
    except ValueError as e:
        warnings.warn(f"uca_kernels: ignoring the corrupt self-test cache {path} ({e}); re-testing and rewriting it",
                      SelftestWarning, stacklevel=2)
        return {}


def _write_cache(path: Path, key: str, v: Verdict) -> None:
    """Add one verdict to the cache file, atomically (merged with what is there now)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SelftestWarning)  # already warned on the read
            verdicts = _read_cache(path)
        entry = v.to_json()
        entry["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        verdicts[key] = entry
        fd, tmp = tempfile.mkstemp(prefix=".selftest-", suffix=".json", dir=path.parent)
        try:
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the cache may be a shared folder
            with os.fdopen(fd, "w") as f:
                json.dump({"format": CACHE_FORMAT, "verdicts": verdicts}, f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as e:
        warnings.warn(f"uca_kernels: cannot write the self-test cache {path} ({e}); the verdict lasts this process",
                      SelftestWarning, stacklevel=2)



# -- the verdict ``auto`` consults ----------------------------------------------------------------

_MEMO: dict[str, Verdict] = {}
_LOCK = threading.RLock()
_RUNS = 0  # self-tests run by this process (tests count them)


def clear_memo() -> None:
    """Forget this process's verdicts (the cache file is untouched)."""
    with _LOCK:
        _MEMO.clear()


def _isolate(device: torch.device) -> bool:
    value = os.environ.get("UCA_SELFTEST_ISOLATE", "").strip().lower()
    if value:
        return value not in _OFF
    return device.type == "cuda"


def _run_isolated(backend: str, device: torch.device, name: str) -> Verdict:
    """run_selftest in a child process (``python -m uca_kernels.selftest --json --no-cache``)."""
    timeout = float(os.environ.get("UCA_SELFTEST_TIMEOUT", "600"))
    pkg_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, UCA_SELFTEST_ISOLATE="0")
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "uca_kernels.selftest", "--backend", backend, "--device", str(device), "--json",
           "--no-cache"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return Verdict(False, f"self-test process timed out after {timeout:g} s (UCA_SELFTEST_TIMEOUT)",
                       seconds=time.perf_counter() - t0, backend=backend, device=name, cacheable=False)
    except OSError as e:
        return Verdict(False, f"could not start the self-test process: {e}", backend=backend, device=name,
                       cacheable=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    try:
        (v,) = [Verdict.from_json(d) for d in json.loads(lines[-1])]
        return v
    except (IndexError, ValueError):
        err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        last = err[-1] if err else "no output"
        return Verdict(False, f"self-test process exited with status {proc.returncode}: {last}"[:400],
                       seconds=time.perf_counter() - t0, backend=backend, device=name)


def verdict(backend: str, device, *, warn: bool = True) -> Verdict:
    """This process's verdict for ``backend`` on ``device``: memo, else the cache file, else run
    the self-test now (and record it). A failure warns once per process (:class:`SelftestWarning`)."""
    global _RUNS
    device = _resolve(device)
    if not enabled():
        return Verdict(True, "", backend=backend, device=str(device), source="skipped")
    with _LOCK:
        key = cache_key(backend, device)
        if key in _MEMO:
            return _MEMO[key]
        path = cache_path()
        v = None
        if path is not None:
            entry = _read_cache(path).get(key)
            if entry is not None:
                try:
                    v = Verdict.from_json(entry)
                    v.source = "cache"
                except ValueError as e:
                    warnings.warn(f"uca_kernels: ignoring a malformed entry in the self-test cache {path} ({e}); "
                                  "re-testing", SelftestWarning, stacklevel=2)
        if v is None:
            _RUNS += 1
            name = device_name(device)
            v = _run_isolated(backend, device, name) if _isolate(device) else run_selftest(backend, device)
            v.source = "run"
            if path is not None and v.cacheable:
                _write_cache(path, key, v)
        _MEMO[key] = v
    if not v.ok and warn:
        warnings.warn(
            f"uca_kernels: backend {backend!r} failed its self-test on {v.device or device} ({v.reason}); "
            f"'auto' skips it. Details: python -m uca_kernels.selftest --backend {backend} --device {device}",
            SelftestWarning, stacklevel=2)
    return v


def failure_reason(backend: str, device: str) -> str:
    """Why ``auto`` must not pick ``backend`` on ``device`` ("" when it may): the dispatcher's entry point."""
    v = verdict(backend, device, warn=True)
    return "" if v.ok else f"failed its self-test on {v.device}: {v.reason}"


# -- command line ----------------------------------------------------------------------------------


def _targets(named, devices):
    names = named or [n for n in backends.PRIORITY if backends.get_backend(n).needs_selftest]
    out = []
    for n in names:
        if devices:
            out += [(n, d, True) for d in devices]
        else:
            d = _default_device(n)
            out.append((n, d, bool(named)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m uca_kernels.selftest",
                                 description="Run the fused backends' self-test against the float64 reference "
                                             "(the test 'auto' runs before it picks a backend).")
    ap.add_argument("--backend", action="append", help="backend to test (repeatable; default: every fused backend)")
    ap.add_argument("--device", action="append", help="device, e.g. cpu, cuda, cuda:1 (default: the backend's own)")
    ap.add_argument("--json", action="store_true", help="print the verdicts as one JSON list")
    ap.add_argument("--no-cache", action="store_true", help="do not record the verdicts in the cache file")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every detail line")
    args = ap.parse_args(argv)
    verdicts, status = [], 0
    for dev in args.device or ():
        try:
            torch.device(dev)
        except RuntimeError:
            ap.error(f"--device {dev!r} is not a torch device (e.g. cpu, cuda, cuda:1)")
    for name, dev, named in _targets(args.backend, args.device):
        try:
            impl = backends.get_backend(name)
        except ValueError as e:
            ap.error(str(e))
        unavailable = impl.available_reasons()
        if dev.startswith("cuda") and not torch.cuda.is_available():
            unavailable = unavailable + ["no CUDA device"]
        if unavailable and not named:
            if not args.json:
                print(f"{name} on {dev}: not tested ({'; '.join(unavailable)})")
            continue
        v = run_selftest(name, dev)
        verdicts.append(v)
        status |= 0 if v.ok else 1
        if not args.no_cache and v.cacheable and cache_path() is not None and not unavailable:
            with _LOCK:
                key = cache_key(name, dev)
                _write_cache(cache_path(), key, v)
                _MEMO.pop(key, None)
        if not args.json:
            print(f"{name} on {v.device or dev}: {v.summary()}")
            for line in v.details if (args.verbose or not v.ok) else []:
                print(f"  {line}")
    if args.json:
        print(json.dumps([v.to_json() for v in verdicts]))
    return status


if __name__ == "__main__":
    from uca_kernels import selftest as _canonical  # one module object (its memo), not a __main__ copy

    sys.exit(_canonical.main())
