"""Fused vs materialised vs naive: time and peak memory over the batch size, for every case.

    python -m benchmarks.sweep --device cpu --out benchmarks/results          # the CPU sweep
    python -m benchmarks.sweep --device cuda --out DIR --gpu                  # the GPU sweep
    python -m benchmarks.sweep ... --compare OLD.json                         # and compare

For each case (:mod:`benchmarks.cases`) and provider (:mod:`benchmarks.providers`): the provider is
first checked against the float64 reference at ``--check-b`` (the four-matmul floor ``matmul4``
computes no loss and is only timed); then B doubles from ``--b-min``.
Before each B the next point is predicted from the last (time and memory grow at most as B², so
×4): a provider stops when the predicted call time exceeds ``--max-call-s`` or the predicted peak
memory exceeds ``--max-mem-gb``, or when a run fails (out of memory, timeout). The row at the B it
did not run says why. On the CPU every check and measurement runs in a fresh process.

Writes ``sweep-<device>.json`` / ``.csv`` (rewritten after every provider, so an interrupted sweep
keeps what it measured), then the plots and ``sweep-<device>.md`` (:mod:`benchmarks.plot`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from . import cases as cases_mod
from .harness import check, configure_fp32, doubling, environment, measure, run, write_results
from .providers import PROVIDERS, SWEEP_PROVIDERS, is_fused, min_peak_bytes, skip_reason

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
# torch.compile takes 15-40 s per case and batch size on 2 CPU cores, so the default CPU sweep
# compiles a representative subset (one case per family, and one sigmoid case); --compile-cases all
# for every case.
CPU_COMPILE_CASES = ("dist-w2-sdm-D256-fwdbwd,dist-kl-infonce-D256-fwdbwd,point-K4-intra-sdm-D256-fwdbwd,"
                     "clip-D256-fwdbwd,dist-w2-sigmoid-D256-fwdbwd")


def _mem_available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", default="benchmarks/results", help="output folder")
    ap.add_argument("--name", default=None, help="file stem (default sweep-<device>)")
    ap.add_argument("--gpu", action="store_true", help="the GPU case list (D = 512, E = 1024) instead of the CPU one")
    ap.add_argument("--ci", action="store_true", help="the tiny CI case list (seconds)")
    ap.add_argument("--cases", default=None, help="comma-separated substrings of case names to keep")
    ap.add_argument("--providers", default=",".join(SWEEP_PROVIDERS), help="comma-separated providers")
    ap.add_argument("--compile-cases", default=None,
                    help="case-name substrings for which 'compile' runs (default: a subset on CPU, all on GPU; 'all')")
    ap.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    ap.add_argument("--fp32-matmul", default="tf32", choices=("tf32", "ieee"), help="GPU float32 matmul precision")
    ap.add_argument("--b-min", type=int, default=None, help="first B (default 256 on CPU, 1024 on GPU)")
    ap.add_argument("--b-max", type=int, default=65536, help="last B for non-fused providers")
    ap.add_argument("--b-max-fused", type=int, default=262144, help="last B for fused backends")
    ap.add_argument("--check-b", type=int, default=256, help="rows (distributions or points) of the correctness check")
    ap.add_argument("--max-call-s", type=float, default=None, help="stop when one call is predicted to take longer "
                    "(default 2 s on CPU, 5 s on GPU)")
    ap.add_argument("--max-mem-gb", type=float, default=None,
                    help="stop when the predicted peak extra memory is larger "
                    "(default 75%% of available RAM / 90%% of GPU memory)")
    ap.add_argument("--target-s", type=float, default=0.5,
                    help="timed calls continue until they add up to this much time (at least --min-reps)")
    ap.add_argument("--min-reps", type=int, default=3)
    ap.add_argument("--max-reps", type=int, default=20)
    ap.add_argument("--budget-min", type=float, default=None,
                    help="start no new measurement after this many minutes (default 50 on CPU, none on GPU; "
                    "0: none); what was not measured is recorded as stopped/skipped by the budget")
    ap.add_argument("--no-plot", action="store_true", help="write JSON/CSV/markdown only")
    ap.add_argument("--compare", default=None, metavar="OLD.json", help="afterwards, compare with an earlier run")
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is visible")
    if args.b_min is None:
        args.b_min = 1024 if cuda else 256
    if args.max_call_s is None:
        args.max_call_s = 5.0 if cuda else 2.0
    if args.max_mem_gb is None:
        total = torch.cuda.get_device_properties(0).total_memory * 0.9 if cuda else _mem_available_bytes() * 0.75
        args.max_mem_gb = total / 2**30
    if args.compile_cases is None:
        args.compile_cases = "all" if cuda else CPU_COMPILE_CASES
    if args.budget_min is None:
        args.budget_min = 0 if cuda else 50  # a safety net: the CPU sweep takes about 25-40 min when quiet
    if not args.budget_min:
        args.budget_min = None
    return args


def case_list(args) -> list:
    base = cases_mod.CI_CASES if args.ci else (cases_mod.GPU_CASES if args.gpu else cases_mod.CPU_CASES)
    return cases_mod.select_cases(base, args.cases)


def sweep_provider(provider: str, case, args, base: dict, log, deadline: float | None = None) -> list[dict]:
    """The rows of one (case, provider): a correctness check, then B doubling until a stop rule."""
    dtype = DTYPES[args.dtype]
    check_b = max(8, args.check_b // case.K)  # at most check_b rows (points) per side
    chk = run(check, args.device, 900, provider=provider, case=case, B=check_b, dtype=dtype)
    if chk["status"] != "ok":
        log(f"  {provider:9s} check failed: {chk.get('reason', '')}")
        return [{**base, "B": check_b, "rows": case.rows(check_b), **chk}]
    base = {**base, **{k: chk[k] for k in ("check_B", "check_err", "check_tol")}}
    b_max = args.b_max_fused if is_fused(provider) else args.b_max
    batches = [args.b_min * 2**i for i in range(40) if args.b_min * 2**i <= b_max]
    timing = dict(min_reps=args.min_reps, max_reps=args.max_reps, target_s=args.target_s,
                  slow_s=4 * args.max_call_s)  # a slow first point (e.g. keops) gets fewer calls

    def run_at(B):
        res = run(measure, args.device, 300 + 12 * args.max_call_s, provider=provider, case=case, B=B,
                  dtype=dtype, **timing)
        return {"rows": case.rows(B), **res}

    return doubling(run_at, batches, args.max_call_s, args.max_mem_gb * 2**30, base, log, deadline,
                    min_mem=lambda B: min_peak_bytes(provider, case, B, dtype))


def main(argv=None) -> int:
    args = parse_args(argv)
    configure_fp32(args.device, args.fp32_matmul)  # recorded in every row (environment)
    stem = os.path.join(args.out, args.name or f"sweep-{args.device}")
    env = environment(args.device)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "name", "compare")}
    meta = {**env, "kind": "sweep", "settings": settings, "argv": sys.argv[1:] if argv is None else list(argv),
            "load_1m_start": round(os.getloadavg()[0], 2)}
    providers = [p for p in args.providers.split(",") if p]
    unknown = set(providers) - set(PROVIDERS)
    if unknown:
        print(f"unknown providers {sorted(unknown)}; choose from {', '.join(PROVIDERS)}", file=sys.stderr)
        return 2
    compile_pats = None if args.compile_cases == "all" else args.compile_cases

    def log(msg):
        print(msg, flush=True)

    log(f"sweep on {env['device_name']} (torch {env['torch']}, commit {env['commit']}), dtype {args.dtype}; "
        f"limits {args.max_call_s:g} s per call, {args.max_mem_gb:.1f} GiB")
    rows: list[dict] = []
    t_start = time.time()
    deadline = None if args.budget_min is None else t_start + 60 * args.budget_min
    for case in case_list(args):
        log(f"{case.name}")
        for provider in providers:
            base = {"provider": provider, **case.as_dict(), "dtype": args.dtype, **env}
            reason = skip_reason(provider, case, args.device, DTYPES[args.dtype])
            if reason is None and provider == "compile" and not cases_mod.select_cases([case], compile_pats):
                reason = "not in --compile-cases (compiling every case and B takes too long on this device)"
            if reason is None and deadline is not None and time.time() > deadline:
                reason = f"budget: the sweep's {args.budget_min:g} min are spent"
            if reason is not None:
                rows.append({**base, "status": "skipped", "reason": reason})
                continue
            rows += sweep_provider(provider, case, args, base, log, deadline)
            meta["elapsed_s"] = round(time.time() - t_start, 1)
            write_results(stem, meta, rows)
    meta["elapsed_s"] = round(time.time() - t_start, 1)
    meta["load_1m_end"] = round(os.getloadavg()[0], 2)
    json_path, csv_path = write_results(stem, meta, rows)
    log(f"wrote {json_path} and {csv_path} ({len(rows)} rows, {meta['elapsed_s']:.0f} s)")
    from . import plot

    outputs = plot.report(json_path, png=not args.no_plot)
    log("wrote " + ", ".join(outputs))
    if args.compare:
        from . import compare

        return compare.main([args.compare, json_path])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
