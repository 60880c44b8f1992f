"""Plots and a markdown summary from a sweep's JSON (nothing is re-measured).

    python -m benchmarks.plot benchmarks/results/sweep-cpu.json [--no-png]

Writes, beside the JSON: ``<stem>-<group>.png`` (one figure per case group: a row per D and mode,
time vs B and peak extra memory vs B, log-log, one line per provider; the four-matmul floor
``matmul4`` dashed, in the time panel only: its memory is one product, not a loss's) and ``<stem>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

FLOOR = "matmul4"  # providers.FLOOR (not imported: plotting needs neither torch nor the library)
FUSED = ("cuda", "triton", "cpu")
PROVIDER_ORDER = (*FUSED, "reference", "compile", "naive", "keops", "infcl", "open_clip", FLOOR)
COLORS = {"cuda": "#d62728", "triton": "#9467bd", "cpu": "#1f77b4", "reference": "#2ca02c", "compile": "#17becf",
          "naive": "#ff7f0e", "keops": "#8c564b", "infcl": "#e377c2", "open_clip": "#bcbd22", FLOOR: "#000000"}


def load(path: str) -> tuple[dict, list[dict]]:
    with open(path) as f:
        data = json.load(f)
    return data["meta"], data["rows"]


def _ordered(names) -> list[str]:
    return sorted(set(names), key=lambda p: (PROVIDER_ORDER.index(p) if p in PROVIDER_ORDER else 99, p))


def _fmt_ms(s: float) -> str:
    ms = s * 1e3
    return f"{ms:.3g}" if ms < 1000 else f"{ms:,.0f}"


def _fmt_mib(b: float) -> str:
    mib = b / 2**20
    return f"{mib:.3g}" if mib < 1000 else f"{mib:,.0f}"


def stop_summary(rows: list[dict], case: str, provider: str) -> str:
    """'largest B that ran (why it stopped)' for one case and provider."""
    mine = [r for r in rows if r["case"] == case and r["provider"] == provider]
    if not mine:
        return ""
    if mine[0]["status"] == "skipped":
        return "skipped"
    ok = [r["B"] for r in mine if r["status"] == "ok"]
    last = mine[-1]
    why = {"stopped": last.get("reason", "").split(":")[0], "ok": "max B", "mismatch": "MISMATCH"}.get(
        last["status"], last["status"])
    return f"{max(ok) if ok else '—'}" + (f" ({why})" if why else "")


def _load_verdict(meta: dict) -> str:
    """Whether other work shared the machine: the 1-minute load average before the first
    measurement (the run's own threads raise it afterwards, so the end value is only reported)."""
    start = meta.get("load_1m_start")
    cores = meta.get("cpus") or os.cpu_count() or 1
    if not isinstance(start, (int, float)):
        return "(load unknown)"
    if start >= 0.5 * cores:
        return f"(≥ half of the {cores} cores busy before it began: other work shared the machine, times are noisy)"
    return f"(a quiet machine at the start, {cores} cores; the end value includes this run's own threads)"


def _fastest_fused_vs(ok: list[dict], case: str, other: str):
    """``(B, fastest fused row, other's row)`` at the largest B where ``other`` and a fused backend
    both ran ``case``, or None."""
    base = {r["B"]: r for r in ok if r["case"] == case and r["provider"] == other}
    fused = {}
    for r in ok:
        if r["case"] == case and r["provider"] in FUSED and r["B"] in base:
            if r["B"] not in fused or r["time_median_s"] < fused[r["B"]]["time_median_s"]:
                fused[r["B"]] = r
    if not fused:
        return None
    B = max(fused)
    return B, fused[B], base[B]


def _versus_table(cases: list[str], ok: list[dict], other: str) -> list[str]:
    """Markdown lines: the fastest fused backend against ``other`` at the largest B both ran, per
    case (time ratio > 1: fused faster; memory ratio > 1: fused smaller)."""
    lines = ["", f"## Fused vs {other} at the largest B both ran", "",
             f"| case | B | fused | fused ms | {other} ms | speed-up | fused MiB | {other} MiB | memory ÷ |",
             "|---|---|---|---|---|---|---|---|---|"]
    n = 0
    for case in cases:
        pair = _fastest_fused_vs(ok, case, other)
        if pair is None:
            continue
        B, f, b = pair
        n += 1
        lines.append(f"| {case} | {B} | {f['provider']} | {_fmt_ms(f['time_median_s'])} | "
                     f"{_fmt_ms(b['time_median_s'])} | {b['time_median_s'] / f['time_median_s']:.2f}× | "
                     f"{_fmt_mib(f['peak_mem_bytes'])} | {_fmt_mib(b['peak_mem_bytes'])} | "
                     f"{b['peak_mem_bytes'] / max(f['peak_mem_bytes'], 1):.1f}× |")
    return lines if n else []


def _floor_table(cases: list[str], ok: list[dict]) -> list[str]:
    """Markdown lines: the fastest fused backend against the four-matmul floor at the largest B
    both ran, per case; and against the ideal floor, ideal_passes / passes of it (the sigmoid's
    forward+backward needs 3 passes, not the 4 it is credited with)."""
    lines = ["", "## Fused vs the four-matmul floor at the largest B both ran", "",
             f"`{FLOOR}`: per contrast 4 torch.matmul [M, E] @ [E, N] for forward+backward, 1 for forward (the "
             "work every provider is credited with). Ideal floor = the floor × ideal passes / credited passes: "
             "the sigmoid's forward+backward needs 3 passes (no row statistics), every other case all of them.", "",
             "| case | B | fused | fused ms | floor ms | fused ÷ floor | passes (ideal) | fused ÷ ideal floor |",
             "|---|---|---|---|---|---|---|---|"]
    n = 0
    for case in cases:
        pair = _fastest_fused_vs(ok, case, FLOOR)
        if pair is None:
            continue
        B, f, m = pair
        passes = f.get("passes") or (4 if f.get("mode") == "fwd+bwd" else 1)
        ideal = f.get("ideal_passes") or passes
        n += 1
        ratio = f["time_median_s"] / m["time_median_s"]
        lines.append(f"| {case} | {B} | {f['provider']} | {_fmt_ms(f['time_median_s'])} | "
                     f"{_fmt_ms(m['time_median_s'])} | {ratio:.2f} | {passes} ({ideal}) | "
                     f"{ratio * passes / ideal:.2f} |")
    return lines if n else []


# How each provider's peak memory grows with B by construction: the fused backends, PyKeOps and
# inf-cl hold O(B·E) tensors; the others materialise B × B (× D for naive) tensors.
MEMORY_ORDER = {"reference": 2, "compile": 2, "naive": 2, "open_clip": 2}


def memory_reach(rows: list[dict], limit_bytes: float, order: int) -> int | None:
    """The largest power-of-2 B whose peak memory, extrapolated from the largest measured B of one
    (case, provider) as peak · (B / B_measured)^order, stays within ``limit_bytes`` (for an O(B²)
    provider this overstates the linear part, so the reach is on the safe side). None without a
    measured point or a limit."""
    pts = sorted((r["B"], r["peak_mem_bytes"]) for r in rows if r.get("peak_mem_bytes", 0) > 0)
    if not pts or limit_bytes <= 0:
        return None
    b1, m1 = pts[-1]
    B = b1 if m1 <= limit_bytes else None
    while B is not None and m1 * (2 * B / b1) ** order <= limit_bytes and B < 2**40:
        B *= 2
    return B


def _memory_reach_table(cases: list[str], providers: list[str], ok: list[dict], limit_bytes: float) -> list[str]:
    """Markdown lines: the largest B each provider could run within the sweep's memory limit, time
    aside (the stops table above is mostly the per-call time cut)."""
    if limit_bytes <= 0:
        return []
    provs = [p for p in providers if p != FLOOR]
    lines = ["", "## Largest B within memory, time aside", "",
             f"The largest power-of-2 B whose peak extra memory stays within the sweep's limit "
             f"({limit_bytes / 2**30:.1f} GiB), extrapolated from each provider's largest measured B by its "
             "order of growth: B for the fused backends, keops and infcl, B² for reference, compile, naive "
             "and open_clip. An estimate, not a run.", "",
             "| case | " + " | ".join(provs) + " |", "|---|" + "---|" * len(provs)]
    n = 0
    for case in cases:
        cells = []
        for p in provs:
            reach = memory_reach([r for r in ok if r["case"] == case and r["provider"] == p], limit_bytes,
                                 MEMORY_ORDER.get(p, 1))
            cells.append("" if reach is None else str(reach))
        if any(cells):
            n += 1
            lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return lines if n else []


def write_markdown(path: str, meta: dict, rows: list[dict], pngs: dict[str, str]) -> None:
    cases = list(dict.fromkeys(r["case"] for r in rows))
    providers = _ordered(r["provider"] for r in rows)
    s = meta.get("settings", {})
    lines = [
        f"# Benchmark sweep: {meta['device_name']}",
        "",
        f"torch {meta['torch']}, commit `{meta['commit']}`, {meta['date']}, {s.get('dtype', '')}, "
        f"{meta.get('threads', '?')} threads; {meta.get('elapsed_s', '?')} s in all; load average "
        f"{meta.get('load_1m_start', '?')} at the start, {meta.get('load_1m_end', '?')} at the end "
        f"{_load_verdict(meta)}. "
        f"Command: `python -m benchmarks.sweep {' '.join(meta.get('argv', []))}`.",
        "",
        "Each provider is checked against the float64 reference before it is timed (error = max |x − x₆₄| / "
        "max |x₆₄| over the loss and every input gradient). Times are medians of wall time "
        f"(≥ {s.get('min_reps', 3)} calls, fewer where one call is slow; `reps` and 20/80 % quantiles in the "
        "CSV); memory is the peak extra memory of a "
        "call (CPU: peak RSS of a fresh process minus its baseline; GPU: `max_memory_allocated`). "
        f"B doubles from {s.get('b_min')} until a call is predicted to take more than {s.get('max_call_s')} s or "
        f"to need more than {s.get('max_mem_gb', 0):.1f} GiB, or fails. GFLOP/s count the fused op's useful "
        "work (docs/design.md section 2: 2·M·N·E per pass, forward 1 pass, forward+backward 4, the sigmoid "
        "included so that GFLOP/s compare across losses, although its ideal is 3 passes: see the floor table). "
        "Sigmoid cases use SigLIP-like logits (scale and bias in the CSV: a matching pair near S = 0, an "
        "unrelated one near S = −10).",
        "",
        "## Where each provider stops",
        "",
        "Largest B that ran, and why the next did not (`time`, `memory`, `oom`, `timeout`, `max B`); "
        "`skipped`: not available here or not applicable (reasons below).",
        "",
        "| case | " + " | ".join(providers) + " |",
        "|---|" + "---|" * len(providers),
    ]
    for case in cases:
        lines.append(f"| {case} | " + " | ".join(stop_summary(rows, case, p) for p in providers) + " |")
    skipped = {}
    for r in rows:
        if r["status"] == "skipped":
            skipped.setdefault(r["provider"], {}).setdefault(r["reason"], []).append(r["case"])
    if skipped:
        lines += ["", "Skipped:", ""]
        for p in _ordered(skipped):
            for reason, which in skipped[p].items():
                where = "every case" if len(which) == len(cases) else f"{len(which)} case(s)"
                lines.append(f"- `{p}` ({where}): {reason}")
    failed = [r for r in rows if r["status"] in ("mismatch", "error", "oom", "timeout")]
    if failed:
        lines += ["", "Failed runs:", ""]
        lines += [f"- `{r['provider']}` {r['case']} B={r.get('B')}: {r['status']}: {r.get('reason', '')}"
                  for r in failed]
    ok = [r for r in rows if r["status"] == "ok"]
    for other in ("reference", "compile", "naive", "keops", "open_clip"):
        lines += _versus_table(cases, ok, other)
    lines += _floor_table(cases, ok)
    lines += _memory_reach_table(cases, providers, ok, float(s.get("max_mem_gb", 0)) * 2**30)
    lines += ["", "## Every case", "", "Each cell: median ms / peak extra MiB (GFLOP/s in the CSV).", ""]
    for case in cases:
        mine = [r for r in ok if r["case"] == case]
        group = case.rsplit("-D", 1)[0]
        lines.append(f"### {case}")
        lines.append("")
        if group in pngs:
            lines += [f"![{group}]({os.path.basename(pngs[group])})", ""]
        if not mine:
            lines += ["No provider ran.", ""]
            continue
        provs = _ordered(r["provider"] for r in mine)
        lines += ["| B | " + " | ".join(provs) + " |", "|---|" + "---|" * len(provs)]
        by = {(r["B"], r["provider"]): r for r in mine}
        for B in sorted({r["B"] for r in mine}):
            cells = [f"{_fmt_ms(by[B, p]['time_median_s'])} / {_fmt_mib(by[B, p]['peak_mem_bytes'])}"
                     if (B, p) in by else "" for p in provs]
            lines.append(f"| {B} | " + " | ".join(cells) + " |")
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_pngs(stem: str, meta: dict, rows: list[dict]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    groups = defaultdict(list)
    for r in ok:
        groups[r["group"]].append(r)
    out = {}
    for group, grows in groups.items():
        variants = sorted({(r["D"], r["mode"]) for r in grows}, key=lambda v: (v[0], v[1] != "fwd"))
        fig, axes = plt.subplots(len(variants), 2, figsize=(11, 3.6 * len(variants)), squeeze=False)
        for (D, mode), (ax_t, ax_m) in zip(variants, axes):
            vrows = [r for r in grows if r["D"] == D and r["mode"] == mode]
            for p in _ordered(r["provider"] for r in vrows):
                pr = sorted((r for r in vrows if r["provider"] == p), key=lambda r: r["B"])
                Bs = [r["B"] for r in pr]
                style = dict(marker="o", ms=3, label=p, color=COLORS.get(p))
                if p == FLOOR:  # the arithmetic floor: time only, dashed
                    style.update(marker="x", ms=4, ls="--", lw=1, label="four-matmul floor")
                    ax_t.plot(Bs, [r["time_median_s"] * 1e3 for r in pr], **style)
                    passes, ideal = pr[0].get("passes"), pr[0].get("ideal_passes")
                    if passes and ideal and ideal != passes:  # sigmoid fwd+bwd: 3 of the 4 passes
                        style.update(marker="+", ls=":", label=f"ideal floor ({ideal} of {passes} passes)")
                        ax_t.plot(Bs, [r["time_median_s"] * 1e3 * ideal / passes for r in pr], **style)
                    continue
                ax_t.plot(Bs, [r["time_median_s"] * 1e3 for r in pr], **style)
                ax_m.plot(Bs, [max(r["peak_mem_bytes"], 1) / 2**20 for r in pr], **style)
            for ax, what in ((ax_t, "median time (ms)"), (ax_m, "peak extra memory (MiB)")):
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel("batch size B")
                ax.set_ylabel(what)
                ax.set_title(f"{group}, D={D}, {mode}", fontsize=10)
                ax.grid(True, which="both", alpha=0.3)
            ax_t.legend(fontsize=8)
        fig.suptitle(f"{meta['device_name']} — torch {meta['torch']}, {meta['commit']}", fontsize=9)
        fig.tight_layout()
        path = f"{stem}-{group}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out[group] = path
    return out


def write_headline_png(path: str, meta: dict, rows: list[dict], B: int) -> str:
    """One figure for a headline run at one B: per case, each provider's time as a multiple of the
    four-matmul floor (left; the sigmoid's ideal, 3 of the 4 passes, dotted) and its peak extra
    memory (right, log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok" and r.get("B") == B and not r.get("large_batch_check")]
    cases = list(dict.fromkeys(r["case"] for r in ok))
    providers = [p for p in _ordered(r["provider"] for r in ok) if p != FLOOR]
    floor = {r["case"]: r["time_median_s"] for r in ok if r["provider"] == FLOOR}
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 4.2))
    width = 0.8 / max(1, len(providers))
    for k, p in enumerate(providers):
        xs, ts, ms = [], [], []
        for i, c in enumerate(cases):
            r = next((r for r in ok if r["case"] == c and r["provider"] == p), None)
            if r is None or c not in floor:
                continue
            xs.append(i + (k - (len(providers) - 1) / 2) * width)
            ts.append(r["time_median_s"] / floor[c])
            ms.append(max(r["peak_mem_bytes"], 1) / 2**20)
        ax_t.bar(xs, ts, width, label=p, color=COLORS.get(p))
        ax_m.bar(xs, ms, width, label=p, color=COLORS.get(p))
    ax_t.axhline(1.0, color="k", ls="--", lw=1, label="four matmuls")
    for i, c in enumerate(cases):
        r = next((r for r in ok if r["case"] == c), {})
        if r.get("ideal_passes") and r.get("passes") and r["ideal_passes"] != r["passes"]:
            f = r["ideal_passes"] / r["passes"]
            ax_t.plot([i - 0.45, i + 0.45], [f, f], color="k", ls=":", lw=1)
    labels = [c.replace("-fwdbwd", "") for c in cases]
    for ax, what in ((ax_t, "time ÷ four matmuls (dotted: 3-pass ideal)"), (ax_m, "peak extra memory (MiB)")):
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(what)
        ax.grid(True, axis="y", alpha=0.3)
    ax_m.set_yscale("log")
    ax_t.legend(fontsize=8)
    fig.suptitle(f"forward + backward, B = {B}: {meta['device_name']}, torch {meta['torch']}, {meta['commit']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def report(json_path: str, png: bool = True) -> list[str]:
    """Write the PNGs (unless ``png`` is False) and the markdown summary of a sweep JSON."""
    meta, rows = load(json_path)
    stem = json_path[:-5] if json_path.endswith(".json") else json_path
    pngs = write_pngs(stem, meta, rows) if png else {}
    write_markdown(stem + ".md", meta, rows, pngs)
    return [*pngs.values(), stem + ".md"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", help="a sweep-*.json")
    ap.add_argument("--no-png", action="store_true", help="markdown only")
    args = ap.parse_args(argv)
    for path in report(args.json, png=not args.no_png):
        print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
