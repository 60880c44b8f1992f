"""The UA-AMLR reconstruction decoder: self-attention over the masked caption + cross-attention to
[one sampled image point, patch tokens], cross-entropy on masked positions averaged over samples."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from uca_model.config import DecoderConfig
from uca_model.decoder import ReconstructionDecoder

B, L, HT, HV, P, D, V = 3, 7, 12, 10, 5, 8, 30


def _decoder(layers=1, seed=0):
    torch.manual_seed(seed)
    return ReconstructionDecoder(DecoderConfig(width=16, num_heads=2, num_layers=layers), HT, HV, D, V)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    text, patches = torch.randn(B, L, HT, generator=g), torch.randn(B, P, HV, generator=g)
    lengths = torch.tensor([5, 7, 4])
    mask = (torch.arange(L)[None] < lengths[:, None]).long()  # right padding, as text.encode gives
    labels = torch.full((B, L), -100)
    labels[0, 2], labels[1, 1], labels[1, 4], labels[2, 3] = 7, 3, 9, 1
    return text, patches, labels, mask


def _naive(dec, text, points, patches, labels, mask):
    """Every position of all B·K sequences through every block, then the masked ones: the plain form
    of what the decoder computes (it skips work whose result is not used)."""
    K = points.shape[1]
    h = dec.q_proj(text).repeat_interleave(K, 0)
    key_mask = mask.bool()[:, None, None, :].repeat_interleave(K, 0)
    point = (dec.point_proj(points) + dec.type_embed[0]).reshape(B * K, 1, -1)
    patch = dec.patch_proj(patches) + dec.type_embed[1]
    for blk in dec.blocks:
        h = blk.cross_mlp(blk.self_attend(h, key_mask), point, patch, K)
    sel = (labels != -100).repeat_interleave(K, 0)
    return F.cross_entropy(dec.out(dec.norm(h[sel])), labels.repeat_interleave(K, 0)[sel])


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_decoder_equals_the_plain_computation_and_reaches_the_points(layers):
    dec = _decoder(layers)
    text, patches, labels, mask = _inputs()
    points = torch.randn(B, 4, D, requires_grad=True)
    loss = dec(text, points, patches, labels, mask)
    assert loss.dim() == 0 and torch.isfinite(loss)
    torch.testing.assert_close(loss, _naive(dec, text, points, patches, labels, mask), rtol=1e-5, atol=1e-6)
    loss.backward()
    assert points.grad is not None and points.grad.abs().sum() > 0 and torch.isfinite(points.grad).all()
    for name, p in dec.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_decoder_averages_over_samples():
    dec = _decoder()
    text, patches, labels, mask = _inputs()
    one = torch.randn(B, 1, D)
    # K copies of the same sample give the single-sample loss
    torch.testing.assert_close(dec(text, one.expand(B, 4, D), patches, labels, mask),
                               dec(text, one, patches, labels, mask))
    # the loss is the mean over samples of per-sample losses (equal counts per sample)
    two = torch.randn(B, 2, D)
    mean = 0.5 * (dec(text, two[:, :1], patches, labels, mask) + dec(text, two[:, 1:], patches, labels, mask))
    torch.testing.assert_close(dec(text, two, patches, labels, mask), mean)


@pytest.mark.parametrize("layers", [1, 2])
def test_masked_tokens_see_the_other_tokens_of_their_caption(layers):
    # self-attention: a masked word's prediction depends on the unmasked words around it, also on
    # those after it (a cross-attention-only decoder would give the same loss here)
    dec = _decoder(layers)
    text, patches, labels, mask = _inputs()
    points = torch.randn(B, 2, D)
    base = dec(text, points, patches, labels, mask)
    after = text.clone()
    after[0, 3] += 3.0  # caption 0: position 3 is real and not masked; its masked word is at 2
    assert not torch.allclose(dec(after, points, patches, labels, mask), base, rtol=0, atol=1e-6)
    # ... but never on another caption's tokens
    other = text.clone()
    other[0, 3] += 3.0
    other_labels = labels.clone()
    other_labels[0] = -100  # now only captions 1 and 2 are scored
    torch.testing.assert_close(dec(other, points, patches, other_labels, mask),
                               dec(text, points, patches, other_labels, mask))


@pytest.mark.parametrize("layers", [1, 2])
def test_padding_never_changes_the_loss(layers):
    dec = _decoder(layers)
    text, patches, labels, mask = _inputs()
    points = torch.randn(B, 3, D)
    noisy = text.clone()
    pad = mask == 0
    noisy[pad] = 1e4 * torch.randn(int(pad.sum()), HT)
    base = dec(text, points, patches, labels, mask)
    torch.testing.assert_close(dec(noisy, points, patches, labels, mask), base, rtol=1e-6, atol=1e-6)
    # without a mask every token counts (and the padding noise does change the loss)
    assert not torch.allclose(dec(noisy, points, patches, labels), base)
    torch.testing.assert_close(dec(text, points, patches, labels, torch.ones_like(mask)),
                               dec(text, points, patches, labels))


def test_nothing_masked_gives_zero_with_a_gradient_path():
    dec = _decoder(2)
    text, patches, _, mask = _inputs()
    text.requires_grad_()
    points = torch.randn(B, 2, D, requires_grad=True)
    none = dec(text, points, patches, torch.full((B, L), -100), mask)
    assert none.dim() == 0 and float(none.detach()) == 0.0 and none.requires_grad
    none.backward()
    assert text.grad is not None and points.grad is not None
    assert all(p.grad is not None for p in dec.parameters())  # DDP needs every parameter in the graph
