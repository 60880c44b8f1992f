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


def gallery_fit(root, gallery, query: str) -> tuple[dict, int, int] | None:
    """``(what the query states, gallery identities fitting all of it, gallery identities)`` on
    SynthPedes (its attributes file), None for other data."""
    import json

    from ..fitting import attribute_codes, fits
    from ..synth.parse import mentions_of_text

    path = Path(root) / "synth_attributes.json"
    if not path.is_file():
        return None
    attrs = json.loads(path.read_text(encoding="utf-8"))
    wanted = mentions_of_text(query)
    by_id = {int(d["id"]): d["attributes"] for d in attrs["identities"]}
    pids = sorted({int(g.pid) for g in gallery})
    codes = attribute_codes(attrs["fields"], [by_id[p] for p in pids], lambda i: f"identity {pids[i]}")
    want = attribute_codes(attrs["fields"], [wanted], lambda _: "the query")
    return wanted, int(fits(want, codes)[0].sum()), len(pids)


def _fit_line(fit, split: str) -> str:
    wanted, n, total = fit
    said = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in wanted.items())
    if not wanted:
        return f"the query states none of the SynthPedes attributes: all {total} {split} gallery identities fit it"
    if n == 0:
        return (f"no identity of the {split} gallery fits everything the query says ({said}): "
                "every image below misses something")
    return f"{n} of the {total} {split} gallery identities fit everything the query says ({said})"


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
        fit = gallery_fit(cfg.data.root, gallery, args.query)
    except user_errors() as e:
        return fail("search", e)
    sig = f" (text sigma {r['sigma']:.4f})" if r["sigma"] is not None else ""
    print(f"query: \"{args.query}\"{sig}; {args.split} gallery of {len(gallery)} images")
    if where is not None:
        print(f"text sigma {r['sigma']:.4f}: more ambiguous than {where:.0f} % of the {args.split} captions "
              f"({len(queries)} captions)")
    if fit is not None:
        print(_fit_line(fit, args.split))
    for i, h in enumerate(r["hits"], 1):
        s = f"  sigma {h['sigma']:.4f}" if h["sigma"] is not None else ""
        print(f"{i:3d}. {h['score_name']} {h['score']:8.4f}{s}  id {h['pid']:5d}  {h['path']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot_retrieval(rows, args.out, title=f"{args.run.name}: top {len(r['hits'])} of {len(gallery)} {args.split} images")
    print(f"picture: {args.out}")
    return 0


COMMAND = Command("search", "search a run's gallery with a free-text description and draw the top-k",
                  _search_arguments, _search_run)
