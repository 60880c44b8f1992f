"""Cross-modal decoder of uncertainty-aware attribute-masking language reconstruction (UA-AMLR).

Queries are the *masked* text tokens: the text tower runs on the caption with its attribute words
masked, and the features at the masked positions ask the image what was there. Keys/values are
one sampled image point ``z = mu + sigma * eps`` (projected to the decoder width, with a learned
type embedding) followed by the image's patch tokens. Each block is cross-attention + MLP (pre-norm,
residual); a masked position's prediction depends only on its own query and its image, so the
queries of a caption are batched together and the K samples of an image are batched as B·K
sequences. The cross-entropy on the masked positions is averaged over all samples: the
reconstruction depends on -- and sends gradients into -- the image *distribution*, not only its mean.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import DecoderConfig

__all__ = ["ReconstructionDecoder"]


class _CrossBlock(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width))

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(kv)
        q = q + self.attn(self.norm_q(q), kv, kv, need_weights=False)[0]
        return q + self.mlp(self.norm_mlp(q))


class ReconstructionDecoder(nn.Module):
    """Args:
        cfg: decoder config.
        text_dim: width of the text tokens; image_dim: width of the patch tokens;
        point_dim: D of the sampled points; vocab_size: output classes.
    """

    def __init__(self, cfg: DecoderConfig, text_dim: int, image_dim: int, point_dim: int, vocab_size: int) -> None:
        super().__init__()
        w = cfg.width
        self.q_proj = nn.Linear(text_dim, w)
        self.patch_proj = nn.Linear(image_dim, w)
        self.point_proj = nn.Linear(point_dim, w)
        self.type_embed = nn.Parameter(torch.zeros(2, w))  # [point, patch]
        self.blocks = nn.ModuleList(_CrossBlock(w, cfg.num_heads, cfg.dropout) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(w)
        self.out = nn.Linear(w, vocab_size)

    def forward(self, text_tokens: torch.Tensor, points: torch.Tensor, patches: torch.Tensor,
                labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Mean cross-entropy over the masked positions and the samples.

        Args:
            text_tokens: [B, L, Ht] text-tower features of the masked captions.
            points: [B, K, D] sampled image points.
            patches: [B, P, Hv] image patch tokens.
            labels: [B, L] original ids at masked positions, ``ignore_index`` elsewhere.

        Returns:
            A scalar (0 with a gradient path when nothing is masked).
        """
        B, L, _ = text_tokens.shape
        K = points.shape[1]
        sel = labels != ignore_index  # [B, L]
        n_sel = sel.sum(1)  # [B]
        m = int(n_sel.max()) if B else 0
        if m == 0:
            return text_tokens.sum() * 0.0
        # -- gather each caption's masked positions to the front: [B, m] (padding slots ignored) --
        order = torch.argsort((~sel).to(torch.int8), dim=1, stable=True)[:, :m]  # masked first, in order
        valid = torch.arange(m, device=labels.device)[None, :] < n_sel[:, None]  # [B, m]
        q = self.q_proj(text_tokens.gather(1, order[..., None].expand(B, m, text_tokens.shape[2])))  # [B, m, w]
        target = labels.gather(1, order)  # [B, m]
        # -- memory: one sampled point + the patch tokens, per sample: [B*K, 1 + P, w] --
        mem_patch = self.patch_proj(patches) + self.type_embed[1]  # [B, P, w]
        mem_point = self.point_proj(points) + self.type_embed[0]  # [B, K, w]
        mem = torch.cat([mem_point.reshape(B * K, 1, -1), mem_patch.repeat_interleave(K, 0)], 1)
        h = q.repeat_interleave(K, 0)  # [B*K, m, w]
        for blk in self.blocks:
            h = blk(h, mem)
        keep = valid.repeat_interleave(K, 0)  # [B*K, m]
        logits = self.out(self.norm(h[keep]))  # [n, V]
        return F.cross_entropy(logits.float(), target.repeat_interleave(K, 0)[keep])
