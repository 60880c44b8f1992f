"""Typed run configuration: one dataclass per part, each passed only to the part that uses it.

    RunConfig
      model: ModelConfig            -> uca_model.model.UCAModel
        encoder: EncoderConfig      -> uca_model.encoders (vision: VisionConfig, text: TextConfig)
        head: HeadConfig            -> uca_model.heads.ProbabilisticHead
        decoder: DecoderConfig      -> uca_model.decoder.ReconstructionDecoder
        loss: LossConfig            -> UCAModel.forward (its terms: uca_model.losses)
      data: DataConfig              -> the trainer's data set-up
      optim: OptimConfig            -> the optimiser and LR schedule
      train: TrainConfig            -> the training loop
      eval: EvalConfig              -> uca_model.evaluation

The defaults are the CPU demo (residual CNN + BiGRU towers trained from scratch on SynthPedes
"demo", CSD distribution contrast with the pairwise sigmoid); a JSON
file only needs the fields it changes. Unknown keys, wrong types and bad values raise
:class:`ConfigError` naming the field (``model.loss.metric``) and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import uca_kernels as _uk

__all__ = [
    "ConfigError",
    "VisionConfig",
    "TextConfig",
    "EncoderConfig",
    "HeadConfig",
    "DecoderConfig",
    "LossConfig",
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "EvalConfig",
    "RunConfig",
    "from_dict",
    "to_dict",
    "load_config",
    "save_config",
    "apply_overrides",
    "diff_configs",
    "ENCODER_PRESETS",
    "MODES",
]

ENCODER_PRESETS = ("cnn-bigru", "tiny", "clip-vit-b16")  # uca_model.encoders.ENCODERS (a copy: that module loads transformers)
MODES = ("uca", "baseline")
METRICS = _uk.METRICS  # the names are the loss library's, one home
CONTRAST_LOSSES = _uk.LOSSES
BASELINE_LOSSES = tuple(x for x in _uk.LOSSES if x != "sigmoid")  # the baseline's cosine contrast (softmax losses)
SIMILARITIES = _uk.losses.SIMILARITIES
BACKENDS = ("auto", *_uk.dispatch.backend_names())


class ConfigError(ValueError):
    """A configuration value, key or file is invalid (the message names the field)."""


def _need(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {msg}")


def _choice(where: str, value, choices) -> None:
    _need(value in choices, where, f"{value!r} is not one of {', '.join(map(repr, choices))}")


def _positive(where: str, value, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    _need(ok and math.isfinite(value), where, f"must be {'>= 0' if allow_zero else '> 0'} and finite, got {value!r}")


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


@dataclass
class VisionConfig:
    """Image tower: a residual CNN (``cnn-bigru``) or a CLIP ViT (``tiny``, ``clip-vit-b16``). For
    ``clip-vit-b16`` the sizes come from the pretrained folder and only ``image_size`` is used
    (position embeddings are resized to its patch grid)."""

    image_size: tuple[int, int] = (64, 32)  # (H, W) input size; images are resized to it
    patch_size: int = 8  # ViT: square patch side; H and W must be multiples of it
    hidden_size: int = 256  # token width (CNN: channels of the last stage; ViT: transformer width)
    num_layers: int = 1  # CNN: residual blocks per stage (4 stages); ViT: transformer blocks
    num_heads: int = 2  # ViT: attention heads
    mlp_ratio: float = 4.0  # ViT: MLP width / hidden_size
    stem_channels: int = 32  # CNN: channels of the first stage (doubled per stage up to hidden_size)

    def validate(self, where: str = "vision") -> None:
        _need(len(self.image_size) == 2 and all(isinstance(v, int) and v > 0 for v in self.image_size),
              f"{where}.image_size", f"must be (H, W) positive ints, got {self.image_size!r}")
        for name in ("patch_size", "hidden_size", "num_layers", "num_heads", "stem_channels"):
            _positive(f"{where}.{name}", getattr(self, name))
        _need(all(v % self.patch_size == 0 for v in self.image_size), f"{where}.image_size",
              f"{tuple(self.image_size)} is not a multiple of patch_size={self.patch_size}")
        _need(self.hidden_size % self.num_heads == 0, f"{where}.hidden_size",
              f"{self.hidden_size} is not divisible by num_heads={self.num_heads}")
        _positive(f"{where}.mlp_ratio", self.mlp_ratio)


@dataclass
class TextConfig:
    """Text tower: a bidirectional GRU (``cnn-bigru``) or a CLIP text transformer (``tiny``,
    ``clip-vit-b16``, causal). The vocabulary size comes from the tokenizer."""

    max_len: int = 32  # tokens per caption including start/end (77 for CLIP)
    hidden_size: int = 256  # token width (GRU: both directions together, so even; transformer width)
    num_layers: int = 1  # GRU layers / transformer blocks
    num_heads: int = 2  # transformer: attention heads
    mlp_ratio: float = 4.0  # transformer: MLP width / hidden_size
    embed_dim: int = 128  # GRU: word-embedding size
    dropout: float = 0.0  # GRU: dropout on the word embeddings (and between GRU layers)

    def validate(self, where: str = "text") -> None:
        _need(isinstance(self.max_len, int) and self.max_len >= 4, f"{where}.max_len", f"must be an int >= 4, got {self.max_len!r}")
        for name in ("hidden_size", "num_layers", "num_heads", "embed_dim"):
            _positive(f"{where}.{name}", getattr(self, name))
        _need(self.hidden_size % self.num_heads == 0, f"{where}.hidden_size",
              f"{self.hidden_size} is not divisible by num_heads={self.num_heads}")
        _positive(f"{where}.mlp_ratio", self.mlp_ratio)
        _need(0.0 <= self.dropout < 1.0, f"{where}.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class EncoderConfig:
    """Which towers: ``cnn-bigru`` (from scratch, the CPU default), ``tiny`` (random-init CLIP
    transformers) or ``clip-vit-b16`` (a local pretrained folder)."""

    preset: str = "cnn-bigru"  # a key of uca_model.encoders.ENCODERS: "cnn-bigru" | "tiny" | "clip-vit-b16"
    pretrained_path: Optional[str] = None  # clip-vit-b16: local folder of openai/clip-vit-base-patch16
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)

    def validate(self, where: str = "model.encoder") -> None:
        _choice(f"{where}.preset", self.preset, ENCODER_PRESETS)
        if self.preset == "clip-vit-b16":
            _need(bool(self.pretrained_path), f"{where}.pretrained_path",
                  "the clip-vit-b16 preset needs a local folder with the pretrained CLIP ViT-B/16 "
                  "(config.json + model weights, e.g. a download of openai/clip-vit-base-patch16)")
        self.vision.validate(f"{where}.vision")
        self.text.validate(f"{where}.text")


@dataclass
class HeadConfig:
    """Probabilistic heads: ``mu`` from the global token, ``logvar`` from the global token or
    pooled over all tokens (one head per modality)."""

    embed_dim: int = 128  # D of the joint space (clip-vit-b16: 512 to reuse CLIP's projections)
    mu_source: str = "global"  # "global" (global token of the tower) | "tokens" (masked mean of all tokens)
    normalize_mu: bool = True  # put mu on the unit sphere (then ||dmu||^2 = 2 - 2 cos)
    logvar_source: str = "global"  # "global" | "tokens" (masked mean of all tokens)
    init_logvar: float = -6.0  # initial log sigma^2 (bias of the logvar layer)
    min_logvar: float = -12.0  # soft lower bound of logvar
    max_logvar: float = 2.0  # soft upper bound of logvar
    # None: logvar is learned. A number: every input gets this logvar, no logvar layer (the
    # UCA-nosigma control: -30 gives sigma ~ 3e-7, points equal to mu at float32 precision)
    fixed_logvar: float | None = None

    def validate(self, where: str = "model.head") -> None:
        _positive(f"{where}.embed_dim", self.embed_dim)
        _choice(f"{where}.mu_source", self.mu_source, ("global", "tokens"))
        _choice(f"{where}.logvar_source", self.logvar_source, ("global", "tokens"))
        _need(self.fixed_logvar is None or (isinstance(self.fixed_logvar, (int, float))
                                             and math.isfinite(self.fixed_logvar)),
              f"{where}.fixed_logvar", f"must be null or a finite number, got {self.fixed_logvar!r}")
        _need(self.min_logvar < self.init_logvar < self.max_logvar, f"{where}.init_logvar",
              f"must lie strictly between min_logvar={self.min_logvar} and max_logvar={self.max_logvar}, "
              f"got {self.init_logvar}")


@dataclass
class DecoderConfig:
    """Cross-modal reconstruction decoder of UA-AMLR (IRRA-style: every token of the masked caption
    attends to the caption's other tokens and to one sampled image point plus the patch tokens)."""

    width: int = 64  # decoder width
    num_layers: int = 1  # blocks (self-attention over the caption + cross-attention to the image + MLP);
    # small for the CPU demo, 4 as in IRRA's cross-modal transformer for pretrained towers
    num_heads: int = 2  # attention heads
    dropout: float = 0.0  # dropout inside the decoder

    def validate(self, where: str = "model.decoder") -> None:
        for name in ("width", "num_layers", "num_heads"):
            _positive(f"{where}.{name}", getattr(self, name))
        _need(self.width % self.num_heads == 0, f"{where}.width", f"{self.width} is not divisible by num_heads={self.num_heads}")
        _need(0.0 <= self.dropout < 1.0, f"{where}.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class LossConfig:
    """Loss terms and weights. Total = dcl_weight·dcl + pcl_weight·(pcl_inter + pcl_intra_image +
    pcl_intra_text) + amlr_weight·amlr + kl_weight·(kl_image + kl_text) + id_weight·id, or in
    ``baseline`` mode cosine_<baseline_loss> + id_weight·id. A weight of 0 switches the term (and its
    modules) off."""

    dcl_weight: float = 1.0  # distribution contrast (DCL)
    # Gaussian metric of DCL and of distance ranking: w2 | kl | jeffreys | csd. Both use d(image, text),
    # image first: kl is KL(N_image || N_text) in training and in ranking (the text's Gaussian covers images).
    # csd (PCME++'s closed-form sampled distance, ||dmu||^2 + sum sigma_i^2 + sum sigma_j^2) with the pairwise
    # sigmoid is the default: there a caption's sigma^2 is a per-caption logit offset that the loss sets from how
    # many in-batch negatives the caption cannot tell from its positives (docs/model.md, "Uncertainty")
    metric: str = "csd"
    # sdm | infonce | sigmoid, for DCL (and PCL unless pcl_contrast_loss says otherwise). sdm: IRRA, for
    # pretrained towers; sigmoid: pairwise softplus(-y S) per pair, each pair counted once (SigLIP / PCME++),
    # the loss under which sigma gets a gradient from its own row (docs/design.md, "Why σ needs a pairwise loss")
    contrast_loss: str = "sigmoid"
    pcl_contrast_loss: str = ""  # loss of the PCL terms: "" = contrast_loss | sdm | infonce | sigmoid
    dcl_scale: float = 5.0  # logits = -dcl_scale * d (with unit mu, 25 = cosine / 0.02 as in IRRA)
    # sigmoid DCL: logits = -dcl_scale * d + dcl_bias. SigLIP starts from 10 cos - 10 on cosine; with unit mu
    # and small sigma d ~ 2 - 2 cos, so dcl_scale 5 with bias 0 gives those very logits
    dcl_bias: float = 0.0
    pcl_weight: float = 0.2  # point contrast, lambda_p (inter + intra)
    num_samples: int = 4  # K samples per distribution (PCL and UA-AMLR)
    pcl_similarity: str = "cosine"  # cosine | euclidean
    pcl_scale: float = 10.0  # point logits = pcl_scale * cos (50 = 1/0.02 as in IRRA)
    pcl_bias: float = -10.0  # sigmoid PCL: point logits = pcl_scale * cos + pcl_bias (SigLIP's start)
    pcl_intra: bool = True  # include the intra-modal point terms
    # intra-modal positives include a point's own K - 1 sibling samples (the seed's terms, minimised by
    # sigma -> 0); false: siblings are neither positives nor negatives (uca_model.terms; one process only)
    pcl_intra_siblings: bool = True
    # occlusion inclusion: KL(sg N_clean || N_occluded copy), only the copy's sigma learns (uca_model.terms)
    occlusion_weight: float = 0.0
    occlusion_fraction: float = 0.25  # share of each batch's images that get an occluded copy
    # caption inclusion: KL(sg N_caption || N_vaguer copy), the copy with some colour words left out
    # (uca_model.text.vaguer_caption); only the copy's sigma learns (uca_model.terms)
    caption_inclusion_weight: float = 0.0
    caption_inclusion_fraction: float = 0.25  # share of each batch's captions that get a vaguer copy
    caption_drop_rate: float = 0.5  # share of a caption's colour mentions its vaguer copy leaves out
    # true: the inclusion terms (occlusion, caption) train the sigma heads alone (the copies go through
    # the towers without gradient); false: their gradient reaches the towers too
    inclusion_head_only: bool = False
    amlr_weight: float = 0.5  # attribute-masking language reconstruction, lambda_r
    mask_rate: float = 0.5  # share of a caption's attribute words masked
    # "attributes": mask attribute words (UA-AMLR); "random": random 15 % of the tokens instead, as
    # BERT / IRRA's MLM do (the UCA-randommask control)
    mask_words: str = "attributes"
    # prior KL(N(mu, sigma^2) || N(0, I)), lambda_kl: 1e-3 keeps sigma off its floor (1e-4: sigma 0.006, its
    # ranking of captions weaker; demo pilots, benchmarks/results/uncertainty-pilots/)
    kl_weight: float = 1e-3
    id_weight: float = 0.0  # identity classification of mu (cosine classifier shared by both modalities)
    id_scale: float = 30.0  # logits = id_scale * cos(mu, identity prototype)
    baseline_loss: str = "sdm"  # baseline (term cosine_<loss>): sdm | infonce on cosine; sdm = IRRA's
    baseline_scale: float = 50.0  # baseline: logits = baseline_scale * cos (1/0.02 as in IRRA; SDM from scratch stalls at 10)
    learn_scale: bool = True  # learn the contrastive logit scales (from the values above, CLIP-style)
    # learn the logit biases of the sigmoid terms (from dcl_bias / pcl_bias). Softmax losses (sdm, infonce)
    # do not depend on a bias, so their terms have none
    learn_bias: bool = True
    max_scale: float = 100.0  # upper clamp of a learned scale
    backend: str = "auto"  # uca_kernels backend for every contrast

    def validate(self, where: str = "model.loss") -> None:
        for name in ("occlusion_fraction", "caption_inclusion_fraction", "caption_drop_rate"):
            _need(0.0 < getattr(self, name) <= 1.0, f"{where}.{name}", f"must be in (0, 1], got {getattr(self, name)}")
        for name in ("dcl_weight", "pcl_weight", "amlr_weight", "kl_weight", "id_weight", "occlusion_weight",
                     "caption_inclusion_weight"):
            _positive(f"{where}.{name}", getattr(self, name), allow_zero=True)
        _choice(f"{where}.metric", self.metric, METRICS)
        _choice(f"{where}.contrast_loss", self.contrast_loss, CONTRAST_LOSSES)
        _choice(f"{where}.pcl_contrast_loss", self.pcl_contrast_loss, ("",) + CONTRAST_LOSSES)
        _choice(f"{where}.baseline_loss", self.baseline_loss, BASELINE_LOSSES)
        for name in ("dcl_bias", "pcl_bias"):
            value = getattr(self, name)
            _need(math.isfinite(value), f"{where}.{name}", f"must be a finite number, got {value!r}")
        _choice(f"{where}.pcl_similarity", self.pcl_similarity, SIMILARITIES)
        for name in ("dcl_scale", "pcl_scale", "baseline_scale", "id_scale", "max_scale"):
            _positive(f"{where}.{name}", getattr(self, name))
        _need(isinstance(self.num_samples, int) and self.num_samples >= 1, f"{where}.num_samples",
              f"must be an int >= 1, got {self.num_samples!r}")
        _need(0.0 < self.mask_rate <= 1.0, f"{where}.mask_rate", f"must be in (0, 1], got {self.mask_rate}")
        _choice(f"{where}.mask_words", self.mask_words, ("attributes", "random"))
        _choice(f"{where}.backend", self.backend, BACKENDS)

    def term_loss(self, term: str) -> str:
        """The contrastive loss of ``term``: "dcl" -> ``contrast_loss``; "pcl" -> ``pcl_contrast_loss``,
        or ``contrast_loss`` when that is empty; "baseline" -> ``baseline_loss``."""
        losses = {"dcl": self.contrast_loss, "pcl": self.pcl_contrast_loss or self.contrast_loss,
                  "baseline": self.baseline_loss}
        return losses[term]


@dataclass
class ModelConfig:
    """The whole model: ``uca`` (probabilistic, all losses) or ``baseline`` (IRRA-style fixed points,
    SDM on cosine, no MLM)."""

    mode: str = "uca"  # "uca" | "baseline"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def validate(self, where: str = "model") -> None:
        _choice(f"{where}.mode", self.mode, MODES)
        self.encoder.validate(f"{where}.encoder")
        self.head.validate(f"{where}.head")
        self.decoder.validate(f"{where}.decoder")
        self.loss.validate(f"{where}.loss")
        L = self.loss
        if self.mode == "baseline":
            on = [n for n in ("dcl_weight", "pcl_weight", "amlr_weight", "kl_weight", "occlusion_weight",
                              "caption_inclusion_weight")
                  if getattr(L, n) != 0]
            _need(not on, f"{where}.mode", "'baseline' has fixed-point embeddings and only the SDM (+ id) loss; "
                  f"set {', '.join(f'loss.{n}' for n in on)} to 0 or use mode 'uca'")
        else:
            _need(L.dcl_weight + L.pcl_weight + L.amlr_weight > 0, f"{where}.loss",
                  "mode 'uca' needs at least one of dcl_weight, pcl_weight, amlr_weight > 0")

    @property
    def probabilistic(self) -> bool:
        return self.mode == "uca"


# ----------------------------------------------------------------------------------------------
# Data, optimisation, training, evaluation
# ----------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where the data is and how batches are formed."""

    root: str = "data/synthpedes-demo"  # dataset folder (annotation file + imgs/)
    name: str = "synthpedes"  # cuhk-pedes | icfg-pedes | rstpreid | synthpedes
    synth_preset: Optional[str] = "demo"  # generate SynthPedes with this preset at root if missing (None: never)
    synth_seed: int = 0  # seed of that generation
    tokenizer: Optional[str] = None  # tokenizer.json or a HF folder; default <root>/tokenizer.json
    val_from_train: Optional[int] = None  # hold out this many training identities as val (ICFG-PEDES)
    batch_size: int = 128  # global batch (split evenly over processes)
    # "random": batches drawn uniformly from all captions; "identity": P = batch_size / samples_per_id identities
    # x samples_per_id captions (with their images) each, identities drawn in look-alike groups
    # (uca_model.sampling.IdentityBatchSampler)
    sampler: str = "random"
    samples_per_id: int = 4  # identity sampler: K samples per identity (distinct images first)
    lookalike_group: int = 4  # identity sampler: identities per look-alike group in a batch (1 = uniform)
    flip_prob: float = 0.5  # horizontal flip augmentation
    crop_pad: int = 4  # random translation by up to this many pixels (pad + crop; 0 = off)
    erase_prob: float = 0.5  # random erasing: probability of blanking one rectangle per image (occlusion)
    num_workers: int = 0  # DataLoader workers per process
    cache_images: bool = True  # keep decoded, resized images in memory

    def validate(self, where: str = "data") -> None:
        _need(bool(self.root), f"{where}.root", "must be a folder path")
        _need(isinstance(self.batch_size, int) and self.batch_size >= 2, f"{where}.batch_size",
              f"must be an int >= 2, got {self.batch_size!r}")
        _choice(f"{where}.sampler", self.sampler, ("random", "identity"))
        for name in ("samples_per_id", "lookalike_group"):
            v = getattr(self, name)
            _need(isinstance(v, int) and v >= 1, f"{where}.{name}", f"must be an int >= 1, got {v!r}")
        if self.sampler == "identity":
            _need(self.batch_size % self.samples_per_id == 0, f"{where}.samples_per_id",
                  f"data.batch_size={self.batch_size} is not a multiple of samples_per_id={self.samples_per_id}")
        _need(0.0 <= self.flip_prob <= 1.0, f"{where}.flip_prob", f"must be in [0, 1], got {self.flip_prob}")
        _need(isinstance(self.crop_pad, int) and self.crop_pad >= 0, f"{where}.crop_pad",
              f"must be an int >= 0, got {self.crop_pad!r}")
        _need(0.0 <= self.erase_prob <= 1.0, f"{where}.erase_prob", f"must be in [0, 1], got {self.erase_prob}")
        _need(self.num_workers >= 0, f"{where}.num_workers", f"must be >= 0, got {self.num_workers}")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay (per step)."""

    lr: float = 3e-3  # peak learning rate of the new modules (heads, decoder)
    encoder_lr_scale: float = 1.0  # encoder LR = lr * this (e.g. 0.2 with pretrained towers)
    weight_decay: float = 0.02  # on matrices only (tensors with >= 2 dims)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas
    eps: float = 1e-6  # AdamW eps
    warmup_epochs: float = 1.0  # linear warm-up length in epochs
    min_lr_ratio: float = 0.01  # final LR / peak LR of the cosine decay
    grad_clip: float = 1.0  # max global gradient norm (0 = off)

    def validate(self, where: str = "optim") -> None:
        _positive(f"{where}.lr", self.lr)
        _positive(f"{where}.encoder_lr_scale", self.encoder_lr_scale, allow_zero=True)
        _positive(f"{where}.weight_decay", self.weight_decay, allow_zero=True)
        _need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{where}.betas",
              f"must be two numbers in [0, 1), got {self.betas!r}")
        _positive(f"{where}.eps", self.eps)
        _positive(f"{where}.warmup_epochs", self.warmup_epochs, allow_zero=True)
        _need(0.0 <= self.min_lr_ratio <= 1.0, f"{where}.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        _positive(f"{where}.grad_clip", self.grad_clip, allow_zero=True)


@dataclass
class TrainConfig:
    """The training loop."""

    epochs: int = 12  # passes over the training captions
    seed: int = 0  # the single source of randomness (init, data order, masking, sampling, dropout)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on GPU, off on CPU) | bf16 | off
    eval_every: int = 1  # evaluate on val every this many epochs (and after the last)
    select_metric: str = "R1"  # val metric that picks the best checkpoint: R1 | R5 | R10 | mAP | mINP
    ckpt_every: int = 50  # write the resumable checkpoint every this many steps (and each epoch end)
    log_every: int = 10  # log averaged loss terms every this many steps
    progress: bool = True  # tqdm progress bars
    stop_after_steps: Optional[int] = None  # stop abruptly after this global step, as if killed (tests)

    def validate(self, where: str = "train") -> None:
        for name in ("epochs", "eval_every", "ckpt_every", "log_every"):
            v = getattr(self, name)
            _need(isinstance(v, int) and v >= 1, f"{where}.{name}", f"must be an int >= 1, got {v!r}")
        _need(isinstance(self.seed, int) and self.seed >= 0, f"{where}.seed", f"must be an int >= 0, got {self.seed!r}")
        _need(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), f"{where}.device",
              f"{self.device!r} is not auto, cpu, cuda or cuda:N")
        _choice(f"{where}.amp", self.amp, ("auto", "bf16", "off"))
        _choice(f"{where}.select_metric", self.select_metric, ("R1", "R5", "R10", "mAP", "mINP"))
        _need(self.stop_after_steps is None or self.stop_after_steps >= 1, f"{where}.stop_after_steps",
              f"must be None or >= 1, got {self.stop_after_steps!r}")


@dataclass
class EvalConfig:
    """Retrieval evaluation (captions are queries, images the gallery)."""

    score: str = "auto"  # auto (distance for uca, cosine for baseline) | distance | cosine
    batch_size: int = 256  # images / captions per encoding batch

    def validate(self, where: str = "eval") -> None:
        _choice(f"{where}.score", self.score, ("auto", "distance", "cosine"))
        _positive(f"{where}.batch_size", self.batch_size)


@dataclass
class RunConfig:
    """Everything a run needs; saved as ``config.json`` beside the run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "RunConfig":
        self.model.validate("model")
        self.data.validate("data")
        self.optim.validate("optim")
        self.train.validate("train")
        self.eval.validate("eval")
        if self.eval.score == "distance":
            _need(self.model.probabilistic, "eval.score", "'distance' needs mode 'uca' (the baseline has no distributions)")
        return self


# ----------------------------------------------------------------------------------------------
# (De)serialisation
# ----------------------------------------------------------------------------------------------


def to_dict(cfg) -> dict[str, Any]:
    """Plain JSON-able dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value, tp, where: str):
    """Check/convert a JSON value to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object (section), got {type(value).__name__}")
        return _from_dict(tp, value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {_type_name(tp)}")  # pragma: no cover


def _from_dict(cls, d: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
                          f"valid keys{' of ' + where if where else ''}: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in d:
            kwargs[name] = _convert(d[name], hints[name], f"{where}.{name}" if where else name)
    return cls(**kwargs)


def from_dict(d: dict, *, base: RunConfig | None = None) -> RunConfig:
    """A validated :class:`RunConfig` from a (partial) nested dict applied over ``base`` (defaults)."""
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a JSON object, got {type(d).__name__}")
    merged = deep_merge(to_dict(base) if base is not None else {}, d)
    return _from_dict(RunConfig, merged, "").validate()


def deep_merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """Read a JSON config (partial allowed), apply ``key=value`` overrides, validate."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {str(p)!r} not found")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    return from_dict(apply_overrides(d, overrides or []))


def save_config(cfg: RunConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as JSON (atomically)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(to_dict(cfg), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, p)


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (value parsed as JSON, else taken as a string)."""
    out = copy.deepcopy(d)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return out


_MISSING = "<missing>"


def _default_at(key: str):
    """The :class:`RunConfig` default of the dotted field ``key`` (``model.loss.dcl_bias``), or
    ``"<missing>"`` when there is no such field."""
    node: Any = to_dict(RunConfig())
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def diff_configs(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two :class:`RunConfig` dicts (``key: a -> b``).

    A field that one side lacks reads as its default: a config saved before the field existed (e.g.
    in an old checkpoint) matches a resolved config that keeps that default."""
    out = []
    for k in sorted(set(a) | set(b)):
        key = f"{prefix}{k}"
        va = a[k] if k in a else _default_at(key)
        vb = b[k] if k in b else _default_at(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_configs(va, vb, key + ".")
        elif va != vb:
            out.append(f"{key}: {va!r} -> {vb!r}")
    return out
