"""The headline comparison: fused vs materialised on the main training losses, against the matmul floor.

    python -m benchmarks.headline --device cpu  [--out benchmarks/results]
    python -m benchmarks.headline --device cpu --cases sigmoid --name headline-sigmoid-cpu
    python -m benchmarks.headline --device cuda [--out DIR]

The default case is W2 + SDM with identity labels, forward+backward (``dist-w2-sdm-D*-fwdbwd``).
``--cases`` picks others from :data:`HEADLINE_CASES` (comma-separated; ``sigmoid`` = the four
pairwise sigmoid cases: W2 and CSD distributions, points with intra terms, and the
SigLIP case that open_clip's ``SigLipLoss`` computes). Every case has the same op width
E = 2·``--dim`` (the w2 cases take D = dim, the csd, point and clip cases D = 2·dim, since their
op sees E = D), so at one B every case has the same [B, E] @ [E, B] matmuls.

- ``--device cpu`` (defaults): float32, E = 512, B = 8192: the fused ``cpu`` backend, ``reference``,
  ``open_clip`` (clip-sigmoid; when installed) and ``matmul4`` in one run, each in a fresh process
  (time and peak extra RSS); ``matmul4`` = per contrast four ``torch.matmul`` of [B, E] @ [E, B]
  (the fused op's credited work, docs/design.md section 2; the sigmoid's ideal is three of them). Then
  ``cpu`` alone at B = 65536 (one call), where the reference's peak memory, predicted from its
  measured peak at B = 8192 (× (65536/8192)², it holds B×B matrices), is far beyond RAM.
  ``--large-batch 0`` leaves that call out; ``--large-only`` runs only it (after the check).
- ``--device cuda`` (defaults): D = 512 (E = 1024), float32 (TF32 matmuls) and bfloat16; every
  usable fused backend for B = 1024 … 262144 and the others for B = 1024 … 65536, doubling with
  the sweep's stop rules (predicted time and memory); the ratio fused / four-matmul time at
  B = 32768.

Every provider is checked against the float64 reference (at ``--check-b``) before it is timed.
Writes ``<name>.json`` (meta, rows, summary per case and dtype), ``.csv`` and ``.md``, and prints
the markdown summary last.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from .cases import Case
from .harness import check, configure_fp32, doubling, environment, measure, run, write_results
from .providers import FLOOR, FUSED, skip_reason
from .sweep import DTYPES, _mem_available_bytes

# name → Case for D = --dim (every case gets E = 2·dim; see the module docstring)
HEADLINE_CASES = {
    "w2-sdm": lambda d: Case("dist", d, True, metric="w2", loss="sdm"),
    "w2-sigmoid": lambda d: Case("dist", d, True, metric="w2", loss="sigmoid"),
    "csd-sigmoid": lambda d: Case("dist", 2 * d, True, metric="csd", loss="sigmoid"),
    # K = 1 so that M = N = B as in the other cases; inter + the two intra contrasts (3 × the work)
    "point-sigmoid": lambda d: Case("point", 2 * d, True, K=1, intra=True, loss="sigmoid"),
    "clip-sigmoid": lambda d: Case("clip", 2 * d, True, loss="sigmoid", diagonal=True),
}
ALIASES = {"sigmoid": ("w2-sigmoid", "csd-sigmoid", "point-sigmoid", "clip-sigmoid"), "all": tuple(HEADLINE_CASES)}
OTHERS = ("reference", "open_clip")  # the materialised providers the fused ones are compared with
OPT_IN = ("compile",)  # run only when named in --providers (torch.compile of the reference: compile time)


def headline_cases(spec: str, dim: int) -> list[Case]:
    names: list[str] = []
    for n in (p for p in spec.split(",") if p):
        for m in ALIASES.get(n, (n,)):
            if m not in HEADLINE_CASES:
                raise ValueError(f"unknown headline case {m!r}; choose from {', '.join([*HEADLINE_CASES, *ALIASES])}")
            if m not in names:
                names.append(m)
    return [HEADLINE_CASES[n](dim) for n in names]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--name", default=None, help="file stem (default headline-<device>)")
    ap.add_argument("--cases", default="w2-sdm",
                    help=f"comma-separated, from {', '.join(HEADLINE_CASES)}; 'sigmoid' = "
                    f"{','.join(ALIASES['sigmoid'])}; 'all'")
    ap.add_argument("--providers", default=None,
                    help=f"comma-separated (default: every usable fused backend, {', '.join(OTHERS)}, {FLOOR}; "
                    f"{', '.join(OPT_IN)} only when named)")
    ap.add_argument("--dim", type=int, default=None, help="D of the w2 cases, E = 2D for every case; "
                    "default 256 on CPU, 512 on GPU")
    ap.add_argument("--dtypes", default=None, help="default float32 on CPU, float32,bfloat16 on GPU")
    ap.add_argument("--fp32-matmul", default="tf32", choices=("tf32", "ieee"), help="GPU float32 matmul precision")
    ap.add_argument("--b-min", type=int, default=None, help="first B (default 8192 on CPU, 1024 on GPU)")
    ap.add_argument("--b-max", type=int, default=None, help="last B of the reference, open_clip and the floor "
                    "(default 8192 on CPU, 65536 on GPU)")
    ap.add_argument("--b-max-fused", type=int, default=None, help="last B of fused backends (8192 / 262144)")
    ap.add_argument("--large-batch", type=int, default=None,
                    help="one extra call of each fused backend at this B (default 65536 on CPU, none on GPU; 0: none)")
    ap.add_argument("--large-only", action="store_true",
                    help="only the check and the one call at --large-batch of each fused backend")
    ap.add_argument("--ratio-batch", type=int, default=None, help="B of the ratios (8192 / 32768)")
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
    if args.large_only and not args.large_batch:
        ap.error("--large-only needs a --large-batch")
    try:
        args.case_list = headline_cases(args.cases, args.dim)
    except ValueError as e:
        ap.error(str(e))
    if args.max_mem_gb is None:
        total = torch.cuda.get_device_properties(0).total_memory * 0.9 if not cpu else _mem_available_bytes() * 0.75
        args.max_mem_gb = total / 2**30
    return args


def _at(rows, provider, B, dtype, case=None):
    for r in rows:
        if (r["provider"] == provider and r.get("B") == B and r["dtype"] == dtype and r["status"] == "ok"
                and (case is None or r["case"] == case)):
            return r
    return None


def summarize(rows: list[dict], args, fused: list[str], case: Case) -> dict:
    """The ratios the headline is about for one case, from the measured rows only."""
    out = {}
    rows = [r for r in rows if r["case"] == case.name]
    ideal = case.ideal_passes / case.passes  # the floor scaled to the passes the loss needs
    for dt in args.dtypes.split(","):
        R = args.ratio_batch
        mm = _at(rows, FLOOR, R, dt)
        others = {o: _at(rows, o, R, dt) for o in OTHERS}
        s = {"B": R, "passes": case.passes, "ideal_passes": case.ideal_passes}
        for p in fused:
            f = _at(rows, p, R, dt)
            if f is None:
                continue
            s[p] = {"time_s": f["time_median_s"], "peak_mem_bytes": f["peak_mem_bytes"]}
            if mm:
                s[p]["time_over_matmul4"] = f["time_median_s"] / mm["time_median_s"]
                s[p]["time_over_ideal_floor"] = f["time_median_s"] / (ideal * mm["time_median_s"])
            for o, orow in others.items():
                if orow:
                    s[p][f"time_over_{o}"] = f["time_median_s"] / orow["time_median_s"]
                    s[p][f"{o}_mem_over_fused_mem"] = orow["peak_mem_bytes"] / max(f["peak_mem_bytes"], 1)
            common = [r["B"] for r in rows if r["provider"] == p and r["dtype"] == dt and r["status"] == "ok"
                      and _at(rows, "reference", r["B"], dt)]
            if common:  # the reference may stop (memory) before the ratio batch
                Bc = max(common)
                fc, rc = _at(rows, p, Bc, dt), _at(rows, "reference", Bc, dt)
                s[p]["largest_common_B_with_reference"] = Bc
                s[p]["time_over_reference_there"] = fc["time_median_s"] / rc["time_median_s"]
                s[p]["reference_mem_over_fused_mem_there"] = rc["peak_mem_bytes"] / max(fc["peak_mem_bytes"], 1)
        for o, orow in others.items():
            if orow:
                s[o] = {"time_s": orow["time_median_s"], "peak_mem_bytes": orow["peak_mem_bytes"]}
        if mm:
            s[FLOOR] = {"time_s": mm["time_median_s"], "ideal_floor_s": ideal * mm["time_median_s"]}
        largest = {}
        for p in [*fused, *OTHERS, FLOOR]:
            ok = [r["B"] for r in rows if r["provider"] == p and r["dtype"] == dt and r["status"] == "ok"]
            if ok:
                largest[p] = max(ok)
        s["largest_B"] = largest
        ref = others["reference"]
        if args.large_batch and ref:
            factor = (args.large_batch / R) ** 2
            s["reference_predicted_peak_bytes_at_large_batch"] = ref["peak_mem_bytes"] * factor
            s["large_batch"] = args.large_batch
        out[dt] = s
    return out


def _title(cases: list[Case], args) -> str:
    E = cases[0].E
    if len(cases) == 1 and cases[0].name.startswith("dist-w2-sdm"):
        return f"W2 + SDM forward+backward, D = {cases[0].D} (E = {E})"
    return f"{', '.join(c.group for c in cases)}, forward+backward, E = {E}"


def write_markdown(path: str, meta: dict, rows: list[dict], summary: dict, args) -> str:
    """Write the markdown report; returns its summary part (what is printed)."""
    cases = args.case_list
    title = f"Headline: {_title(cases, args)} — {meta['device_name']}"
    sigmoid = any(c.ideal_passes != c.passes for c in cases)
    head = [f"# {title}", "",
            f"torch {meta['torch']}, commit `{meta['commit']}`, {meta['date']}, {meta['threads']} threads"
            + (f", float32 matmuls as {meta['fp32_matmul']}" if "fp32_matmul" in meta else "")
            + f"; load average {meta['load_1m_start']} at the start, {meta['load_1m_end']} at the end. "
            f"Command: `python -m benchmarks.headline {' '.join(meta.get('argv', []))}`. Medians of ≥ "
            f"{args.min_reps} calls (one at the large batch); memory = peak extra memory of a call; `{FLOOR}` = "
            "per contrast four torch.matmul [B, E] @ [E, B] (the fused op's forward+backward work, credited to "
            "every provider in GFLOP/s). Each provider passed the check against the float64 reference first "
            "(errors in the JSON).", ""]
    if sigmoid:
        head += ["The sigmoid loss is credited with the same 4 passes, but needs only 3 (no row statistics: one "
                 "sweep forms S, dA and dB; docs/design.md section 2): its *ideal floor* is ¾ of the four matmuls, "
                 "and `time ÷ ideal floor` divides by that.", ""]
    for c in cases:
        head.append(f"- `{c.name}`: {c.family}, D = {c.D}, E = {c.E}, K = {c.K}, {c.contrasts()} contrast(s), "
                    f"{'diagonal' if c.diagonal else 'identity'} labels, scale {c.as_dict()['scale']:g}, "
                    f"bias {c.as_dict()['bias']:g}")
    head.append("")
    R = args.ratio_batch
    oc = any("open_clip" in s.get("largest_B", {}) for per in summary.values() for s in per.values())
    lines = ["## Summary", "",
             f"| case | dtype | provider | largest B run | ms at B = {R} | MiB at B = {R} | time ÷ four matmuls | "
             "time ÷ ideal floor | time ÷ reference | reference memory ÷ this |"
             + (" time ÷ open_clip | open_clip memory ÷ this |" if oc else ""),
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if oc else "")]
    for c in cases:
        for dt, s in summary.get(c.name, {}).items():
            for p in [*(k for k in s["largest_B"] if k not in (*OTHERS, FLOOR)), *OTHERS, FLOOR]:
                if p not in s["largest_B"]:
                    continue
                v = s.get(p, {})
                ms = f"{v['time_s'] * 1e3:,.1f}" if "time_s" in v else ""
                mib = f"{v['peak_mem_bytes'] / 2**20:,.1f}" if "peak_mem_bytes" in v else ""
                mm = f"{v['time_over_matmul4']:.2f}" if "time_over_matmul4" in v else ""
                ideal = f"{v['time_over_ideal_floor']:.2f}" if "time_over_ideal_floor" in v else ""
                ref = f"{v['time_over_reference']:.3f}" if "time_over_reference" in v else ""
                mem = f"{v['reference_mem_over_fused_mem']:.1f}×" if "reference_mem_over_fused_mem" in v else ""
                line = (f"| {c.group} | {dt} | {p} | {s['largest_B'].get(p, '—')} | {ms} | {mib} | {mm} | "
                        f"{ideal} | {ref} | {mem} |")
                if oc:
                    t_oc = f"{v['time_over_open_clip']:.3f}" if "time_over_open_clip" in v else ""
                    m_oc = f"{v['open_clip_mem_over_fused_mem']:.1f}×" if "open_clip_mem_over_fused_mem" in v else ""
                    line += f" {t_oc} | {m_oc} |"
                lines.append(line)
    lines.append("")
    for c in cases:
        for dt, s in summary.get(c.name, {}).items():
            R = s["B"]
            for p, v in s.items():
                if not isinstance(v, dict):
                    continue
                Bc = v.get("largest_common_B_with_reference")
                if Bc and Bc != R:
                    lines.append(f"- {c.group} {dt}: at B = {Bc}, the largest the reference ran: time {p} / "
                                 f"reference = {v['time_over_reference_there']:.3f}, peak memory reference / {p} = "
                                 f"{v['reference_mem_over_fused_mem_there']:.1f}×")
                if "time_over_open_clip" in v:
                    lines.append(f"- {c.group} {dt}: open_clip's SigLipLoss (world_size = 1) computes the same "
                                 f"value, Σᵢⱼ ℓᵢⱼ / B; at B = {R} time {p} / open_clip = "
                                 f"{v['time_over_open_clip']:.3f}")
            if "reference_predicted_peak_bytes_at_large_batch" in s:
                lines.append(f"- {c.group} {dt}: the reference's peak memory at B = {s['large_batch']}, predicted "
                             f"from its measured peak at B = {R} × ({s['large_batch']}/{R})², would be "
                             f"{s['reference_predicted_peak_bytes_at_large_batch'] / 2**30:,.1f} GiB")
    lines += ["", "## All measurements", "",
              "| case | dtype | provider | B | median ms | [20 %, 80 %] ms | peak extra MiB | GFLOP/s | status |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "ok":
            lines.append(f"| {r['group']} | {r['dtype']} | {r['provider']} | {r['B']} | "
                         f"{r['time_median_s'] * 1e3:,.1f} | "
                         f"[{r['time_q20_s'] * 1e3:,.1f}, {r['time_q80_s'] * 1e3:,.1f}] | "
                         f"{r['peak_mem_bytes'] / 2**20:,.1f} | {r.get('gflop_per_s', 0):,.1f} | ok |")
        else:
            lines.append(f"| {r['group']} | {r['dtype']} | {r['provider']} | {r.get('B', '')} | | | | | "
                         f"{r['status']}: {r.get('reason', '')} |")
    with open(path, "w") as f:
        f.write("\n".join(head + lines) + "\n")
    return "\n".join(head + lines[:lines.index("## All measurements")]) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    configure_fp32(args.device, args.fp32_matmul)  # recorded in every row (environment)
    env = environment(args.device)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "name", "case_list")}
    meta = {**env, "kind": "headline", "settings": settings, "cases": [c.name for c in args.case_list],
            "argv": sys.argv[1:] if argv is None else list(argv), "load_1m_start": round(os.getloadavg()[0], 2)}
    stem = os.path.join(args.out, args.name or f"headline-{args.device}")
    timing = dict(min_reps=args.min_reps, max_reps=args.max_reps, target_s=args.target_s)
    max_mem = args.max_mem_gb * 2**30
    timeout = 600 + 12 * args.max_call_s
    wanted = args.providers.split(",") if args.providers else None
    rows: list[dict] = []
    summary: dict = {}
    print(f"headline on {env['device_name']} (torch {env['torch']}, commit {env['commit']}): "
          f"{', '.join(c.name for c in args.case_list)}", flush=True)
    for case in args.case_list:
        fused = [p for p in FUSED if skip_reason(p, case, args.device) is None and (wanted is None or p in wanted)]
        providers = [*fused, *([] if args.large_only else [*OTHERS, *OPT_IN, FLOOR])]
        providers = [p for p in providers if (p in wanted if wanted is not None else p not in OPT_IN)]
        print(f"{case.name}: fused backends {', '.join(fused) or 'none'}", flush=True)
        for dt in args.dtypes.split(","):
            dtype = DTYPES[dt]
            for provider in providers:
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
                batches = [] if args.large_only else \
                    [args.b_min * 2**i for i in range(40) if args.b_min * 2**i <= b_max]
                rows += doubling(lambda B: run(measure, args.device, timeout, provider=provider, case=case, B=B,
                                               dtype=dtype, **timing), batches, args.max_call_s, max_mem, base)
                if provider in FUSED and args.large_batch:  # one call, no warm-up: does it run at all, how fast
                    res = run(measure, args.device, 3600, provider=provider, case=case, B=args.large_batch,
                              dtype=dtype, warmup=False, min_reps=1, max_reps=1)
                    rows.append({**base, "B": args.large_batch, "large_batch_check": True, **res})
                    print(f"  {provider} B={args.large_batch}: {res['status']} "
                          + (f"{res['time_median_s']:.1f} s, {res['peak_mem_bytes'] / 2**20:.0f} MiB"
                             if res["status"] == "ok" else res.get("reason", "")), flush=True)
                write_results(stem, meta, rows)
        summary[case.name] = summarize(rows, args, fused, case)
    meta["summary"] = summary
    meta["load_1m_end"] = round(os.getloadavg()[0], 2)
    write_results(stem, meta, rows)
    text = write_markdown(stem + ".md", meta, rows, summary, args)
    if not args.large_only:
        from .plot import write_headline_png

        write_headline_png(stem + ".png", meta, rows, args.ratio_batch)
    print(f"wrote {stem}.json, {stem}.csv, {stem}.md" + ("" if args.large_only else f", {stem}.png") + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
