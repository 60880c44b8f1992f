"""Probabilistic embedding heads: a diagonal Gaussian N(mu, diag exp(logvar)) per input.

``mu`` is a linear map of the global token or of the masked mean of all tokens (optionally put on
the unit sphere). ``logvar`` is a
LayerNorm + linear map of the global token or of the masked mean of all tokens, softly bounded to
``[min_logvar, max_logvar]``; its bias starts at ``init_logvar`` and its weight at zero, so every
input starts with the same small sigma and the heads learn where to be uncertain. The baseline
(fixed points) uses the same ``mu`` path without a ``logvar`` layer. With ``fixed_logvar`` set,
every input gets that logvar and nothing about it is learned (the ``UCA-nosigma`` control).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import HeadConfig

__all__ = ["ProbabilisticHead"]


class ProbabilisticHead(nn.Module):
    """``forward(glob [B, H], tokens [B, T, H], mask [B, T] | None) -> (mu [B, D], logvar [B, D] | None)``.

    Args:
        cfg: the head config.
        in_dim: width H of the tower's tokens.
        probabilistic: build the ``logvar`` branch (False: fixed-point baseline, logvar is None).
        init_proj: optional [D, H] matrix to initialise ``mu`` (a pretrained CLIP projection).
    """

    def __init__(self, cfg: HeadConfig, in_dim: int, probabilistic: bool = True,
                 init_proj: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.mu = nn.Linear(in_dim, cfg.embed_dim, bias=False)
        nn.init.normal_(self.mu.weight, std=in_dim ** -0.5)

        if init_proj is not None:
            if tuple(init_proj.shape) != (cfg.embed_dim, in_dim):
                raise ValueError(f"model.head.embed_dim={cfg.embed_dim} does not match the pretrained projection "
                                 f"{tuple(init_proj.shape)} (use embed_dim={init_proj.shape[0]})")
            with torch.no_grad():
                self.mu.weight.copy_(init_proj)
        self.probabilistic = probabilistic
        self.learned_logvar = probabilistic and cfg.fixed_logvar is None
        if self.learned_logvar:
            self.norm = nn.LayerNorm(in_dim)
            self.logvar = nn.Linear(in_dim, cfg.embed_dim)
            nn.init.zeros_(self.logvar.weight)
            lo, hi = cfg.min_logvar, cfg.max_logvar
            # inverse of the soft bound below, so the initial output is exactly init_logvar
            u = (cfg.init_logvar - lo) / (hi - lo)
            nn.init.constant_(self.logvar.bias, float(torch.logit(torch.tensor(u))))

    def forward(self, glob: torch.Tensor, tokens: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        pooled = None
        if self.cfg.mu_source == "tokens" or (self.learned_logvar and self.cfg.logvar_source == "tokens"):
            if tokens is None:
                raise ValueError("pooling over tokens needs the token features")
            if mask is None:
                pooled = tokens.mean(1)
            else:
                w = mask.to(tokens.dtype).unsqueeze(-1)
                pooled = (tokens * w).sum(1) / w.sum(1).clamp(min=1.0)
        mu = self.mu(pooled if self.cfg.mu_source == "tokens" else glob)
        if self.cfg.normalize_mu:
            mu = F.normalize(mu, dim=-1)
        if not self.probabilistic:
            return mu, None
        if not self.learned_logvar:
            return mu, torch.full_like(mu, float(self.cfg.fixed_logvar))
        raw = self.logvar(self.norm(pooled if self.cfg.logvar_source == "tokens" else glob))
        lo, hi = self.cfg.min_logvar, self.cfg.max_logvar
        logvar = lo + (hi - lo) * torch.sigmoid(raw)  # soft bound: never below lo or above hi
        return mu, logvar
