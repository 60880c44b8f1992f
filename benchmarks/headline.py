"""The headline comparison: fused vs materialised on the main training loss, against a matmul yardstick.

    python -m benchmarks.headline --device cpu  [--out benchmarks/results]
    python -m benchmarks.headline --device cuda [--out DIR]

The loss is W2 + SDM with identity labels, forward+backward (``dist-w2-sdm-D*-fwdbwd``).

- ``--device cpu`` (defaults): float32, D = 256 (E = 512), B = 8192: the fused ``cpu`` backend and
  ``reference`` in one run, each in a fresh process (time and peak extra RSS); the yardstick is the
  time of four ``torch.matmul`` of [B, E] @ [E, B] (the fused op's work, DESIGN.md section 6). Then
  ``cpu`` alone at B = 65536 (one call), where the reference's peak memory, predicted from its
  measured peak at B = 8192 (× (65536/8192)², it holds B×B matrices), is far beyond RAM.
- ``--device cuda`` (defaults): D = 512 (E = 1024), float32 (TF32 matmuls) and bfloat16; every
  usable fused backend for B = 1024 … 262144 and the reference for B = 1024 … 65536, doubling with
  the sweep's stop rules (predicted time and memory); the yardstick at every B it fits; the ratio
  fused / four-matmul time at B = 32768.

Every provider is checked against the float64 reference (at ``--check-b``) before it is timed.
Writes ``headline-<device>.json`` (meta, rows, summary), ``.csv`` and ``.md``, and prints the
markdown table last.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from .cases import Case
from .harness import check, configure_fp32, doubling, environment, measure, run, time_and_memory, write_results
from .providers import FUSED, skip_reason
from .sweep import DTYPES, _mem_available_bytes


def measure_matmul4(B: int, E: int, device: str = "cpu", dtype=torch.float32, **timing) -> dict:
    """The yardstick: four ``torch.matmul`` of [B, E] @ [E, B] in ``dtype`` (one timed call = four)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(B, E, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(E, B, generator=g).to(device=device, dtype=dtype)

    def step():
        for _ in range(4):
            torch.matmul(a, b)

    res = time_and_memory(step, device, **timing)
    res["gflop"] = 4 * 2 * B * B * E / 1e9
    res["gflop_per_s"] = res["gflop"] / res["time_median_s"]
    return res


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--name", default=None, help="file stem (default headline-<device>)")
    ap.add_argument("--dim", type=int, default=None, help="D (E = 2D); default 256 on CPU, 512 on GPU")
    ap.add_argument("--dtypes", default=None, help="default float32 on CPU, float32,bfloat16 on GPU")
    ap.add_argument("--fp32-matmul", default="tf32", choices=("tf32", "ieee"), help="GPU float32 matmul precision")
    ap.add_argument("--b-min", type=int, default=None, help="first B (default 8192 on CPU, 1024 on GPU)")
    ap.add_argument("--b-max", type=int, default=None, help="last B of the reference and the yardstick "
                    "(default 8192 on CPU, 65536 on GPU)")
    ap.add_argument("--b-max-fused", type=int, default=None, help="last B of fused backends (8192 / 262144)")
    ap.add_argument("--large-batch", type=int, default=None,
                    help="one extra call of each fused backend at this B (default 65536 on CPU, none on GPU; 0: none)")
    ap.add_argument("--ratio-batch", type=int, default=None, help="B of the fused / 4-matmul ratio (8192 / 32768)")
    ap.add_argument("--check-b", type=int, default=None, help="batch of the correctness check (default 1024)")
    ap.add_argument("--max-call-s", type=float, default=None, help="stop rule (default 120 s on CPU, 5 s on GPU)")
    ap.add_argument("--max-mem-gb", type=float, default=None)
    ap.add_argument("--min-reps", type=int, default=3)
    ap.add_argument("--max-reps", type=int, default=10)
    ap.add_argument("--target-s", type=float, default=None, help="time the calls for at least this long (default 1 s)")
    ap.add_argument("--dry", action="store_true",
                    help="tiny sizes (D = 32, B <= 2048): checks the script, not the speed")
    args = ap.parse_args(argv)
    cpu = args.device == "cpu"
    if not cpu and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is visible")
    defaults = dict(dim=256, dtypes="float32", b_min=8192, b_max=8192, b_max_fused=8192, large_batch=65536,
                    ratio_batch=8192, max_call_s=120.0) if cpu else \
        dict(dim=512, dtypes="float32,bfloat16", b_min=1024, b_max=65536, b_max_fused=262144, large_batch=0,
             ratio_batch=32768, max_call_s=5.0)
    defaults.update(check_b=1024, target_s=1.0)
    if args.dry:
        defaults.update(dim=32, b_min=256, b_max=512, b_max_fused=1024, large_batch=2048, ratio_batch=512,
                        check_b=256, target_s=0.1)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.max_mem_gb is None:
        total = torch.cuda.get_device_properties(0).total_memory * 0.9 if not cpu else _mem_available_bytes() * 0.75
        args.max_mem_gb = total / 2**30
    return args


def _at(rows, provider, B, dtype):
    for r in rows:
        if r["provider"] == provider and r.get("B") == B and r["dtype"] == dtype and r["status"] == "ok":
            return r
    return None


def summarize(rows: list[dict], args, fused: list[str]) -> dict:
    """The ratios the headline is about, from the measured rows only."""
    out = {}
    for dt in args.dtypes.split(","):
        R = args.ratio_batch
        ref, mm = _at(rows, "reference", R, dt), _at(rows, "matmul4", R, dt)
        s = {"B": R}
        for p in fused:
            f = _at(rows, p, R, dt)
            if f is None:
                continue
            s[p] = {"time_s": f["time_median_s"], "peak_mem_bytes": f["peak_mem_bytes"]}
            if mm:
                s[p]["time_over_matmul4"] = f["time_median_s"] / mm["time_median_s"]
            if ref:
                s[p]["time_over_reference"] = f["time_median_s"] / ref["time_median_s"]
                s[p]["reference_mem_over_fused_mem"] = ref["peak_mem_bytes"] / max(f["peak_mem_bytes"], 1)
            common = [r["B"] for r in rows if r["provider"] == p and r["dtype"] == dt and r["status"] == "ok"
                      and _at(rows, "reference", r["B"], dt)]
            if common:  # the reference may stop (memory) before the ratio batch
                Bc = max(common)
                fc, rc = _at(rows, p, Bc, dt), _at(rows, "reference", Bc, dt)
                s[p]["largest_common_B_with_reference"] = Bc
                s[p]["time_over_reference_there"] = fc["time_median_s"] / rc["time_median_s"]
                s[p]["reference_mem_over_fused_mem_there"] = rc["peak_mem_bytes"] / max(fc["peak_mem_bytes"], 1)
        if ref:
            s["reference"] = {"time_s": ref["time_median_s"], "peak_mem_bytes": ref["peak_mem_bytes"]}
        if mm:
            s["matmul4"] = {"time_s": mm["time_median_s"]}
        largest = {}
        for p in [*fused, "reference", "matmul4"]:
            ok = [r["B"] for r in rows if r["provider"] == p and r["dtype"] == dt and r["status"] == "ok"]
            if ok:
                largest[p] = max(ok)
        s["largest_B"] = largest
        if args.large_batch and ref:
            factor = (args.large_batch / R) ** 2
            s["reference_predicted_peak_bytes_at_large_batch"] = ref["peak_mem_bytes"] * factor
            s["large_batch"] = args.large_batch
        out[dt] = s
    return out


def write_markdown(path: str, meta: dict, rows: list[dict], summary: dict, args) -> str:
    """Write the markdown report; returns its summary part (what is printed)."""
    title = f"Headline: W2 + SDM forward+backward, D = {args.dim} (E = {2 * args.dim}) — {meta['device_name']}"
    head = [f"# {title}", "",
            f"torch {meta['torch']}, commit `{meta['commit']}`, {meta['date']}, {meta['threads']} threads"
            + (f", float32 matmuls as {meta['fp32_matmul']}" if "fp32_matmul" in meta else "")
            + f"; load average {meta['load_1m_start']} at the start, {meta['load_1m_end']} at the end. "
            f"Command: `python -m benchmarks.headline {' '.join(meta.get('argv', []))}`. Medians of ≥ "
            f"{args.min_reps} calls (one at the large batch); memory = peak extra memory of a call; `matmul4` = "
            "four torch.matmul [B, E] @ [E, B] (the fused op's forward+backward work). Each provider passed "
            "the check against the float64 reference first (errors in the JSON).", ""]
    lines = ["## Summary", "",
             "| dtype | provider | largest B run | ms at B = R | MiB at B = R | time ÷ four matmuls | "
             "time ÷ reference | reference memory ÷ this |".replace("R", str(args.ratio_batch)),
             "|---|---|---|---|---|---|---|---|"]
    for dt, s in summary.items():
        for p in [*(k for k in s["largest_B"] if k not in ("reference", "matmul4")), "reference", "matmul4"]:
            v = s.get(p, {})
            ms = f"{v['time_s'] * 1e3:,.1f}" if "time_s" in v else ""
            mib = f"{v['peak_mem_bytes'] / 2**20:,.1f}" if "peak_mem_bytes" in v else ""
            mm = f"{v['time_over_matmul4']:.2f}" if "time_over_matmul4" in v else ""
            ref = f"{v['time_over_reference']:.3f}" if "time_over_reference" in v else ""
            mem = f"{v['reference_mem_over_fused_mem']:.1f}×" if "reference_mem_over_fused_mem" in v else ""
            lines.append(f"| {dt} | {p} | {s['largest_B'].get(p, '—')} | {ms} | {mib} | {mm} | {ref} | {mem} |")
    lines.append("")
    for dt, s in summary.items():
        R = s["B"]
        for p, v in s.items():
            Bc = v.get("largest_common_B_with_reference") if isinstance(v, dict) else None
            if Bc and Bc != R:
                lines.append(f"- {dt}: at B = {Bc}, the largest the reference ran: time {p} / reference = "
                             f"{v['time_over_reference_there']:.3f}, peak memory reference / {p} = "
                             f"{v['reference_mem_over_fused_mem_there']:.1f}×")
        if "reference_predicted_peak_bytes_at_large_batch" in s:
            lines.append(f"- {dt}: the reference's peak memory at B = {s['large_batch']}, predicted from its "
                         f"measured peak at B = {R} × ({s['large_batch']}/{R})², would be "
                         f"{s['reference_predicted_peak_bytes_at_large_batch'] / 2**30:,.1f} GiB")
    lines += ["", "## All measurements", "",
              "| dtype | provider | B | median ms | [20 %, 80 %] ms | peak extra MiB | GFLOP/s | status |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "ok":
            lines.append(f"| {r['dtype']} | {r['provider']} | {r['B']} | {r['time_median_s'] * 1e3:,.1f} | "
                         f"[{r['time_q20_s'] * 1e3:,.1f}, {r['time_q80_s'] * 1e3:,.1f}] | "
                         f"{r['peak_mem_bytes'] / 2**20:,.1f} | {r.get('gflop_per_s', 0):,.1f} | ok |")
        else:
            lines.append(f"| {r['dtype']} | {r['provider']} | {r.get('B', '')} | | | | | {r['status']}: "
                         f"{r.get('reason', '')} |")
    with open(path, "w") as f:
        f.write("\n".join(head + lines) + "\n")
    return "\n".join(head + lines[:lines.index("## All measurements")]) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    configure_fp32(args.device, args.fp32_matmul)  # recorded in every row (environment)
    env = environment(args.device)
    meta = {**env, "kind": "headline", "settings": {k: v for k, v in vars(args).items() if k not in ("out", "name")},
            "argv": sys.argv[1:] if argv is None else list(argv), "load_1m_start": round(os.getloadavg()[0], 2)}
    stem = os.path.join(args.out, args.name or f"headline-{args.device}")
    case = Case("dist", args.dim, True, metric="w2", loss="sdm")
    timing = dict(min_reps=args.min_reps, max_reps=args.max_reps, target_s=args.target_s)
    max_mem = args.max_mem_gb * 2**30
    timeout = 600 + 12 * args.max_call_s
    fused_all = [p for p in FUSED if skip_reason(p, case, args.device) is None]
    print(f"headline on {env['device_name']} (torch {env['torch']}, commit {env['commit']}): {case.name}; "
          f"fused backends: {', '.join(fused_all) or 'none'}", flush=True)
    rows: list[dict] = []
    for dt in args.dtypes.split(","):
        dtype = DTYPES[dt]
        for provider in [*fused_all, "reference"]:
            base = {"provider": provider, **case.as_dict(), "dtype": dt, **env}
            reason = skip_reason(provider, case, args.device, dtype)
            if reason:
                rows.append({**base, "status": "skipped", "reason": reason})
                continue
            chk = run(check, args.device, 900, provider=provider, case=case, B=args.check_b, dtype=dtype)
            if chk["status"] != "ok":
                rows.append({**base, "B": args.check_b, **chk})
                print(f"  {provider} check failed: {chk.get('reason')}", flush=True)
                continue
            base = {**base, **{k: chk[k] for k in ("check_B", "check_err", "check_tol")}}
            b_max = args.b_max_fused if provider in FUSED else args.b_max
            batches = [args.b_min * 2**i for i in range(40) if args.b_min * 2**i <= b_max]
            rows += doubling(lambda B: run(measure, args.device, timeout, provider=provider, case=case, B=B,
                                           dtype=dtype, **timing), batches, args.max_call_s, max_mem, base)
            if provider in FUSED and args.large_batch:  # one call, no warm-up: does it run at all, and how fast
                res = run(measure, args.device, 3600, provider=provider, case=case, B=args.large_batch, dtype=dtype,
                          warmup=False, min_reps=1, max_reps=1)
                rows.append({**base, "B": args.large_batch, "large_batch_check": True, **res})
                print(f"  {provider} B={args.large_batch}: {res['status']} "
                      + (f"{res['time_median_s']:.1f} s, {res['peak_mem_bytes'] / 2**20:.0f} MiB"
                         if res["status"] == "ok" else res.get("reason", "")), flush=True)
        mm_case = {"case": f"matmul4-E{case.E}", "group": "matmul4", "family": "yardstick", "E": case.E,
                   "mode": "4 matmuls"}
        batches = [args.b_min * 2**i for i in range(40) if args.b_min * 2**i <= args.b_max]
        rows += doubling(lambda B: run(measure_matmul4, args.device, timeout, B=B, E=case.E, dtype=dtype, **timing),
                         batches, args.max_call_s, max_mem, {"provider": "matmul4", **mm_case, "dtype": dt, **env})
        write_results(stem, meta, rows)
    summary = summarize(rows, args, fused_all)
    meta["summary"] = summary
    meta["load_1m_end"] = round(os.getloadavg()[0], 2)
    write_results(stem, meta, rows)
    text = write_markdown(stem + ".md", meta, rows, summary, args)
    print(f"wrote {stem}.json, {stem}.csv, {stem}.md\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
