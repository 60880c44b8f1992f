"""``uca eval``: evaluate a trained run on val or test, with the sigma calibration of a probabilistic run."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..runs import load_run
from ._common import CEILING_LABEL, Command, ceiling_lines, fail, format_metrics_table, set_threads, user_errors

def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=Path, required=True, help="run folder written by uca train / uca demo")
    p.add_argument("--checkpoint", default="best", help="best (selected on val), last, or a .pt path")
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--score", default=None, choices=("distance", "cosine"),
                   help="ranking (default: the run's eval.score)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--json", type=Path, default=None, help="also write the metrics to this JSON file")
    p.add_argument("--calibration-out", type=Path, default=None, metavar="DIR",
                   help="folder for calibration-<split>.png / .json, the sigma calibration of a probabilistic run "
                        "(default: <run>-eval beside the run folder, which eval leaves as it is)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def default_eval_dir(run: Path) -> Path:
    """Where ``uca eval`` writes by default: ``<run>-eval`` beside the run (the run folder is what
    training wrote; evaluating it changes nothing there)."""
    run = Path(run)
    return run.parent / f"{run.name}-eval"


def _write_calibration(args: argparse.Namespace, cfg, queries, gallery, emb: dict, score: str) -> None:
    """``calibration-<split>.json`` and ``.png`` from the embeddings ``evaluate_split`` computed (printed paths)."""
    from ..plots import plot_calibration
    from ..uncertainty import calibration_table, query_scores, sigma_of, split_annotations

    txt, img = emb["text"], emb["image"]
    try:
        ann = split_annotations(cfg.data.root, queries, gallery)
    except (OSError, ValueError, KeyError) as e:
        print(f"warning: SynthPedes attributes of {cfg.data.root} not usable, calibration without them: {e}",
              file=sys.stderr)
        ann = None
    table = calibration_table(sigma_of(txt["logvar"]), query_scores(txt, img, score, cfg.model.loss.metric),
                              [q.pid for q in queries], [g.pid for g in gallery], sigma_image=sigma_of(img["logvar"]),
                              annotations=ann)
    table = {"run": str(args.run), "split": args.split, "checkpoint": args.checkpoint, "score": score,
             "metric": cfg.model.loss.metric, **table}
    out_dir = args.calibration_out or default_eval_dir(args.run)
    out_dir.mkdir(parents=True, exist_ok=True)
    js, png = out_dir / f"calibration-{args.split}.json", out_dir / f"calibration-{args.split}.png"
    js.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    plot_calibration(table, png, title=f"{args.run.name} ({args.checkpoint}), {args.split}: {table['queries']} "
                                       f"queries, {table['gallery']} images, ranking by {score}"
                                       + (f" ({cfg.model.loss.metric})" if score == "distance" else ""))
    d1, d10 = table["by_sigma_decile"][0], table["by_sigma_decile"][-1]
    line = f"sigma calibration: R@1 {d1['R1']:.1f} in the most certain decile, {d10['R1']:.1f} in the least certain"
    rho = table["spearman_text_sigma_vs_identities_fitted"]
    if rho is not None:
        line += f"; Spearman(text sigma, identities fitted) = {rho:+.2f}"
    print(line)
    print(f"calibration: {png}, {js}")


def _eval_run(args: argparse.Namespace) -> int:
    from ..ceiling import ceiling_from_root, fraction_of_ceiling
    from ..evaluation import evaluate_split
    from ..trainer import eval_score

    try:
        set_threads(args.threads)
        cfg, model, tok, ds, dev, ckpt = load_run(args.run, args.checkpoint, args.device)
        if args.score == "distance" and not cfg.model.probabilistic:
            raise ValueError("--score distance needs a probabilistic (mode 'uca') run; this run is a baseline")
        q, g = ds.eval_split(args.split)
        score = args.score or eval_score(cfg)
        t0 = time.perf_counter()
        emb: dict = {}  # the embeddings of the split, kept for the calibration table
        m = evaluate_split(model, tok, q, g, score=score, metric=cfg.model.loss.metric,
                           image_size=cfg.model.encoder.vision.image_size, max_len=cfg.model.encoder.text.max_len,
                           batch_size=cfg.eval.batch_size, device=dev, embeddings=emb)
        held_out_val = args.split == "val" and cfg.data.val_from_train is not None  # not the card's val split
        ceil = None if held_out_val else ceiling_from_root(cfg.data.root, args.split)
        if ceil is not None:
            m["ceiling"], m["fraction_of_ceiling"] = ceil, fraction_of_ceiling(m, ceil)
    except user_errors() as e:
        return fail("eval", e)
    what = f"{args.run} ({args.checkpoint} checkpoint, {ckpt.get('kind', '?')}), {args.split}: {len(q)} queries, " \
           f"{len(g)} gallery images, ranking by {score}" + (f" ({cfg.model.loss.metric})" if score == "distance" else "")
    print(what)
    rows = [(f"{args.split} ({score})", m)]
    if "alt" in m:
        rows.append((f"{args.split} ({m['alt']['score']})", m["alt"]))
    if "ceiling" in m:
        rows.append((f"{CEILING_LABEL}, {args.split}", m["ceiling"]))
    print(format_metrics_table(rows))
    if "ceiling" in m:
        print(ceiling_lines({f"{args.split} ({score})": m["fraction_of_ceiling"]})[0])
    if "sigma_image" in m:
        print(f"mean sigma: image {m['sigma_image']:.4f}, text {m['sigma_text']:.4f}")
    print(f"({time.perf_counter() - t0:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(m, indent=2) + "\n", encoding="utf-8")
    if not cfg.model.probabilistic or emb.get("text") is None or emb["text"]["logvar"] is None:
        print("calibration: skipped (a fixed-point baseline run has no sigma)")
        return 0
    try:
        _write_calibration(args, cfg, q, g, emb, score)
    except (OSError, ValueError) as e:
        return fail("eval", e)
    return 0


COMMAND = Command("eval", "evaluate a trained run (config rebuilt from the run folder)", _eval_arguments, _eval_run)
