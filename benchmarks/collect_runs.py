"""Summarise training runs side by side: what each run changed and its best val R@1 / mAP.

    python -m benchmarks.collect_runs RUN_DIR... --labels "label 1" ... --out benchmarks/results/recipe

For every run folder (written by ``uca train``): the config fields that differ from the run before it,
the training identities, steps, training time and the best val R@1 / mAP from ``eval.csv`` (with
the val split's Bayes ceiling when the data is SynthPedes and still on disk). Writes
``runs.md`` / ``runs.json`` and copies each run's ``config.json`` and ``eval.csv`` to
``<out>/<label>/`` so the table can be checked against its sources.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import sys
from pathlib import Path


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


_IGNORED = ("train.progress", "train.eval_every", "train.log_every", "train.ckpt_every")


def summarise(run: Path) -> dict:
    cfg = json.loads((run / "config.json").read_text(encoding="utf-8"))
    rows = list(csv.DictReader((run / "eval.csv").open(encoding="utf-8")))
    val = [r for r in rows if r["split"] == "val"]
    if not val:
        raise ValueError(f"{run}/eval.csv has no val evaluation yet")
    best = max(val, key=lambda r: float(r["R1"]))
    out = {"run": str(run), "config": cfg, "best_epoch": int(best["epoch"]), "best_step": int(best["step"]),
           "val_R1": float(best["R1"]), "val_mAP": float(best["mAP"]), "evaluations": len(val),
           "epochs_run": max(int(r["epoch"]) for r in val)}
    test = [r for r in rows if r["split"] == "test"]
    if test:
        out["test_R1"], out["test_mAP"] = float(test[-1]["R1"]), float(test[-1]["mAP"])
    card = Path(cfg["data"]["root"]) / "dataset_card.json"
    if card.is_file():
        c = json.loads(card.read_text(encoding="utf-8"))
        out["train_ids"] = c["splits"]["train"]["identities"]
        if "ceiling" in c:
            out["val_ceiling_R1"] = c["ceiling"]["val"]["R1"]
            out["val_R1_pct_ceiling"] = 100 * out["val_R1"] / c["ceiling"]["val"]["R1"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--labels", nargs="+", default=None, help="one short label per run (default: folder names)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default="Runs")
    args = ap.parse_args(argv)
    labels = args.labels or [r.name for r in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit("give one label per run")
    rows = [summarise(r) for r in args.runs]
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {args.title}", "", "| # | run | config changes vs the row above | train ids | best val R@1 (% of the "
             "val ceiling) | val mAP | at epoch / step | test R@1 |", "|---:|---|---|---:|---:|---:|---:|---:|"]
    prev: dict = {}
    for i, (label, r) in enumerate(zip(labels, rows), 1):
        flat = _flat(r["config"])
        diff = [f"`{k}={flat.get(k)!r}`" for k in sorted(set(flat) | set(prev))
                if prev and flat.get(k) != prev.get(k) and k not in _IGNORED]
        prev = flat
        pct = f" ({r['val_R1_pct_ceiling']:.0f} %)" if "val_R1_pct_ceiling" in r else ""
        test = f"{r['test_R1']:.2f}" if "test_R1" in r else "– (stopped early)"
        lines.append(f"| {i} | {label} | {', '.join(diff) if i > 1 else '(reference)'} | "
                     f"{r.get('train_ids', '?')} | {r['val_R1']:.2f}{pct} | {r['val_mAP']:.2f} | "
                     f"{r['best_epoch']} / {r['best_step']} | {test} |")
        dest = args.out / re.sub(r"[^A-Za-z0-9._-]+", "_", label)
        dest.mkdir(exist_ok=True)
        for f in ("config.json", "eval.csv"):
            shutil.copy(Path(r["run"]) / f, dest / f)
    (args.out / "runs.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (args.out / "runs.json").write_text(json.dumps([{"label": l, **r} for l, r in zip(labels, rows)], indent=2) + "\n",
                                        encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
