"""Where one call of the fused GPU path spends its time: a ``torch.profiler`` trace of one forward +
backward, its kernels ranked by device time, and the share of the vendor GEMMs.

    python -m benchmarks.gpu_profile --device cuda --out profile.txt        # W2 + SDM, B = 32768, E = 1024
    TRITON_INTERPRET=1 python -m benchmarks.gpu_profile --device cpu --dry --out /tmp/profile.txt

For each backend (default ``triton,cuda``, their default design; ``triton-tiles`` and ``cuda-tiles``
name the tile kernels) and dtype: two untimed calls (compilation, allocator), then one profiled call.
Appends to ``--out`` as it goes: a summary line (wall time of the profiled call, device time in
GEMM kernels — cuBLAS / CUTLASS names — and in the others), then the table of the top kernels.
Float32 runs with TF32 matmuls, as in the headline.
"""

from __future__ import annotations

import argparse
import time

import torch

from .cases import make_inputs
from .gpu_headline import CASES, DTYPES
from .harness import INPUT_KEYS, configure_fp32, environment, make_step
from .providers import fused_design, skip_reason

GEMM_MARKERS = ("gemm", "xmma", "cutlass", "nvjet", "cublas", "sm90_", "sm80_", "ampere_", "hopper")


def _device_time(evt) -> float:
    """Self device time (µs) of a profiler average, across torch versions."""
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(evt, name):
            return float(getattr(evt, name))
    return 0.0


def breakdown(prof, device: str) -> dict:
    """Device (CPU: self CPU) time, µs, in GEMMs and in everything else, and the kernel count."""
    gemm = other = 0.0
    n = 0
    for evt in prof.key_averages():
        if device == "cuda":
            if not str(getattr(evt, "device_type", "")).endswith("CUDA"):
                continue  # CPU-side ops: their device time is that of their kernels, counted there
            t = _device_time(evt)
        else:
            t = float(evt.self_cpu_time_total)
        name = evt.key.lower()
        if device != "cuda" and not name.startswith("aten::"):
            continue
        is_gemm = any(m in name for m in GEMM_MARKERS) or name in ("aten::mm", "aten::addmm", "aten::bmm")
        gemm += t if is_gemm else 0.0
        other += 0.0 if is_gemm else t
        n += evt.count
    return {"gemm_us": gemm, "other_us": other, "events": n}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    ap.add_argument("--out", required=True, help="text file to append to")
    ap.add_argument("--backends", default="triton,cuda")
    ap.add_argument("--case", default="w2-sdm", choices=tuple(CASES))
    ap.add_argument("--B", type=int, default=32768)
    ap.add_argument("--E", type=int, default=1024)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--rows", type=int, default=25, help="kernels listed per table")
    ap.add_argument("--dry", action="store_true", help="tiny sizes (B = 32, E = 16) on the CPU: the code path")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is visible")
    if args.dry:
        args.B, args.E = 32, 16
        import os

        os.environ.setdefault("UCA_BENCH_TRITON_CPU", "1")
    configure_fp32(args.device, "tf32")
    env = environment(args.device)
    case = CASES[args.case](args.E)
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    sort = "self_device_time_total" if args.device == "cuda" else "self_cpu_time_total"

    def emit(text: str) -> None:
        print(text, flush=True)
        with open(args.out, "a") as f:
            f.write(text + "\n")

    emit(f"# One call of the fused path under torch.profiler — {env['device_name']}\n\ntorch {env['torch']}, commit "
         f"{env['commit']}, {env['date']}; {case.group}, B = {args.B} (M = N = {case.rows(args.B)}), E = {case.E}, "
         f"forward + backward; float32 matmuls as {env.get('fp32_matmul', 'ieee')}.\n")
    for backend in (b for b in args.backends.split(",") if b):
        for dt in (d for d in args.dtypes.split(",") if d):
            dtype = DTYPES[dt]
            why = skip_reason(backend, case, args.device, dtype)
            if why:
                emit(f"## {backend} ({fused_design(backend)}), {dt}: skipped: {why}\n")
                continue
            try:
                x = make_inputs(case, args.B, args.device, dtype, draw_on_device=True)
                step = make_step(backend, case, x)

                def call():
                    for k in INPUT_KEYS:
                        x[k].grad = None
                    step()
                    if args.device == "cuda":
                        torch.cuda.synchronize()

                call()
                call()
                with profile(activities=activities) as prof:
                    t0 = time.perf_counter()
                    call()
                    wall = time.perf_counter() - t0
                b = breakdown(prof, args.device)
                total = b["gemm_us"] + b["other_us"]
                emit(f"## {backend} ({fused_design(backend)}), {dt}: {wall * 1e3:.2f} ms wall (profiled); "
                     f"{'device' if args.device == 'cuda' else 'aten self CPU'} time {total / 1e3:.2f} ms: GEMM "
                     f"{b['gemm_us'] / 1e3:.2f} ms ({b['gemm_us'] / max(total, 1e-9):.0%}), other kernels "
                     f"{b['other_us'] / 1e3:.2f} ms\n")
                emit("```\n" + prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=70)
                     + "\n```\n")
            except Exception as e:  # noqa: BLE001  (recorded; the next backend goes on)
                emit(f"## {backend}, {dt}: failed: {type(e).__name__}: {e}"[:500] + "\n")
            finally:
                if args.device == "cuda":
                    torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
