"""The GPU headline: every way of computing the training losses against four matmuls, in one run.

    python -m benchmarks.gpu_headline --device cuda --out DIR            # ~4-5 minutes on one H100
    TRITON_INTERPRET=1 python -m benchmarks.gpu_headline --device cpu --dry --out DIR   # the code path

Cases (each forward + backward, at op width E = 256 and 1024; the distribution cases take D = E/2):
W2 + SDM and KL + InfoNCE (distributions, identity labels), CLIP-style InfoNCE and CLIP-style
sigmoid (points, K = 1, diagonal labels), and points with K = 4 samples, SDM, inter + both intra
terms (M = N = 4B, three contrasts). Batches B = 8192, 32768, 131072; float32 with TF32 matmuls
(torch's and the backends') and bfloat16.

Providers (:mod:`benchmarks.providers`), in two passes so that the numbers the targets are about
come first: (1) ``matmul4`` (the floor: four [M, E] @ [E, N] matmuls per contrast), the fused
``triton`` and ``cuda`` backends in their default (chunked) design, the materialised ``reference``;
(2) the older tile kernels (``triton-tiles``, ``cuda-tiles``), the ``chunked`` plain-PyTorch form,
``compile`` (torch.compile of the reference, within a compile-time budget), open_clip's
``SigLipLoss`` and its chunked form where installed. Every provider is checked against the float64
reference at ``--check-b`` before it is timed.

Stop rules: the fused providers and the floor run every B; the others stop at ``--b-max-others``
(32768). Before each B the time and memory are predicted from the last B (both grow as B²): a
point predicted over the per-call limit (``--max-call-s``, ``--max-call-s-fused`` for the fused
chunked providers and the floor) or over the card's memory (``--max-mem-gb``; the materialised
forms also have a lower bound, so a point that cannot fit is never started) is not run, and its
row says why; so is everything after the time budget (``--budget-s``, less ``--reserve-large-s``
kept for the last step). Last: one call (forward + backward, no warm-up) of each fused chunked
backend at B = ``--large-batch`` (1 048 576), W2 + SDM, E = ``--large-E`` (256), float32.

Writes, after every provider's series (a later crash loses nothing measured before):
``NAME.json`` (meta, rows, ratios), ``NAME.csv`` (one line per row, with its ratio to the floor of
the same case, E, dtype and B), ``NAME.md`` (targets with this run's numbers beside them, the ratio
tables, every row), and at the end ``NAME.png`` (time ÷ four matmuls per case and provider).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from .cases import Case
from .harness import check, configure_fp32, doubling, environment, measure, run, write_results
from .providers import FLOOR, TILES, fused_design, is_fused, materialised_peak_bytes, skip_reason

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# name → Case at op width E
CASES = {
    "w2-sdm": lambda E: Case("dist", E // 2, True, metric="w2", loss="sdm"),
    "kl-infonce": lambda E: Case("dist", E // 2, True, metric="kl", loss="infonce"),
    "clip-infonce": lambda E: Case("clip", E, True, loss="infonce", diagonal=True),
    "clip-sigmoid": lambda E: Case("clip", E, True, loss="sigmoid", diagonal=True),
    "points-K4": lambda E: Case("point", E, True, K=4, intra=True, loss="sdm"),
}
PASS1 = (FLOOR, "triton", "cuda", "reference")
PASS2 = ("triton-tiles", "cuda-tiles", "chunked", "compile", "open_clip", "open_clip-chunked")
CHUNKED_FUSED = ("triton", "cuda")  # the providers of the targets (their default design)

# Targets of the chunked design (printed beside this run's numbers; not claims)
TARGET_RATIO = {1024: 1.3, 256: 1.6}  # fused time ÷ four matmuls, by E
TARGET_MEM_FRACTION = 0.02  # fused peak memory ÷ the materialised reference's, at B = 32768
TARGET_MEM_B = 32768


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    ap.add_argument("--out", default="gpu_headline_out")
    ap.add_argument("--name", default="headline")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    ap.add_argument("--E", default=None, help="op widths, first first (default 1024,256)")
    ap.add_argument("--dtypes", default=None, help="default float32,bfloat16 (float32 as TF32 on a GPU)")
    ap.add_argument("--batches", default=None, help="default 8192,32768,131072")
    ap.add_argument("--b-max-others", type=int, default=None, help="last B of the non-fused providers (32768)")
    ap.add_argument("--providers", default=None, help="comma-separated subset (default: both passes)")
    ap.add_argument("--fp32-matmul", default="tf32", choices=("tf32", "ieee"))
    ap.add_argument("--check-b", type=int, default=None, help="batch of the correctness check (1024)")
    ap.add_argument("--max-call-s", type=float, default=None, help="per-call limit of the others (1.0 s)")
    ap.add_argument("--max-call-s-fused", type=float, default=None,
                    help="per-call limit of the fused chunked providers and the floor (2.5 s)")
    ap.add_argument("--max-mem-gb", type=float, default=None, help="default 90 %% of the card")
    ap.add_argument("--budget-s", type=float, default=None, help="time budget, the last step included (270 s)")
    ap.add_argument("--reserve-large-s", type=float, default=None, help="kept for the last step (40 s)")
    ap.add_argument("--compile-budget-s", type=float, default=None,
                    help="time that 'compile' may take in all, compilation included (60 s)")
    ap.add_argument("--large-batch", type=int, default=None, help="B of the last step (1048576; 0: none)")
    ap.add_argument("--large-E", type=int, default=None, help="E of the last step (256)")
    ap.add_argument("--large-max-s", type=float, default=60.0, help="skip the last step's call if predicted longer")
    ap.add_argument("--min-reps", type=int, default=3)
    ap.add_argument("--max-reps", type=int, default=10)
    ap.add_argument("--target-s", type=float, default=None, help="time each point for at least this long (0.2 s)")
    ap.add_argument("--slow-s", type=float, default=1.5,
                    help="a point whose min-reps calls would take longer gets fewer (at least one)")
    ap.add_argument("--dry", action="store_true", help="tiny sizes: checks the code path, not the speed")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is visible")
    defaults = dict(E="1024,256", dtypes="float32,bfloat16", batches="8192,32768,131072", b_max_others=32768,
                    check_b=1024, max_call_s=1.0, max_call_s_fused=2.5, budget_s=270.0, reserve_large_s=40.0,
                    compile_budget_s=60.0, large_batch=1048576, large_E=256, target_s=0.2)
    if args.dry:
        # torch.compile takes a minute on two CPU cores: not in a dry run unless --compile-budget-s says so
        defaults.update(E="16", batches="8,16", b_max_others=8, check_b=8, max_call_s=60.0, max_call_s_fused=60.0,
                        budget_s=600.0, reserve_large_s=30.0, compile_budget_s=-1.0, large_batch=64, large_E=16,
                        target_s=0.0)
        args.min_reps, args.max_reps = 1, 1
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    try:
        args.E_list = [int(e) for e in str(args.E).split(",") if e]
        args.B_list = sorted(int(b) for b in str(args.batches).split(",") if b)
        args.dtype_list = [d for d in args.dtypes.split(",") if d]
    except ValueError as e:
        ap.error(f"--E, --batches: {e}")
    for d in args.dtype_list:
        if d not in DTYPES:
            ap.error(f"unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    args.case_names = [c for c in args.cases.split(",") if c]
    for c in args.case_names:
        if c not in CASES:
            ap.error(f"unknown case {c!r}; choose from {', '.join(CASES)}")
    if any(E % 2 for E in args.E_list):
        ap.error("--E must be even (the distribution cases take D = E/2)")
    args.provider_list = [p for p in (args.providers.split(",") if args.providers else (*PASS1, *PASS2)) if p]
    for p in args.provider_list:
        if p not in (*PASS1, *PASS2):
            ap.error(f"unknown provider {p!r}; choose from {', '.join((*PASS1, *PASS2))}")
    if args.max_mem_gb is None:
        if args.device == "cuda":
            total = torch.cuda.get_device_properties(0).total_memory
        else:
            from .sweep import _mem_available_bytes

            total = _mem_available_bytes()
        args.max_mem_gb = 0.9 * total / 2**30
    return args


def case_of(name: str, E: int) -> Case:
    return CASES[name](E)


def _label(dt: str, env: dict) -> str:
    return f"{dt} ({env['fp32_matmul']})" if dt == "float32" and env.get("fp32_matmul") == "tf32" else dt


# -- results: ratios, markdown, plot -------------------------------------------------------------------


def _key(r: dict) -> tuple:
    return (r["case_name"], r["E"], r["dtype"], r.get("B"))


def add_ratios(rows: list[dict]) -> None:
    """Fill in each measured row its time ÷ the floor's and its peak memory ÷ the reference's at the
    same case, E, dtype and B (same run), where those were measured."""
    ok = [r for r in rows if r["status"] == "ok" and not r.get("large_batch")]
    floor = {_key(r): r for r in ok if r["provider"] == FLOOR}
    ref = {_key(r): r for r in ok if r["provider"] == "reference"}
    comp = {_key(r): r for r in ok if r["provider"] == "compile"}
    for r in ok:
        f, m, c = floor.get(_key(r)), ref.get(_key(r)), comp.get(_key(r))
        r["time_over_matmul4"] = r["time_median_s"] / f["time_median_s"] if f and r is not f else None
        r["mem_over_reference"] = (r["peak_mem_bytes"] / m["peak_mem_bytes"]
                                   if m and r is not m and m["peak_mem_bytes"] > 0 else None)
        r["time_over_compile"] = r["time_median_s"] / c["time_median_s"] if c and r is not c else None


def _fmt_ms(s: float) -> str:
    ms = s * 1e3
    return f"{ms:,.2f}" if ms < 10 else f"{ms:,.1f}" if ms < 1000 else f"{ms:,.0f}"


def targets(rows: list[dict], args) -> list[str]:
    """The target lines: each target, and beside it what this run measured (no verdict on the design
    as a whole: one run, one card)."""
    ok = [r for r in rows if r["status"] == "ok"]
    lines = ["## Targets (goals of the chunked design, with this run's numbers beside them)", "",
             "| target | provider | where | this run |", "|---|---|---|---|"]
    for E in args.E_list:
        goal = TARGET_RATIO.get(E)
        for dt in args.dtype_list:
            for p in CHUNKED_FUSED:
                got = [r for r in ok if r["provider"] == p and r["E"] == E and r["dtype"] == dt
                       and r.get("time_over_matmul4") is not None]
                if not got:
                    continue
                worst = max(got, key=lambda r: r["time_over_matmul4"])
                at_max = [r for r in got if r["B"] == max(x["B"] for x in got)]
                within = sum(r["time_over_matmul4"] <= goal for r in got) if goal else None
                what = f"time ≤ {goal}× four matmuls" if goal else f"time ÷ four matmuls (no target at E = {E})"
                lines.append(
                    f"| {what} | {p} | E = {E}, {_label(dt, rows[0])} | "
                    f"worst {worst['time_over_matmul4']:.2f}× ({worst['case_group']}, B = {worst['B']}); at "
                    f"B = {at_max[0]['B']}: " + ", ".join(f"{r['case_group']} {r['time_over_matmul4']:.2f}×"
                                                         for r in at_max)
                    + (f"; {within} of {len(got)} points within" if goal else "") + " |")
    for p in CHUNKED_FUSED:
        got = [r for r in ok if r["provider"] == p and r.get("time_over_compile") is not None]
        if got:
            worst = max(got, key=lambda r: r["time_over_compile"])
            faster = sum(r["time_over_compile"] < 1 for r in got)
            lines.append(f"| faster than torch.compile where it fits | {p} | {len(got)} points where compile ran | "
                         f"{faster} of {len(got)} faster; worst {worst['time_over_compile']:.2f}× compile's time "
                         f"({worst['case_group']}, E = {worst['E']}, {worst['dtype']}, B = {worst['B']}) |")
        got = [r for r in ok if r["provider"] == p and r["B"] == TARGET_MEM_B
               and r.get("mem_over_reference") is not None]
        if got:
            worst = max(got, key=lambda r: r["mem_over_reference"])
            lines.append(f"| peak memory ≤ {TARGET_MEM_FRACTION:.0%} of the materialised form's | {p} | "
                         f"B = {TARGET_MEM_B}, {len(got)} points | worst {worst['mem_over_reference']:.2%} "
                         f"({worst['case_group']}, E = {worst['E']}, {worst['dtype']}: "
                         f"{worst['peak_mem_bytes'] / 2**20:,.0f} MiB) |")
    for r in (r for r in rows if r.get("large_batch")):
        got = (f"{r['time_median_s']:.2f} s, {r['peak_mem_bytes'] / 2**30:.1f} GiB peak, "
               f"{r['gflop_per_s'] / 1e3:,.0f} TFLOP/s of the floor's work" if r["status"] == "ok"
               else f"{r['status']}: {r.get('reason', '')}")
        lines.append(f"| B = {r['B']:,} runs on one card (timed) | {r['provider']} | {r['case_group']}, E = {r['E']}, "
                     f"{_label(r['dtype'], rows[0])}, one call | {got} |")
    return lines + [""]


def ratio_tables(rows: list[dict], args) -> list[str]:
    """Per E and dtype: rows (case, B), columns the providers: time ÷ four matmuls (ms), then
    peak memory (MiB and ÷ the reference's)."""
    ok = [r for r in rows if r["status"] == "ok" and not r.get("large_batch")]
    order = [p for p in (*PASS1, *PASS2) if any(r["provider"] == p for r in ok)]
    out = []
    for E in args.E_list:
        for dt in args.dtype_list:
            sel = [r for r in ok if r["E"] == E and r["dtype"] == dt]
            if not sel:
                continue
            cells = {(r["case_group"], r["B"], r["provider"]): r for r in sel}
            keys = sorted({(r["case_group"], r["B"]) for r in sel},
                          key=lambda k: (args.case_names.index(_case_short(k[0])), k[1]))
            for title, cell in (("time ÷ four matmuls (ms)", _time_cell),
                                ("peak extra memory, MiB (÷ the reference's)", _mem_cell)):
                out += [f"### E = {E}, {_label(dt, rows[0])}: {title}", "",
                        "| case | B | " + " | ".join(order) + " |", "|---|---:|" + "---:|" * len(order)]
                for g, B in keys:
                    line = [cell(cells[(g, B, p)]) if (g, B, p) in cells else "" for p in order]
                    out.append(f"| {g} | {B} | " + " | ".join(line) + " |")
                out.append("")
    return out


def _time_cell(r: dict) -> str:
    if r["provider"] == FLOOR:
        return f"1 ({_fmt_ms(r['time_median_s'])})"
    ratio = r.get("time_over_matmul4")
    return (f"{ratio:.2f}× " if ratio is not None else "") + f"({_fmt_ms(r['time_median_s'])})"


def _mem_cell(r: dict) -> str:
    mib, frac = r["peak_mem_bytes"] / 2**20, r.get("mem_over_reference")
    return (f"{mib:,.0f}" if mib >= 100 else f"{mib:.1f}") + (f" ({frac:.2%})" if frac is not None else "")


def _case_short(group: str) -> str:
    for name in CASES:
        if case_of(name, 2).group == group:
            return name
    return group


def write_markdown(path: str, meta: dict, rows: list[dict], args) -> str:
    """Write the report; returns the part printed (targets and ratio tables)."""
    env = meta
    head = [f"# GPU headline — {env['device_name']}", "",
            f"torch {env['torch']} (CUDA {env.get('cuda') or '-'}), triton {meta.get('triton', '-')}, commit "
            f"`{env['commit']}`, {env['date']}; float32 matmuls as {env.get('fp32_matmul', 'ieee')}. Command: "
            f"`python -m benchmarks.gpu_headline {' '.join(meta.get('argv', []))}`. Forward + backward; medians of "
            f"up to {args.max_reps} calls after one warm-up (fewer where {args.min_reps} would take over "
            f"{args.slow_s:g} s; one at the large batch); memory = peak extra memory of a call (`max_memory_allocated`); `{FLOOR}` = four "
            "[M, E] @ [E, N] torch.matmul per contrast (the sigmoid needs three). Fused designs: "
            + ", ".join(f"`{p}` = {d}" for p, d in meta.get("designs", {}).items()) + ".", ""]
    for name in args.case_names:
        c = case_of(name, args.E_list[0])
        head.append(f"- `{c.group}`: {c.family}, {c.contrasts()} contrast(s) of M = N = {c.rows(1)}·B rows, "
                    f"{'diagonal' if c.diagonal else 'identity'} labels, scale {c.as_dict()['scale']:g}, "
                    f"bias {c.as_dict()['bias']:g}")
    head.append("")
    summary = (targets(rows, args) + ["## Time ÷ four matmuls and peak memory (same run)", ""]
               + ratio_tables(rows, args))
    lines = ["## All rows", "",
             "| case | E | dtype | provider | design | B | median ms | [20 %, 80 %] ms | reps | peak MiB | "
             "÷ matmul4 | status |", "|---|---:|---|---|---|---:|---:|---|---:|---:|---:|---|"]
    for r in rows:
        if r["status"] == "ok":
            ratio = r.get("time_over_matmul4")
            lines.append(f"| {r['case_group']} | {r['E']} | {r['dtype']} | {r['provider']} | {r.get('design') or ''} | "
                         f"{r['B']} | {_fmt_ms(r['time_median_s'])} | [{_fmt_ms(r['time_q20_s'])}, "
                         f"{_fmt_ms(r['time_q80_s'])}] | {r['reps']} | {r['peak_mem_bytes'] / 2**20:,.1f} | "
                         f"{'' if ratio is None else f'{ratio:.2f}'} | ok |")
        else:
            lines.append(f"| {r['case_group']} | {r['E']} | {r['dtype']} | {r['provider']} | {r.get('design') or ''} | "
                         f"{r.get('B', '')} | | | | | | {r['status']}: {r.get('reason', '')} |")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(head + summary + lines) + "\n")
    os.replace(path + ".tmp", path)
    return "\n".join(summary)


def write_png(path: str, rows: list[dict], args) -> None:
    """Time ÷ four matmuls per case at the largest B each provider ran, one panel per (E, dtype)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok" and r.get("time_over_matmul4") is not None]
    panels = [(E, dt) for E in args.E_list for dt in args.dtype_list]
    order = [p for p in (*PASS1, *PASS2) if p != FLOOR and any(r["provider"] == p for r in ok)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.2 * len(panels)), squeeze=False)
    for ax, (E, dt) in zip(axes[:, 0], panels):
        sel = [r for r in ok if r["E"] == E and r["dtype"] == dt]
        groups = [case_of(n, E).group for n in args.case_names]
        width = 0.8 / max(len(order), 1)
        for i, p in enumerate(order):
            xs, ys, labels = [], [], []
            for j, g in enumerate(groups):
                mine = [r for r in sel if r["provider"] == p and r["case_group"] == g]
                if mine:
                    r = max(mine, key=lambda r: r["B"])
                    xs.append(j + (i - len(order) / 2 + 0.5) * width)
                    ys.append(r["time_over_matmul4"])
                    labels.append(f"{r['B'] // 1024}k" if r["B"] >= 1024 else str(r["B"]))
            bars = ax.bar(xs, ys, width, label=p)
            for b, lab in zip(bars, labels):
                ax.annotate(lab, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                            fontsize=6)
        goal = TARGET_RATIO.get(E)
        ax.axhline(1.0, color="black", lw=0.8)
        if goal:
            ax.axhline(goal, color="tab:red", lw=0.8, ls="--", label=f"target {goal}×")
        ax.set_yscale("log")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, fontsize=8)
        ax.set_ylabel("time ÷ four matmuls")
        ax.set_title(f"E = {E}, {_label(dt, rows[0])} (bars labelled with the B they ran at: the largest)", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the run -------------------------------------------------------------------------------------------


class Writer:
    """Rewrites the JSON, CSV and markdown after every series."""

    def __init__(self, stem: str, meta: dict, args):
        self.stem, self.meta, self.args = stem, meta, args

    def __call__(self, rows: list[dict]) -> str:
        add_ratios(rows)
        self.meta["load_1m_end"] = round(os.getloadavg()[0], 2)
        write_results(self.stem, self.meta, rows)
        return write_markdown(self.stem + ".md", self.meta, rows, self.args)


def _series(provider: str, case: Case, name: str, E: int, dt: str, args, env: dict, deadline: float,
            base_extra: dict) -> list[dict]:
    dtype = DTYPES[dt]
    base = {"provider": provider, "design": fused_design(provider), **case.as_dict(), "case_name": name,
            "case_group": case.group, "E": E, "rows": None, "dtype": dt, **env, **base_extra}
    reason = skip_reason(provider, case, args.device, dtype)
    if reason:
        return [{**base, "status": "skipped", "reason": reason}]
    if time.time() > deadline:
        return [{**base, "status": "stopped", "reason": "budget: the headline's time budget is spent"}]
    chk = run(check, args.device, 900, isolate=False, provider=provider, case=case, B=args.check_b, dtype=dtype)
    if chk["status"] != "ok":
        print(f"  {provider:17s} check failed: {chk.get('reason')}", flush=True)
        return [{**base, "B": args.check_b, **chk}]
    base = {**base, **{k: chk[k] for k in ("check_B", "check_err", "check_tol")}}
    fused_like = provider in CHUNKED_FUSED or provider == FLOOR
    batches = [B for B in args.B_list if fused_like or is_fused(provider) or B <= args.b_max_others]
    max_call = args.max_call_s_fused if fused_like else args.max_call_s
    timing = dict(min_reps=args.min_reps, max_reps=args.max_reps, target_s=args.target_s, slow_s=args.slow_s)
    rows = doubling(lambda B: run(measure, args.device, 900, isolate=False, provider=provider, case=case, B=B,
                                  dtype=dtype, draw_on_device=True, **timing),
                    batches, max_call, args.max_mem_gb * 2**30, base, deadline=deadline,
                    min_mem=lambda B: materialised_peak_bytes(provider, case, B, dtype))
    for r in rows:
        if "B" in r:
            r["rows"] = case.rows(r["B"])
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry and args.device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        os.environ.setdefault("UCA_BENCH_TRITON_CPU", "1")  # the Triton providers in the interpreter
    configure_fp32(args.device, args.fp32_matmul)
    env = environment(args.device)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "missing"
    start = time.time()
    deadline = start + args.budget_s - (args.reserve_large_s if args.large_batch else 0)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, args.name)
    designs = {p: fused_design(p) for p in (*CHUNKED_FUSED, *TILES)}
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "name")}
    meta = {**env, "kind": "gpu-headline", "triton": triton_version, "designs": designs, "settings": settings,
            "argv": sys.argv[1:] if argv is None else list(argv), "load_1m_start": round(os.getloadavg()[0], 2),
            "targets": {"time_over_matmul4_by_E": TARGET_RATIO, "mem_fraction_of_reference": TARGET_MEM_FRACTION,
                        "mem_target_B": TARGET_MEM_B, "large_batch": args.large_batch}}
    write = Writer(stem, meta, args)
    rows: list[dict] = []
    print(f"gpu headline on {env['device_name']} (torch {env['torch']}, triton {triton_version}, commit "
          f"{env['commit']}); designs: {designs}; budget {args.budget_s:.0f} s", flush=True)
    compile_spent = 0.0
    for pass_providers in (PASS1, PASS2):
        for E in args.E_list:
            for dt in args.dtype_list:
                for name in args.case_names:
                    case = case_of(name, E)
                    print(f"{case.group} E={E} {_label(dt, env)}", flush=True)
                    for provider in (p for p in pass_providers if p in args.provider_list):
                        t0 = time.time()
                        if provider.startswith("open_clip") and not (case.family == "clip" and case.loss == "sigmoid"):
                            continue  # SigLipLoss computes the CLIP-style sigmoid only
                        if provider == "compile" and not 0 <= compile_spent <= args.compile_budget_s:
                            why = (f"the compile budget ({args.compile_budget_s:g} s, compilation included) is spent"
                                   if args.compile_budget_s >= 0 else "not run (--compile-budget-s < 0)")
                            rows.append({"provider": provider, **case.as_dict(), "case_name": name,
                                         "case_group": case.group, "E": E, "dtype": dt, **env, "status": "skipped",
                                         "reason": why})
                            continue
                        rows += _series(provider, case, name, E, dt, args, env, deadline, {})
                        if provider == "compile":
                            compile_spent += time.time() - t0
                        write(rows)
    # the last step: one call of each fused chunked backend at the large batch
    if args.large_batch:
        case = case_of("w2-sdm", args.large_E)
        dt = "float32"
        for provider in (p for p in CHUNKED_FUSED if p in args.provider_list):
            base = {"provider": provider, "design": fused_design(provider), **case.as_dict(), "case_name": "w2-sdm",
                    "case_group": case.group, "E": args.large_E, "dtype": dt, "B": args.large_batch,
                    "rows": case.rows(args.large_batch), "large_batch": True, **env}
            reason = skip_reason(provider, case, args.device, DTYPES[dt])
            prev = [r for r in rows if r["provider"] == provider and r["case_name"] == "w2-sdm" and r["status"] == "ok"
                    and r["E"] == args.large_E and r["dtype"] == dt and not r.get("large_batch")]
            if not reason and not prev:
                reason = f"not measured at E = {args.large_E}, {dt} in this run: no time to predict this call's from"
            if not reason:
                last = max(prev, key=lambda r: r["B"])
                t_pred = last["time_median_s"] * (args.large_batch / last["B"]) ** 2
                if t_pred > args.large_max_s:
                    reason = f"predicted {t_pred:.0f} s per call > {args.large_max_s:g} s"
            if reason:
                rows.append({**base, "status": "skipped", "reason": reason})
            else:
                print(f"{case.group} E={args.large_E} B={args.large_batch}: {provider}, one call", flush=True)
                res = run(measure, args.device, 3600, isolate=False, provider=provider, case=case, B=args.large_batch,
                          dtype=DTYPES[dt], draw_on_device=True, warmup=False, min_reps=1, max_reps=1)
                rows.append({**base, **res})
                print(f"  {provider}: {res['status']} " + (f"{res['time_median_s']:.2f} s, "
                      f"{res['peak_mem_bytes'] / 2**30:.1f} GiB" if res["status"] == "ok" else res.get("reason", "")),
                      flush=True)
            write(rows)
    text = write(rows)
    try:
        write_png(stem + ".png", rows, args)
    except Exception as e:  # noqa: BLE001  (the numbers are written; a plot failure must not hide them)
        print(f"no plot: {type(e).__name__}: {e}", flush=True)
    print(f"wrote {stem}.json, .csv, .md, .png in {time.time() - start:.0f} s\n", flush=True)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
