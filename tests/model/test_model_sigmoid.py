"""The pairwise sigmoid contrast (SigLIP / PCME++) in the model package: config, the model's learned
logit biases, and the distributed losses' values against a direct computation.

The sigmoid term of a logit matrix S with identity labels is Σᵢⱼ softplus(−yᵢⱼ Sᵢⱼ) / M (yᵢⱼ = +1
for same-identity pairs, −1 otherwise; M rows; intra-modal: i ≠ j), each pair counted once.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from uca_model.checkpoint import CheckpointError, check_config_match
from uca_model.config import ConfigError, RunConfig, diff_configs, from_dict, to_dict
from uca_model.losses import dcl_loss, pcl_loss
from uca_model.model import UCAModel

from test_model_parts import SPECIAL, VOCAB, _batch, _tiny_model_cfg  # noqa: E402 (same folder)

NEW_LOSS_FIELDS = ("pcl_contrast_loss", "dcl_bias", "pcl_bias", "learn_bias")


# -- config ----------------------------------------------------------------------------------------


def test_sigmoid_config_and_per_term_losses():
    L = from_dict({"model": {"loss": {"contrast_loss": "sigmoid", "metric": "csd"}}}).model.loss
    assert (L.term_loss("dcl"), L.term_loss("pcl")) == ("sigmoid", "sigmoid")
    L = from_dict({"model": {"loss": {"contrast_loss": "sigmoid", "pcl_contrast_loss": "infonce"}}}).model.loss
    assert (L.term_loss("dcl"), L.term_loss("pcl")) == ("sigmoid", "infonce")
    # the defaults: CSD + sigmoid everywhere (biases only matter for sigmoid terms)
    L = RunConfig().model.loss
    assert (L.metric, L.contrast_loss, L.pcl_contrast_loss, L.term_loss("pcl")) == ("csd", "sigmoid", "", "sigmoid")
    assert (L.dcl_bias, L.pcl_bias, L.learn_bias) == (0.0, -10.0, True)


@pytest.mark.parametrize("change,needle", [
    ({"contrast_loss": "bce"}, "model.loss.contrast_loss: 'bce' is not one of 'sdm', 'infonce', 'sigmoid'"),
    ({"pcl_contrast_loss": "bce"}, "model.loss.pcl_contrast_loss: 'bce' is not one of"),
    ({"dcl_bias": float("nan")}, "model.loss.dcl_bias: must be a finite number"),
    ({"pcl_bias": float("inf")}, "model.loss.pcl_bias: must be a finite number"),
    ({"pcl_bias": "low"}, "model.loss.pcl_bias: expected a number"),
    ({"learn_bias": 1}, "model.loss.learn_bias: expected true/false"),
])
def test_bad_sigmoid_values_name_the_field(change, needle):
    with pytest.raises(ConfigError) as e:
        from_dict({"model": {"loss": change}})
    assert needle in str(e.value)


def test_configs_saved_before_the_new_fields_still_match():
    """An old checkpoint's config lacks the new fields: it matches a config that keeps their defaults
    (resume and eval compare them), and a default model has no new tensors (strict state-dict load)."""
    cfg = RunConfig().validate()
    old = to_dict(cfg)
    for name in NEW_LOSS_FIELDS:
        del old["model"]["loss"][name]
    assert diff_configs(old, to_dict(cfg)) == []
    check_config_match(old, cfg, "old.pt")
    cfg.model.loss.dcl_bias = -5.0
    with pytest.raises(CheckpointError, match=r"model.loss.dcl_bias: 0.0 -> -5.0"):
        check_config_match(old, cfg, "old.pt")
    # a run saved with a softmax loss (the default before sigmoid) has no bias tensors to load
    model = UCAModel(_tiny_model_cfg(contrast_loss="infonce"), vocab_size=VOCAB, special=SPECIAL, num_train_ids=4)
    assert not [k for k in model.state_dict() if k in ("dcl_bias", "pcl_bias")]
    assert model.bias_names() == [] and model.bias("dcl") == 0.0


# -- the model -------------------------------------------------------------------------------------


def test_sigmoid_model_trains_its_biases():
    torch.manual_seed(0)
    model = UCAModel(_tiny_model_cfg(contrast_loss="sigmoid", metric="csd", dcl_bias=-3.0, pcl_bias=-4.0),
                     vocab_size=VOCAB, special=SPECIAL, num_train_ids=4)
    assert isinstance(model.dcl_bias, torch.nn.Parameter) and isinstance(model.pcl_bias, torch.nn.Parameter)
    assert model.bias_names() == ["dcl", "pcl"]
    out = model(_batch(), generator=torch.Generator().manual_seed(1))
    assert out["stats"]["bias_dcl"].item() == -3.0 and out["stats"]["bias_pcl"].item() == -4.0
    total = sum(w * out["terms"][k] for k, w in model.loss_weights().items())
    assert torch.isfinite(total)
    total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.dcl_bias.grad != 0 and model.pcl_bias.grad != 0
    # sigma gets a gradient from the DCL term alone (csd: sigma enters every pair's distance)
    model.zero_grad()
    model(_batch())["terms"]["dcl"].backward()
    assert model.image_head.logvar.bias.grad.abs().sum() > 0


def test_mixed_losses_and_fixed_biases():
    # DCL sigmoid, PCL InfoNCE: only DCL has a bias
    model = UCAModel(_tiny_model_cfg(contrast_loss="sigmoid", pcl_contrast_loss="infonce"), vocab_size=VOCAB,
                     special=SPECIAL, num_train_ids=4)
    assert model.bias_names() == ["dcl"] and not hasattr(model, "pcl_bias") and model.bias("pcl") == 0.0
    assert {"bias_dcl", "scale_dcl", "scale_pcl"} <= set(model(_batch())["stats"])
    assert "bias_pcl" not in model(_batch())["stats"]
    # learn_bias=False: the bias is a (saved) buffer
    fixed = UCAModel(_tiny_model_cfg(contrast_loss="sigmoid", learn_bias=False), vocab_size=VOCAB, special=SPECIAL,
                     num_train_ids=4)
    assert "dcl_bias" in dict(fixed.named_buffers()) and "dcl_bias" not in dict(fixed.named_parameters())
    assert "pcl_bias" in fixed.state_dict() and float(fixed.bias("pcl")) == -10.0
    # a switched-off term's bias is not a parameter (DDP rejects parameters without gradients)
    dcl_only = UCAModel(_tiny_model_cfg(contrast_loss="sigmoid", pcl_weight=0.0, amlr_weight=0.0), vocab_size=VOCAB,
                        special=SPECIAL, num_train_ids=4)
    assert "dcl_bias" in dict(dcl_only.named_parameters()) and "pcl_bias" in dict(dcl_only.named_buffers())
    assert dcl_only.bias_names() == ["dcl"]


# -- the losses against a direct computation -------------------------------------------------------


def _pair_sigmoid(S: torch.Tensor, la: torch.Tensor, lb: torch.Tensor, exclude_self=False) -> torch.Tensor:
    """Σ over valid pairs of softplus(−y S) / (number of rows), written out."""
    y = (la[:, None] == lb[None, :]).double() * 2 - 1
    ell = F.softplus(-y * S)
    if exclude_self:
        ell = ell * (1 - torch.eye(S.shape[0], dtype=S.dtype))
    return ell.sum() / S.shape[0]


def _inputs(b=5, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu_v, mu_t = torch.randn(b, D, generator=g, dtype=torch.float64), torch.randn(b, D, generator=g, dtype=torch.float64)
    lv_v = torch.randn(b, D, generator=g, dtype=torch.float64) * 0.3 - 1
    lv_t = torch.randn(b, D, generator=g, dtype=torch.float64) * 0.3 - 1
    return [t.requires_grad_() for t in (mu_v, lv_v, mu_t, lv_t)], torch.tensor([0, 1, 0, 2, 1][:b])


@pytest.mark.parametrize("metric", ["csd", "w2"])
def test_sigmoid_dcl_equals_the_sum_over_pairs(metric):
    (mu_v, lv_v, mu_t, lv_t), labels = _inputs()
    scale, bias = torch.tensor(0.7, dtype=torch.float64, requires_grad=True), torch.tensor(-1.5, dtype=torch.float64,
                                                                                           requires_grad=True)
    got = dcl_loss(mu_v, lv_v, mu_t, lv_t, labels, metric=metric, loss="sigmoid", scale=scale, bias=bias,
                   backend="reference")
    var_v, var_t = lv_v.exp(), lv_t.exp()
    dmu = (mu_v[:, None] - mu_t[None]).square().sum(-1)
    if metric == "csd":  # E||z_v - z_t||^2
        d = dmu + var_v.sum(1)[:, None] + var_t.sum(1)[None]
    else:  # squared 2-Wasserstein
        d = dmu + (var_v.sqrt()[:, None] - var_t.sqrt()[None]).square().sum(-1)
    want = _pair_sigmoid(-scale * d + bias, labels, labels)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    leaves = (mu_v, lv_v, mu_t, lv_t, scale, bias)
    for g1, g2 in zip(torch.autograd.grad(got, leaves), torch.autograd.grad(want, leaves)):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("similarity", ["cosine", "euclidean"])
def test_sigmoid_pcl_equals_the_sum_over_pairs(similarity):
    (mu_v, _, mu_t, _), labels = _inputs(seed=1)
    K = 2
    z_v, z_t = mu_v.repeat_interleave(K, 0) * 1.1, mu_t.repeat_interleave(K, 0) - 0.2  # K points per pair
    z_v = z_v + 0.1 * torch.arange(z_v.numel(), dtype=torch.float64).reshape(z_v.shape).sin()
    plab = labels.repeat_interleave(K)
    scale, bias = 3.0, torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    got = pcl_loss(z_v, z_t, plab, similarity=similarity, scale=scale, loss="sigmoid", bias=bias, backend="reference")

    def logits(a, b):
        if similarity == "cosine":
            return scale * F.normalize(a, dim=1) @ F.normalize(b, dim=1).T + bias
        return -scale * (a[:, None] - b[None]).square().sum(-1) + bias

    want = {"inter": _pair_sigmoid(logits(z_v, z_t), plab, plab),
            "intra_image": _pair_sigmoid(logits(z_v, z_v), plab, plab, exclude_self=True),
            "intra_text": _pair_sigmoid(logits(z_t, z_t), plab, plab, exclude_self=True)}
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12, msg=k)
        leaves = (mu_v, mu_t, bias)
        for g1, g2 in zip(torch.autograd.grad(got[k], leaves, retain_graph=True, allow_unused=True),
                          torch.autograd.grad(want[k], leaves, retain_graph=True, allow_unused=True)):
            assert (g1 is None) == (g2 is None), k  # intra terms use one modality only
            if g1 is not None:
                torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-12, msg=k)
