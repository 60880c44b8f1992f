"""Which part of σ moves the ranking? The same trained run ranked with σ changed at evaluation.

    python -m benchmarks.sigma_ranking RUN [RUN ...] [--split val|test] [--out FILE.json]

A per-dimension score such as ``ce`` ranks the gallery of one caption by
Σ_d (σ²_v,d + Δμ_d²) / σ²_t,d: what it can do beyond the cosine of the means comes from how the
caption's σ²_t,d varies *across dimensions* (a large σ on the dimensions of an attribute the caption
does not mention lets images differ there cheaply) and from the image's σ²_v. For each run, the
split's captions and images are embedded once and ranked six ways:

- ``full``: the run's own score (``eval.score`` with its metric);
- ``shared_shape_text``: each caption's log σ²_t,d replaced by the split's mean profile over captions
  (per dimension), shifted to the caption's own mean over d (the shape every caption shares, without
  what is particular to this caption);
- ``isotropic_text``: each caption's log σ²_t,d replaced by its mean over d (the caption keeps its
  overall certainty, loses its shape across dimensions);
- ``shuffled_text``: each caption's log σ²_t,d permuted across d (the same values, on the wrong
  dimensions);
- ``constant_image``: every image's log σ²_v,d replaced by the split's mean over images and dimensions;
- ``cosine``: cos(μ_t, μ_v), no σ at all.

Beside them, the shape of text σ: the mean over captions of the standard deviation of log σ²_t,d
across dimensions (``text_logvar_std_across_dims``), the part of it particular to each caption (the
same after the shared profile is subtracted, ``text_logvar_own_shape_std``), against the standard deviation over captions of
their mean log σ² (``text_logvar_std_across_captions``). Pure evaluation: nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

VARIANTS = ("full", "shared_shape_text", "isotropic_text", "shuffled_text", "constant_image", "cosine")


def _metrics(txt, img, score, metric, qp, gp) -> dict[str, float]:
    from uca_model.evaluation import score_fn
    from uca_model.metrics import retrieval_metrics

    m = retrieval_metrics(score_fn(txt, img, score, metric), query_pids=qp, gallery_pids=gp, ks=(1, 5, 10))
    return {k: round(float(m[k]), 3) for k in ("R1", "R5", "R10", "mAP")}


def analyse(run: str, split: str = "val", checkpoint: str = "best", seed: int = 0) -> dict:
    """The six rankings of one probabilistic run on ``split`` and the shape of its text σ.

    Raises:
        ValueError: the run is a fixed-point baseline (no σ to change).
    """
    from uca_model.runs import load_run
    from uca_model.trainer import eval_score
    from uca_model.uncertainty import embed_split

    cfg, model, tok, ds, dev, _ = load_run(run, checkpoint, "cpu")
    if not cfg.model.probabilistic:
        raise ValueError(f"{run} is a fixed-point baseline: no sigma to change")
    score, metric = eval_score(cfg), cfg.model.loss.metric
    if score != "distance":
        raise ValueError(f"{run} ranks by {score!r}: sigma does not enter its ranking")
    queries, gallery, txt, img = embed_split(cfg, model, tok, ds, dev, split)
    qp, gp = [q.pid for q in queries], [g.pid for g in gallery]
    lt, lv = txt["logvar"], img["logvar"]
    g = torch.Generator().manual_seed(seed)
    perm = torch.argsort(torch.rand(lt.shape, generator=g), dim=1)
    profile = lt.mean(0, keepdim=True)
    own = lt - profile  # what is particular to each caption
    texts = {
        "full": txt,
        "shared_shape_text": {"mu": txt["mu"], "logvar": (profile - profile.mean() + lt.mean(1, keepdim=True))},
        "isotropic_text": {"mu": txt["mu"], "logvar": lt.mean(1, keepdim=True).expand_as(lt).contiguous()},
        "shuffled_text": {"mu": txt["mu"], "logvar": torch.gather(lt, 1, perm)},
        "constant_image": txt,
    }
    images = {k: img for k in texts}
    images["constant_image"] = {"mu": img["mu"], "logvar": torch.full_like(lv, float(lv.mean()))}
    out = {"run": str(run), "split": split, "checkpoint": checkpoint, "metric": metric,
           "queries": len(queries), "gallery": len(gallery)}
    for k in VARIANTS[:-1]:
        out[k] = _metrics(texts[k], images[k], score, metric, qp, gp)
    out["cosine"] = _metrics(txt, img, "cosine", metric, qp, gp)
    out["text_logvar_std_across_dims"] = round(float(lt.std(1).mean()), 4)
    out["text_logvar_own_shape_std"] = round(float((own - own.mean(1, keepdim=True)).std(1).mean()), 4)
    out["text_logvar_std_across_captions"] = round(float(lt.mean(1).std()), 4)
    out["image_logvar_std_across_dims"] = round(float(lv.std(1).mean()), 4)
    out["image_logvar_std_across_images"] = round(float(lv.mean(1).std()), 4)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders of probabilistic runs ranked by distance")
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("--checkpoint", default="best")
    ap.add_argument("--out", help="write the results (a list, one per run) to this JSON file")
    args = ap.parse_args(argv)
    results = []
    for run in args.runs:
        r = analyse(run, args.split, args.checkpoint)
        results.append(r)
        print(f"{run} ({args.split}, {r['metric']}): "
              + ", ".join(f"{k} R@1 {r[k]['R1']:.2f} / mAP {r[k]['mAP']:.2f}" for k in VARIANTS)
              + f"; text log-var std across dims {r['text_logvar_std_across_dims']:.3f}"
                f" (own shape {r['text_logvar_own_shape_std']:.3f}),"
                f" across captions {r['text_logvar_std_across_captions']:.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
