"""The ablation's controls: UCA-nosigma (sigma fixed at ~0, points equal mu) and UCA-randommask."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_model_parts import SPECIAL, VOCAB, _batch, _tiny_model_cfg  # noqa: E402 (same folder)

from uca_model.config import ConfigError, from_dict  # noqa: E402
from uca_model.model import UCAModel  # noqa: E402
from uca_model.presets import ABLATION_VARIANTS, demo_config  # noqa: E402


def test_nosigma_model_has_fixed_logvar_and_points_equal_mu():
    cfg = _tiny_model_cfg(kl_weight=0.0)
    cfg.head.fixed_logvar = -30.0
    model = UCAModel(cfg, vocab_size=VOCAB, special=SPECIAL, num_train_ids=4)
    assert not [n for n, _ in model.named_parameters() if "logvar" in n]
    b = _batch()
    img = model.encode_image(b["images"])
    assert torch.equal(img["logvar"], torch.full_like(img["mu"], -30.0))
    z = __import__("uca_kernels").losses.sample_points(img["mu"], img["logvar"], 3)
    torch.testing.assert_close(z, img["mu"].repeat_interleave(3, 0), rtol=0, atol=2e-6)
    out = model(b)
    total = sum(out["terms"].values())
    total.backward()
    assert torch.isfinite(total) and model.image_head.mu.weight.grad.abs().sum() > 0


def test_control_variants_build_and_validate():
    for name in ("UCA-nosigma", "UCA-randommask"):
        assert name in ABLATION_VARIANTS
        cfg = demo_config("data/x", variant=name)
        cfg.validate()
    assert demo_config("data/x", variant="UCA-nosigma").model.head.fixed_logvar == -30.0
    assert demo_config("data/x", variant="UCA-randommask").model.loss.mask_words == "random"


@pytest.mark.parametrize("bad, match", [({"head": {"fixed_logvar": float("nan")}}, "model.head.fixed_logvar"),
                                        ({"loss": {"mask_words": "nouns"}}, "model.loss.mask_words")])
def test_control_fields_are_validated(bad, match):
    with pytest.raises(ConfigError, match=match):
        from_dict({"model": bad})
