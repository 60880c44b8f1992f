"""The model commands of ``uca``: ``demo``, ``train``, ``eval``, ``search``.

They register themselves with :mod:`uca_model.cli` (``register(name, help, add_arguments, run)``).
Errors a user can fix (bad config values, missing files, incompatible checkpoints) are printed as
one line on stderr with exit status 2; a run stopped by ``train.stop_after_steps`` exits with 3.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

from .cli import register

__all__ = ["load_run", "search_rows", "format_metrics_table", "ceiling_lines", "DEMO_RUN", "DEMO_DATA"]

DEMO_RUN = Path("runs/demo")
DEMO_DATA = Path("data/synthpedes-demo")  # the default; data/synthpedes-<preset> in general
EXAMPLE_QUERY = "a woman in a red coat with a black backpack"


def _user_errors():
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .encoders import PretrainedCLIPError
    from .trainer import RunExistsError

    return (ConfigError, CheckpointError, PretrainedCLIPError, RunExistsError, FileNotFoundError, ValueError)


def _fail(cmd: str, e: BaseException) -> int:
    print(f"uca {cmd}: error: {e}", file=sys.stderr)
    return 2


def _threads(n: int | None) -> None:
    if n is not None:
        import torch

        if n < 1:
            raise ValueError(f"--threads must be >= 1, got {n}")
        torch.set_num_threads(n)


def format_metrics_table(rows: Sequence[tuple[str, dict]]) -> str:
    """A Markdown table of R@1/5/10, mAP, mINP for ``(label, metrics)`` rows."""
    keys = ("R1", "R5", "R10", "mAP", "mINP")
    out = ["| | " + " | ".join(("R@1", "R@5", "R@10", "mAP", "mINP")) + " |", "|---|" + "---:|" * len(keys)]
    for label, m in rows:
        out.append(f"| {label} | " + " | ".join(f"{m[k]:.2f}" for k in keys) + " |")
    return "\n".join(out)


CEILING_LABEL = "ceiling (Bayes oracle)"


def ceiling_lines(fractions: dict) -> list[str]:
    """One line per split: the model's R@1/5/10 and mAP as a percentage of the Bayes ceiling."""
    return [f"{split} R@1 = {f['R1']:.0f} % of the ceiling, R@5 = {f['R5']:.0f} %, R@10 = {f['R10']:.0f} %, "
            f"mAP = {f['mAP']:.0f} %" for split, f in fractions.items()]


def _with_ceiling(result: dict, root) -> dict:
    """``result`` (``val`` / ``test`` metrics) with ``ceiling`` / ``fraction_of_ceiling`` filled in if missing
    (a run finished before they were recorded); unchanged for data that is not SynthPedes."""
    if "ceiling" in result:
        return result
    from .ceiling import ceiling_report

    try:
        return {**result, **ceiling_report(root, {s: result[s] for s in ("val", "test") if result.get(s)})}
    except (OSError, ValueError, KeyError) as e:
        print(f"warning: could not compute the Bayes ceiling of {root}: {e}", file=sys.stderr)
        return result


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str = "cpu"):
    """Rebuild a run from its saved config and load a checkpoint into it.

    Returns:
        ``(cfg, model, tokenizer, dataset, device, ckpt)`` with the model in eval mode.

    Raises:
        FileNotFoundError, ConfigError, CheckpointError: with what is wrong and what to do.
    """
    import torch

    from .checkpoint import CheckpointError, check_config_match, check_state_dict, load_checkpoint, load_run_config, \
        resolve_checkpoint
    from .distributed import DistContext
    from .model import build_model
    from .trainer import prepare_data, resolve_device

    cfg = load_run_config(run_dir)
    path = resolve_checkpoint(run_dir, checkpoint)
    ckpt = load_checkpoint(path)
    check_config_match(ckpt["config"], cfg, str(path), sections=("model",))
    ds, tok = prepare_data(cfg.data, DistContext(), progress=False)
    if len(tok) != ckpt.get("vocab_size", len(tok)):
        raise CheckpointError(f"{path} was trained with a {ckpt['vocab_size']}-token vocabulary but the tokenizer of "
                              f"{cfg.data.root} has {len(tok)}: the data or tokenizer changed since training")
    dev = resolve_device(device, DistContext())
    torch.manual_seed(0)
    model = build_model(cfg.model, tok, ckpt.get("num_train_ids", ds.num_train_ids))
    check_state_dict(model, ckpt["model"], str(path))
    model.to(dev).eval()
    return cfg, model, tok, ds, dev, ckpt


def search_rows(model, tok, cfg, queries: Sequence[str], gallery, topk: int, device, query_pids=None) -> list[dict]:
    """Top-``topk`` gallery images per query text, as rows for :func:`uca_model.plots.plot_retrieval`."""
    import torch

    from .evaluation import embed_images, embed_texts, score_fn
    from .trainer import eval_score

    score = eval_score(cfg)
    img = embed_images(model, gallery, cfg.model.encoder.vision.image_size, cfg.eval.batch_size, device)
    txt = embed_texts(model, tok, list(queries), cfg.model.encoder.text.max_len, cfg.eval.batch_size, device)
    s = score_fn(txt, img, score, cfg.model.loss.metric)(0, len(queries))  # [Q, G], higher = better
    k = min(topk, len(gallery))
    vals, idx = torch.topk(s, k, dim=1)
    name = cfg.model.loss.metric if score == "distance" else "cos"
    sig_img = (0.5 * img["logvar"]).exp().mean(1) if img["logvar"] is not None else None
    sig_txt = (0.5 * txt["logvar"]).exp().mean(1) if txt["logvar"] is not None else None
    rows = []
    for qi, q in enumerate(queries):
        hits = []
        for v, j in zip(vals[qi].tolist(), idx[qi].tolist()):
            hits.append({"path": gallery[j].image_path, "pid": gallery[j].pid, "score_name": name,
                         "score": -v if score == "distance" else v,
                         "sigma": float(sig_img[j]) if sig_img is not None else None})
        rows.append({"caption": q, "sigma": float(sig_txt[qi]) if sig_txt is not None else None,
                     "pid": None if query_pids is None else query_pids[qi], "hits": hits})
    return rows


# ----------------------------------------------------------------------------------------------
# uca train
# ----------------------------------------------------------------------------------------------


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None,
                   help="JSON config (only the fields that differ from the defaults; default: the CPU demo config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set optim.lr=5e-4 --set model.loss.metric=kl (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (required if it exists)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _train_run(args: argparse.Namespace) -> int:
    from .config import RunConfig, apply_overrides, from_dict, load_config, to_dict
    from .trainer import TrainingStopped, train

    try:
        _threads(args.threads)
        if args.config is not None:
            cfg = load_config(args.config, args.overrides)
        else:
            cfg = from_dict(apply_overrides(to_dict(RunConfig()), args.overrides))
        if args.no_progress:
            cfg.train.progress = False
        out = args.out or Path("runs") / (args.config.stem if args.config else "default")
        t0 = time.perf_counter()
        result = train(cfg, out, resume=True if args.resume else False)
        from .distributed import DistContext

        is_main = DistContext.current().is_main  # under torchrun only rank 0 reports
    except TrainingStopped as e:
        print(f"uca train: {e}", file=sys.stderr)
        return 3
    except _user_errors() as e:
        return _fail("train", e)
    finally:
        _shutdown_distributed()
    if result and is_main:
        print(f"\n{result['run']}: trained in {time.perf_counter() - t0:.0f} s ({result['steps']} steps); "
              f"best val {result['select_metric']} at epoch {result['best_epoch']}; ranking by {result['score']}")
        rows = [("val (best)", result["val"]), ("test", result["test"])]
        rows += [(f"{CEILING_LABEL}, {s}", c) for s, c in result.get("ceiling", {}).items()]
        print(format_metrics_table(rows))
        for line in ceiling_lines(result.get("fraction_of_ceiling", {})):
            print(line)
    return 0


def _shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# uca eval
# ----------------------------------------------------------------------------------------------


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
                        "(default: the run folder)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _write_calibration(args: argparse.Namespace, cfg, queries, gallery, emb: dict, score: str) -> None:
    """``calibration-<split>.json`` and ``.png`` from the embeddings ``evaluate_split`` computed (printed paths)."""
    from .plots import plot_calibration
    from .uncertainty import calibration_table, query_scores, sigma_of, split_annotations

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
    out_dir = args.calibration_out or args.run
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
    from .ceiling import ceiling_from_root, fraction_of_ceiling
    from .evaluation import evaluate_split
    from .trainer import eval_score

    try:
        _threads(args.threads)
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
    except _user_errors() as e:
        return _fail("eval", e)
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
        return _fail("eval", e)
    return 0


# ----------------------------------------------------------------------------------------------
# uca search
# ----------------------------------------------------------------------------------------------


def _search_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("query", help=f"the description to search for, e.g. \"{EXAMPLE_QUERY}\"")
    p.add_argument("--run", type=Path, required=True, help="run folder written by uca train / uca demo")
    p.add_argument("--topk", type=int, default=10, help="images to return (default 10)")
    p.add_argument("--out", type=Path, default=Path("grid.png"), help="picture to write (default grid.png)")
    p.add_argument("--split", default="test", choices=("val", "test"), help="gallery: the images of this split")
    p.add_argument("--checkpoint", default="best", help="best, last, or a .pt path")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _search_run(args: argparse.Namespace) -> int:
    from .plots import plot_retrieval

    try:
        _threads(args.threads)
        if args.topk < 1:
            raise ValueError(f"--topk must be >= 1, got {args.topk}")
        if not args.query.strip():
            raise ValueError("the query is empty")
        cfg, model, tok, ds, dev, _ = load_run(args.run, args.checkpoint, args.device)
        queries, gallery = ds.eval_split(args.split)
        rows = search_rows(model, tok, cfg, [args.query], gallery, args.topk, dev)
        r = rows[0]
        where = None
        if r["sigma"] is not None:  # where the query's sigma falls among the split's captions (embedded once)
            from .evaluation import embed_texts
            from .uncertainty import sigma_of, sigma_percentile

            txt = embed_texts(model, tok, [x.caption for x in queries], cfg.model.encoder.text.max_len,
                              cfg.eval.batch_size, dev)
            where = sigma_percentile(r["sigma"], sigma_of(txt["logvar"]))
    except _user_errors() as e:
        return _fail("search", e)
    sig = f" (text sigma {r['sigma']:.4f})" if r["sigma"] is not None else ""
    print(f"query: \"{args.query}\"{sig}; {args.split} gallery of {len(gallery)} images")
    if where is not None:
        print(f"text sigma {r['sigma']:.4f}: more ambiguous than {where:.0f} % of the {args.split} captions "
              f"({len(queries)} captions)")
    for i, h in enumerate(r["hits"], 1):
        s = f"  sigma {h['sigma']:.4f}" if h["sigma"] is not None else ""
        print(f"{i:3d}. {h['score_name']} {h['score']:8.4f}{s}  id {h['pid']:5d}  {h['path']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot_retrieval(rows, args.out, title=f"{args.run.name}: top {len(r['hits'])} of {len(gallery)} {args.split} images")
    print(f"picture: {args.out}")
    return 0


# ----------------------------------------------------------------------------------------------
# uca demo
# ----------------------------------------------------------------------------------------------


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=DEMO_RUN, help=f"run folder (default {DEMO_RUN})")
    p.add_argument("--data", type=Path, default=None, help="SynthPedes folder (default data/synthpedes-<preset>)")
    p.add_argument("--preset", default="demo", choices=("demo", "large", "tiny"),
                   help="demo (default; about 7 minutes on 2 CPU cores: 4000 training identities, 100 in the test gallery), "
                        "large (400 identities in the test gallery: a harder test) or tiny (a seconds-long smoke test)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    p.add_argument("--baseline", action="store_true", help="train the fixed-point baseline instead of UCA")
    p.add_argument("--force", action="store_true", help="retrain even if --out holds a finished demo run")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _demo_run(args: argparse.Namespace) -> int:
    from .plots import plot_retrieval
    from .synth import read_card
    from .trainer import TrainingStopped, train

    t0 = time.perf_counter()
    try:
        _threads(args.threads)
        from .config import _deep_merge
        from .presets import demo_config, smoke_config, variant_overrides

        variant = "baseline" if args.baseline else "UCA"
        data = args.data or Path("data") / f"synthpedes-{args.preset}"
        if args.preset != "tiny":
            cfg = demo_config(data, args.seed, args.epochs, variant, preset=args.preset)
        else:
            cfg = smoke_config(data, **_deep_merge({"train": {"seed": args.seed, "epochs": args.epochs or 2,
                                                              "progress": True}}, variant_overrides(variant)))
        if args.no_progress:
            cfg.train.progress = False
        if args.force and args.out.exists():
            shutil.rmtree(args.out)
        print(f"[1/3] SynthPedes '{args.preset}' data in {data}")
        from .synth import generate_synthpedes

        generate_synthpedes(data, args.preset, seed=0, progress=cfg.train.progress)
        card = read_card(data)
        for s in ("train", "val", "test"):
            c = card["splits"][s]
            print(f"      {s:5s}: {c['identities']:4d} identities, {c['images']:5d} images, {c['captions']:5d} captions")
        amb = card["ambiguity"]["test"]
        print(f"      {amb['fraction_ambiguous']:.0%} of test captions fit more than one test identity")
        from .ceiling import ceiling_from_root, ceiling_summary

        ceil = ceiling_from_root(data, "test")
        if ceil is not None:
            print(f"      Bayes ceiling on test: {ceiling_summary(ceil)}")
        print(f"[2/3] training {cfg.model.mode} ({cfg.train.epochs} epochs) into {args.out}")
        result = _with_ceiling(train(cfg, args.out, resume="auto"), data)
        print("[3/3] evaluation and pictures")
        from .evaluation import METRIC_KEYS  # noqa: F401

        cfg2, model, tok, ds, dev, _ = load_run(args.out, "best", "auto")
        queries, gallery = ds.eval_split("test")
        step = max(1, len(queries) // 4)
        picked = [queries[i * step] for i in range(4)]
        rows = search_rows(model, tok, cfg2, [q.caption for q in picked], gallery, 6, dev, [q.pid for q in picked])
        pic = plot_retrieval(rows, args.out / "retrieval.png",
                             title="test queries: top 6 (green = same identity as the query)")
        srow = search_rows(model, tok, cfg2, [EXAMPLE_QUERY], gallery, 10, dev)
        grid = plot_retrieval(srow, args.out / "search.png", title=f"uca search: top 10 of {len(gallery)} test images")
    except TrainingStopped as e:
        print(f"uca demo: {e}", file=sys.stderr)
        return 3
    except _user_errors() as e:
        return _fail("demo", e)
    val, test = result["val"], result["test"]
    print()
    print(f"UCA demo on SynthPedes ({cfg.model.mode}, seed {args.seed}): {result['steps']} steps, "
          f"training {result['train_time_s']:.0f} s; ranking by {result['score']}"
          + (f" ({cfg.model.loss.metric})" if result["score"] == "distance" else ""))
    rows = [(f"val (best, epoch {result['best_epoch']})", val), ("test", test)]
    if "alt" in test:
        rows.append((f"test, ranked by {test['alt']['score']}", test["alt"]))
    rows += [(f"{CEILING_LABEL}, {s}", c) for s, c in result.get("ceiling", {}).items()]
    print(format_metrics_table(rows))
    for line in ceiling_lines(result.get("fraction_of_ceiling", {})):
        print(line)
    if "sigma_image" in test:
        print(f"mean sigma on test: image {test['sigma_image']:.4f}, text {test['sigma_text']:.4f}")
    print(f"\nretrieval examples: {pic}\nsearch \"{EXAMPLE_QUERY}\": {grid}\ncurves: {args.out / 'curves.png'}")
    print(f"try:  uca search \"{EXAMPLE_QUERY}\" --run {args.out} --topk 10 --out grid.png")
    print(f"total time {time.perf_counter() - t0:.0f} s")
    return 0


register("demo", "generate SynthPedes 'demo', train UCA on it, evaluate, print the metrics, draw pictures",
         _demo_arguments, _demo_run)
register("train", "train a model from a JSON config (torchrun --nproc_per_node=N works too)", _train_arguments,
         _train_run)
register("eval", "evaluate a trained run (config rebuilt from the run folder)", _eval_arguments, _eval_run)
register("search", "search a run's gallery with a free-text description and draw the top-k", _search_arguments,
         _search_run)
