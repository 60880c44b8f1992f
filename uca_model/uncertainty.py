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
  (expected < 0); mean image σ of occluded and unoccluded images (expected: occluded larger).
  On other data these entries are ``None`` and the σ deciles are still computed.

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

from .fitting import fitted_counts

__all__ = [
    "CALIBRATION_VERSION",
    "FITTED_EXACT",
    "sigma_of",
    "spearman",
    "sigma_percentile",
    "gallery_records",
    "fitted_counts",
    "fitted_bins",
    "split_annotations",
    "query_scores",
    "calibration_table",
    "analyse_run",
]

CALIBRATION_VERSION = 1  # bump when the keys or meaning of calibration_table's result change
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
        ``spearman_text_sigma_vs_attributes_mentioned``, ``image_sigma_occluded`` (``None`` also when no
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
            "spearman_text_sigma_vs_attributes_mentioned", "image_sigma_occluded", "image_sigma_unoccluded",
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
    if sig_v is not None and ann.get("occluded") is not None:
        occ = np.asarray(ann["occluded"], dtype=bool).reshape(-1)
        if len(occ) != G:
            raise ValueError(f"annotations hold {len(occ)} occlusion flags for {G} gallery images")
        out["image_sigma_occluded"] = float(sig_v[occ].mean()) if occ.any() else None
        out["image_sigma_unoccluded"] = float(sig_v[~occ].mean()) if (~occ).any() else None
        out["occluded_images"] = int(occ.sum())
    return out


# ----------------------------------------------------------------------------------------------
# a whole run
# ----------------------------------------------------------------------------------------------


def analyse_run(run: str | os.PathLike, split: str = "test", checkpoint: str = "best", device: str = "auto",
                bins: int = 10) -> dict[str, Any]:
    """Load a probabilistic run, embed ``split`` once and return its :func:`calibration_table`,
    with ``run``, ``split``, ``checkpoint``, ``score`` and ``metric`` added.

    Raises:
        ValueError: the run is a fixed-point baseline (no σ), or what the table raises.
    """
    from .runs import load_run
    from .evaluation import embed_images, embed_texts
    from .trainer import eval_score

    cfg, model, tok, ds, dev, _ = load_run(run, checkpoint, device)
    if not cfg.model.probabilistic:
        raise ValueError(f"{run} is a fixed-point baseline: no sigma to analyse")
    queries, gallery = ds.eval_split(split)
    bs = cfg.eval.batch_size
    img = embed_images(model, gallery, cfg.model.encoder.vision.image_size, bs, dev)
    txt = embed_texts(model, tok, [q.caption for q in queries], cfg.model.encoder.text.max_len, bs, dev)
    score, metric = eval_score(cfg), cfg.model.loss.metric
    table = calibration_table(sigma_of(txt["logvar"]), query_scores(txt, img, score, metric),
                              [q.pid for q in queries], [g.pid for g in gallery], sigma_image=sigma_of(img["logvar"]),
                              annotations=split_annotations(cfg.data.root, queries, gallery), bins=bins)
    return {"run": str(run), "split": split, "checkpoint": checkpoint, "score": score, "metric": metric, **table}
