"""The benchmark harness: correctness check, timing, peak memory, result rows, writing.

- **check** (:func:`check`): a provider's loss (and, for forward+backward cases, its gradients with
  respect to every input) is compared to the float64 ``reference`` at a small batch before anything
  is timed (not the four-matmul floor, which computes no loss). Error = max |x − x₆₄| / max |x₆₄|
  over the loss and each gradient; it must be at most ``max(TOL[dtype], 2 × the error of the
  reference run in the same dtype)`` (TOL_TF32 for float32 with TF32 matmuls on a GPU).
- **time** (:func:`measure`): one untimed warm-up call (it also compiles: torch.compile, KeOps),
  then timed calls until ``min_reps`` and ``target_s`` are reached (at most ``max_reps``); wall
  time with the device synchronised before and after each call; median and 20/80 % quantiles.
  Gradients are reset between calls, outside the timed region.
- **memory**: GPU: ``max_memory_allocated`` over the timed calls minus the memory allocated before
  them. CPU: each measurement runs in a fresh process (:func:`run_isolated`); after the warm-up it
  returns freed heap to the system (``malloc_trim``), takes its RSS as the baseline, resets the
  peak (``/proc/self/clear_refs``) and reports peak RSS (``VmHWM``) minus the baseline.
- **where** (:func:`run`): in a fresh process on the CPU, in this process on a GPU; a crash, an
  out-of-memory kill or a timeout becomes a row with its ``status`` and ``reason``.
- **how far** (:func:`doubling`): B doubles while the next point's time and memory, predicted from
  the last (both grow at most as B²), stay within the limits; the row where it stopped says why.
- **rows**: every row carries :func:`environment` (device name, torch version, commit, date, ...).
- **writing**: :func:`write_results` writes ``NAME.json`` (meta + rows) and ``NAME.csv``.
"""

from __future__ import annotations

import csv
import ctypes
import datetime as _dt
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import time
import traceback

import torch

from .cases import Case, make_inputs
from .providers import FLOOR, floor_step, loss_fn

__all__ = ["TOL", "check", "configure_fp32", "doubling", "environment", "measure", "run", "run_isolated",
           "time_and_memory", "write_results"]

TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}
TOL_TF32 = 1e-2  # float32 on a GPU with TF32 matmuls (10-bit mantissa products)
INPUT_KEYS = ("mu_v", "logvar_v", "mu_t", "logvar_t")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- environment -----------------------------------------------------------------------------------


def cpu_name() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return cpu_name()


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: str) -> dict:
    """What every row records about where and when it was measured."""
    env = {
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "",
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "commit": os.environ.get("UCA_BENCH_COMMIT") or git_commit(),  # set it where there is no .git
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if device == "cuda":
        env["fp32_matmul"] = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return env


def configure_fp32(device: str, precision: str = "tf32") -> None:
    """On a GPU, run every float32 matmul, torch's and the fused backends', as TF32 ("tf32") or
    exactly ("ieee"); ``environment()`` records the choice. No effect on the CPU."""
    if device != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    os.environ["UCA_TRITON_PRECISION"] = precision  # read by the Triton backend at every call
    os.environ["UCA_CUDA_PRECISION"] = precision  # and by the CUDA backend


# -- memory ----------------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _trim_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak extra memory of the code run between :meth:`start` and :meth:`stop` (bytes)."""

    def __init__(self, device: str):
        self.device = device

    def start(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        _trim_heap()
        self.base = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
            f.write("5")

    def stop(self) -> int:
        if self.device == "cuda":
            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated() - self.base)
        return int(max(0, _status_kb("VmHWM") - self.base) * 1024)


# -- one measurement -------------------------------------------------------------------------------


def quantile(xs, q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_step(provider: str, case: Case, x: dict):
    """A callable that computes the loss (and backpropagates it for forward+backward cases); for
    the four-matmul floor, its matmuls (:func:`benchmarks.providers.floor_step`)."""
    if provider == FLOOR:
        return floor_step(case, x)

    def step():
        loss = loss_fn(provider, case, x)
        if case.backward:
            loss.backward()
        return loss.detach()

    return step


def _reset_grads(x: dict) -> None:
    for k in INPUT_KEYS:
        x[k].grad = None


def time_and_memory(step, device: str, reset=None, min_reps: int = 3, max_reps: int = 20, target_s: float = 1.0,
                    warmup: bool = True, slow_s: float | None = None) -> dict:
    """Wall time (median, 20/80 % quantiles) and peak extra memory of ``step()``; ``reset()`` runs
    before every call, outside the timed region. A point whose first timed call shows that
    ``min_reps`` calls would take longer than ``slow_s`` gets fewer (at least one; ``reps`` says)."""
    warmup_s = None
    if warmup:
        t0 = time.perf_counter()
        step()
        _sync(device)
        warmup_s = time.perf_counter() - t0
    if reset is not None:
        reset()
    mem = PeakMemory(device)
    mem.start()
    times: list[float] = []
    while True:
        if reset is not None:
            reset()
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
        wanted = min_reps if slow_s is None else max(1, min(min_reps, int(slow_s // times[0])))
        if len(times) >= wanted and (sum(times) >= target_s or len(times) >= max_reps):
            break
    peak = mem.stop()
    return {"status": "ok", "time_median_s": statistics.median(times), "time_q20_s": quantile(times, 0.2),
            "time_q80_s": quantile(times, 0.8), "reps": len(times), "warmup_s": warmup_s, "peak_mem_bytes": peak,
            "load_1m": round(os.getloadavg()[0], 2)}  # > core count: other work shared the CPU


def measure(provider: str, case: Case, B: int, device: str = "cpu", dtype=torch.float32, seed: int = 0,
            draw_on_device: bool = False, **timing) -> dict:
    """Time and peak memory of ``provider`` on ``case`` at batch ``B`` (in this process);
    ``timing``: keyword arguments of :func:`time_and_memory`; ``draw_on_device``: see
    :func:`benchmarks.cases.make_inputs`."""
    x = make_inputs(case, B, device, dtype, seed, draw_on_device=draw_on_device)
    res = time_and_memory(make_step(provider, case, x), device, lambda: _reset_grads(x), **timing)
    res["gflop"] = case.flops(B) / 1e9
    res["gflop_per_s"] = res["gflop"] / res["time_median_s"]
    return res


def _loss_and_grads(provider: str, case: Case, x: dict) -> list[torch.Tensor]:
    loss = loss_fn(provider, case, x)
    out = [loss.detach().double().reshape(1)]
    if case.backward:
        loss.backward()
        out += [x[k].grad.double() for k in INPUT_KEYS]
    return out


def _rel_err(got: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    err = 0.0
    for g, r in zip(got, ref):
        scale = r.abs().max().item() or 1.0
        e = ((g.to(r.device) - r).abs().max().item()) / scale
        err = max(err, e if math.isfinite(e) else math.inf)
    return err


_REFERENCE: dict = {}  # the last check's float64 oracle and the same-dtype reference's error


def check(provider: str, case: Case, B: int, device: str = "cpu", dtype=torch.float32, seed: int = 1) -> dict:
    """Compare ``provider`` with the float64 reference at batch ``B`` (see the module docstring).
    The four-matmul floor computes no loss: it passes with no error recorded."""
    if provider == FLOOR:
        return {"check_B": B, "check_err": None, "check_tol": None, "check_ok": True, "status": "ok", "reason": ""}
    key = (case, B, str(device), dtype, seed)
    if key not in _REFERENCE:  # one process checks many providers on the same case: compute the oracle once
        ref = _loss_and_grads("reference", case, make_inputs(case, B, device, torch.float64, seed))
        ref_err = _rel_err(_loss_and_grads("reference", case, make_inputs(case, B, device, dtype, seed)), ref)
        _REFERENCE.clear()
        _REFERENCE[key] = ref, ref_err
    ref, ref_err = _REFERENCE[key]
    floor = TOL.get(dtype, 1e-2)
    if device == "cuda" and dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        floor = TOL_TF32
    tol = max(floor, 2 * ref_err)
    err = _rel_err(_loss_and_grads(provider, case, make_inputs(case, B, device, dtype, seed)), ref)
    ok = err <= tol
    return {"check_B": B, "check_err": err, "check_tol": tol, "check_ok": ok,
            "status": "ok" if ok else "mismatch",
            "reason": "" if ok else f"differs from the float64 reference: error {err:.2e} > tolerance {tol:.2e}"}


# -- fresh processes (CPU memory) ------------------------------------------------------------------


def _child(conn, fn, kwargs: dict) -> None:
    try:  # if memory runs out anyway, the out-of-memory killer takes this process first
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    try:
        result = fn(**kwargs)
    except torch.OutOfMemoryError as e:
        result = {"status": "oom", "reason": str(e).splitlines()[0][:300]}
    except MemoryError as e:
        result = {"status": "oom", "reason": f"MemoryError: {e}"[:300]}
    except Exception as e:  # noqa: BLE001  (any failure becomes a recorded row)
        tb = traceback.format_exc().strip().splitlines()
        result = {"status": "error", "reason": f"{type(e).__name__}: {e}"[:300], "traceback": "\n".join(tb[-6:])}
    conn.send(result)
    conn.close()


_CTX = None


def _context():
    # A fork server started once, with torch and the library already imported: each measurement is
    # a fresh process that starts in milliseconds, and no parent thread pool is inherited.
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(["benchmarks.harness"])
    return _CTX


def run_isolated(fn, timeout_s: float, **kwargs) -> dict:
    """``fn(**kwargs)`` (a module-level function returning a dict) in a fresh process; a crash, a
    kill (out of memory) or a timeout becomes a result with ``status`` and ``reason``."""
    ctx = _context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, kwargs), daemon=True)
    proc.start()
    send.close()
    result, timed_out = None, not recv.poll(timeout_s)
    if not timed_out:
        try:
            result = recv.recv()
        except EOFError:  # the process died before sending its result
            pass
    proc.join(0 if timed_out else None)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return {"status": "timeout", "reason": f"killed after {timeout_s:.0f} s"}
    if result is None:
        code = proc.exitcode
        why = f"killed by signal {-code} (out of memory?)" if code and code < 0 else f"exit code {code}"
        return {"status": "oom" if code == -9 else "error", "reason": f"the process died: {why}"}
    return result


def run(fn, device: str, timeout_s: float, isolate: bool | None = None, **kwargs) -> dict:
    """``fn(device=device, **kwargs)``: in a fresh process on CPU (so that its peak RSS is its own),
    in this process on GPU (``isolate`` overrides either); out-of-memory and other failures become a
    result row."""
    if isolate is None:
        isolate = device == "cpu"
    if isolate:
        return run_isolated(fn, timeout_s, device=device, **kwargs)
    try:
        return fn(device=device, **kwargs)
    except torch.OutOfMemoryError as e:
        return {"status": "oom", "reason": str(e).splitlines()[0][:300]}
    except Exception as e:  # noqa: BLE001  (recorded; the caller goes on)
        return {"status": "error", "reason": f"{type(e).__name__}: {e}"[:300]}
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()


def doubling(run_at, batches, max_call_s: float, max_mem_bytes: float, base: dict, log=print,
             deadline: float | None = None, min_mem=None) -> list[dict]:
    """Rows of ``run_at(B)`` for B in ``batches`` (ascending) until a stop rule fires.

    Before each B the point is predicted from the last one (time and memory grow at most as B²):
    it is not run when the predicted time per call exceeds ``max_call_s`` or the predicted peak
    memory ``max_mem_bytes`` (or the lower bound ``min_mem(B)``, which also guards the first B), or
    after ``deadline`` (a ``time.time()``); a failed run (out of memory, timeout, error) also ends
    the series.
    The row of the B that did not run says why (status ``stopped``).
    """
    rows, prev = [], None
    for B in batches:
        row = {**base, "B": B}
        if deadline is not None and time.time() > deadline:
            rows.append({**row, "status": "stopped", "reason": "budget: the sweep's time budget is spent"})
            break
        m_pred = min_mem(B) if min_mem is not None else 0.0
        if prev is not None:
            growth = (B / prev["B"]) ** 2
            t_pred, m_pred = prev["time_median_s"] * growth, max(m_pred, prev["peak_mem_bytes"] * growth)
            if t_pred > max_call_s:
                rows.append({**row, "status": "stopped",
                             "reason": f"time: predicted {t_pred:.2f} s per call > limit {max_call_s:g} s"})
                break
        if m_pred > max_mem_bytes:
            rows.append({**row, "status": "stopped", "reason": f"memory: predicted {m_pred / 2**30:.1f} GiB "
                         f"> limit {max_mem_bytes / 2**30:.1f} GiB"})
            break
        res = run_at(B)
        rows.append({**row, **res})
        label = f"  {base.get('provider', ''):9s} B={B:<7d}"
        if res["status"] != "ok":
            log(f"{label} {res['status']}: {res.get('reason', '')}")
            break
        gf = f"  {res['gflop_per_s']:8.1f} GFLOP/s" if "gflop_per_s" in res else ""
        log(f"{label} {res['time_median_s'] * 1e3:10.2f} ms  [{res['time_q20_s'] * 1e3:.2f}, "
            f"{res['time_q80_s'] * 1e3:.2f}]  {res['peak_mem_bytes'] / 2**20:9.1f} MiB{gf}")
        prev = {**res, "B": B}
    return rows


# -- writing ---------------------------------------------------------------------------------------


def write_results(path_stem: str, meta: dict, rows: list[dict]) -> tuple[str, str]:
    """Write ``path_stem.json`` ({"meta", "rows"}) and ``path_stem.csv`` (one line per row), each
    through a temporary file and a rename: a run killed while writing leaves the previous version."""
    os.makedirs(os.path.dirname(os.path.abspath(path_stem)), exist_ok=True)
    with open(path_stem + ".json.tmp", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, default=str)
        f.write("\n")
    os.replace(path_stem + ".json.tmp", path_stem + ".json")
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields and k != "traceback"]
    with open(path_stem + ".csv.tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(path_stem + ".csv.tmp", path_stem + ".csv")
    return path_stem + ".json", path_stem + ".csv"
