"""``uca demo``: generate SynthPedes, train UCA on it, evaluate, print the metrics, draw pictures."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from ..runs import load_run, search_rows
from ._common import (CEILING_LABEL, DEMO_RUN, EXAMPLE_QUERY, Command, ceiling_lines, fail, format_metrics_table,
                      set_threads, user_errors, with_ceiling)

def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=DEMO_RUN, help=f"run folder (default {DEMO_RUN})")
    p.add_argument("--data", type=Path, default=None, help="SynthPedes folder (default data/synthpedes-<preset>)")
    p.add_argument("--preset", default="demo", choices=("demo", "large", "tiny"),
                   help="demo (default; 10-35 minutes on 2 CPU cores: 4000 training identities, 100 in the test gallery), "
                        "large (400 identities in the test gallery: a harder test) or tiny (a seconds-long smoke test)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    p.add_argument("--baseline", action="store_true", help="train the fixed-point baseline instead of UCA")
    p.add_argument("--force", action="store_true", help="retrain even if --out holds a finished demo run")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _demo_run(args: argparse.Namespace) -> int:
    from ..plots import plot_retrieval
    from ..synth import read_card
    from ..trainer import TrainingStopped, train

    t0 = time.perf_counter()
    try:
        set_threads(args.threads)
        from ..config import deep_merge
        from ..presets import demo_config, smoke_config, variant_overrides

        variant = "baseline" if args.baseline else "UCA"
        data = args.data or Path("data") / f"synthpedes-{args.preset}"
        if args.preset != "tiny":
            cfg = demo_config(data, args.seed, args.epochs, variant, preset=args.preset)
        else:
            cfg = smoke_config(data, **deep_merge({"train": {"seed": args.seed, "epochs": args.epochs or 2,
                                                              "progress": True}}, variant_overrides(variant)))
        if args.no_progress:
            cfg.train.progress = False
        if args.force and args.out.exists():
            shutil.rmtree(args.out)
        print(f"[1/3] SynthPedes '{args.preset}' data in {data}")
        from ..synth import generate_synthpedes

        generate_synthpedes(data, args.preset, seed=0, progress=cfg.train.progress)
        card = read_card(data)
        for s in ("train", "val", "test"):
            c = card["splits"][s]
            print(f"      {s:5s}: {c['identities']:4d} identities, {c['images']:5d} images, {c['captions']:5d} captions")
        amb = card["ambiguity"]["test"]
        print(f"      {amb['fraction_ambiguous']:.0%} of test captions fit more than one test identity")
        from ..ceiling import ceiling_from_root, ceiling_summary

        ceil = ceiling_from_root(data, "test")
        if ceil is not None:
            print(f"      Bayes ceiling on test: {ceiling_summary(ceil)}")
        print(f"[2/3] training {cfg.model.mode} ({cfg.train.epochs} epochs) into {args.out}")
        result = with_ceiling(train(cfg, args.out, resume="auto"), data)
        print("[3/3] evaluation and pictures")

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
    except user_errors() as e:
        return fail("demo", e)
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


COMMAND = Command("demo", "generate SynthPedes 'demo', train UCA on it, evaluate, print the metrics, draw pictures",
                  _demo_arguments, _demo_run)
