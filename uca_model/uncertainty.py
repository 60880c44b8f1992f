r"""Does the learned σ mean anything? A calibration table of a probabilistic run on one split.

Every embedding is a Gaussian; its **σ** here is one number per caption or image, the mean over
the ``D`` dimensions of ``exp(logvar / 2)`` (:func:`sigma_of`; the same value ``evaluate_split``
averages into ``sigma_text`` / ``sigma_image`` and ``uca search`` prints). A σ that means what it
should is larger for captions that say less and retrieve worse, so the table holds:

* **σ deciles** (any dataset): the queries sorted by text σ and cut into ``bins`` groups of equal
  size (``numpy.array_split`` of the stable order, so sizes differ by at most one), decile 1 the
  most certain; per decile the σ range, the query count, R@1 and mAP (percent, from
  :func:`uca_model.metrics.retrieval_metrics` on that decile's queries against the whole gallery).
  The certain and uncertain halves are the same with two groups. A σ that tracks difficulty gives
  an R@1 falling from decile 1 to 10, i.e. a negative ``spearman_sigma_decile_vs_R1``.
* **SynthPedes only** (``synth_attributes.json`` records what every caption mentions and which
  images are occluded, so these are exact): per caption the number of *identities fitted*, how
  many identities of the gallery have every attribute value the caption mentions (the rule of the
  Bayes ceiling, :mod:`uca_model.ceiling`; the caption's own identity always fits, so it is >= 1);
  mean and std of text σ per fitted count, in the bins of :func:`fitted_bins` (exact counts 1 to
  4, then doubling ranges 5-8, 9-16, 17-32, ...); Spearman's ρ of text σ with the fitted count
  (expected > 0: a vaguer caption fits more people) and with the number of attributes mentioned
  (expected < 0); the *partial* Spearman ρ of text σ with the fitted count given the number of
  attributes mentioned (:func:`partial_spearman`: what σ knows about a caption's ambiguity beyond
  counting its attribute words, which alone predicts the fitted count well); mean image σ of
  occluded and unoccluded images (expected: occluded larger).
  On other data these entries are ``None`` and the σ deciles are still computed.

:func:`analyse_run` adds two SynthPedes checks that need the model: the **paired occlusion test**
(:func:`occlusion_test`: every gallery image encoded as it is and with a drawn occluder over a body
part its captions mention; per image the ratio of the two σ) and **sub-galleries**
(:func:`sub_gallery_metrics`: the retrieval metrics on random ``ids_per_gallery``-identity
sub-galleries of the split beside the Bayes ceiling of each, since a ceiling depends on the gallery
size), both beside the full gallery's metrics and ceiling.

Identities fitted are counted among the identities *in the gallery* of the split, which for the
card's val and test splits are all identities of that split and for a val split held out of
train (``data.val_from_train``) are the held-out ones: always the people a query competes with.

Entry points: :func:`calibration_table` (from σ and the scores a caller already has: ``uca eval``
passes the embeddings ``evaluate_split`` computed, nothing is embedded twice),
:func:`split_annotations` (the SynthPedes entries of one split, ``None`` for real data),
:func:`query_scores` (scores of any subset of queries from the embeddings, never Q x G at once),
:func:`analyse_run` (load a run, embed once, both: ``python -m benchmarks.uncertainty``) and
:func:`sigma_percentile` (where one σ falls among the split's captions: ``uca search``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Union

import numpy as np
import torch

from .ceiling import CEILING_KEYS
from .fitting import fitted_counts

__all__ = [
    "CALIBRATION_VERSION",
    "FITTED_EXACT",
    "sigma_of",
    "spearman",
    "sigma_percentile",
    "partial_spearman",
    "occlusion_bands",
    "occlusion_test",
    "sub_gallery_metrics",
    "run_sub_galleries",
    "embed_split",
    "gallery_records",
    "fitted_counts",
    "fitted_bins",
    "split_annotations",
    "query_scores",
    "calibration_table",
    "analyse_run",
]

CALIBRATION_VERSION = 2  # bump when the keys or meaning of calibration_table's result change
FITTED_EXACT = 4  # identities-fitted counts up to this one get a bin each; above, doubling ranges 5-8, 9-16, ...

#: what :func:`calibration_table` accepts as scores: a [Q, G] matrix, or ``select(index)`` giving the
#: scores of the queries ``index`` in any form ``retrieval_metrics`` takes (a matrix or a chunk callable)
ScoreSource = Union[torch.Tensor, np.ndarray, Callable[[torch.Tensor], Any]]


# ----------------------------------------------------------------------------------------------
# small statistics
# ----------------------------------------------------------------------------------------------


def sigma_of(logvar: torch.Tensor) -> np.ndarray:
    """``[N]`` float64: the σ of each row of ``logvar`` [N, D], the mean over D of exp(logvar / 2)."""
    return (0.5 * logvar.detach().float()).exp().mean(1).double().cpu().numpy()


def _ranks(x: np.ndarray) -> np.ndarray:
    """0-based ranks of ``x``, ties given their average rank."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv.reshape(-1), weights=r)
    return (sums / counts)[inv.reshape(-1)]


def spearman(a, b) -> float:
    """Spearman's ρ of two equally long sequences (average ranks for ties); NaN when either is constant."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"spearman needs two 1-D sequences of one length, got shapes {a.shape} and {b.shape}")
    if len(a) < 2:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def partial_spearman(a, b, given) -> float:
    """Partial Spearman ρ of ``a`` and ``b`` given ``given``: the Pearson partial correlation of the
    three rank vectors, (ρ_ab − ρ_ag ρ_bg) / √((1 − ρ_ag²)(1 − ρ_bg²)); NaN when undefined."""
    r_ab, r_ag, r_bg = spearman(a, b), spearman(a, given), spearman(b, given)
    den = math.sqrt(max(0.0, (1 - r_ag ** 2) * (1 - r_bg ** 2)))
    if not all(math.isfinite(v) for v in (r_ab, r_ag, r_bg)) or den == 0:
        return float("nan")
    return float((r_ab - r_ag * r_bg) / den)


def sigma_percentile(value: float, sigmas) -> float:
    """Percentage of ``sigmas`` below ``value`` (ties count half): how much more ambiguous a caption of
    text σ ``value`` is than the captions whose σ are ``sigmas``."""
    s = np.asarray(sigmas, float).reshape(-1)
    if s.size == 0:
        raise ValueError("sigma_percentile needs at least one reference sigma")
    return float(100.0 * ((s < value).sum() + 0.5 * (s == value).sum()) / s.size)


def _finite(x) -> float | None:
    """``float(x)``, or ``None`` for NaN / inf (JSON has no NaN)."""
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _spread(s: np.ndarray | None) -> dict[str, float | None]:
    if s is None or s.size == 0:
        return {"mean": None, "std": None, "relative_spread": None}
    m, sd = float(s.mean()), float(s.std())
    return {"mean": m, "std": sd, "relative_spread": sd / m if m > 0 else None}


# ----------------------------------------------------------------------------------------------
# SynthPedes: identities fitted, attributes mentioned, occlusion
# ----------------------------------------------------------------------------------------------


def gallery_records(root: str | os.PathLike, attrs: Mapping[str, Any], gallery) -> list[dict]:
    """The ``synth_attributes.json`` image record of every gallery image, in gallery order (its
    ``mentions`` are the captions of that image, in query order).

    Raises:
        ValueError: a gallery image has no record (the data changed since the attributes were written).
    """
    imgs = Path(root) / "imgs"
    by_path = {im["file_path"]: im for im in attrs["images"]}
    out = []
    for g in gallery:
        p = Path(g.image_path)
        try:
            rel = p.relative_to(imgs).as_posix()
        except ValueError:
            rel = p.resolve().relative_to(imgs.resolve()).as_posix()
        if rel not in by_path:
            raise ValueError(f"{g.image_path} has no record in {Path(root) / 'synth_attributes.json'}")
        out.append(by_path[rel])
    return out


def fitted_bins(fitted, exact: int = FITTED_EXACT) -> list[tuple[int, int]]:
    """The non-empty ``(lo, hi)`` bins (inclusive) of identities-fitted counts: ``(k, k)`` for
    ``k = 1..exact``, then ``(exact + 1, 2 exact)``, ``(2 exact + 1, 4 exact)``, ... doubling."""
    f = np.asarray(fitted, dtype=np.int64)
    if f.size == 0:
        return []
    bins, top = [], int(f.max())
    lo = max(0, int(f.min()))  # 0 only for captions that fit nobody (impossible for true mentions)
    for k in range(min(lo, 1), exact + 1):
        bins.append((k, k))
    hi = exact
    while hi < top:
        bins.append((hi + 1, 2 * hi))
        hi *= 2
    return [(a, b) for a, b in bins if ((f >= a) & (f <= b)).any()]


def split_annotations(root: str | os.PathLike, queries, gallery) -> dict[str, np.ndarray] | None:
    """The SynthPedes facts of one evaluation split, aligned with ``queries`` and ``gallery``.

    Args:
        root: the dataset folder.
        queries, gallery: ``PedesDataset.eval_split(...)`` of that folder.

    Returns:
        ``None`` when ``root`` has no ``synth_attributes.json`` (a real dataset); else
        ``{"fitted": [Q] int, "mentioned": [Q] int, "occluded": [G] bool}``: per caption the number of
        gallery identities it fits and of attributes it mentions, per image whether an occluder hides
        part of the person.

    Raises:
        ValueError: the recorded captions do not match the dataset's (the data changed).
    """
    path = Path(root) / "synth_attributes.json"
    if not path.is_file():
        return None
    attrs = json.loads(path.read_text(encoding="utf-8"))
    records = gallery_records(root, attrs, gallery)
    mentions = [m for im in records for m in im["mentions"]]
    if len(mentions) != len(queries):
        raise ValueError(f"{path} lists {len(mentions)} captions for these images, the dataset {len(queries)}: "
                         "the data changed since the attributes were written")
    by_id = {int(d["id"]): d["attributes"] for d in attrs["identities"]}
    pids = sorted({int(g.pid) for g in gallery})
    missing = [p for p in pids if p not in by_id]
    if missing:
        raise ValueError(f"{path} has no attributes for identities {missing[:5]}")
    fitted = fitted_counts(attrs["fields"], [by_id[p] for p in pids], mentions)
    if (fitted < 1).any():
        raise ValueError(f"caption {int(np.flatnonzero(fitted < 1)[0])} fits no identity of the gallery (a false "
                         f"mention in {path})")
    return {"fitted": fitted, "mentioned": np.array([len(m) for m in mentions], dtype=np.int64),
            "occluded": np.array([im.get("occluder") is not None for im in records], dtype=bool)}


# ----------------------------------------------------------------------------------------------
# the calibration table
# ----------------------------------------------------------------------------------------------


def query_scores(txt: Mapping[str, torch.Tensor], img: Mapping[str, torch.Tensor], score: str,
                 metric: str) -> Callable[[torch.Tensor], Any]:
    """``select(index)``: the score callable of :func:`uca_model.evaluation.score_fn` for the queries
    ``index`` only (chunked: a subset's Q' x G scores are never all in memory at once).

    Args:
        txt, img: ``{"mu" [Q|G, D], "logvar" [Q|G, D] | None}`` from ``embed_texts`` / ``embed_images``.
        score, metric: the ranking (``"distance"`` / ``"cosine"``) and the Gaussian metric.
    """
    from .evaluation import score_fn

    def select(index: torch.Tensor):
        idx = torch.as_tensor(index, dtype=torch.long).to(txt["mu"].device)
        sub = {"mu": txt["mu"][idx], "logvar": None if txt["logvar"] is None else txt["logvar"][idx]}
        return score_fn(sub, img, score, metric)

    return select


def _select(scores: ScoreSource, index: np.ndarray):
    if isinstance(scores, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(scores[index]))
    if isinstance(scores, torch.Tensor):
        return scores[torch.as_tensor(index, dtype=torch.long, device=scores.device)]
    if callable(scores):
        return scores(torch.as_tensor(index, dtype=torch.long))
    raise TypeError(f"scores must be a [Q, G] tensor / array or a callable select(index), got {type(scores).__name__}")


def _retrieval(scores: ScoreSource, index: np.ndarray, qp: np.ndarray, gp: np.ndarray) -> dict[str, float]:
    from .metrics import retrieval_metrics

    m = retrieval_metrics(_select(scores, index), query_pids=qp[index], gallery_pids=gp, ks=(1,))
    return {"R1": m["R1"], "mAP": m["mAP"]}


def calibration_table(sigma_text, scores: ScoreSource, query_pids, gallery_pids, *, sigma_image=None,
                      annotations: Mapping[str, np.ndarray] | None = None, bins: int = 10) -> dict[str, Any]:
    """Retrieval by text σ decile, and (SynthPedes) text σ by identities fitted (module docstring).

    Args:
        sigma_text: [Q] σ of each query caption (:func:`sigma_of` of the text logvar).
        scores: [Q, G] scores (higher = better), or ``select(index)`` returning the scores of the
            queries ``index`` as a tensor or a ``(start, stop)`` chunk callable (:func:`query_scores`).
        query_pids: [Q] identity of each query. gallery_pids: [G] identity of each gallery image.
        sigma_image: [G] σ of each gallery image (optional: its mean, spread and the occlusion split).
        annotations: :func:`split_annotations` of the split, or ``None`` (the SynthPedes entries are ``None``).
        bins: number of σ groups (10: deciles; fewer when there are fewer queries).

    Returns:
        A JSON-ready dict (NaN correlations as ``None``):
        ``version``, ``queries``, ``gallery``;
        ``sigma_text_mean`` / ``_std`` / ``_relative_spread`` (std / mean), the same for ``sigma_image``;
        ``overall`` ``{"R1", "mAP"}``;
        ``by_sigma_decile`` ``[{"decile", "sigma_min", "sigma_max", "queries", "R1", "mAP"}]``, decile 1 the
        most certain; ``spearman_sigma_decile_vs_R1``;
        ``retrieval_by_text_sigma`` ``{"certain_half" | "uncertain_half": {"queries", "R1", "mAP"}}``;
        ``synthpedes`` (bool) and, ``None`` unless it is true: ``by_identities_fitted``
        ``[{"fitted_min", "fitted_max", "label", "captions", "sigma_mean", "sigma_std"}]``,
        ``mean_identities_fitted``, ``spearman_text_sigma_vs_identities_fitted``,
        ``spearman_text_sigma_vs_attributes_mentioned``,
        ``partial_spearman_text_sigma_vs_identities_fitted_given_mentioned``, ``image_sigma_occluded`` (``None`` also when no
        image is occluded), ``image_sigma_unoccluded``, ``occluded_images``.

    Raises:
        ValueError: mismatched lengths, NaN σ, ``bins < 1``, or what ``retrieval_metrics`` rejects.
    """
    sig = np.asarray(sigma_text, dtype=np.float64).reshape(-1)
    qp = np.asarray(query_pids, dtype=np.int64).reshape(-1)
    gp = np.asarray(gallery_pids, dtype=np.int64).reshape(-1)
    sig_v = None if sigma_image is None else np.asarray(sigma_image, dtype=np.float64).reshape(-1)
    Q, G = len(qp), len(gp)
    if len(sig) != Q or Q == 0:
        raise ValueError(f"sigma_text has {len(sig)} values for {Q} queries")
    if sig_v is not None and len(sig_v) != G:
        raise ValueError(f"sigma_image has {len(sig_v)} values for {G} gallery images")
    if np.isnan(sig).any():
        raise ValueError("sigma_text contains NaN")
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")

    order = np.argsort(sig, kind="stable")  # most certain first
    deciles = []
    for d, idx in enumerate(np.array_split(order, min(bins, Q)), 1):
        m = _retrieval(scores, idx, qp, gp)
        deciles.append({"decile": d, "sigma_min": float(sig[idx].min()), "sigma_max": float(sig[idx].max()),
                        "queries": int(len(idx)), **m})
    overall = {k: sum(r[k] * r["queries"] for r in deciles) / Q for k in ("R1", "mAP")}  # means: exact
    halves = {}
    if Q >= 2:
        half = Q // 2  # for odd Q the uncertain half has the extra query
        for name, idx in (("certain_half", order[:half]), ("uncertain_half", order[half:])):
            halves[name] = {"queries": int(len(idx)), **_retrieval(scores, idx, qp, gp)}
    st, sv = _spread(sig), _spread(sig_v)
    out: dict[str, Any] = {
        "version": CALIBRATION_VERSION, "queries": Q, "gallery": G,
        "sigma_text_mean": st["mean"], "sigma_text_std": st["std"], "sigma_text_relative_spread": st["relative_spread"],
        "sigma_image_mean": sv["mean"], "sigma_image_std": sv["std"],
        "sigma_image_relative_spread": sv["relative_spread"],
        "overall": overall,
        "by_sigma_decile": deciles,
        "spearman_sigma_decile_vs_R1": _finite(spearman([r["decile"] for r in deciles], [r["R1"] for r in deciles])),
        "retrieval_by_text_sigma": halves,
        "synthpedes": annotations is not None,
    }
    out.update(_synth_entries(sig, sig_v, annotations, Q, G))
    return out


def _synth_entries(sig: np.ndarray, sig_v: np.ndarray | None, ann: Mapping[str, np.ndarray] | None, Q: int,
                   G: int) -> dict[str, Any]:
    keys = ("by_identities_fitted", "mean_identities_fitted", "spearman_text_sigma_vs_identities_fitted",
            "spearman_text_sigma_vs_attributes_mentioned",
            "partial_spearman_text_sigma_vs_identities_fitted_given_mentioned", "image_sigma_occluded", "image_sigma_unoccluded",
            "occluded_images")
    out: dict[str, Any] = dict.fromkeys(keys)
    if ann is None:
        return out
    fitted = np.asarray(ann["fitted"], dtype=np.int64).reshape(-1)
    mentioned = np.asarray(ann["mentioned"], dtype=np.int64).reshape(-1)
    if len(fitted) != Q or len(mentioned) != Q:
        raise ValueError(f"annotations hold {len(fitted)} fitted / {len(mentioned)} mentioned counts for {Q} queries")
    rows = []
    for lo, hi in fitted_bins(fitted):
        s = sig[(fitted >= lo) & (fitted <= hi)]
        rows.append({"fitted_min": lo, "fitted_max": hi, "label": str(lo) if lo == hi else f"{lo}-{hi}",
                     "captions": int(s.size), "sigma_mean": float(s.mean()), "sigma_std": float(s.std())})
    out["by_identities_fitted"] = rows
    out["mean_identities_fitted"] = float(fitted.mean())
    out["spearman_text_sigma_vs_identities_fitted"] = _finite(spearman(sig, fitted))
    out["spearman_text_sigma_vs_attributes_mentioned"] = _finite(spearman(sig, mentioned))
    out["partial_spearman_text_sigma_vs_identities_fitted_given_mentioned"] = _finite(
        partial_spearman(sig, fitted, mentioned))
    if sig_v is not None and ann.get("occluded") is not None:
        occ = np.asarray(ann["occluded"], dtype=bool).reshape(-1)
        if len(occ) != G:
            raise ValueError(f"annotations hold {len(occ)} occlusion flags for {G} gallery images")
        out["image_sigma_occluded"] = float(sig_v[occ].mean()) if occ.any() else None
        out["image_sigma_unoccluded"] = float(sig_v[~occ].mean()) if (~occ).any() else None
        out["occluded_images"] = int(occ.sum())
    return out


# ----------------------------------------------------------------------------------------------
# checks that need the model: the paired occlusion test, sub-galleries
# ----------------------------------------------------------------------------------------------

#: where the drawn figure's parts lie, as (top, bottom) fractions of the image height: generous bands
#: around the renderer's body proportions (uca_model.synth.render: shoulders at 0.175, hips at 0.5 and
#: ankles at 0.94 of a figure that fills 0.74-0.93 of the height at a random vertical offset)
PART_BANDS: dict[str, tuple[float, float]] = {
    "hair_length": (0.0, 0.26), "hair_colour": (0.0, 0.26), "hat_type": (0.0, 0.22), "hat_colour": (0.0, 0.22),
    "glasses": (0.04, 0.26), "upper_type": (0.2, 0.52), "upper_colour": (0.2, 0.52), "bag_type": (0.25, 0.6),
    "bag_colour": (0.25, 0.6), "lower_type": (0.48, 0.86), "lower_colour": (0.48, 0.86),
    "shoe_colour": (0.8, 1.0),
}


def occlusion_bands(records, seed: int = 0) -> list[tuple[str, tuple[float, float]]]:
    """Per gallery record (``synth_attributes.json`` image), one field its captions mention that has a
    place on the body (:data:`PART_BANDS`; gender has none), drawn with ``seed``, and its band."""
    rng = np.random.default_rng([seed, 11])
    out = []
    for im in records:
        fields = sorted({f for m in im["mentions"] for f, v in m.items() if f in PART_BANDS and v != "none"})
        if not fields:
            fields = ["upper_colour"]  # every figure wears an upper garment
        f = fields[int(rng.integers(len(fields)))]
        out.append((f, PART_BANDS[f]))
    return out


def occlusion_test(model, gallery, records, image_size, batch_size: int, device, seed: int = 0) -> dict[str, Any]:
    """The paired occlusion test: each gallery image and its copy with a drawn occluder over a part its
    captions mention (:func:`occlusion_bands`, :func:`uca_model.data.occlude_batch`); per image the
    ratio σ(occluded copy) / σ(image) of :func:`sigma_of`.

    Returns:
        ``{"images", "ratio_mean", "ratio_median", "share_ratio_ge_1.1", "share_ratio_gt_1", "by_part":
        {field: {"images", "ratio_median"}}, "seed"}``.
    """
    from .data import GalleryImageDataset, occlude_batch

    bands = occlusion_bands(records, seed)
    ds = GalleryImageDataset(gallery, tuple(image_size))
    g = torch.Generator().manual_seed(int(seed))
    clean, occl = [], []
    with torch.no_grad():
        for a in range(0, len(ds), batch_size):
            x = torch.stack([ds[i][0] for i in range(a, min(len(ds), a + batch_size))])
            xo = occlude_batch(x, g, bands=[b for _, b in bands[a:a + len(x)]])
            clean.append(sigma_of(model.encode_image(x.to(device))["logvar"]))
            occl.append(sigma_of(model.encode_image(xo.to(device))["logvar"]))
    ratio = np.concatenate(occl) / np.concatenate(clean)
    parts: dict[str, list[float]] = {}
    for (f, _), r in zip(bands, ratio):
        parts.setdefault(f, []).append(float(r))
    return {"images": int(len(ratio)), "ratio_mean": float(ratio.mean()), "ratio_median": float(np.median(ratio)),
            "share_ratio_ge_1.1": float((ratio >= 1.1).mean()), "share_ratio_gt_1": float((ratio > 1.0).mean()),
            "by_part": {f: {"images": len(v), "ratio_median": float(np.median(v))} for f, v in sorted(parts.items())},
            "seed": int(seed)}


#: the metrics :func:`sub_gallery_metrics` reports, each beside its ceiling: every metric the ceiling has
SUB_GALLERY_METRICS = CEILING_KEYS


def sub_gallery_metrics(scores: ScoreSource, query_pids, gallery_pids, attrs: Mapping[str, Any] | None, split: str,
                        *, ids_per_gallery: int = 100, draws: int = 10, seed: int = 0) -> dict[str, Any] | None:
    """Retrieval on ``draws`` random sub-galleries of ``ids_per_gallery`` identities of the split (their
    captions as queries, their images as gallery) beside each one's Bayes ceiling; ``None`` when the
    split has no more identities than that (the full gallery is the only one) or ``attrs`` is None.

    Returns:
        ``{"ids_per_gallery", "draws", "seed"}`` and, for each metric ``k`` of ``R1, R5, R10, mAP, mINP``:
        ``k`` (the mean over draws), ``ceiling_k`` (the mean ceiling) and ``k_fraction_of_ceiling``
        (the ratio of the means, percent).
    """
    from .ceiling import bayes_ceiling, fraction_of_ceiling
    from .metrics import retrieval_metrics

    qp = np.asarray(query_pids, dtype=np.int64)
    gp = np.asarray(gallery_pids, dtype=np.int64)
    ids = np.unique(gp)
    if attrs is None or len(ids) <= ids_per_gallery:
        return None
    rng = np.random.default_rng([seed, 13])
    model_rows, ceiling_rows = [], []
    for _ in range(draws):
        keep = np.sort(rng.choice(ids, ids_per_gallery, replace=False))
        qi, gi = np.flatnonzero(np.isin(qp, keep)), np.flatnonzero(np.isin(gp, keep))
        sub = _select(scores, qi)
        sub = sub(0, len(qi)) if callable(sub) else sub
        m = retrieval_metrics(torch.as_tensor(sub)[:, torch.as_tensor(gi)], query_pids=qp[qi],
                              gallery_pids=gp[gi], ks=(1, 5, 10))
        kept = set(keep.tolist())
        c = bayes_ceiling(attrs["fields"], [d for d in attrs["identities"] if int(d["id"]) in kept],
                          [im for im in attrs["images"] if int(im["id"]) in kept], split)
        model_rows.append([m[k] for k in SUB_GALLERY_METRICS])
        ceiling_rows.append([c[k] for k in SUB_GALLERY_METRICS])
    model = dict(zip(SUB_GALLERY_METRICS, np.mean(model_rows, 0).tolist()))
    ceil = dict(zip(SUB_GALLERY_METRICS, np.mean(ceiling_rows, 0).tolist()))
    frac = fraction_of_ceiling(model, ceil)
    out: dict[str, Any] = {"ids_per_gallery": ids_per_gallery, "draws": draws, "seed": seed}
    for k in SUB_GALLERY_METRICS:
        out.update({k: model[k], f"ceiling_{k}": ceil[k], f"{k}_fraction_of_ceiling": frac[k]})
    return out


# ----------------------------------------------------------------------------------------------
# a whole run
# ----------------------------------------------------------------------------------------------


def embed_split(cfg, model, tokenizer, dataset, device, split: str):
    """``(queries, gallery, txt, img)`` of one split of a loaded run (:func:`uca_model.runs.load_run`):
    the captions and the gallery images embedded once, ``{"mu", "logvar"}`` each."""
    from .evaluation import embed_images, embed_texts

    queries, gallery = dataset.eval_split(split)
    bs = cfg.eval.batch_size
    img = embed_images(model, gallery, cfg.model.encoder.vision.image_size, bs, device)
    txt = embed_texts(model, tokenizer, [q.caption for q in queries], cfg.model.encoder.text.max_len, bs, device)
    return queries, gallery, txt, img


def run_sub_galleries(run: str | os.PathLike, split: str = "test", checkpoint: str = "best", device: str = "auto",
                      **kw) -> dict[str, Any] | None:
    """:func:`sub_gallery_metrics` of any run (fixed-point baselines too), ranked as the run ranks
    (``eval.score``); ``None`` on real data or a split of <= ``ids_per_gallery`` identities."""
    from .runs import load_run
    from .trainer import eval_score

    cfg, model, tok, ds, dev, _ = load_run(run, checkpoint, device)
    path = Path(cfg.data.root) / "synth_attributes.json"
    if not path.is_file():
        return None
    queries, gallery, txt, img = embed_split(cfg, model, tok, ds, dev, split)
    select = query_scores(txt, img, eval_score(cfg), cfg.model.loss.metric)
    attrs = json.loads(path.read_text(encoding="utf-8"))
    return sub_gallery_metrics(select, [q.pid for q in queries], [g.pid for g in gallery], attrs, split, **kw)


def analyse_run(run: str | os.PathLike, split: str = "test", checkpoint: str = "best", device: str = "auto",
                bins: int = 10) -> dict[str, Any]:
    """Load a probabilistic run, embed ``split`` once and return its :func:`calibration_table`,
    with ``run``, ``split``, ``checkpoint``, ``score`` and ``metric`` added, and on SynthPedes
    ``ceiling`` (the split's Bayes ceiling), ``occlusion_test`` (:func:`occlusion_test`) and
    ``sub_galleries`` (:func:`sub_gallery_metrics`, ``None`` when the split has <= 100 identities).

    Raises:
        ValueError: the run is a fixed-point baseline (no σ), or what the table raises.
    """
    from .runs import load_run
    from .trainer import eval_score

    cfg, model, tok, ds, dev, _ = load_run(run, checkpoint, device)
    if not cfg.model.probabilistic:
        raise ValueError(f"{run} is a fixed-point baseline: no sigma to analyse")
    queries, gallery, txt, img = embed_split(cfg, model, tok, ds, dev, split)
    score, metric = eval_score(cfg), cfg.model.loss.metric
    select = query_scores(txt, img, score, metric)
    qp, gp = [q.pid for q in queries], [g.pid for g in gallery]
    table = calibration_table(sigma_of(txt["logvar"]), select, qp, gp, sigma_image=sigma_of(img["logvar"]),
                              annotations=split_annotations(cfg.data.root, queries, gallery), bins=bins)
    out = {"run": str(run), "split": split, "checkpoint": checkpoint, "score": score, "metric": metric, **table,
           "ceiling": None, "occlusion_test": None, "sub_galleries": None}
    path = Path(cfg.data.root) / "synth_attributes.json"
    if path.is_file():
        from .ceiling import ceiling_from_root

        attrs = json.loads(path.read_text(encoding="utf-8"))
        out["ceiling"] = ceiling_from_root(cfg.data.root, split)
        out["occlusion_test"] = occlusion_test(model, gallery, gallery_records(cfg.data.root, attrs, gallery),
                                               cfg.model.encoder.vision.image_size, cfg.eval.batch_size, dev)
        out["sub_galleries"] = sub_gallery_metrics(select, qp, gp, attrs, split)
    return out
