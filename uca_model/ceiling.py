r"""The Bayes ceiling of SynthPedes: the best ranking any model can produce, and what it scores.

SynthPedes records every identity's attributes and what each caption mentions
(``synth_attributes.json``), so for each query caption the set of gallery identities it could
describe is known. A caption *fits* an identity when every attribute value it mentions equals the
identity's (captions only state true attributes, so the caption's own identity ``t`` always fits).
Nothing in a caption tells the fitting identities apart, so the oracle ranks first the images of
the identities fitting the caption, **grouped per identity, the identities in uniformly random
order**, then all other images. This module computes the *exact* expectation of R@1/5/10, mAP and
mINP of that oracle over its random order (no Monte Carlo).

The maths, for one caption of true identity ``t`` with ``P`` gallery images. Let ``F`` be the
fitting identities, ``m = |F| - 1`` the others, ``c_i`` the image count of other identity ``i``.
The images of ``t`` occupy ranks ``O + 1 .. O + P`` where the *offset* ``O`` is the total image
count of the identities placed before ``t``. In a uniformly random order of ``F`` the number ``s``
of identities before ``t`` is uniform on ``0..m`` and, given ``s``, which ones is uniform over the
``C(m, s)`` subsets of size ``s``, so

.. math::

    P(O = o) = \sum_{s=0}^{m} \frac{1}{m+1} \frac{N(s, o)}{C(m, s)},

with ``N(s, o)`` the number of ``s``-subsets of the others whose image counts sum to ``o``. Group
the others by image count, ``n_c`` of them with ``c`` images: choosing ``k_c`` of each size gives
``s = sum k_c``, ``o = sum c k_c`` in ``prod C(n_c, k_c)`` ways -- a multivariate hypergeometric
draw, so ``P(O)`` depends only on ``(n_c)_c``, which many captions share (results are cached by
``((c, n_c)..., P)``). Then, exactly:

* R@k (hit within the top ``k``): ``P(O < k)``;
* AP: the ``j``-th positive is at rank ``O + j``, so ``AP = (1/P) sum_{j=1..P} j / (O + j)``;
* INP (Ye et al. 2021): the last positive is at rank ``O + P``, so ``INP = P / (O + P)``;

each averaged over ``P(O = o)`` and then over the captions of the split (in percent, like
:func:`uca_model.metrics.retrieval_metrics`). ``mean_fitting_identities`` is the mean ``|F|``.

For reference the same figures are computed for a *random* ranking of the gallery (``G`` images,
every order equally likely), the floor no trained model should fall to: ``R@k = 1 - C(G-P, k) /
C(G, k)``; the ``i``-th positive is at rank ``n`` with probability ``C(n-1, i-1) C(G-n, P-i) /
C(G, P)``, which gives ``E[AP] = (1/P) sum_i sum_n (i/n) P(rank_i = n)`` and ``E[INP] = sum_n
(P/n) P(rank_P = n)``.

Caveats: this is the ceiling of *that* oracle, as the design defines it. A caption's wording
carries nothing beyond its mentions (pronouns follow the *mentioned* gender), but which facets get
mentioned depends slightly on the identity (worn glasses are mentioned more often than absent
ones), so a model could in principle order the fitting identities a little better than uniformly;
and a fixed order by image count can change the expected AP slightly. Both effects are small.

Entry points: :func:`bayes_ceiling` (from the content of ``synth_attributes.json``),
:func:`ceiling_from_root` (a dataset folder; ``None`` for data that is not SynthPedes),
:func:`fraction_of_ceiling` (a model's metrics as a percentage of the ceiling) and
:func:`ceiling_report` (both, per split, as stored in ``metrics.json``).
"""

from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .fitting import attribute_codes, fit_chunk, fits

__all__ = [
    "ceiling_summary",
    "CEILING_VERSION",
    "CEILING_KEYS",
    "FRACTION_KEYS",
    "bayes_ceiling",
    "ceiling_from_root",
    "fraction_of_ceiling",
    "ceiling_report",
    "offset_pmf",
    "oracle_metrics",
    "random_ranking_metrics",
]

CEILING_VERSION = 1  # bump when what bayes_ceiling computes changes (cards cache the result)
CEILING_KEYS = ("R1", "R5", "R10", "mAP", "mINP")
FRACTION_KEYS = CEILING_KEYS
_KS = (1, 5, 10)
_TENSOR_LIMIT = 200_000  # largest joint (k_c) grid summed directly; beyond it Gauss-Legendre quadrature


_LF = np.zeros(1)  # log(i!) for i = 0..len-1, grown on demand


def _lf(n: int) -> np.ndarray:
    """A table of ``log(i!)`` for (at least) ``i = 0..n``."""
    global _LF
    if len(_LF) <= n:
        size = max(n + 1, 2 * len(_LF))
        _LF = np.array([math.lgamma(i + 1.0) for i in range(size)])
    return _LF


def _log_comb(n: int | np.ndarray, k: int | np.ndarray, lf: np.ndarray) -> np.ndarray:
    return lf[n] - lf[k] - lf[np.subtract(n, k)]


def _groups(groups: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out = tuple(sorted((int(c), int(n)) for c, n in groups if n > 0))
    if any(c < 1 for c, _ in out) or len({c for c, _ in out}) != len(out):
        raise ValueError(f"groups must be (image count >= 1, identities) pairs with distinct counts, got {out}")
    return out


def offset_pmf(groups: Iterable[tuple[int, int]]) -> np.ndarray:
    """``P(O = o)`` for ``o = 0 .. sum(c * n)``: the image offset of the true identity.

    Args:
        groups: ``(c, n)`` pairs: ``n`` other fitting identities have ``c`` images each (distinct
            ``c >= 1``; pairs with ``n = 0`` are ignored).

    Returns:
        A float64 vector summing to 1.
    """
    groups = _groups(groups)
    m = sum(n for _, n in groups)
    o_max = sum(c * n for c, n in groups)
    if m == 0:
        return np.ones(1)
    lf = _lf(m)
    if math.prod(n + 1 for _, n in groups) <= _TENSOR_LIMIT:
        # the joint multivariate-hypergeometric grid over (k_c)
        logw = np.zeros(())
        s = np.zeros((), dtype=np.int64)
        o = np.zeros((), dtype=np.int64)
        for c, n in groups:
            k = np.arange(n + 1)
            logw = logw[..., None] + _log_comb(n, k, lf)
            s = s[..., None] + k
            o = o[..., None] + c * k
        p = np.exp(logw - _log_comb(m, s, lf)) / (m + 1)
        return np.bincount(o.ravel(), weights=p.ravel(), minlength=o_max + 1)
    return _pmf_quadrature(groups, m, o_max)


@lru_cache(maxsize=256)
def _gauss_legendre01(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [0, 1]."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    return (x + 1.0) / 2.0, w / 2.0


def _pmf_quadrature(groups: tuple[tuple[int, int], ...], m: int, o_max: int) -> np.ndarray:
    """``P(O = o)`` through the Beta integral ``1 / ((m+1) C(m, s)) = int_0^1 u^s (1-u)^(m-s) du``.

    Then ``P(O = o) = int_0^1 [y^o] prod_c (1 - u + u y^c)^(n_c) du``: given the position ``u`` of
    ``t`` each other identity precedes it independently with probability ``u``. The integrand is a
    polynomial of degree ``m`` in ``u``, so Gauss-Legendre with ``m // 2 + 1`` nodes is exact; per
    node the polynomial in ``y`` is a product of binomial pmfs on multiples of ``c`` (via FFT).
    """
    nodes = m // 2 + 1  # exact for degree 2 * nodes - 1 >= m
    u, w = _gauss_legendre01(nodes)
    nfft = 1 << o_max.bit_length()  # > o_max: no wrap-around
    lf = _lf(m)
    spec = np.ones((nodes, nfft // 2 + 1), dtype=np.complex128)
    for c, n in groups:
        k = np.arange(n + 1)
        logb = _log_comb(n, k, lf)[None, :] + k[None, :] * np.log(u)[:, None] + (n - k)[None, :] * np.log1p(-u)[:, None]
        poly = np.zeros((nodes, nfft))
        poly[:, c * k] = np.exp(logb)
        spec *= np.fft.rfft(poly, axis=1)
    pmf = w @ np.fft.irfft(spec, n=nfft, axis=1)[:, :o_max + 1]
    return np.clip(pmf, 0.0, None)


def _metrics_of_offset(pmf: np.ndarray, p: int) -> tuple[float, ...]:
    """Expected (hit@1, hit@5, hit@10, AP, INP) (fractions) given ``P(O)`` and ``p`` images of ``t``."""
    o = np.arange(len(pmf), dtype=np.float64)
    j = np.arange(1, p + 1, dtype=np.float64)
    ap = (j[None, :] / (o[:, None] + j[None, :])).mean(1)
    inp = p / (o + p)
    hits = [float(pmf[:k].sum()) for k in _KS]
    return (*hits, float(pmf @ ap), float(pmf @ inp))


def oracle_metrics(groups: Iterable[tuple[int, int]], p: int) -> dict[str, float]:
    """Expected R@1/5/10, mAP, mINP (percent) of the oracle for one caption whose identity has ``p``
    images, the other fitting identities given as ``(image count, how many)`` pairs."""
    return dict(zip(CEILING_KEYS, (100.0 * np.array(_metrics_of_offset(offset_pmf(groups), int(p)))).tolist()))


@lru_cache(maxsize=4096)
def _random_metrics(g: int, p: int) -> tuple[float, ...]:
    """Expected (hit@1, hit@5, hit@10, AP, INP) of a uniformly random order of ``g`` images, ``p`` positive."""
    if not 1 <= p <= g:
        raise ValueError(f"need 1 <= positives <= gallery, got {p} of {g}")
    lf = _lf(g)
    hits = []
    for k in _KS:
        miss = 0.0 if k > g - p else math.exp(_log_comb(g - p, k, lf) - _log_comb(g, k, lf))  # no positive in top k
        hits.append(1.0 - miss)
    ap, inp = 0.0, 0.0
    for i in range(1, p + 1):
        n = np.arange(i, g - p + i + 1)
        pr = np.exp(_log_comb(n - 1, np.full_like(n, i - 1), lf) + _log_comb(g - n, np.full_like(n, p - i), lf)
                    - _log_comb(g, np.array(p), lf))
        ap += float((pr * i / n).sum()) / p
        if i == p:
            inp = float((pr * p / n).sum())
    return (*hits, ap, inp)


def random_ranking_metrics(positives: Iterable[int], gallery: int) -> dict[str, float]:
    """Expected R@1/5/10, mAP, mINP (percent) of a random ranking; one entry of ``positives`` per query."""
    vals = np.array([_random_metrics(int(gallery), int(p)) for p in positives])
    return dict(zip(CEILING_KEYS, (100.0 * vals.mean(0)).tolist()))


def bayes_ceiling(
    fields: Mapping[str, Sequence[str]],
    identities: Sequence[Mapping[str, Any]],
    images: Sequence[Mapping[str, Any]],
    split: str,
) -> dict[str, Any]:
    """The expected metrics of the Bayes oracle on one split (see the module docstring).

    Args:
        fields: field name -> possible values (``synth_attributes.json["fields"]``).
        identities: ``{"id", "split", "attributes": {field: value}}`` of all splits.
        images: ``{"id", "mentions": [{field: value}, ...], ...}``, one per image, all splits; every
            mention dict is one caption (a query) and every image of the split is in the gallery.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        ``R1, R5, R10, mAP, mINP`` (percent), ``mean_fitting_identities`` (mean ``|F|``),
        ``queries``, ``gallery``, ``identities`` (counts), ``random`` (the same five metrics of a
        random ranking) and ``version`` (:data:`CEILING_VERSION`).

    Raises:
        ValueError: an unknown split or field value, or a caption fitting no identity of its split.
    """
    names = list(fields)
    ids = [d for d in identities if d["split"] == split]
    if not ids:
        raise ValueError(f"no identity is in split {split!r}")
    pos = {int(d["id"]): i for i, d in enumerate(ids)}
    split_of = {int(d["id"]): d["split"] for d in identities}
    codes = attribute_codes(fields, [{f: d["attributes"][f] for f in names} for d in ids],
                            lambda i: f"identity {ids[i]['id']}")
    n_img = np.zeros(len(ids), dtype=np.int64)
    wanted, owner = [], []
    for im in images:
        pid = int(im["id"])
        if pid not in split_of:
            raise ValueError(f"image {im.get('file_path', '?')} belongs to unknown identity {pid}")
        if split_of[pid] != split:
            continue
        n_img[pos[pid]] += 1
        for m in im["mentions"]:
            wanted.append(attribute_codes(fields, [m], lambda _: f"caption of image {im.get('file_path', '?')}")[0])
            owner.append(pos[pid])
    if not wanted:
        raise ValueError(f"split {split!r} has no captions")
    wanted_a, owner_a = np.stack(wanted), np.array(owner)
    sizes = np.unique(n_img[n_img > 0])
    # per caption: how many *other* fitting identities have each image count (chunked: C x N x F)
    counts = np.empty((len(wanted_a), len(sizes)), dtype=np.int64)
    chunk = fit_chunk(len(ids), len(names))
    for a in range(0, len(wanted_a), chunk):
        w = wanted_a[a:a + chunk]
        fit = fits(w, codes)  # [c, N]
        own = fit[np.arange(len(w)), owner_a[a:a + chunk]]
        if not own.all():
            bad = a + int(np.flatnonzero(~own)[0])
            raise ValueError(f"caption {bad} of split {split!r} does not fit its own identity (a mention is false)")
        fit[np.arange(len(w)), owner_a[a:a + chunk]] = False
        counts[a:a + chunk] = np.stack([(fit & (n_img == c)[None, :]).sum(1) for c in sizes], 1)
    p_own = n_img[owner_a]
    keys = np.concatenate([counts, p_own[:, None]], 1)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)  # sorted: equal groups are adjacent
    per_key = np.empty((len(uniq), len(CEILING_KEYS)))
    last, pmf = None, None
    for r, row in enumerate(uniq):
        g = _groups(zip(sizes.tolist(), row[:-1].tolist()))
        if g != last:
            last, pmf = g, offset_pmf(g)
        per_key[r] = _metrics_of_offset(pmf, int(row[-1]))
    vals = 100.0 * per_key[np.asarray(inverse).reshape(-1)].mean(0)
    out: dict[str, Any] = dict(zip(CEILING_KEYS, vals.tolist()))
    out["mean_fitting_identities"] = float(1 + counts.sum(1).mean())
    out["queries"], out["gallery"], out["identities"] = len(wanted_a), int(n_img.sum()), len(ids)
    out["random"] = random_ranking_metrics(p_own.tolist(), int(n_img.sum()))
    out["version"] = CEILING_VERSION
    return out


def ceiling_from_root(root: str | os.PathLike, split: str, *, use_card: bool = True) -> dict[str, Any] | None:
    """The Bayes ceiling of ``split`` of the SynthPedes folder ``root``; ``None`` for other data.

    ``None`` when ``root`` has no ``synth_attributes.json`` (a real dataset). The value cached in
    ``dataset_card.json`` is used when it was computed by this version (``use_card``); otherwise it
    is computed from ``synth_attributes.json`` (a second or so for the 'large' test split).
    """
    root = Path(root)
    attrs = root / "synth_attributes.json"
    if not attrs.is_file():
        return None
    if use_card:
        try:
            cached = json.loads((root / "dataset_card.json").read_text(encoding="utf-8")).get("ceiling", {}).get(split)
        except (OSError, json.JSONDecodeError, AttributeError):
            cached = None
        if isinstance(cached, dict) and cached.get("version") == CEILING_VERSION:
            return cached
    meta = json.loads(attrs.read_text(encoding="utf-8"))
    return bayes_ceiling(meta["fields"], meta["identities"], meta["images"], split)


def ceiling_summary(ceiling: Mapping[str, Any]) -> str:
    """``R@1 …, mAP … (a random ranking: R@1 …, mAP …)`` of a :func:`bayes_ceiling` result, for printing."""
    r = ceiling["random"]
    return (f"R@1 {ceiling['R1']:.1f}, mAP {ceiling['mAP']:.1f} "
            f"(a random ranking: R@1 {r['R1']:.1f}, mAP {r['mAP']:.1f})")


def fraction_of_ceiling(metrics: Mapping[str, Any], ceiling: Mapping[str, Any]) -> dict[str, float]:
    """``100 * metric / ceiling`` for R1, R5, R10, mAP and mINP (those of them ``metrics`` has): a model's
    result as a percentage of the ceiling, NaN where the ceiling is 0."""
    return {k: 100.0 * float(metrics[k]) / float(ceiling[k]) if ceiling[k] > 0 else float("nan")
            for k in FRACTION_KEYS if k in metrics}


def ceiling_report(root: str | os.PathLike, metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``{"ceiling": {split: ...}, "fraction_of_ceiling": {split: ...}}`` for the splits of ``metrics``.

    Args:
        root: the dataset folder.
        metrics: split -> the model's metrics on it (``R1``, ``R5``, ``R10``, ``mAP`` ...).

    Returns:
        The two entries, or ``{}`` when ``root`` is not SynthPedes.
    """
    ceil, frac = {}, {}
    for split, m in metrics.items():
        c = ceiling_from_root(root, split)
        if c is None:
            return {}
        ceil[split] = c
        frac[split] = fraction_of_ceiling(m, c)
    return {"ceiling": ceil, "fraction_of_ceiling": frac}
