"""``uca search``: a free-text query against a run's gallery, with the query's sigma among the split's captions."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runs import load_run, search_rows
from ._common import EXAMPLE_QUERY, Command, fail, set_threads, user_errors

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
    from ..plots import plot_retrieval

    try:
        set_threads(args.threads)
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
            from ..evaluation import embed_texts
            from ..uncertainty import sigma_of, sigma_percentile

            txt = embed_texts(model, tok, [x.caption for x in queries], cfg.model.encoder.text.max_len,
                              cfg.eval.batch_size, dev)
            where = sigma_percentile(r["sigma"], sigma_of(txt["logvar"]))
    except user_errors() as e:
        return fail("search", e)
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


COMMAND = Command("search", "search a run's gallery with a free-text description and draw the top-k",
                  _search_arguments, _search_run)
