"""Cross-modal decoder of uncertainty-aware attribute-masking language reconstruction (UA-AMLR).

The text tower runs on the caption with its attribute words masked; the decoder reads *all* of that
caption's tokens (projected to the decoder width) and reconstructs the masked ones from the image.
As in IRRA's cross-modal transformer, the caption's tokens attend to each other, so a masked colour
word sees the garment word after it (a causal CLIP text tower alone cannot): each block is, pre-norm
with residuals,

    h = h + SelfAttn(LN(h))              over the caption's tokens, padding keys masked out
    h = h + CrossAttn(LN(h), LN(mem))    mem = [one sampled image point, the image's patch tokens]
    h = h + MLP(LN(h))

The memory is one sampled image point ``z = mu + sigma * eps`` (projected to the decoder width, with a
learned type embedding) followed by the patch tokens (their own type embedding); the K samples of an
image are batched as B·K sequences (each caption repeated per sample). The cross-entropy on the
masked positions is averaged over all samples: the reconstruction depends on -- and sends gradients
into -- the image *distribution*, not only its mean.

Work saved without changing the result: trailing columns that are padding in every caption are
dropped; the first block's self-attention (identical for the K copies of a caption) runs once per
caption before the repeat; the last block computes only the masked positions (their self-attention
still reads every token), and the vocabulary projection runs on masked positions only. Padding
positions never reach a real one: they are masked as keys, and every other operation is per token.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import DecoderConfig

__all__ = ["ReconstructionDecoder"]


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """[N, L, w] -> [N, n, L, w / n]."""
    N, L, w = x.shape
    return x.view(N, L, n, w // n).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """[N, n, L, d] -> [N, L, n·d]."""
    N, n, L, d = x.shape
    return x.transpose(1, 2).reshape(N, L, n * d)


class _Block(nn.Module):
    """Self-attention over the caption + cross-attention to [point, patches] + MLP (pre-norm)."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm_self = nn.LayerNorm(width)
        self.q_self = nn.Linear(width, width)
        self.kv_self = nn.Linear(width, 2 * width)
        self.out_self = nn.Linear(width, width)
        self.norm_cross = nn.LayerNorm(width)
        self.norm_mem = nn.LayerNorm(width)
        self.q_cross = nn.Linear(width, width)
        self.kv_cross = nn.Linear(width, 2 * width)
        self.out_cross = nn.Linear(width, width)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def _attend(self, q, k, v, mask=None) -> torch.Tensor:
        n = self.heads
        o = F.scaled_dot_product_attention(_heads(q, n), _heads(k, n), _heads(v, n), attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return _merge(o)

    def self_attend(self, h: torch.Tensor, key_mask: torch.Tensor | None, index: torch.Tensor | None = None):
        """``h`` [N, L, w]; ``key_mask`` [N, 1, 1, L] bool (True = a real token) or None.
        ``index`` [N, m]: compute only these query positions (returns [N, m, w]); keys are all L."""
        x = self.norm_self(h)
        if index is not None:
            h = h.gather(1, index[..., None].expand(-1, -1, h.shape[2]))
            xq = x.gather(1, index[..., None].expand(-1, -1, x.shape[2]))
        else:
            xq = x
        k, v = self.kv_self(x).chunk(2, dim=-1)
        return h + self.drop(self.out_self(self._attend(self.q_self(xq), k, v, key_mask)))

    def cross_mlp(self, h: torch.Tensor, point: torch.Tensor, patches: torch.Tensor, K: int) -> torch.Tensor:
        """``h`` [B·K, l, w]; ``point`` [B·K, 1, w] (one sample per sequence); ``patches`` [B, P, w]
        (shared by an image's K sequences: normalised and projected once, then repeated)."""
        kv = torch.cat([self.kv_cross(self.norm_mem(point)),
                        self.kv_cross(self.norm_mem(patches)).repeat_interleave(K, 0)], 1)  # [B·K, 1 + P, 2w]
        k, v = kv.chunk(2, dim=-1)
        h = h + self.drop(self.out_cross(self._attend(self.q_cross(self.norm_cross(h)), k, v)))
        return h + self.drop(self.mlp(self.norm_mlp(h)))


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
        self.blocks = nn.ModuleList(_Block(w, cfg.num_heads, cfg.dropout) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(w)
        self.out = nn.Linear(w, vocab_size)

    def forward(self, text_tokens: torch.Tensor, points: torch.Tensor, patches: torch.Tensor,
                labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                ignore_index: int = -100) -> torch.Tensor:
        """Mean cross-entropy over the masked positions and the samples.

        Args:
            text_tokens: [B, L, Ht] text-tower features of the masked captions.
            points: [B, K, D] sampled image points.
            patches: [B, P, Hv] image patch tokens.
            labels: [B, L] original ids at masked positions, ``ignore_index`` elsewhere.
            attention_mask: [B, L], nonzero on real tokens (None: every token is real). Padding
                tokens are never attended to and never change the loss.

        Returns:
            A scalar (0 with a gradient path to every input and parameter when nothing is masked).
        """
        B, L, _ = text_tokens.shape
        K = points.shape[1]
        sel = labels != ignore_index  # [B, L]
        n_sel = sel.sum(1)  # [B]
        m = int(n_sel.max()) if B else 0
        if m == 0:
            zero = text_tokens.sum() + points.sum() + patches.sum() + sum(p.sum() for p in self.parameters())
            return zero * 0.0
        real = torch.ones_like(sel) if attention_mask is None else attention_mask.bool()
        # -- drop the trailing columns that are padding (and unlabelled) in every caption --
        used = int(torch.nonzero((real | sel).any(0)).max()) + 1
        text_tokens, sel, real, labels = text_tokens[:, :used], sel[:, :used], real[:, :used], labels[:, :used]
        # -- each caption's masked positions gathered to the front: [B, m] (padding slots ignored) --
        order = torch.argsort((~sel).to(torch.int8), dim=1, stable=True)[:, :m]  # masked first, in order
        valid = torch.arange(m, device=labels.device)[None, :] < n_sel[:, None]  # [B, m]
        target = labels.gather(1, order)  # [B, m]
        key_mask = real[:, None, None, :]  # [B, 1, 1, L]
        # -- memory: one sampled point per sequence [B·K, 1, w] and the shared patch tokens [B, P, w] --
        mem_point = (self.point_proj(points) + self.type_embed[0]).reshape(B * K, 1, -1)
        mem_patch = self.patch_proj(patches) + self.type_embed[1]
        h = self.q_proj(text_tokens)  # [B, L, w]
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            if i == 0:  # the K copies of a caption are identical until the first cross-attention
                h = blk.self_attend(h, key_mask, order if i == last else None).repeat_interleave(K, 0)
                key_mask, order_k = key_mask.repeat_interleave(K, 0), order.repeat_interleave(K, 0)
            else:
                h = blk.self_attend(h, key_mask, order_k if i == last else None)
            h = blk.cross_mlp(h, mem_point, mem_patch, K)  # the last block: [B·K, m, w]
        keep = valid.repeat_interleave(K, 0)  # [B·K, m]
        logits = self.out(self.norm(h[keep]))  # [n, V]
        return F.cross_entropy(logits.float(), target.repeat_interleave(K, 0)[keep])
