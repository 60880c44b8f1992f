"""Image and text towers: small from-scratch networks for the CPU, or ``transformers`` CLIP.

Each preset of :class:`~uca_model.config.EncoderConfig` is a builder registered in
:data:`ENCODERS` (``@register_encoder("name")``); adding an encoder is one more registered builder.

- ``cnn-bigru`` (the CPU default): a residual CNN image tower and a bidirectional GRU text tower
  trained from scratch. On small synthetic pedestrians this learns far faster than a
  randomly-initialised ViT: convolutions see colour and local shape from the first step, and the
  image's height is kept (horizontal stripes) so "red top" and "red shorts" differ;
- ``tiny``: small CLIP vision/text transformers with random initialisation, sized by the config;
- ``clip-vit-b16``: the towers of a local pretrained CLIP ViT-B/16 folder (IRRA-like: 384×128
  images with the 14×14 position embeddings resized to the 24×8 patch grid once, 77 text tokens,
  the token embedding grown by the mask token). A missing folder is a clear error.

Both towers return all tokens: the vision tower ``[B, 1 + P, H]`` after CLIP's post-LayerNorm
(token 0 is the class token = the global token), the text tower ``[B, L, H]`` after the final
LayerNorm plus the global token taken at each caption's end token (the last attended position).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .config import EncoderConfig

__all__ = ["VisionTower", "TextTower", "ConvVisionTower", "GRUTextTower", "ENCODERS", "register_encoder",
           "build_encoders", "resize_position_embedding", "PretrainedCLIPError"]


class PretrainedCLIPError(FileNotFoundError):
    """The local pretrained CLIP folder is missing or unusable."""


def resize_position_embedding(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize ViT position embeddings ``[1 + n*n, H]`` (class token first, square grid) to
    ``[1 + gh*gw, H]`` by bicubic interpolation of the patch part (the class position is kept)."""
    cls_pos, patch_pos = pos[:1], pos[1:]
    n = int(round(math.sqrt(patch_pos.shape[0])))
    if n * n != patch_pos.shape[0]:
        raise ValueError(f"position embedding has {patch_pos.shape[0]} patch positions, not a square grid")
    gh, gw = grid
    if (gh, gw) == (n, n):
        return pos.clone()
    grid_pos = patch_pos.reshape(1, n, n, -1).permute(0, 3, 1, 2).float()
    grid_pos = F.interpolate(grid_pos, size=(gh, gw), mode="bicubic", align_corners=False)
    patch_pos = grid_pos.permute(0, 2, 3, 1).reshape(gh * gw, -1).to(pos.dtype)
    return torch.cat([cls_pos, patch_pos], 0)


class _RectEmbeddings(nn.Module):
    """CLIP vision embeddings for a rectangular (H, W) input with one learned position per patch."""

    def __init__(self, src: nn.Module, image_size: tuple[int, int], patch_size: int) -> None:
        super().__init__()
        self.image_size = tuple(image_size)
        self.patch_size = patch_size
        self.grid = (image_size[0] // patch_size, image_size[1] // patch_size)
        self.class_embedding = src.class_embedding
        self.patch_embedding = src.patch_embedding
        pos = resize_position_embedding(src.position_embedding.weight.detach(), self.grid)
        self.position_embedding = nn.Parameter(pos)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        B, _, H, W = pixel_values.shape
        if (H, W) != self.image_size:
            raise ValueError(f"image batch is {H}x{W}, the vision tower expects {self.image_size[0]}x{self.image_size[1]}")
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # [B, H', gh, gw]
        x = x.flatten(2).transpose(1, 2)  # [B, P, H']
        cls = self.class_embedding.expand(B, 1, -1).to(x.dtype)
        return torch.cat([cls, x], 1) + self.position_embedding.to(x.dtype)


class VisionTower(nn.Module):
    """``forward(pixels [B, 3, H, W]) -> tokens [B, 1 + P, hidden]`` (token 0 = global)."""

    def __init__(self, clip_vision, image_size: tuple[int, int]) -> None:
        super().__init__()
        cfg = clip_vision.config
        self.hidden_size = cfg.hidden_size
        self.patch_size = cfg.patch_size
        if any(v % cfg.patch_size for v in image_size):
            raise ValueError(f"image_size={tuple(image_size)} is not a multiple of the patch size {cfg.patch_size}")
        clip_vision.embeddings = _RectEmbeddings(clip_vision.embeddings, image_size, cfg.patch_size)
        self.clip = clip_vision  # transformers CLIPVisionModel
        self.image_size = tuple(image_size)
        self.num_patches = clip_vision.embeddings.grid[0] * clip_vision.embeddings.grid[1]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        m = self.clip
        h = m.pre_layrnorm(m.embeddings(pixels))
        h = m.encoder(inputs_embeds=h).last_hidden_state
        return m.post_layernorm(h)


class TextTower(nn.Module):
    """``forward(input_ids, attention_mask) -> (tokens [B, L, hidden], global [B, hidden])``.

    The global token is the last attended position (the end token of every tokenizer used here).
    """

    def __init__(self, clip_text, max_len: int) -> None:
        super().__init__()
        self.clip = clip_text  # transformers CLIPTextModel
        self.hidden_size = clip_text.config.hidden_size
        self.max_len = max_len
        if clip_text.embeddings.position_embedding.num_embeddings < max_len:
            raise ValueError(f"max_len={max_len} exceeds the text tower's "
                             f"{clip_text.embeddings.position_embedding.num_embeddings} positions")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        if input_ids.shape[1] > self.max_len:
            raise ValueError(f"captions have {input_ids.shape[1]} tokens, the text tower takes at most {self.max_len}")
        out = self.clip(input_ids=input_ids, attention_mask=attention_mask)
        tokens = out.last_hidden_state
        last = attention_mask.long().sum(1).clamp(min=1) - 1
        glob = tokens[torch.arange(tokens.shape[0], device=tokens.device), last]
        return tokens, glob


# ----------------------------------------------------------------------------------------------
# From-scratch CPU towers: residual CNN + bidirectional GRU
# ----------------------------------------------------------------------------------------------


class _ResBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with a residual path (pool + 1x1 conv when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        nn.init.zeros_(self.bn2.weight)  # each block starts as the identity (stable from-scratch training)
        self.skip = None
        if stride != 1 or c_in != c_out:
            # average-pool then 1x1 conv (ResNet-D): a strided 1x1 conv would drop 3 of every 4 pixels, and
            # with the residual branch starting at zero the tower would see only a sparse grid of the image
            pool = [nn.AvgPool2d(stride, ceil_mode=True, count_include_pad=False)] if stride != 1 else []
            self.skip = nn.Sequential(*pool, nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)), inplace=True)))
        return F.relu(y + (x if self.skip is None else self.skip(x)), inplace=True)


class ConvVisionTower(nn.Module):
    """``forward(pixels [B, 3, H, W]) -> tokens [B, 1 + P, hidden]`` (token 0 = global).

    A stride-2 stem and four residual stages (``num_layers`` blocks each; channels
    ``stem_channels`` doubling per stage up to ``hidden_size``; stages 2-4 halve the resolution),
    so a (H, W) image gives a ⌈H/16⌉ × ⌈W/16⌉ map of ``hidden_size`` channels: those are the patch
    tokens. The global token is a linear map of the horizontal stripes of the map (each row of
    the map averaged over the width, then concatenated), which keeps *where* on the body a colour
    is — hair, upper garment, lower garment and shoes are at different heights.
    """

    def __init__(self, cfg, image_size: tuple[int, int]) -> None:
        super().__init__()
        h, w = image_size
        self.image_size = tuple(image_size)
        self.hidden_size = cfg.hidden_size
        widths = [min(cfg.stem_channels * 2 ** i, cfg.hidden_size) for i in range(4)]
        widths[-1] = cfg.hidden_size
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        blocks, c = [], widths[0]
        for i, cw in enumerate(widths):
            for j in range(cfg.num_layers):
                blocks.append(_ResBlock(c, cw, 2 if (j == 0 and i > 0) else 1))
                c = cw
        self.blocks = nn.Sequential(*blocks)
        for _ in range(4):  # a stride-2 3x3 conv with padding 1 maps n to ceil(n / 2)
            h, w = (h + 1) // 2, (w + 1) // 2
        self.grid = (h, w)
        self.num_patches = self.grid[0] * self.grid[1]
        self.stripes = nn.Linear(self.grid[0] * c, c)
        self.norm = nn.LayerNorm(c)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if tuple(pixels.shape[-2:]) != self.image_size:
            raise ValueError(f"image batch is {pixels.shape[-2]}x{pixels.shape[-1]}, the vision tower expects "
                             f"{self.image_size[0]}x{self.image_size[1]}")
        x = self.blocks(self.stem(pixels))  # [B, C, h, w]
        glob = self.stripes(x.mean(3).flatten(1))  # [B, C]: one stripe per map row
        tokens = x.flatten(2).transpose(1, 2)  # [B, h*w, C]
        return self.norm(torch.cat([glob[:, None], tokens], 1))


class GRUTextTower(nn.Module):
    """``forward(input_ids, attention_mask) -> (tokens [B, L, hidden], global [B, hidden])``.

    Word embeddings (``embed_dim``) through a ``num_layers`` bidirectional GRU (``hidden_size / 2``
    per direction, padding packed away so it never enters either direction). Tokens are the GRU
    outputs (zero at padding); the global token is their max over the caption's positions, which
    keeps the strongest evidence for each attribute wherever it is said.
    """

    def __init__(self, cfg, vocab_size: int, special: dict[str, int]) -> None:
        super().__init__()
        if cfg.hidden_size % 2:
            raise ValueError(f"model.encoder.text.hidden_size={cfg.hidden_size} must be even for the bidirectional GRU")
        self.hidden_size = cfg.hidden_size
        self.max_len = cfg.max_len
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=special["pad"])
        nn.init.normal_(self.embed.weight, std=0.1)
        self.drop = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.embed_dim, cfg.hidden_size // 2, num_layers=cfg.num_layers, batch_first=True,
                          bidirectional=True, dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.norm = nn.LayerNorm(cfg.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        if input_ids.shape[1] > self.max_len:
            raise ValueError(f"captions have {input_ids.shape[1]} tokens, the text tower takes at most {self.max_len}")
        B, L = input_ids.shape
        lengths = attention_mask.long().sum(1).clamp(min=1)
        x = self.drop(self.embed(input_ids))
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=L)  # [B, L, hidden]
        valid = torch.arange(L, device=input_ids.device)[None, :] < lengths[:, None]
        tokens = self.norm(out) * valid[..., None]
        glob = tokens.masked_fill(~valid[..., None], float("-inf")).amax(1)
        return tokens, glob


#: encoder preset name -> builder ``(EncoderConfig, vocab_size, special) -> (vision, text, projections)``
ENCODERS: dict[str, Callable] = {}


def register_encoder(name: str):
    """Decorator: register a builder of ``(vision tower, text tower, projections | None)`` as ``name``."""

    def deco(fn: Callable) -> Callable:
        ENCODERS[name] = fn
        return fn

    return deco


@register_encoder("cnn-bigru")
def _cnn_bigru(cfg: EncoderConfig, vocab_size: int, special: dict[str, int]):
    return ConvVisionTower(cfg.vision, cfg.vision.image_size), GRUTextTower(cfg.text, vocab_size, special), None


@register_encoder("tiny")
def _tiny(cfg: EncoderConfig, vocab_size: int, special: dict[str, int]):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    v, t = cfg.vision, cfg.text
    vcfg = CLIPVisionConfig(hidden_size=v.hidden_size, intermediate_size=int(v.hidden_size * v.mlp_ratio),
                            num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads,
                            image_size=max(v.image_size), patch_size=v.patch_size, projection_dim=v.hidden_size)
    tcfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=t.hidden_size,
                          intermediate_size=int(t.hidden_size * t.mlp_ratio), num_hidden_layers=t.num_layers,
                          num_attention_heads=t.num_heads, max_position_embeddings=t.max_len,
                          projection_dim=t.hidden_size, pad_token_id=special["pad"], bos_token_id=special["bos"],
                          eos_token_id=special["eos"])
    for c in (vcfg, tcfg):
        c._attn_implementation = "sdpa"
    vision = CLIPVisionModel(vcfg)  # post_init applies CLIP's initialisation
    text = CLIPTextModel(tcfg)
    return VisionTower(vision, v.image_size), TextTower(text, t.max_len), None


@register_encoder("clip-vit-b16")
def _pretrained(cfg: EncoderConfig, vocab_size: int, special: dict[str, int]):
    path = Path(os.path.expanduser(cfg.pretrained_path or ""))
    if not cfg.pretrained_path or not path.is_dir():
        raise PretrainedCLIPError(
            f"model.encoder.pretrained_path={cfg.pretrained_path!r} is not a folder. The clip-vit-b16 preset loads a "
            "local copy of openai/clip-vit-base-patch16 (config.json + model.safetensors or pytorch_model.bin, "
            "plus the tokenizer files); nothing is downloaded.")
    if not (path / "config.json").is_file():
        raise PretrainedCLIPError(f"{path} has no config.json: not a Hugging Face CLIP folder")
    weights = [p for p in ("model.safetensors", "pytorch_model.bin") if (path / p).is_file()]
    if not weights and not any(path.glob("*.safetensors")):
        raise PretrainedCLIPError(f"{path} has no model weights (model.safetensors or pytorch_model.bin)")
    from transformers import CLIPModel

    try:
        clip = CLIPModel.from_pretrained(str(path), local_files_only=True, attn_implementation="sdpa")
    except Exception as e:  # noqa: BLE001 - report what transformers says, with the folder
        raise PretrainedCLIPError(f"cannot load a CLIP model from {path}: {e}") from e
    if clip.vision_model.config.patch_size != cfg.vision.patch_size:
        raise ValueError(f"model.encoder.vision.patch_size={cfg.vision.patch_size} but the pretrained model in {path} "
                         f"uses {clip.vision_model.config.patch_size}")
    text = clip.text_model
    n_pos = text.embeddings.position_embedding.num_embeddings
    if cfg.text.max_len > n_pos:
        raise ValueError(f"model.encoder.text.max_len={cfg.text.max_len} exceeds the pretrained model's {n_pos} positions")
    emb = text.embeddings.token_embedding
    if vocab_size != emb.num_embeddings:
        if vocab_size < emb.num_embeddings:
            raise ValueError(f"the tokenizer has {vocab_size} tokens but the pretrained text tower {emb.num_embeddings}: "
                             "use the tokenizer of the same CLIP folder")
        new = nn.Embedding(vocab_size, emb.embedding_dim)
        with torch.no_grad():
            new.weight[: emb.num_embeddings] = emb.weight
            new.weight[emb.num_embeddings:] = emb.weight.mean(0)  # e.g. the added mask token
        text.embeddings.token_embedding = new
    vision = VisionTower(clip.vision_model, cfg.vision.image_size)
    projections = {"image": clip.visual_projection.weight.detach().clone(),
                   "text": clip.text_projection.weight.detach().clone()}
    return vision, TextTower(text, cfg.text.max_len), projections


def build_encoders(cfg: EncoderConfig, vocab_size: int, special: dict[str, int]):
    """Build ``(VisionTower, TextTower, projections)`` for the preset.

    Args:
        cfg: the encoder config.
        vocab_size: ``len(tokenizer)`` (including an added mask token).
        special: token ids ``{"pad", "bos", "eos"}`` of the tokenizer.

    Returns:
        The towers and, for pretrained CLIP, its projection matrices ``{"image", "text"}``
        ([proj_dim, hidden], used to initialise the ``mu`` layers), else None.
    """
    if cfg.preset not in ENCODERS:
        raise ValueError(f"model.encoder.preset={cfg.preset!r} is not one of {', '.join(map(repr, ENCODERS))}")
    return ENCODERS[cfg.preset](cfg, vocab_size, special)
