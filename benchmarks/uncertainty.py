"""Does the learned sigma mean anything? Checks of trained probabilistic runs.

    python -m benchmarks.uncertainty RUN [RUN ...] [--split val|test] [--out FILE.json]

For each run, on one split (``test`` by default; ``val`` for model selection, which must not look at
test):

- text sigma vs how much a caption says: Spearman correlation with the number of attributes the
  caption mentions (expected < 0: vaguer captions, larger sigma) and with the number of identities
  of the split's gallery the caption fits (expected > 0);
- the partial Spearman of text sigma with identities fitted given the attributes mentioned (what
  sigma knows beyond counting attribute words);
- image sigma of occluded vs unoccluded images (expected: occluded larger), and the paired occlusion
  test: each image with and without a drawn occluder over a part its captions mention, the ratio of
  the two sigma per image (share of images with ratio >= 1.1);
- R@1 / mAP on the full gallery (``overall``) beside the split's Bayes ceiling (``ceiling``), and on
  random 100-identity sub-galleries beside theirs (``sub_galleries``; None for <= 100 identities);
- retrieval of the most certain vs the least certain half of the queries (R@1 and mAP by text
  sigma): a sigma that tracks difficulty gives the certain half the better numbers.

SynthPedes records what each caption mentions and which images are occluded
(``synth_attributes.json``), so these are exact; on other data the SynthPedes entries are None and
only the sigma statistics and the halves are reported. The analysis is
:func:`uca_model.uncertainty.analyse_run` (``uca eval`` writes its full table and picture as
``calibration-<split>.json`` / ``.png``); this is its command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from uca_model.uncertainty import analyse_run, gallery_records, spearman  # noqa: F401  (re-exported)

#: the keys of one result, in order (those of the analysis before it moved into uca_model, plus "split")
KEYS = ("run", "split", "sigma_text_mean", "sigma_text_relative_spread", "sigma_image_mean",
        "sigma_image_relative_spread", "spearman_text_sigma_vs_attributes_mentioned",
        "spearman_text_sigma_vs_identities_fitted", "partial_spearman_text_sigma_vs_identities_fitted_given_mentioned",
        "image_sigma_occluded", "image_sigma_unoccluded", "occluded_images", "retrieval_by_text_sigma",
        "overall", "ceiling", "sub_galleries", "occlusion_test")


def analyse(run: str, split: str = "test") -> dict:
    """The summary of :func:`~uca_model.uncertainty.analyse_run` for ``run`` on ``split`` (:data:`KEYS`)."""
    t = analyse_run(run, split)
    out = {k: t[k] for k in KEYS}
    out["retrieval_by_text_sigma"] = {name: {k: round(h[k], 3) for k in ("R1", "mAP")}
                                      for name, h in t["retrieval_by_text_sigma"].items()}
    if t["ceiling"] is not None:
        out["ceiling"] = {k: t["ceiling"][k] for k in ("R1", "mAP", "identities")}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--split", default="test", choices=("val", "test"),
                    help="evaluation split (default test; use val to select models)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args(argv)
    results = [analyse(r, args.split) for r in args.runs]
    for r in results:
        print(f"{r['run']} ({r['split']}):")
        for k, v in r.items():
            if k not in ("run", "split"):
                print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
