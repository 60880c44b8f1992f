"""The float64 oracle of the contrast op: the logit matrix materialised in plain PyTorch.

Every fused backend is tested against :func:`contrast_reference` (forward and, through autograd,
every gradient); the ``reference`` backend runs it. The maths is in :mod:`uca_kernels.contrast`.
"""

from __future__ import annotations

import torch

from ._registry import SDM_EPS, out_dtype

__all__ = ["contrast_reference"]


def _loss_along_rows(S: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor, loss: str) -> torch.Tensor:
    """Row losses of a materialised logit matrix (NaN-free forward and backward)."""
    npos = pos.sum(1)
    has_pos = npos > 0
    has_valid = valid.any(1, keepdim=True)
    # Fill masked entries so that no -inf ever meets a 0 in the backward pass.
    S_valid = torch.where(has_valid, S.masked_fill(~valid, float("-inf")), 0.0)
    lse = torch.logsumexp(S_valid, 1)
    if loss == "infonce":
        S_pos = torch.where(has_pos[:, None], S.masked_fill(~pos, float("-inf")), 0.0)
        per_row = lse - torch.logsumexp(S_pos, 1)
    else:  # sdm
        logp = S.masked_fill(~valid, 0.0) - lse[:, None]
        p = logp.exp() * valid
        q = pos.to(S.dtype) / npos.clamp(min=1).to(S.dtype)[:, None]
        per_row = (p * (logp - torch.log(q + SDM_EPS))).sum(1)
    return torch.where(has_pos, per_row, torch.zeros_like(per_row))


def _pairwise_sigmoid(S: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """ℓ_ij = softplus(−y_ij S_ij) = −log σ(y_ij S_ij) on valid pairs, 0 elsewhere. ``logsigmoid``
    is exact for any finite input (``softplus`` switches to x past its threshold, ~1e-9 off)."""
    y = torch.where(pos, 1.0, -1.0).to(S.dtype)
    return torch.where(valid, -torch.nn.functional.logsigmoid(y * S), 0.0)


def contrast_reference(A, B, r, c, scale, bias, labels_a, labels_b, loss: str = "sdm", exclude_self: bool = False):
    """Materialised plain-PyTorch contrast (the oracle); autograd gives every gradient.

    Shapes as in :func:`contrast`; ``scale``/``bias`` are 0-d tensors. Computes in the input dtype
    (use float64 for the oracle) and returns ``(loss_rows[M], loss_cols[N])``.
    """
    t = A @ B.T + r[:, None] + c[None, :]
    S = scale * t + bias
    valid = torch.ones_like(S, dtype=torch.bool)
    if exclude_self:
        valid &= ~torch.eye(S.shape[0], S.shape[1], dtype=torch.bool, device=S.device)
    pos = (labels_a[:, None] == labels_b[None, :]) & valid
    if loss == "sigmoid":
        ell = _pairwise_sigmoid(S, pos, valid)
        rows, cols = ell.sum(1), ell.sum(0)
    else:
        rows = _loss_along_rows(S, pos, valid, loss)
        cols = _loss_along_rows(S.T, pos.T, valid.T, loss)
    odt = out_dtype(A.dtype)
    return rows.to(odt), cols.to(odt)
