"""Does the learned sigma mean anything? Checks on SynthPedes, where the ground truth is known.

    python -m benchmarks.uncertainty RUN [RUN ...] [--out FILE.json]

For each trained probabilistic run, on its test split:

- text sigma vs how much a caption says: Spearman correlation with the number of attributes the
  caption mentions (expected < 0: vaguer captions, larger sigma) and with the number of test
  identities the caption fits (expected > 0);
- image sigma of occluded vs unoccluded images (expected: occluded larger);
- retrieval of the most certain vs the least certain half of the queries (R@1 and mAP by text
  sigma): a sigma that tracks difficulty gives the certain half the better numbers.

SynthPedes records what each caption mentions and which images are occluded
(``synth_attributes.json``), so these are exact.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    # average ranks of ties
    vals, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=r)
    return (sums / counts)[inv]


def spearman(a, b) -> float:
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def gallery_records(root: Path, attrs: dict, gallery) -> list[dict]:
    """The ``synth_attributes.json`` image record of every gallery image, in gallery order (its
    ``mentions`` are the captions of that image, in query order)."""
    by_path = {im["file_path"]: im for im in attrs["images"]}
    return [by_path[Path(g.image_path).relative_to(root / "imgs").as_posix()] for g in gallery]


def analyse(run: str) -> dict:
    import torch

    from uca_model.commands import load_run
    from uca_model.evaluation import embed_images, embed_texts, score_fn
    from uca_model.metrics import retrieval_metrics
    from uca_model.synth import FIELD_NAMES
    from uca_model.trainer import eval_score

    cfg, model, tok, ds, dev, _ = load_run(run, "best", "auto")
    if not cfg.model.probabilistic:
        raise ValueError(f"{run} is a fixed-point baseline: no sigma to analyse")
    root = Path(cfg.data.root)
    attrs = json.loads((root / "synth_attributes.json").read_text(encoding="utf-8"))
    ids = {i["id"]: i["attributes"] for i in attrs["identities"] if i["split"] == "test"}
    queries, gallery = ds.eval_split("test")
    mentions, occluded = [], []
    for im in gallery_records(root, attrs, gallery):
        occluded.append(im.get("occluder") is not None)
        mentions.extend(im["mentions"])
    if len(mentions) != len(queries):
        raise ValueError(f"{len(mentions)} recorded captions vs {len(queries)} queries: the data changed")
    codes = np.array([[ids[i][f] for f in FIELD_NAMES] for i in sorted(ids)])  # [N, F]
    fits = []
    for m in mentions:
        ok = np.ones(len(codes), bool)
        for f, v in m.items():
            ok &= codes[:, FIELD_NAMES.index(f)] == v
        fits.append(int(ok.sum()))
    n_mentioned = [len(m) for m in mentions]

    bs = cfg.eval.batch_size
    img = embed_images(model, gallery, cfg.model.encoder.vision.image_size, bs, dev)
    txt = embed_texts(model, tok, [q.caption for q in queries], cfg.model.encoder.text.max_len, bs, dev)
    sig_t = (0.5 * txt["logvar"]).exp().mean(1).cpu().numpy()
    sig_v = (0.5 * img["logvar"]).exp().mean(1).cpu().numpy()
    occ = np.array(occluded)
    qp = np.array([q.pid for q in queries])
    gp = np.array([g.pid for g in gallery])
    s = score_fn(txt, img, eval_score(cfg), cfg.model.loss.metric)(0, len(queries))
    order = np.argsort(sig_t, kind="stable")
    half = len(order) // 2
    split = {}
    for name, idx in (("certain_half", order[:half]), ("uncertain_half", order[half:])):
        t = torch.as_tensor(idx)
        m = retrieval_metrics(s[t], query_pids=qp[idx], gallery_pids=gp)
        split[name] = {k: round(m[k], 3) for k in ("R1", "mAP")}
    return {
        "run": run,
        "sigma_text_mean": float(sig_t.mean()), "sigma_text_relative_spread": float(sig_t.std() / sig_t.mean()),
        "sigma_image_mean": float(sig_v.mean()), "sigma_image_relative_spread": float(sig_v.std() / sig_v.mean()),
        "spearman_text_sigma_vs_attributes_mentioned": spearman(sig_t, n_mentioned),
        "spearman_text_sigma_vs_identities_fitted": spearman(sig_t, fits),
        "image_sigma_occluded": float(sig_v[occ].mean()) if occ.any() else None,
        "image_sigma_unoccluded": float(sig_v[~occ].mean()),
        "occluded_images": int(occ.sum()),
        "retrieval_by_text_sigma": split,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args(argv)
    results = [analyse(r) for r in args.runs]
    for r in results:
        print(f"{r['run']}:")
        for k, v in r.items():
            if k != "run":
                print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
