"""Named configurations: the demo, a seconds-long smoke config, the ablation ladder, real CLIP runs.

Each returns a validated :class:`~uca_model.config.RunConfig` (or the partial dict an ablation
variant changes), so the CLI, the ablation script and the tests all build runs the same way.
"""

from __future__ import annotations

from pathlib import Path

from .config import RunConfig, deep_merge, from_dict, to_dict

__all__ = ["ABLATION_VARIANTS", "variant_overrides", "demo_config", "smoke_config", "clip_vit_b16_config"]

_NO_UCA = {"dcl_weight": 0.0, "pcl_weight": 0.0, "amlr_weight": 0.0, "kl_weight": 0.0, "occlusion_weight": 0.0,
           "caption_inclusion_weight": 0.0}

#: the ablation ladder: name -> changes to the (full UCA) base config
ABLATION_VARIANTS: dict[str, dict] = {
    # IRRA-style fixed points: SDM on cosine (IRRA's scale 50), no MLM
    "baseline": {"model": {"mode": "baseline", "loss": dict(_NO_UCA)}},
    # fixed points with multi-positive InfoNCE on cosine (learned scale from 10): trains faster from
    # scratch than SDM here, so UCA is also compared with the stronger of the two fixed-point baselines
    "baseline-infonce": {"model": {"mode": "baseline",
                                   "loss": {**_NO_UCA, "baseline_loss": "infonce", "baseline_scale": 10.0}}},
    # + distribution contrast (with the prior KL that keeps sigma from collapsing)
    "+DCL": {"model": {"loss": {"pcl_weight": 0.0, "amlr_weight": 0.0}}},
    # + point contrast
    "+DCL+PCL": {"model": {"loss": {"amlr_weight": 0.0}}},
    # + uncertainty-aware attribute-masking language reconstruction = full UCA
    "UCA": {},
    # controls: the same losses with sigma = 0 (points equal mu; no prior KL, which would only add a
    # constant), and random 15 % token masking instead of attribute words. Under metric "ce" a sigma of 0
    # makes every distance infinite: there benchmarks.ablation holds sigma at head.init_logvar instead
    # (one sigma for every input and dimension, so ce ranks by ||dmu||^2 alone; no inclusion terms)
    "UCA-nosigma": {"model": {"head": {"fixed_logvar": -30.0}, "loss": {"kl_weight": 0.0, "occlusion_weight": 0.0,
                                                                         "caption_inclusion_weight": 0.0}}},
    "UCA-randommask": {"model": {"loss": {"mask_words": "random"}}},
}


def variant_overrides(name: str) -> dict:
    """The config changes of ablation variant ``name`` (see :data:`ABLATION_VARIANTS`)."""
    if name not in ABLATION_VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(ABLATION_VARIANTS)}")
    return ABLATION_VARIANTS[name]


#: epochs of the demo per SynthPedes preset (what fits the 8-minute demo budget on 2 CPU cores; large: ~2 h)
DEMO_EPOCHS = {"demo": 4, "large": 10}


def demo_config(data: str | Path = "data/synthpedes-demo", seed: int = 0, epochs: int | None = None,
                variant: str = "UCA", preset: str = "demo") -> RunConfig:
    """The demo: the defaults (from-scratch cnn-bigru towers) on a SynthPedes preset."""
    d = to_dict(RunConfig())
    d["data"].update(root=str(data), name="synthpedes", synth_preset=preset)
    d["train"]["epochs"] = DEMO_EPOCHS.get(preset, d["train"]["epochs"])
    d["train"]["seed"] = seed
    if epochs is not None:
        d["train"]["epochs"] = epochs
    return from_dict(deep_merge(d, variant_overrides(variant)))


def smoke_config(data: str | Path, **changes) -> RunConfig:
    """A model small enough to train an epoch of SynthPedes "tiny" in seconds (tests, CI)."""
    d = {
        "model": {"encoder": {"vision": {"image_size": [48, 24], "patch_size": 8, "hidden_size": 32, "num_layers": 1,
                                         "num_heads": 2},
                              "text": {"max_len": 32, "hidden_size": 32, "num_layers": 1, "num_heads": 2}},
                  "head": {"embed_dim": 16}, "decoder": {"width": 32, "num_heads": 2},
                  "loss": {"num_samples": 2}},
        "data": {"root": str(data), "name": "synthpedes", "synth_preset": "tiny", "batch_size": 16},
        "train": {"epochs": 1, "progress": False, "log_every": 2, "ckpt_every": 2},
        "eval": {"batch_size": 64},
    }
    return from_dict(deep_merge(d, changes))


def clip_vit_b16_config(pretrained_path: str, data_root: str, dataset: str = "cuhk-pedes") -> RunConfig:
    """IRRA-like settings for a real dataset with a local pretrained CLIP ViT-B/16 (GPU)."""
    d = {
        "model": {"encoder": {"preset": "clip-vit-b16", "pretrained_path": pretrained_path,
                              "vision": {"image_size": [384, 128], "patch_size": 16},
                              "text": {"max_len": 77}},
                  "head": {"embed_dim": 512, "mu_source": "global"},
                  "decoder": {"width": 512, "num_layers": 4, "num_heads": 8},
                  # IRRA's SDM with fixed temperatures suits pretrained towers
                  "loss": {"contrast_loss": "sdm", "learn_scale": False, "dcl_scale": 25.0, "pcl_scale": 50.0,
                           "baseline_scale": 50.0}},
        "data": {"root": data_root, "name": dataset, "synth_preset": None,
                 "tokenizer": pretrained_path, "batch_size": 128, "num_workers": 8},
        "optim": {"lr": 5e-5, "encoder_lr_scale": 0.2, "warmup_epochs": 5, "weight_decay": 4e-5},
        "train": {"epochs": 60},
    }
    return from_dict(d)
