"""Ablation of UCA on SynthPedes: baseline, +DCL, +DCL+PCL, full UCA (+UA-AMLR), several seeds.

    python -m benchmarks.ablation                      # defaults below; restartable
    python -m benchmarks.ablation --seeds 0 1 2 --epochs 12 --parallel 2 --threads 1

Every (variant, seed) run is an ordinary ``uca train`` run (config = the demo config + the
variant's changes + ``--set`` overrides) in ``--runs/<variant>-s<seed>``; a finished run is not
retrained, so an interrupted ablation continues where it stopped. Model selection uses val, the
reported numbers are the single test evaluation of each run.

Writes to ``--out`` (default ``benchmarks/results/ablation``):

- ``runs.csv`` / ``runs.json``: one row per run (test R@1/5/10, mAP, mINP, the alternative ranking,
  mean sigma per modality, best epoch, training time),
- ``summary.json`` / ``table.md``: mean ± std over seeds per variant (the table of docs/model.md),
- ``ablation.png``: grouped bars with error bars,
- ``command.txt``: the command line and the resolved base config,
- ``progress.log``: one line per finished run,
- ``uncertainty.json``: for every run with a learned sigma, :func:`benchmarks.uncertainty.analyse`
  on the test split (Spearman of text sigma with identities fitted / attributes mentioned, the
  partial Spearman given attributes mentioned, image sigma occluded vs unoccluded, the paired
  occlusion test, retrieval of the certain vs the uncertain half); the per-variant means are in
  ``summary.json``.

Every run (fixed points too) also gets its five metrics on random 100-identity sub-galleries of the
test split beside their Bayes ceilings (``sub100_*`` in the rows and the summary; absent when the
test split has no more than 100 identities, as on 'demo'), and on the full test gallery beside its
ceiling (``ceiling_*``, ``pct_ceiling_*``). Rows reused from a folder written before all five had
their ceilings are completed (the sub-galleries from the run folder, where it is still there).

``--reuse DIR`` takes the finished runs of an earlier results folder (its ``runs.json`` and
``uncertainty.json``) for the variants and seeds asked for instead of training them again; the
folder is named in ``command.txt``. Reuse only runs whose resolved config is this one's.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

METRICS = ("R1", "R5", "R10", "mAP", "mINP")
#: the uncertainty figures copied from uncertainty.json into each run's row (and averaged per variant)
UNCERTAINTY = ("spearman_text_sigma_vs_identities_fitted", "spearman_text_sigma_vs_attributes_mentioned",
               "partial_spearman_text_sigma_vs_identities_fitted_given_mentioned",
               "image_sigma_occluded", "image_sigma_unoccluded", "occlusion_share_ratio_ge_1.1",
               "occlusion_ratio_median")
#: the 100-identity sub-gallery figures of every run (uca_model.uncertainty.run_sub_galleries)
SUB_GALLERY = tuple(f"sub100_{p}{k}" for p in ("", "ceiling_", "pct_ceiling_") for k in METRICS)
#: the full gallery's Bayes ceiling and each metric as a percentage of it
CEILING = tuple(f"{p}{k}" for p in ("ceiling_", "pct_ceiling_") for k in METRICS)


def _uncertainty_row(u: dict) -> dict:
    """The figures of one run's uncertainty analysis that go into its ablation row."""
    halves = u.get("retrieval_by_text_sigma") or {}
    out = {k: u.get(k) for k in UNCERTAINTY}
    occ = u.get("occlusion_test") or {}
    out["occlusion_share_ratio_ge_1.1"] = occ.get("share_ratio_ge_1.1")
    out["occlusion_ratio_median"] = occ.get("ratio_median")
    for name in ("certain_half", "uncertain_half"):
        if name in halves:
            out[f"{name}_R1"] = halves[name]["R1"]
    return out


def _config(args, variant: str, seed: int):
    from uca_model.config import deep_merge, apply_overrides, from_dict, to_dict
    from uca_model.presets import demo_config, variant_overrides

    base = to_dict(demo_config(args.data, seed=seed, epochs=args.epochs, preset=args.preset))
    base = apply_overrides(base, args.overrides)
    d = deep_merge(base, variant_overrides(variant))
    if d["model"]["loss"]["metric"] == "ce" and d["model"]["head"]["fixed_logvar"] is not None:
        # a fixed sigma of ~0 makes every ce distance infinite: hold it at its initial value instead
        d["model"]["head"]["fixed_logvar"] = d["model"]["head"]["init_logvar"]
    d["train"]["progress"] = False
    return from_dict(d)


def _run_one(args, variant: str, seed: int) -> dict:
    """Train (or reuse) one run; returns its row. Runs in a worker process."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from uca_model.trainer import train

    cfg = _config(args, variant, seed)
    run = Path(args.runs) / f"{variant}-s{seed}"
    t0 = time.perf_counter()
    res = train(cfg, run, resume="auto", log=lambda *a: None)
    row = {"variant": variant, "seed": seed, "run": str(run), "score": res["score"], "metric": cfg.model.loss.metric,
           "best_epoch": res["best_epoch"],
           "steps": res["steps"], "train_time_s": res["train_time_s"], "wall_s": round(time.perf_counter() - t0, 1)}
    row.update({k: round(res["test"][k], 3) for k in METRICS})
    row.update({f"val_{k}": round(res["val"][k], 3) for k in ("R1", "mAP")})
    if cfg.model.probabilistic and cfg.model.head.fixed_logvar is None:  # a learned sigma: what it tracks
        from benchmarks.uncertainty import analyse

        row["_uncertainty"] = analyse(str(run), "test")
    # a learned sigma's analysis has the sub-galleries already (the same ranking, draws and seed)
    row.update(_sub_gallery_row(run, row["_uncertainty"]["sub_galleries"] if "_uncertainty" in row else None))
    if "ceiling" in res:  # SynthPedes: the Bayes ceiling and the result as a percentage of it
        row.update(_ceiling_row(row, res["ceiling"]["test"]))
    if "alt" in res["test"]:
        row.update({f"{res['test']['alt']['score']}_{k}": round(res["test"]["alt"][k], 3) for k in ("R1", "mAP")})
        row["sigma_image"] = round(res["test"]["sigma_image"], 5)
        row["sigma_text"] = round(res["test"]["sigma_text"], 5)
    return row


def _sub_gallery_row(run, sub: dict | None = None) -> dict:
    """A run's metrics on random 100-identity sub-galleries of the test split beside their ceilings
    (``{}`` when the test split has <= 100 identities or is not SynthPedes); ``sub``: those figures
    when they were computed already (:func:`uca_model.uncertainty.sub_gallery_metrics`)."""
    from uca_model.uncertainty import run_sub_galleries

    if sub is None:
        sub = run_sub_galleries(run, "test")
    if sub is None:
        return {}
    out = {}
    for k in METRICS:
        out.update({f"sub100_{k}": round(sub[k], 3), f"sub100_ceiling_{k}": round(sub[f"ceiling_{k}"], 3),
                    f"sub100_pct_ceiling_{k}": round(sub[f"{k}_fraction_of_ceiling"], 2)})
    return out


def _ceiling_row(row: dict, ceiling: dict) -> dict:
    """The full test gallery's Bayes ceiling and the row's metrics as percentages of it."""
    from uca_model.ceiling import fraction_of_ceiling

    frac = fraction_of_ceiling({k: row[k] for k in METRICS}, ceiling)
    out = {}
    for k in METRICS:
        out[f"ceiling_{k}"] = round(ceiling[k], 3)
        out[f"pct_ceiling_{k}"] = round(frac[k], 2) if ceiling[k] > 0 else None
    return out


def _complete(rows: list[dict], data: str) -> None:
    """Give rows written before every metric had its ceiling the missing figures: the full gallery's
    ceiling from the data, the sub-galleries from the run folder where it is still there."""
    from uca_model.ceiling import ceiling_from_root

    ceiling = None
    for r in rows:
        if "metric" not in r and (Path(r["run"]) / "config.json").is_file():  # the run's own distance
            r["metric"] = json.loads((Path(r["run"]) / "config.json").read_text())["model"]["loss"]["metric"]
        if r.get("ceiling_R1") is not None and r.get("ceiling_mINP") is None:
            ceiling = ceiling or ceiling_from_root(data, "test")
            if ceiling is not None:
                r.update(_ceiling_row(r, ceiling))
        if r.get("sub100_R1") is not None and r.get("sub100_mINP") is None and (Path(r["run"]) / "config.json").is_file():
            print(f"{r['run']}: the sub-gallery figures of every metric", flush=True)
            r.update(_sub_gallery_row(r["run"]))


def _summary(rows: list[dict], variants: list[str]) -> list[dict]:
    out = []
    for v in variants:
        rs = [r for r in rows if r["variant"] == v]
        if not rs:
            continue
        s = {"variant": v, "seeds": sorted(r["seed"] for r in rs), "n": len(rs)}
        for k in (METRICS + ("sigma_image", "sigma_text", "cosine_R1", "distance_R1", "train_time_s",
                             "certain_half_R1", "uncertain_half_R1") + CEILING + UNCERTAINTY + SUB_GALLERY):
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                s[f"{k}_mean"] = statistics.fmean(vals)
                s[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
                if len(vals) < len(rs):  # a figure some of the runs lack: how many it averages
                    s[f"{k}_n"] = len(vals)
        out.append(s)
    return out


#: the pairs of variants compared seed by seed (the same seed: the same initialisation and batches)
PAIRS = (("UCA", "UCA-nosigma"), ("UCA", "UCA-randommask"), ("UCA", "+DCL+PCL"), ("UCA", "baseline"))


def _paired(rows: list[dict]) -> list[dict]:
    """Per seed, ``a − b`` for each pair of :data:`PAIRS` both run with that seed: R@1, mAP and the
    100-identity sub-gallery R@1, each with its mean, std and whether it is positive in every seed."""
    by = {(r["variant"], r["seed"]): r for r in rows}
    out = []
    for a, b in PAIRS:
        seeds = sorted(s for (v, s) in by if v == a and (b, s) in by)
        if not seeds:
            continue
        p = {"a": a, "b": b, "seeds": seeds}
        for k in ("R1", "mAP", "sub100_R1"):
            d = [by[(a, s)][k] - by[(b, s)][k] for s in seeds
                 if by[(a, s)].get(k) is not None and by[(b, s)].get(k) is not None]
            if len(d) == len(seeds):
                p[k] = {"by_seed": [round(x, 3) for x in d], "mean": statistics.fmean(d),
                        "std": statistics.stdev(d) if len(d) > 1 else 0.0, "positive_in_every_seed": min(d) > 0}
        out.append(p)
    return out


def _paired_table(paired: list[dict]) -> str:
    lines = ["| pair | seeds | R@1 difference: by seed, mean ± std | mAP difference | sub-gallery R@1 difference |",
             "|---|---|---:|---:|---:|"]
    for p in paired:
        cells = []
        for k in ("R1", "mAP", "sub100_R1"):
            if k not in p:
                cells.append("–")
                continue
            d = p[k]
            if len(d["by_seed"]) == 1:
                cells.append(f"{d['mean']:+.2f}")
                continue
            cells.append(", ".join(f"{x:+.2f}" for x in d["by_seed"]) + f"; {d['mean']:+.2f} ± {d['std']:.2f}"
                         + ("" if d["positive_in_every_seed"] else " (not positive in every seed)"))
        lines.append(f"| {p['a']} − {p['b']} | {', '.join(map(str, p['seeds']))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pm(s: dict, k: str, sign: str = "+") -> str:
    """``mean ± std`` of one summary figure; no ± for a single run, and ``(n runs)`` where the
    figure averages fewer runs than the variant has."""
    n = s.get(f"{k}_n", s["n"])
    return (f"{s[f'{k}_mean']:{sign}.2f}" + (f" ± {s[f'{k}_std']:.2f}" if n > 1 else "")
            + (f" ({n} run{'s' if n > 1 else ''})" if n < s["n"] else ""))


def _metric_table(summary: list[dict], prefix: str = "") -> str:
    """R@1/5/10, mAP and mINP (``prefix`` + metric: ``""`` the full gallery, ``"sub100_"`` the
    sub-galleries), each as mean ± std with its percentage of the ceiling, and the ceiling's row."""
    lines = ["| variant | R@1 | R@5 | R@10 | mAP | mINP | seeds |", "|---|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        if f"{prefix}R1_mean" not in s:
            continue
        cells = []
        for k in METRICS:
            c = _pm(s, f"{prefix}{k}", "")
            pct = f"{prefix}pct_ceiling_{k}"
            if f"{pct}_mean" in s and s.get(f"{pct}_n", s["n"]) == s.get(f"{prefix}{k}_n", s["n"]):  # the same runs
                c += f" ({s[f'{prefix}pct_ceiling_{k}_mean']:.1f} %)"
            cells.append(c)
        lines.append(f"| {s['variant']} | " + " | ".join(cells) + f" | {s['n']} |")
    ceil = next((s for s in summary if f"{prefix}ceiling_R1_mean" in s), None)
    if ceil is not None:
        lines.append("| Bayes ceiling (oracle) | " + " | ".join(
            f"{ceil[f'{prefix}ceiling_{k}_mean']:.2f}" if f"{prefix}ceiling_{k}_mean" in ceil else "–"
            for k in METRICS) + " | |")
    return "\n".join(lines)


def _sigma_table(summary: list[dict]) -> str:
    """What σ tracks, per variant with a learned σ."""
    lines = ["| variant | mean σ image / text | Spearman(text σ, identities fitted) / partial given mentioned "
             "| occluded copy σ ≥ 1.1× (share of images) | R@1 of the more / less certain half of the queries |",
             "|---|---:|---:|---:|---:|"]
    for s in summary:
        k = "spearman_text_sigma_vs_identities_fitted"
        if f"{k}_mean" not in s:
            continue
        rho = _pm(s, k)
        k = "partial_spearman_text_sigma_vs_identities_fitted_given_mentioned"
        rho += f" / {_pm(s, k)}" if f"{k}_mean" in s else ""
        sig = f"{s['sigma_image_mean']:.4f} / {s['sigma_text_mean']:.4f}" if "sigma_image_mean" in s else "–"
        k = "occlusion_share_ratio_ge_1.1"
        occ = f"{100 * s[f'{k}_mean']:.0f} %" if f"{k}_mean" in s else "–"
        halves = (f"{s['certain_half_R1_mean']:.2f} / {s['uncertain_half_R1_mean']:.2f}"
                  if "certain_half_R1_mean" in s and "uncertain_half_R1_mean" in s else "–")
        lines.append(f"| {s['variant']} | {sig} | {rho} | {occ} | {halves} |")
    return "\n".join(lines)


def _table(summary: list[dict]) -> str:
    """The full gallery, then the 100-identity sub-galleries and what σ tracks where there are any."""
    out = "Full test gallery, each metric's percentage of the ceiling in brackets:\n\n" + _metric_table(summary)
    if any("sub100_R1_mean" in s for s in summary):
        out += ("\n\nRandom 100-identity sub-galleries of the test split (10 draws per run, each beside its own "
                "ceiling; the ceiling row is their mean):\n\n" + _metric_table(summary, "sub100_"))
    if any("spearman_text_sigma_vs_identities_fitted_mean" in s for s in summary):
        out += "\n\nWhat σ tracks (test split):\n\n" + _sigma_table(summary)
    return out


def _metrics(rows: list[dict], base) -> str:
    """The distance(s) the probabilistic runs rank by: their own where the rows say, else the base config's."""
    seen = sorted({r["metric"] for r in rows if r["variant"] != "baseline" and r.get("metric")})
    return " / ".join(seen) if seen else base.model.loss.metric


def _write_results(args, out: Path, base, jobs: list, rows: list[dict], uncertainty: list[dict]) -> str:
    """(Re)write every results file from the rows so far (after each finished run: nothing is lost
    on interruption); returns the table."""
    from uca_model.plots import plot_ablation

    order = {(v, s): i for i, (v, s) in enumerate(jobs)}
    rows = sorted(rows, key=lambda r: order[(r["variant"], r["seed"])])
    fields = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("variant", "seed"), k))
    with (out / "runs.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    (out / "runs.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    uncertainty = sorted(uncertainty, key=lambda u: u["run"])
    (out / "uncertainty.json").write_text(json.dumps(uncertainty, indent=2) + "\n", encoding="utf-8")
    summary = _summary(rows, args.variants)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    table = _table(summary)
    paired = _paired(rows)
    (out / "paired.json").write_text(json.dumps(paired, indent=2) + "\n", encoding="utf-8")
    (out / "table.md").write_text(
        f"SynthPedes '{args.preset}', test split, mean ± std over seeds {args.seeds} "
        f"(ranking: cosine for the baseline, {_metrics(rows, base)} distance for the others; "
        f"the ceiling is the split's Bayes oracle, uca_model.ceiling).\n\n"
        + table + "\n"
        + ("\nSeed by seed (the same seed: the same initialisation and batches), test split:\n\n"
           + _paired_table(paired) + "\n" if paired else ""), encoding="utf-8")
    plot_ablation(summary, out / "ablation.png", title=f"UCA ablation on SynthPedes '{args.preset}' (test)")
    return table


def main(argv=None) -> int:
    from uca_model.presets import ABLATION_VARIANTS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="demo", help="SynthPedes preset (demo | large)")
    ap.add_argument("--data", default=None,
                    help="dataset folder (default data/synthpedes-<preset>, -seed<K> added for --data-seed K > 0)")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the SynthPedes build (default 0)")
    ap.add_argument("--variants", nargs="+", default=list(ABLATION_VARIANTS), choices=list(ABLATION_VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the demo config's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field for every run (repeatable)")
    ap.add_argument("--runs", default="runs/ablation", help="folder of the run folders")
    ap.add_argument("--out", default="benchmarks/results/ablation", help="results folder (committed)")
    ap.add_argument("--parallel", type=int, default=1, help="runs trained at the same time (processes)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: rewrite the results of the --reuse folders' finished runs (the tables of "
                         "an ablation still running elsewhere); command.txt is left as it is")
    ap.add_argument("--reuse", action="append", default=[], metavar="DIR",
                    help="take these variants' finished runs from an earlier results folder (repeatable)")
    args = ap.parse_args(argv)
    if args.data is None:
        args.data = f"data/synthpedes-{args.preset}" + (f"-seed{args.data_seed}" if args.data_seed else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Path(args.runs).mkdir(parents=True, exist_ok=True)

    from uca_model.config import to_dict
    base = _config(args, "UCA", args.seeds[0])
    if not args.report_only:
        (out / "command.txt").write_text(
            "python -m benchmarks.ablation " + " ".join(argv if argv is not None else sys.argv[1:]) + "\n\n"
            "# base config (full UCA, first seed); each variant changes:\n"
            + json.dumps({v: ABLATION_VARIANTS[v] for v in args.variants}, indent=2) + "\n\n"
            + json.dumps(to_dict(base), indent=2) + "\n", encoding="utf-8")

    jobs = [(v, s) for s in args.seeds for v in args.variants]
    rows: list[dict] = []
    uncertainty: list[dict] = []
    for d in args.reuse:
        rows_file = Path(d) / "runs.json"
        if not rows_file.is_file():
            raise SystemExit(f"--reuse {d}: no runs.json there")
        unc_file = Path(d) / "uncertainty.json"
        unc = {u["run"]: u for u in json.loads(unc_file.read_text())} if unc_file.is_file() else {}
        for r in json.loads(rows_file.read_text()):
            if (r["variant"], r["seed"]) in jobs and all((r["variant"], r["seed"]) != (q["variant"], q["seed"])
                                                         for q in rows):
                r = {**r, "reused_from": str(d)}
                if r["run"] in unc:
                    uncertainty.append(unc[r["run"]])
                    r.update(_uncertainty_row(unc[r["run"]]))
                rows.append(r)
    _complete(rows, args.data)
    reused = {(r["variant"], r["seed"]) for r in rows}
    jobs_to_run = [] if args.report_only else [j for j in jobs if j not in reused]
    if jobs_to_run:  # the data once, before the workers start
        from uca_model.synth import generate_synthpedes

        generate_synthpedes(args.data, args.preset, seed=args.data_seed, progress=True)
    log = (out / "progress.log").open("a", encoding="utf-8")
    t0 = time.perf_counter()

    def done(row):
        u = row.pop("_uncertainty", None)
        if u is not None:
            uncertainty.append(u)
            row.update(_uncertainty_row(u))
        rows.append(row)
        msg = (f"[{len(rows)}/{len(jobs)} {time.perf_counter() - t0:7.0f}s] {row['variant']:9s} seed {row['seed']}: "
               + " ".join(f"{k} {row[k]:.2f}" for k in METRICS)
               + (f" sigma {row['sigma_image']:.4f}/{row['sigma_text']:.4f}" if "sigma_image" in row else "")
               + f" ({row['train_time_s']:.0f} s training)")
        print(msg, flush=True)
        log.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")
        log.flush()
        _write_results(args, out, base, jobs, rows, uncertainty)

    if args.parallel > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(args.parallel, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_run_one, args, v, s) for v, s in jobs_to_run]
            for f in as_completed(futures):
                done(f.result())
    else:
        for v, s in jobs_to_run:
            done(_run_one(args, v, s))
    log.close()

    table = _write_results(args, out, base, jobs, rows, uncertainty)
    print("\n" + table)
    print(f"\nwritten to {out}/ in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
