"""The recipe's σ terms: intra-modal point contrast without siblings, the inclusion KL, occluded
copies and vaguer captions, head-only inclusion copies, and one tiny training epoch with every new
option on."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

import uca_kernels as uk
from uca_model.data import occlude_batch
from uca_model.presets import smoke_config
from uca_model.synth import generate_synthpedes
from uca_model.model import build_model
from uca_model.terms import intra_without_siblings, inclusion_kl
from uca_model.text import attribute_spans, vaguer_caption
from uca_model.trainer import train


def _points(n_dist=6, K=3, D=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_dist * K, D, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1, 2]).repeat_interleave(K)
    return z, labels, K


@pytest.mark.parametrize("loss", ["sigmoid", "infonce", "sdm"])
def test_intra_without_siblings_matches_a_literal_loop(loss):
    z, labels, K = _points()
    n = z.shape[0]
    got = intra_without_siblings(z, labels, K, scale=4.0, bias=-1.0, loss=loss)
    u = F.normalize(z, dim=1)
    total = 0.0
    for i in range(n):
        js = [j for j in range(n) if j // K != i // K]  # neither itself nor a sibling
        s = {j: 4.0 * float(u[i] @ u[j]) - 1.0 for j in js}
        pos = [j for j in js if labels[j] == labels[i]]
        if loss == "sigmoid":
            total += sum(math.log1p(math.exp(-(1 if j in pos else -1) * s[j])) for j in js)
        elif loss == "infonce" and pos:
            lse = math.log(sum(math.exp(v) for v in s.values()))
            total += 2 * (lse - math.log(sum(math.exp(s[j]) for j in pos)))
        elif loss == "sdm":
            lse = math.log(sum(math.exp(v) for v in s.values()))
            for j in js:
                p = math.exp(s[j] - lse)
                q = (1.0 / len(pos)) if j in pos else 0.0
                total += 2 * p * (math.log(p) - math.log(q + 1e-8))
    assert float(got) == pytest.approx(total / n, rel=1e-9)


def test_siblings_no_longer_reward_a_collapsed_sigma():
    """With siblings as positives (the seed's term) shrinking σ lowers the intra loss a lot; without them
    only the negatives' (convex) share of it is left, a fraction of that pull."""
    g = torch.Generator().manual_seed(1)
    mu = F.normalize(torch.randn(8, 16, generator=g, dtype=torch.float64), dim=1)
    labels = torch.arange(8)  # no two distributions share an identity: only siblings could be positives
    K = 4
    eps = torch.randn(8, K, 16, generator=g, dtype=torch.float64)
    lab = labels.repeat_interleave(K)

    def seed_term(sigma):
        z = (mu[:, None] + sigma * eps).reshape(-1, 16)
        A, B, r, c, sign = uk.losses.point_maps(z, z, "cosine")
        rows, _ = uk.contrast(A, B, r, c, 10.0 * sign, -10.0, lab, lab, loss="sigmoid", exclude_self=True,
                              backend="reference")
        return float(rows.sum() / z.shape[0])

    def new_term(sigma):
        z = (mu[:, None] + sigma * eps).reshape(-1, 16)
        return float(intra_without_siblings(z, lab, K, scale=10.0, bias=-10.0))

    seed_pull = seed_term(0.3) - seed_term(0.01)
    new_pull = new_term(0.3) - new_term(0.01)
    assert seed_pull > 0  # the seed's term pushes σ down ...
    assert abs(new_pull) < 0.1 * seed_pull  # ... and almost all of that came from the siblings


def test_inclusion_kl_is_minimal_at_clean_variance_plus_the_shift():
    g = torch.Generator().manual_seed(2)
    mu_c, lv_c, mu_o = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(3))
    best = torch.log(lv_c.exp() + (mu_c - mu_o).square())
    lv_o = best.clone().requires_grad_()
    loss = inclusion_kl(mu_c, lv_c, mu_o, lv_o)
    (grad,) = torch.autograd.grad(loss, lv_o)
    assert grad.abs().max() < 1e-12 and float(loss.detach()) >= 0
    assert float(inclusion_kl(mu_c, lv_c, mu_o, best + 0.3)) > float(loss.detach())
    assert torch.all(best >= lv_c)  # the optimum never has less variance than the clean image
    leaves = [t.clone().requires_grad_() for t in (mu_c, lv_c, mu_o)]
    lv_o2 = lv_c.clone().requires_grad_()
    grads = torch.autograd.grad(inclusion_kl(*leaves, lv_o2), leaves + [lv_o2], allow_unused=True)
    assert all(x is None for x in grads[:3]) and grads[3] is not None  # only the copy's σ learns


def test_occlude_batch_draws_a_band():
    images = torch.zeros(3, 3, 20, 10)
    out = occlude_batch(images, torch.Generator().manual_seed(0), bands=[(0.0, 0.25), (0.5, 1.0), (0.2, 0.3)])
    assert torch.equal(images, torch.zeros_like(images))  # a copy
    changed = (out != 0).any(1).any(-1)  # [B, H] rows that got the band
    assert changed[0].nonzero().flatten().tolist() == list(range(0, 5))
    assert changed[1].nonzero().flatten().tolist() == list(range(10, 20))
    assert changed[2].nonzero().flatten().tolist() == [4, 5]
    rand = occlude_batch(torch.zeros(8, 3, 40, 20), torch.Generator().manual_seed(1))
    rows = (rand != 0).any(1).any(-1).sum(1)
    assert torch.all((rows >= 7) & (rows <= 15))  # 20-35 % of 40 rows
    with pytest.raises(ValueError, match="band 0"):
        occlude_batch(images[:1], torch.Generator(), bands=[(0.5, 0.2)])


@pytest.mark.usefixtures("one_thread")
def test_one_epoch_with_every_recipe_option(tmp_path):
    data = tmp_path / "tiny"
    generate_synthpedes(data, "tiny", seed=0, progress=False)
    cfg = smoke_config(data, model={"loss": {"metric": "ce", "dcl_scale": 0.05, "dcl_bias": -5.0,
                                       "pcl_intra_siblings": False, "occlusion_weight": 1.0,
                                       "caption_inclusion_weight": 1.0, "inclusion_head_only": True}})
    cfg.data.sampler, cfg.data.samples_per_id, cfg.data.lookalike_group = "identity", 4, 2
    result = train(cfg, tmp_path / "run", log=lambda *a: None)
    assert result["score"] == "distance" and 0 <= result["test"]["R1"] <= 100
    hist = (tmp_path / "run" / "history.csv").read_text().splitlines()
    cols = hist[0].split(",")
    last = dict(zip(cols, hist[-1].split(",")))
    for k in ("loss/occlusion", "loss/caption_inclusion", "loss/pcl_intra_image", "loss/dcl"):
        assert math.isfinite(float(last[k])), k


def test_vaguer_caption_leaves_out_colours_and_keeps_the_rest():
    g = torch.Generator().manual_seed(0)
    cap = "A man in a red jacket, black trousers and a t-shirt in blue colored, with a grey backpack."
    out = vaguer_caption(cap, g, drop_rate=1.0)
    assert out == "A man in a jacket, trousers and a t-shirt, with a backpack."
    half = vaguer_caption(cap, torch.Generator().manual_seed(1), drop_rate=0.5)
    kept = [half[s:e] for s, e in attribute_spans(half)]
    assert sum(w in ("red", "black", "blue", "grey") for w in kept) == 2  # round(0.5 * 4) left out
    for garment in ("jacket", "trousers", "t-shirt", "backpack"):
        assert garment in half
    assert vaguer_caption("A man with a backpack.", g) == "A man with a backpack."  # no colour: unchanged
    with pytest.raises(ValueError, match="drop_rate"):
        vaguer_caption(cap, g, drop_rate=0.0)


@pytest.mark.parametrize("modality", ["image", "text"])
@pytest.mark.parametrize("head_only", [True, False])
def test_inclusion_copies_train_the_head_alone_when_asked(tmp_path, modality, head_only):
    from uca_model.text import load_tokenizer

    data = tmp_path / "tiny"
    generate_synthpedes(data, "tiny", seed=0, progress=False)
    cfg = smoke_config(data, model={"loss": {"inclusion_head_only": head_only}})
    model = build_model(cfg.model, load_tokenizer(data / "tokenizer.json"), num_train_ids=4)
    if modality == "image":
        size = cfg.model.encoder.vision.image_size
        inputs = (torch.randn(3, 3, *size),)
        tower, head = model.vision, model.image_head
    else:
        inputs = (torch.randint(5, 50, (3, 12)), torch.ones(3, 12, dtype=torch.long))
        tower, head = model.text, model.text_head
    out = model._encode_copy(modality, *inputs)
    (out["logvar"].sum() + out["mu"].sum()).backward()
    tower_grads = [p.grad for p in tower.parameters() if p.requires_grad]
    assert all(g is None for g in tower_grads) == head_only
    assert head.logvar.weight.grad is not None and head.logvar.weight.grad.abs().sum() > 0
