"""Which attributes does a run get wrong? Per-attribute errors of the top-1 image on SynthPedes.

    python -m benchmarks.attribute_errors RUN [--split val] [--out FILE.json]

For every query caption of the split, the top-ranked gallery image (by the run's own ranking) is
checked against what the caption mentions (``synth_attributes.json``): the share of queries whose
top-1 image fits *every* mention (the Bayes oracle's top-1 always does), and per attribute the
share of mentions the top-1 image violates. A low R@1 with a high consistency would mean the model
only loses among identities the caption cannot tell apart; violations name what it cannot see.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path


def attribute_errors(run: str | Path, split: str = "val", device: str = "cpu") -> dict:
    import torch

    from uca_model.runs import load_run
    from uca_model.evaluation import embed_images, embed_texts, score_fn
    from uca_model.trainer import eval_score

    from .uncertainty import gallery_records

    cfg, model, tok, ds, dev, _ = load_run(run, "best", device)
    queries, gallery = ds.eval_split(split)
    path = Path(cfg.data.root) / "synth_attributes.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: attribute errors need SynthPedes data")
    attrs = json.loads(path.read_text(encoding="utf-8"))
    ident = {e["id"]: e["attributes"] for e in attrs["identities"]}
    mentions = [m for im in gallery_records(Path(cfg.data.root), attrs, gallery) for m in im["mentions"]]
    if len(mentions) != len(queries):
        raise ValueError(f"{path} lists {len(mentions)} {split} captions, the dataset {len(queries)}")
    img = embed_images(model, gallery, cfg.model.encoder.vision.image_size, cfg.eval.batch_size, dev)
    txt = embed_texts(model, tok, [q.caption for q in queries], cfg.model.encoder.text.max_len, cfg.eval.batch_size,
                      dev)
    scores = score_fn(txt, img, eval_score(cfg), cfg.model.loss.metric)
    top = torch.cat([scores(a, min(a + 256, len(queries))).argmax(1) for a in range(0, len(queries), 256)]).tolist()
    mentioned, violated, consistent = Counter(), Counter(), 0
    for m, j in zip(mentions, top):
        have = ident[gallery[j].pid]
        bad = [f for f, v in m.items() if have[f] != v]
        mentioned.update(m.keys())
        violated.update(bad)
        consistent += not bad
    n = len(queries)
    return {"run": str(run), "split": split, "queries": n,
            "R1": 100.0 * sum(gallery[j].pid == q.pid for j, q in zip(top, queries)) / n,
            "top1_fits_every_mention": 100.0 * consistent / n,
            "violated_pct": {f: 100.0 * violated[f] / mentioned[f] for f in attrs["fields"] if mentioned[f]},
            "mentions": {f: mentioned[f] for f in attrs["fields"] if mentioned[f]}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    args = ap.parse_args(argv)
    r = attribute_errors(args.run, args.split)
    print(f"{r['run']} ({r['split']}, {r['queries']} queries): R@1 {r['R1']:.1f}, top-1 image fits every mention "
          f"{r['top1_fits_every_mention']:.1f} %")
    for f, v in r["violated_pct"].items():
        print(f"  {f:13s} mentioned {r['mentions'][f]:5d}   violated by the top-1 image {v:5.1f} %")
    if args.out:
        args.out.write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
