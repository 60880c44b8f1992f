"""Text-to-image retrieval evaluation of a model: encode the gallery and the queries, rank, score.

Captions are the queries and the split's images the gallery (docs/model.md). A probabilistic model
ranks by the Gaussian distance of ``loss.metric`` (``eval.score = distance``, the default for
``uca``) or by the cosine of the means (``cosine``); the baseline by cosine. Metrics come from
:func:`uca_model.metrics.retrieval_metrics` (R@1/5/10, mAP, mINP in percent), chunked, without a
Python loop over queries.

**Direction.** The score of (caption i, image j) is −d(N_image_j, N_text_i), image first: exactly
the distance of the training logit of that pair (DCL's rows are images, ``uca_model.model``), so for
the asymmetric ``kl`` both training and ranking use KL(N_image ‖ N_text).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch

from .data import GalleryImageDataset, GalleryItem, Query
from .metrics import CosineScores, GaussianScores, retrieval_metrics
from .text import encode

__all__ = ["embed_images", "embed_texts", "score_fn", "evaluate_split", "METRIC_KEYS"]

METRIC_KEYS = ("R1", "R5", "R10", "mAP", "mINP")


def _autocast(device: torch.device, amp: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else nullcontext()


@torch.no_grad()
def embed_images(model, gallery: Sequence[GalleryItem], image_size, batch_size: int, device, amp: bool = False,
                 num_workers: int = 0) -> dict[str, torch.Tensor]:
    """``{"mu" [G, D], "logvar" [G, D] | None}`` of the gallery images (float32, on ``device``)."""
    ds = GalleryImageDataset(gallery, tuple(image_size))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    mus, lvs = [], []
    for images, _ in loader:
        with _autocast(device, amp):
            out = model.encode_image(images.to(device, non_blocking=True))
        mus.append(out["mu"].float())
        if out["logvar"] is not None:
            lvs.append(out["logvar"].float())
    return {"mu": torch.cat(mus), "logvar": torch.cat(lvs) if lvs else None}


@torch.no_grad()
def embed_texts(model, tokenizer, captions: Sequence[str], max_len: int, batch_size: int, device,
                amp: bool = False) -> dict[str, torch.Tensor]:
    """``{"mu" [Q, D], "logvar" [Q, D] | None}`` of the captions (float32, on ``device``)."""
    mus, lvs = [], []
    for a in range(0, len(captions), batch_size):
        enc = encode(tokenizer, list(captions[a:a + batch_size]), max_len)
        with _autocast(device, amp):
            out = model.encode_text(enc["input_ids"].to(device), enc["attention_mask"].to(device))
        mus.append(out["mu"].float())
        if out["logvar"] is not None:
            lvs.append(out["logvar"].float())
    return {"mu": torch.cat(mus), "logvar": torch.cat(lvs) if lvs else None}


def score_fn(txt: dict, img: dict, score: str, metric: str):
    """A chunked score callable for :func:`retrieval_metrics` (higher = better): ``(start, stop)``
    gives [stop - start, G] for captions ``start:stop``. ``distance``: −d(image_j, caption_i), the
    training logit's pair distance (image first; module docstring); ``cosine``: cos(μ_t, μ_v)."""
    if score == "distance":
        if txt["logvar"] is None or img["logvar"] is None:
            raise ValueError("distance ranking needs a probabilistic model (logvar); use score='cosine'")
        return GaussianScores(txt["mu"], txt["logvar"], img["mu"], img["logvar"], metric, first="gallery",
                              method="gemm")
    return CosineScores(txt["mu"], img["mu"])


@torch.no_grad()
def evaluate_split(model, tokenizer, queries: Sequence[Query], gallery: Sequence[GalleryItem], *, score: str,
                   metric: str, image_size, max_len: int, batch_size: int, device, amp: bool = False,
                   embeddings: dict | None = None) -> dict:
    """Retrieval metrics of one split.

    Args:
        model: a :class:`~uca_model.model.UCAModel` (put in eval mode here, restored afterwards).
        score: "distance" or "cosine" (the primary ranking); a probabilistic model also gets the
            other one under ``"alt"``.
        metric: Gaussian metric for distance ranking.
        embeddings: if a dict is given, ``"image"`` and ``"text"`` are set in it to the
            :func:`embed_images` / :func:`embed_texts` results the metrics come from, so a caller can
            analyse them (``uca eval``'s calibration table) without embedding the split twice.

    Returns:
        ``{"R1", "R5", "R10", "mAP", "mINP", "score", "alt": {"score", ...}, "sigma_image",
        "sigma_text", "num_queries", "gallery_size"}`` (sigma entries only for probabilistic models).
    """
    was_training = model.training
    model.eval()
    try:
        img = embed_images(model, gallery, image_size, batch_size, device, amp)
        txt = embed_texts(model, tokenizer, [q.caption for q in queries], max_len, batch_size, device, amp)
    finally:
        model.train(was_training)
    if embeddings is not None:
        embeddings["image"], embeddings["text"] = img, txt
    qp = torch.tensor([q.pid for q in queries])
    gp = torch.tensor([g.pid for g in gallery])
    out: dict = dict(retrieval_metrics(score_fn(txt, img, score, metric), query_pids=qp, gallery_pids=gp))
    out["score"] = score
    if img["logvar"] is not None:
        other = "cosine" if score == "distance" else "distance"
        alt = retrieval_metrics(score_fn(txt, img, other, metric), query_pids=qp, gallery_pids=gp)
        out["alt"] = {"score": other, **alt}
        out["sigma_image"] = float((0.5 * img["logvar"]).exp().mean())
        out["sigma_text"] = float((0.5 * txt["logvar"]).exp().mean())
    out["num_queries"], out["gallery_size"] = len(queries), len(gallery)
    return out
