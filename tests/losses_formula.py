"""Float64 materialised formulas of every loss module, written from their definitions (not from the
library's op), shared by the single-process and the two-process tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SDM_EPS = 1e-8


def directions(S: torch.Tensor, la: torch.Tensor, lb: torch.Tensor, loss: str, exclude_self: bool = False):
    """``(rows [M], cols [N])`` of ``loss`` on the logits S [M, N] with identities la, lb."""
    M, N = S.shape
    valid = torch.ones(M, N, dtype=torch.bool)
    if exclude_self:
        k = min(M, N)
        valid[torch.arange(k), torch.arange(k)] = False
    pos = (la[:, None] == lb[None, :]) & valid

    def one(S, pos, valid):
        if loss == "sigmoid":
            y = pos.to(S.dtype) * 2 - 1
            return (F.softplus(-y * S) * valid).sum(1)
        lse = torch.logsumexp(S.masked_fill(~valid, float("-inf")), 1)
        n = pos.sum(1)
        if loss == "infonce":
            out = lse - torch.logsumexp(S.masked_fill(~pos, float("-inf")), 1)
        else:  # sdm
            logp = S - lse[:, None]
            q = pos.to(S.dtype) / n.clamp_min(1)[:, None].to(S.dtype)
            out = (logp.exp() * (logp - torch.log(q + SDM_EPS))).masked_fill(~valid, 0.0).sum(1)
        return torch.where(n > 0, out, torch.zeros_like(out))

    return one(S, pos, valid), one(S.T, pos.T, valid.T)


def term(S, la, lb, loss, exclude_self=False):
    """The library's ``reduction="mean"``: mean rows + mean columns; sigmoid Σ pairs / M."""
    rows, cols = directions(S, la, lb, loss, exclude_self)
    return rows.sum() / S.shape[0] if loss == "sigmoid" else rows.mean() + cols.mean()


def clip_loss(img, txt, scale, labels=None, loss="infonce"):
    """open_clip's ClipLoss (mean of the two cross-entropy directions), multi-positive with labels."""
    lab = torch.arange(img.shape[0]) if labels is None else labels
    return term(scale * img @ txt.T, lab, lab, loss) / 2


def siglip_loss(img, txt, scale, bias, labels=None):
    """open_clip's SigLipLoss: −Σ log σ(y S) / B."""
    lab = torch.arange(img.shape[0]) if labels is None else labels
    S = scale * img @ txt.T + bias
    y = (lab[:, None] == lab[None, :]).to(S.dtype) * 2 - 1
    return -F.logsigmoid(y * S).sum() / img.shape[0]


def gaussian_w2(mu_a, lv_a, mu_b, lv_b):
    s_a, s_b = (0.5 * lv_a).exp(), (0.5 * lv_b).exp()
    return ((mu_a[:, None] - mu_b[None]).square() + (s_a[:, None] - s_b[None]).square()).sum(-1)


def gaussian_csd(mu_a, lv_a, mu_b, lv_b):
    return ((mu_a[:, None] - mu_b[None]).square() + lv_a.exp()[:, None] + lv_b.exp()[None]).sum(-1)


DISTANCES = {"w2": gaussian_w2, "csd": gaussian_csd}


def dcl(mu_v, lv_v, mu_t, lv_t, labels, metric, loss, scale, bias):
    lab = torch.arange(mu_v.shape[0]) if labels is None else labels
    return term(-scale * DISTANCES[metric](mu_v, lv_v, mu_t, lv_t) + bias, lab, lab, loss)


def pcl(mu_v, lv_v, mu_t, lv_t, labels, eps_v, eps_t, similarity, loss, scale, bias):
    """{"inter", "intra_image", "intra_text"} of point contrast on the given noise."""
    K = eps_v.shape[1]
    lab = (torch.arange(mu_v.shape[0]) if labels is None else labels).repeat_interleave(K)
    zv = (mu_v[:, None] + (0.5 * lv_v).exp()[:, None] * eps_v).flatten(0, 1)
    zt = (mu_t[:, None] + (0.5 * lv_t).exp()[:, None] * eps_t).flatten(0, 1)

    def logits(a, b):
        if similarity == "cosine":
            return scale * F.normalize(a, dim=1) @ F.normalize(b, dim=1).T + bias
        return -scale * (a[:, None] - b[None]).square().sum(-1) + bias

    return {"inter": term(logits(zv, zt), lab, lab, loss),
            "intra_image": term(logits(zv, zv), lab, lab, loss, exclude_self=True),
            "intra_text": term(logits(zt, zt), lab, lab, loss, exclude_self=True)}


def prior(mu, lv):
    return (0.5 * (lv.exp() + mu.square() - 1 - lv).sum(1)).mean()
