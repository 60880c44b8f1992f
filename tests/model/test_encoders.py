"""The from-scratch CPU towers (cnn-bigru), the encoder registry and the training augmentation."""

from __future__ import annotations

import pytest
import torch

from uca_model.config import ENCODER_PRESETS, EncoderConfig, from_dict
from uca_model.data import augment_batch
from uca_model.encoders import ENCODERS, ConvVisionTower, GRUTextTower, build_encoders

SPECIAL = {"pad": 0, "bos": 2, "eos": 3, "mask": 4}
VOCAB = 50


def _cfg(**vision) -> EncoderConfig:
    return from_dict({"model": {"encoder": {"preset": "cnn-bigru",
                                            "vision": {"image_size": [48, 24], "hidden_size": 32, "stem_channels": 8,
                                                       **vision},
                                            "text": {"max_len": 12, "hidden_size": 16, "embed_dim": 8}}}}).model.encoder


def test_registry_matches_the_config_choices():
    assert set(ENCODERS) == set(ENCODER_PRESETS)
    with pytest.raises(ValueError, match="is not one of"):
        build_encoders(EncoderConfig(preset="nope"), VOCAB, SPECIAL)


def test_conv_tower_shapes_grid_and_errors():
    torch.manual_seed(0)
    vision, text, proj = build_encoders(_cfg(), VOCAB, SPECIAL)
    assert isinstance(vision, ConvVisionTower) and isinstance(text, GRUTextTower) and proj is None
    tokens = vision(torch.randn(5, 3, 48, 24))
    assert vision.grid == (3, 2) and tokens.shape == (5, 1 + 6, 32)  # ceil(48/16) x ceil(24/16) patches + global
    assert torch.isfinite(tokens).all()
    with pytest.raises(ValueError, match="expects 48x24"):
        vision(torch.randn(1, 3, 32, 24))
    odd = ConvVisionTower(_cfg(image_size=[40, 24]).vision, (40, 24))
    assert odd(torch.randn(2, 3, 40, 24)).shape == (2, 1 + 3 * 2, 32)


def test_conv_tower_global_token_knows_where_a_colour_is():
    # the same red patch at the top or at the bottom of the image must give different global tokens
    torch.manual_seed(0)
    vision = ConvVisionTower(_cfg().vision, (48, 24)).eval()
    background = torch.randn(1, 3, 48, 24, generator=torch.Generator().manual_seed(1))
    top, bottom = background.clone(), background.clone()
    top[:, 0, 2:14], bottom[:, 0, 34:46] = 2.0, 2.0
    g = vision(torch.cat([top, bottom]))[:, 0]
    assert not torch.allclose(g[0], g[1], atol=1e-3)


def test_gru_tower_ignores_padding_and_masks_it():
    torch.manual_seed(0)
    text = GRUTextTower(_cfg().text, VOCAB, SPECIAL).eval()
    ids = torch.randint(5, VOCAB, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    toks, glob = text(ids * mask, mask)
    assert toks.shape == (3, 12, 16) and glob.shape == (3, 16)
    assert (toks[1, 7:] == 0).all() and (toks[2, 4:] == 0).all()
    # different ids at padded positions change nothing (packed: padding enters neither direction)
    noisy = ids.clone()
    noisy[mask == 0] = 7
    toks2, glob2 = text(noisy * mask + noisy * (1 - mask), mask)
    assert torch.allclose(toks, toks2) and torch.allclose(glob, glob2)
    # the global token is the max over the caption's own positions
    assert torch.allclose(glob[2], toks[2, :4].amax(0))
    # a caption alone gives what it gives in the batch
    alone, g_alone = text(ids[2:, :4] * mask[2:, :4], mask[2:, :4])
    assert torch.allclose(g_alone[0], glob[2], atol=1e-6)
    with pytest.raises(ValueError, match="at most 12"):
        text(torch.ones(1, 13, dtype=torch.long), torch.ones(1, 13, dtype=torch.long))


def test_gru_hidden_size_must_be_even():
    cfg = _cfg().text
    cfg.hidden_size = 15
    with pytest.raises(ValueError, match="must be even"):
        GRUTextTower(cfg, VOCAB, SPECIAL)


def test_augment_batch_keeps_colour_and_is_reproducible():
    x = torch.randn(8, 3, 16, 8)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = augment_batch(x, g1, flip_prob=0.5, pad=2, erase_prob=0.5)
    b = augment_batch(x, g2, flip_prob=0.5, pad=2, erase_prob=0.5)
    assert torch.equal(a, b) and a.shape == x.shape
    assert not torch.equal(a, x)
    # no colour change: every output pixel is an input pixel of the same image and channel, or zero
    for i in range(8):
        for c in range(3):
            vals = set(x[i, c].flatten().tolist()) | {0.0}
            assert set(a[i, c].flatten().tolist()) <= vals
    # everything off: the identity
    assert torch.equal(augment_batch(x, torch.Generator().manual_seed(0)), x)
    # a pure flip is a flip
    f = augment_batch(x, torch.Generator().manual_seed(0), flip_prob=1.0)
    assert torch.equal(f, x.flip(-1))
