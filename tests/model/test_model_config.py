"""Typed configs: defaults, JSON round trip, overrides, and clear errors for bad values."""

from __future__ import annotations

import json

import pytest

from uca_model.config import ConfigError, RunConfig, apply_overrides, from_dict, load_config, save_config, to_dict
from uca_model.presets import ABLATION_VARIANTS, clip_vit_b16_config, demo_config, smoke_config


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = RunConfig().validate()
    save_config(cfg, tmp_path / "c.json")
    back = load_config(tmp_path / "c.json")
    assert to_dict(back) == to_dict(cfg)
    assert back.model.encoder.vision.image_size == (64, 32)  # lists come back as tuples


def test_partial_file_and_overrides(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"model": {"loss": {"metric": "kl"}}, "train": {"epochs": 3}}))
    cfg = load_config(tmp_path / "c.json", ["optim.lr=5e-4", "model.mode=baseline", "model.loss.dcl_weight=0",
                                           "model.loss.pcl_weight=0", "model.loss.amlr_weight=0",
                                           "model.loss.kl_weight=0", "data.root=somewhere"])
    assert cfg.model.loss.metric == "kl" and cfg.train.epochs == 3 and cfg.optim.lr == 5e-4
    assert cfg.model.mode == "baseline" and not cfg.model.probabilistic and cfg.data.root == "somewhere"
    assert apply_overrides({}, ["a.b=[1, 2]"]) == {"a": {"b": [1, 2]}}


@pytest.mark.parametrize("change,needle", [
    ({"model": {"loss": {"metric": "cosine"}}}, "model.loss.metric: 'cosine' is not one of"),
    ({"model": {"loss": {"metirc": "w2"}}}, "unknown config key(s) model.loss.metirc"),
    ({"model": {"loss": {"baseline_loss": "sigmoid"}}}, "model.loss.baseline_loss: 'sigmoid' is not one of"),
    ({"optim": {"lr": -1}}, "optim.lr: must be > 0"),
    ({"optim": {"lr": "fast"}}, "optim.lr: expected a number"),
    ({"train": {"epochs": 1.5}}, "train.epochs: expected an integer"),
    ({"data": {"batch_size": 1}}, "data.batch_size: must be an int >= 2"),
    ({"model": {"encoder": {"vision": {"image_size": [100, 48]}}}}, "is not a multiple of patch_size=8"),
    ({"model": {"encoder": {"vision": {"image_size": [96]}}}}, "expected a list of 2 values"),
    ({"model": {"mode": "baseline"}}, "set loss.dcl_weight, loss.pcl_weight, loss.amlr_weight, loss.kl_weight to 0"),
    ({"model": {"loss": {"dcl_weight": 0, "pcl_weight": 0, "amlr_weight": 0}}}, "needs at least one of"),
    ({"model": {"head": {"init_logvar": 5.0}}}, "model.head.init_logvar: must lie strictly between"),
    ({"model": {"encoder": {"preset": "clip-vit-b16"}}}, "the clip-vit-b16 preset needs a local folder"),
    ({"train": {"device": "tpu"}}, "train.device: 'tpu' is not auto"),
    ({"model": {"mode": "baseline", "loss": {"dcl_weight": 0, "pcl_weight": 0, "amlr_weight": 0, "kl_weight": 0}},
      "eval": {"score": "distance"}}, "eval.score: 'distance' needs mode 'uca'"),
    ({"model": []}, "model: expected an object"),
])
def test_bad_values_name_the_field(change, needle):
    with pytest.raises(ConfigError) as e:
        from_dict(change)
    assert needle in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_config(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(_write(tmp_path / "ok.json", {}), ["lr"])


def _write(p, d):
    p.write_text(json.dumps(d))
    return p


def test_presets_are_valid(tmp_path):
    for v in ABLATION_VARIANTS:
        cfg = demo_config("d", seed=3, epochs=2, variant=v)
        assert cfg.train.seed == 3 and cfg.train.epochs == 2
    assert demo_config(variant="baseline").model.mode == "baseline"
    large = demo_config("d", preset="large")
    assert large.data.synth_preset == "large" and large.train.epochs == 10 and demo_config().train.epochs == 4
    assert demo_config(variant="+DCL").model.loss.pcl_weight == 0
    assert smoke_config(tmp_path).model.encoder.vision.hidden_size == 32
    c = clip_vit_b16_config("/models/clip", "/data/CUHK-PEDES")
    assert c.model.encoder.vision.image_size == (384, 128) and c.model.encoder.text.max_len == 77
    with pytest.raises(ValueError, match="unknown variant"):
        demo_config(variant="nope")


def test_committed_config_files_load():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.json"))
    assert files, "configs/*.json missing"
    for f in files:
        load_config(f)
    real = load_config(Path(__file__).resolve().parents[2] / "configs" / "cuhk-pedes-clip-vit-b16.json")
    assert to_dict(real) == to_dict(clip_vit_b16_config("models/clip-vit-base-patch16", "data/CUHK-PEDES"))
