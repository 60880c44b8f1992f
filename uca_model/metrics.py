r"""Text-to-image person retrieval metrics: R@1/5/10, mAP and mINP, chunked over queries.

Captions are the queries, images the gallery. For query :math:`q` with :math:`P_q` positives
(gallery images of the same identity) at 1-based ranks :math:`r_1 < \dots < r_{P_q}`:

- R@k: percentage of queries with a positive in the top k (:math:`r_1 \le k`), the CMC value at k;
- AP: :math:`\frac{1}{P_q}\sum_j j / r_j` (precision at each positive), mAP its mean;
- INP: :math:`P_q / r_{P_q}` (how far down the hardest positive is; Ye et al., "Deep Learning
  for Person Re-identification", TPAMI 2021), mINP its mean.

These are the values of IRRA's ``rank`` function (the common reference for CUHK-PEDES, ICFG-PEDES
and RSTPReid numbers), reported in percent.

**Ties.** With floating-point scores an exact tie is rare but real (duplicates, quantised models, a
collapsed embedding). The default rule is *pessimistic*: a positive tied with negatives ranks after
all of them, so ties can never flatter a model (a constant score gives the worst ranks, not the
gallery order). ``ties="optimistic"`` ranks tied positives first; the two bound the value any tie
order could give. Positives tied with each other take consecutive ranks (which one is first does
not change any metric).

**Memory.** Scores are consumed ``chunk_size`` queries at a time, and may be given as a callable
``scores(start, stop) -> [stop - start, G]`` (:class:`CosineScores`, :class:`GaussianScores`) so
that the full Q x G matrix never exists: a 100k x 100k evaluation needs O(chunk_size * G) memory.
Per chunk the work is O(G min(P, log P)) per query (P = positives of the query): the ranks of
the positives come from comparisons or a batched ``searchsorted`` against the positives' scores, with
no full sort and no Python loop over queries.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import numpy as np
import torch

__all__ = [
    "retrieval_metrics",
    "CosineScores",
    "GaussianScores",
    "cosine_scores",
    "gaussian_scores",
    "TIES",
]

TIES = ("pessimistic", "optimistic")
#: up to this many positives per query, ranks are counted by direct comparison, above by binary search
_COMPARE_MAX_P = 16
#: default bound on the elements of one [chunk, G] score block (about 60 bytes of work memory each)
CHUNK_ELEMENTS = 1 << 21

ScoreFn = Callable[[int, int], torch.Tensor]
Scores = Union[torch.Tensor, np.ndarray, ScoreFn]


def _pids(name: str, x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    elif not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(list(x))
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name} must be a 1-D sequence of integer ids: {e}") from None
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids, got dtype {x.dtype}")
    return x.detach().to("cpu", torch.int64)


def _rank_chunk(s: torch.Tensor, pos: torch.Tensor, ties: str, ks: Sequence[int]) -> torch.Tensor:
    """Per-query values for one chunk, from the ranks of the positives only (no full sort).

    Args:
        s: [c, G] scores (higher = better, no NaN). pos: [c, G] bool, True at the positives.

    Returns:
        [len(ks) + 2, c] float64 rows: hit@k for each k, AP, INP.

    With the positives' scores sorted ascending, ``v[0] <= ... <= v[P-1]``, the positive holding
    ascending slot ``j`` is the ``(P - j)``-th positive from the top, so (pessimistic ties)
    ``rank_j = #{negatives with score >= v_j} + (P - j)``; optimistic uses ``>``. The counts come
    from one comparison pass per positive slot (P small) or from one batched ``searchsorted`` of
    every score into ``v`` and a histogram (P large).
    """
    c, G = s.shape
    n_pos = pos.sum(1)  # [c]
    P = int(n_pos.max())
    inf = torch.tensor(float("inf"), dtype=s.dtype, device=s.device)
    # -- the positives' scores, ascending; padding (+inf) after them --
    v = torch.topk(torch.where(pos, s, inf), P, dim=1, largest=False, sorted=True).values  # [c, P]
    slot = torch.arange(P, device=s.device)
    valid = slot[None, :] < n_pos[:, None]  # [c, P]
    v = torch.where(valid, v, inf).contiguous()
    right = ties == "pessimistic"  # ">=" counts ties against the positive, ">" for it
    # -- every item scoring >= v_j (or > v_j) --
    if P <= _COMPARE_MAX_P:  # few positives: one vectorised comparison per positive slot
        ge = torch.ge if right else torch.gt
        n_all = torch.stack([ge(s, v[:, j:j + 1]).sum(1, dtype=torch.int64) for j in range(P)], 1)  # [c, P]
    else:  # many: bucket each score by how many v it reaches (binary search), then a histogram
        bucket = torch.searchsorted(v, s.contiguous(), right=right)  # [c, G] in 0..P
        offset = torch.arange(c, device=s.device)[:, None] * (P + 1)
        hist = torch.bincount((bucket + offset).flatten(), minlength=c * (P + 1)).view(c, P + 1)
        n_all = G - hist.cumsum(1)[:, :P]  # [c, P] items in buckets > j
    # -- the positives among them --
    # positives >= v_j (pessimistic) = P - #{< v_j}; > v_j (optimistic) = P - #{<= v_j}, where the
    # padding can only be counted when v_j = +inf, and then the clamp gives the right 0
    n_below = torch.searchsorted(v, v, right=not right)  # [c, P]
    n_posc = (n_pos[:, None] - n_below).clamp(min=0)
    rank = (n_all - n_posc + (n_pos[:, None] - slot[None, :])).double()  # [c, P]
    big = torch.tensor(float(G + 1), dtype=torch.float64, device=s.device)
    first = torch.where(valid, rank, big).min(1).values  # [c]
    last = torch.where(valid, rank, torch.zeros_like(big)).max(1).values  # [c]
    prec = (n_pos[:, None] - slot[None, :]).double() / rank  # precision at each positive
    npos = n_pos.double()
    ap = torch.where(valid, prec, torch.zeros_like(big)).sum(1) / npos
    inp = npos / last
    hits = [(first <= k).double() for k in ks]
    return torch.stack(hits + [ap, inp])


def retrieval_metrics(
    scores: Scores | None = None,
    *,
    distances: Scores | None = None,
    query_pids,
    gallery_pids,
    chunk_size: int | None = None,
    ties: str = "pessimistic",
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """R@k, mAP and mINP (in percent) of text-to-image retrieval.

    Args:
        scores: [Q, G] similarities (higher = better), as a tensor, a numpy array, or a callable
            ``scores(start, stop) -> [stop - start, G]`` evaluated chunk by chunk.
        distances: the same for distances (lower = better); give exactly one of the two.
        query_pids: [Q] identity of each query (caption).
        gallery_pids: [G] identity of each gallery image. Every query needs at least one positive.
        chunk_size: queries per chunk; default keeps a chunk at about 2M scores.
        ties: "pessimistic" (default) or "optimistic" (module docstring).
        ks: the cut-offs of R@k.

    Returns:
        ``{"R1", "R5", "R10", "mAP", "mINP"}`` (``"R{k}"`` for each k of ``ks``), floats in [0, 100].

    Raises:
        ValueError: both or neither of scores/distances, shape mismatch, NaN scores, a query whose
            identity is not in the gallery, bad ``ties``/``ks``/``chunk_size``.
    """
    if (scores is None) == (distances is None):
        raise ValueError("give exactly one of scores= (higher is better) or distances= (lower is better)")
    if ties not in TIES:
        raise ValueError(f"ties={ties!r} is not one of {', '.join(map(repr, TIES))}")
    ks = tuple(ks)
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive ints, got {ks!r}")
    src, name, sign = (scores, "scores", 1.0) if scores is not None else (distances, "distances", -1.0)
    q = _pids("query_pids", query_pids)
    g = _pids("gallery_pids", gallery_pids)
    Q, G = q.numel(), g.numel()
    if isinstance(src, np.ndarray):
        src = torch.from_numpy(src)
    if isinstance(src, torch.Tensor):
        if src.dim() != 2 or tuple(src.shape) != (Q, G):
            raise ValueError(f"{name} has shape {tuple(src.shape)}, expected [len(query_pids), len(gallery_pids)] "
                             f"= [{Q}, {G}]")
        if not (src.is_floating_point() or src.dtype in (torch.int32, torch.int64, torch.int16, torch.uint8)):
            raise TypeError(f"{name} must be a real-valued tensor, got dtype {src.dtype}")
        full = src
        fetch = lambda a, b: full[a:b]  # noqa: E731
    elif callable(src):
        fetch = src
    else:
        raise TypeError(f"{name} must be a tensor, a numpy array or a callable (start, stop) -> [stop-start, G]; "
                        f"got {type(src).__name__}")
    # every query needs a positive
    have = torch.isin(q, g)
    if not bool(have.all()):
        bad = torch.nonzero(~have).flatten()
        raise ValueError(f"{bad.numel()} of {Q} queries have no gallery image of their identity "
                         f"(query indices {bad[:5].tolist()}{'...' if bad.numel() > 5 else ''}, "
                         f"pids {q[bad[:5]].tolist()}); R@k, mAP and mINP are undefined for them")
    if chunk_size is None:
        chunk_size = max(1, CHUNK_ELEMENTS // G)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")

    per_query = torch.empty(len(ks) + 2, Q, dtype=torch.float64)  # summed once: chunking-independent
    with torch.no_grad():
        for a in range(0, Q, chunk_size):
            b = min(Q, a + chunk_size)
            s = fetch(a, b)
            if isinstance(s, np.ndarray):
                s = torch.from_numpy(s)
            if not isinstance(s, torch.Tensor) or tuple(s.shape) != (b - a, G):
                shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise ValueError(f"{name}({a}, {b}) returned {shape}, expected [{b - a}, {G}]")
            s = s.detach()
            if s.is_floating_point() and bool(torch.isnan(s).any()):
                rows = torch.nonzero(torch.isnan(s).any(1)).flatten()[:5] + a
                raise ValueError(f"{name} contains NaN (query rows {rows.tolist()})")
            s = s.double() if not s.is_floating_point() else s
            s = s if sign > 0 else -s
            gd = g.to(s.device)
            pos = q[a:b].to(s.device)[:, None] == gd[None, :]
            per_query[:, a:b] = _rank_chunk(s, pos, ties, ks).cpu()
    vals = (per_query.mean(1) * 100.0).tolist()
    out = {f"R{k}": vals[i] for i, k in enumerate(ks)}
    out["mAP"], out["mINP"] = vals[-2], vals[-1]
    return out


# ----------------------------------------------------------------------------------------------
# Score functions
# ----------------------------------------------------------------------------------------------


def _features(name: str, x: torch.Tensor, cols: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if cols is not None and x.shape[1] != cols:
        raise ValueError(f"{name} has {x.shape[1]} features, expected {cols}")
    return x.detach()


class CosineScores:
    """Cosine similarity of query and gallery features, one query block at a time.

    Args:
        query: [Q, D] features (text μ). gallery: [G, D] features (image μ).

    Calling ``(start, stop)`` returns [stop - start, G].
    """

    def __init__(self, query: torch.Tensor, gallery: torch.Tensor) -> None:
        query = _features("query", query)
        gallery = _features("gallery", gallery, query.shape[1])
        if query.device != gallery.device:
            raise ValueError(f"query is on {query.device}, gallery on {gallery.device}")
        self.query = torch.nn.functional.normalize(query, dim=1)
        self.gallery = torch.nn.functional.normalize(gallery, dim=1)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.query.shape[0], self.gallery.shape[0])

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        with torch.no_grad():
            return self.query[start:stop] @ self.gallery.T


class GaussianScores:
    """Negative Gaussian distance of every (query i, gallery j) pair, one query block at a time.

    Args:
        mu_q, logvar_q: [Q, D] query (text) Gaussians. mu_g, logvar_g: [G, D] gallery (image) ones.
        metric: "w2", "kl", "jeffreys", "csd" or "ce" (``uca_kernels.METRICS``).
        first: which side is the first argument of the distance: "query" gives −d(query_i, gallery_j)
            (``kl``: KL(query ‖ gallery)); "gallery" gives −d(gallery_j, query_i) (``kl``:
            KL(gallery ‖ query)) -- the direction of UCA's training logits, whose rows are images
            (:func:`uca_model.evaluation.score_fn` uses it). Only ``kl`` and ``ce`` are asymmetric.
        method: "direct" -- ``uca_kernels.gaussian_distance`` on [block, gallery block] tiles,
            the exact formulas (default); "gemm" -- the metric's feature maps
            (``uca_kernels.feature_maps``) and one matrix product per tile, much faster for large
            galleries, equal up to float rounding.
        max_elements: bound on block x gallery block x D (the direct formulas' temporaries).

    Calling ``(start, stop)`` returns [stop - start, G].
    """

    def __init__(self, mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_g: torch.Tensor, logvar_g: torch.Tensor,
                 metric: str = "w2", *, first: str = "query", method: str = "direct",
                 max_elements: int = 1 << 22) -> None:
        import uca_kernels

        if metric not in uca_kernels.METRICS:
            raise ValueError(f"metric={metric!r} is not one of {', '.join(map(repr, uca_kernels.METRICS))}")
        if first not in ("query", "gallery"):
            raise ValueError(f"first={first!r} is not 'query' or 'gallery'")
        if method not in ("direct", "gemm"):
            raise ValueError(f"method={method!r} is not 'direct' or 'gemm'")
        self.mu_q = _features("mu_q", mu_q)
        D = self.mu_q.shape[1]
        self.logvar_q = _features("logvar_q", logvar_q, D)
        self.mu_g = _features("mu_g", mu_g, D)
        self.logvar_g = _features("logvar_g", logvar_g, D)
        if self.logvar_q.shape[0] != self.mu_q.shape[0] or self.logvar_g.shape[0] != self.mu_g.shape[0]:
            raise ValueError("mu and logvar of one side must have the same number of rows")
        self.metric, self.first, self.method, self.max_elements = metric, first, method, int(max_elements)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.mu_q.shape[0], self.mu_g.shape[0])

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        import uca_kernels

        mq, lq = self.mu_q[start:stop], self.logvar_q[start:stop]
        n, G, D = mq.shape[0], self.mu_g.shape[0], self.mu_q.shape[1]
        out = torch.empty(n, G, dtype=mq.dtype, device=mq.device)
        if n == 0:
            return out
        width = D if self.method == "direct" else 1
        step = max(1, self.max_elements // max(1, n * width))
        with torch.no_grad():
            for a in range(0, G, step):
                mg, lg = self.mu_g[a:a + step], self.logvar_g[a:a + step]
                if self.first == "query":
                    if self.method == "direct":
                        d = uca_kernels.gaussian_distance(mq, lq, mg, lg, self.metric)
                    else:
                        A, B, r, c = uca_kernels.feature_maps(mq, lq, mg, lg, self.metric)
                        d = torch.addmm(r[:, None] + c[None, :], A, B.T)
                else:  # d(gallery_j, query_i), laid out [query, gallery]
                    if self.method == "direct":
                        d = uca_kernels.gaussian_distance(mg, lg, mq, lq, self.metric).T
                    else:
                        A, B, r, c = uca_kernels.feature_maps(mg, lg, mq, lq, self.metric)  # A: gallery rows
                        d = torch.addmm(c[:, None] + r[None, :], B, A.T)
                out[:, a:a + step] = -d
        return out


def _materialise(fn, chunk_size: int) -> torch.Tensor:
    Q, G = fn.shape
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return torch.cat([fn(a, min(Q, a + chunk_size)) for a in range(0, Q, chunk_size)])


def cosine_scores(query: torch.Tensor, gallery: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """[Q, G] cosine similarities of query [Q, D] and gallery [G, D] features (materialised)."""
    return _materialise(CosineScores(query, gallery), chunk_size)


def gaussian_scores(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_g: torch.Tensor, logvar_g: torch.Tensor,
                    metric: str = "w2", chunk_size: int = 256, *, first: str = "query",
                    method: str = "direct") -> torch.Tensor:
    """[Q, G] scores −d(query, gallery) (``first="gallery"``: −d(gallery, query)) from
    ``uca_kernels.gaussian_distance``, chunked over queries (``chunk_size`` per block) and gallery so
    no [Q, G, D] temporary exists. See :class:`GaussianScores`; for galleries too large to hold
    [Q, G], pass a :class:`GaussianScores` to :func:`retrieval_metrics`."""
    return _materialise(GaussianScores(mu_q, logvar_q, mu_g, logvar_g, metric, first=first, method=method),
                        chunk_size)
