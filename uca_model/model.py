"""The UCA model: CLIP towers, probabilistic heads, the reconstruction decoder and every loss term.

``UCAModel.forward(batch)`` returns the *unweighted* named loss terms and a few statistics;
``UCAModel.loss_weights()`` gives the weight of every term it computes (from
:class:`~uca_model.config.LossConfig`), and the trainer forms ``Σ weight · term``.

Terms (mode ``uca``), all contrasts through ``uca_kernels`` and over the global batch in
data-parallel runs (:mod:`uca_model.losses`):

==================  ==============================================================================
``dcl``             distribution contrast: SDM/InfoNCE/sigmoid on −scale·d(N_v, N_t) (+ bias for
                    sigmoid), d = ``loss.metric``
``pcl_inter``       point contrast of K image points vs K text points per pair (identity positives)
``pcl_intra_image`` image points vs image points, self pairs excluded
``pcl_intra_text``  text points vs text points, self pairs excluded
``amlr``            attribute-masking reconstruction: the masked caption's tokens attend to each other
                    and to one of K sampled image points + the patch tokens (averaged over the K)
``kl_image``        KL(N(μ_v, σ_v²) ‖ N(0, I)) (mean over the batch)
``kl_text``         the same for texts
``id``              identity classification of μ by a cosine classifier shared by both modalities
                    (image and text cross-entropies averaged), optional
``occlusion``       KL(sg N_image ‖ N_occluded copy): an occluded copy's σ covers how far the
                    occluder moved its mean (:mod:`uca_model.terms`), optional
``caption_inclusion`` KL(sg N_caption ‖ N_vaguer copy, some colour words left out): the same for
                    captions, optional
==================  ==============================================================================

With ``loss.pcl_intra_siblings`` false, the intra terms leave a point's own K − 1 siblings out of its
positives and negatives (:func:`uca_model.terms.intra_without_siblings`).

**Direction of the Gaussian distance.** Every DCL logit of (image j, caption i) is
−scale·d(N_v_j, N_t_i): the image is the *first* argument, so for ``kl`` it is KL(N_image ‖ N_text)
(small when the text distribution covers the image: a vague caption is cheap for every image it
fits, a vague image is not). Retrieval ranks the images for caption i by −d(N_v_j, N_t_i), the very
same value (:func:`uca_model.evaluation.score_fn`); ``w2``, ``jeffreys`` and ``csd`` are symmetric.

**Logit scales and biases.** Each contrast has a logit scale (1/τ, ``scale_<term>``), learned through
its log when ``loss.learn_scale``. A term whose loss is the pairwise ``sigmoid``
(``loss.contrast_loss`` for DCL, ``loss.pcl_contrast_loss`` or else ``contrast_loss`` for PCL) also has
a logit bias b (``bias_<term>``, from ``loss.dcl_bias`` / ``loss.pcl_bias``, learned when
``loss.learn_bias``): DCL logits −scale·d + b, PCL logits scale·cos + b (or −scale·‖Δz‖² + b). A
softmax loss (sdm, infonce) does not change when a constant is added to every logit, so those terms
have no bias tensor.

Mode ``baseline`` (IRRA without MLM): fixed-point embeddings and the term ``cosine_<loss>`` =
``loss.baseline_loss`` (default ``sdm``: IRRA's SDM, so the term is ``cosine_sdm``) on cosine / τ,
independent of ``loss.contrast_loss``, plus the optional ``id`` term.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

import uca_kernels
from uca_kernels.losses import register_logit_tensor, scale_of

from .config import ModelConfig
from .decoder import ReconstructionDecoder
from .distributed import DistContext
from .losses import cosine_contrast_loss, dcl_loss, pcl_loss
from .encoders import build_encoders
from .heads import ProbabilisticHead
from .terms import intra_without_siblings, inclusion_kl

__all__ = ["UCAModel", "special_token_ids", "build_model"]


def special_token_ids(tokenizer) -> dict[str, int]:
    """``{"pad", "bos", "eos", "mask"}`` ids of a tokenizer from :func:`uca_model.text.load_tokenizer`."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    out = {"pad": tokenizer.pad_token_id, "bos": bos, "eos": eos, "mask": tokenizer.mask_token_id}
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise ValueError(f"the tokenizer has no {', '.join(missing)} token(s)")
    return out


class UCAModel(nn.Module):
    """Args:
        cfg: the model config (encoders, heads, decoder, losses).
        vocab_size: ``len(tokenizer)``.
        special: :func:`special_token_ids` of the tokenizer.
        num_train_ids: training identities (size of the optional ID classifier).
        ctx: data-parallel context (rank, world size) for the contrastive losses.
    """

    def __init__(self, cfg: ModelConfig, *, vocab_size: int, special: dict[str, int], num_train_ids: int,
                 ctx: DistContext = DistContext()) -> None:
        super().__init__()
        self.cfg = cfg
        self.ctx = ctx
        self.vocab_size = vocab_size
        self.num_train_ids = num_train_ids
        self.vision, self.text, proj = build_encoders(cfg.encoder, vocab_size, special)
        prob = cfg.probabilistic
        self.image_head = ProbabilisticHead(cfg.head, self.vision.hidden_size, prob, proj["image"] if proj else None)
        self.text_head = ProbabilisticHead(cfg.head, self.text.hidden_size, prob, proj["text"] if proj else None)
        L = cfg.loss
        self.decoder = None
        if prob and L.amlr_weight > 0:
            self.decoder = ReconstructionDecoder(cfg.decoder, self.text.hidden_size, self.vision.hidden_size,
                                                 cfg.head.embed_dim, vocab_size)
        self.classifier = nn.Linear(cfg.head.embed_dim, num_train_ids, bias=False) if L.id_weight > 0 else None
        # logit scales (1 / temperature) of the contrastive terms: fixed, or learned through their log
        # (CLIP-style, clamped at loss.max_scale) when loss.learn_scale
        # (a term that is switched off keeps its scale as a buffer: no unused parameters under DDP)
        scales = {"baseline": L.baseline_scale} if not prob else {"dcl": L.dcl_scale, "pcl": L.pcl_scale}
        for name, value in scales.items():
            learn = L.learn_scale and name in self.scale_names()
            register_logit_tensor(self, f"{name}_log_scale", math.log(value), learn)
        # logit biases of the sigmoid terms (learned when loss.learn_bias and the term is on; a term that
        # is off keeps its bias as a buffer). Softmax terms have none, so their checkpoints are unchanged.
        biases = {"dcl": L.dcl_bias, "pcl": L.pcl_bias} if prob else {}
        for name, value in biases.items():
            if L.term_loss(name) != "sigmoid":
                continue
            register_logit_tensor(self, f"{name}_bias", value, L.learn_bias and name in self.scale_names())

    # -- parameter groups (by module, for the optimiser) --

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.vision, self.text) for p in m.parameters() if p.requires_grad]

    def new_parameters(self) -> list[nn.Parameter]:
        enc = {id(p) for p in self.encoder_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in enc]

    # -- encoding --

    def encode_image(self, pixels: torch.Tensor, tower_grad: bool = True) -> dict[str, torch.Tensor]:
        """``{"mu" [B, D], "logvar" [B, D] | None, "tokens" [B, 1 + P, H]}``; with ``tower_grad``
        false the tower runs without gradient and only the head can learn from the outputs."""
        with torch.set_grad_enabled(tower_grad and torch.is_grad_enabled()):
            tokens = self.vision(pixels)
        mu, logvar = self.image_head(tokens[:, 0], tokens)
        return {"mu": mu, "logvar": logvar, "tokens": tokens}

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    tower_grad: bool = True) -> dict[str, torch.Tensor]:
        """``{"mu" [B, D], "logvar" [B, D] | None, "tokens" [B, L, H]}``; ``tower_grad`` as
        :meth:`encode_image`."""
        with torch.set_grad_enabled(tower_grad and torch.is_grad_enabled()):
            tokens, glob = self.text(input_ids, attention_mask)
        mu, logvar = self.text_head(glob, tokens, attention_mask)
        return {"mu": mu, "logvar": logvar, "tokens": tokens}

    def scale_names(self) -> list[str]:
        """Names of the contrastive logit scales this model uses (for logging)."""
        if not self.cfg.probabilistic:
            return ["baseline"]
        L = self.cfg.loss
        return [n for n, on in (("dcl", L.dcl_weight > 0), ("pcl", L.pcl_weight > 0)) if on]

    def scale(self, name: str) -> torch.Tensor:
        """The logit scale of ``name`` ("baseline", "dcl", "pcl") as a float32 0-d tensor."""
        return scale_of(getattr(self, f"{name}_log_scale").float(), self.cfg.loss.max_scale)

    def bias_names(self) -> list[str]:
        """Names of the logit biases this model uses (its terms that are on with the sigmoid loss)."""
        return [n for n in self.scale_names() if self.cfg.loss.term_loss(n) == "sigmoid"]

    def bias(self, name: str) -> torch.Tensor | float:
        """The logit bias of ``name`` ("dcl", "pcl") as a float32 0-d tensor; 0.0 for a softmax term."""
        if self.cfg.loss.term_loss(name) != "sigmoid":
            return 0.0
        return getattr(self, f"{name}_bias").float()

    def loss_weights(self) -> dict[str, float]:
        """Weight of every term :meth:`forward` returns."""
        L = self.cfg.loss
        if not self.cfg.probabilistic:
            w = {self.baseline_term(): 1.0}
        else:
            w = {}
            if L.dcl_weight > 0:
                w["dcl"] = L.dcl_weight
            if L.pcl_weight > 0:
                w["pcl_inter"] = L.pcl_weight
                if L.pcl_intra:
                    w["pcl_intra_image"] = L.pcl_weight
                    w["pcl_intra_text"] = L.pcl_weight
            if L.amlr_weight > 0:
                w["amlr"] = L.amlr_weight
            if L.kl_weight > 0:
                w["kl_image"] = L.kl_weight
                w["kl_text"] = L.kl_weight
            if L.occlusion_weight > 0:
                w["occlusion"] = L.occlusion_weight
            if L.caption_inclusion_weight > 0:
                w["caption_inclusion"] = L.caption_inclusion_weight
        if L.id_weight > 0:
            w["id"] = L.id_weight
        return w

    def baseline_term(self) -> str:
        """Name of the baseline's contrast term: ``cosine_<loss.baseline_loss>`` (e.g. ``cosine_sdm``)."""
        return f"cosine_{self.cfg.loss.baseline_loss}"

    def noise(self, batch_size: int, generator: torch.Generator | None, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Standard-normal ``eps_v, eps_t`` [b, K, D] for the sampled points (drawn on the CPU so
        that a seeded generator gives the same points on every device)."""
        K, D = self.cfg.loss.num_samples, self.cfg.head.embed_dim
        e = torch.randn(2, batch_size, K, D, generator=generator)
        return e[0].to(device), e[1].to(device)

    # -- training forward --

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        """Loss terms for one (local) batch.

        Args:
            batch: ``images`` [b, 3, H, W], ``input_ids`` / ``attention_mask`` [b, L] (clean captions),
                ``pids`` [b]; for UA-AMLR also ``mlm_input_ids`` [b, L] (masked captions) and
                ``mlm_labels`` [b, L] (original ids at masked positions, -100 elsewhere).
            generator: CPU generator for the point samples (reproducible runs).

        Returns:
            ``{"terms": {name: scalar}, "stats": {name: detached scalar}}``.
        """
        L, ctx = self.cfg.loss, self.ctx
        pids = batch["pids"]
        img = self.encode_image(batch["images"])
        txt = self.encode_text(batch["input_ids"], batch["attention_mask"])
        terms: dict[str, torch.Tensor] = {}
        stats: dict[str, torch.Tensor] = {}
        mu_v, mu_t = img["mu"].float(), txt["mu"].float()
        with torch.autocast(mu_v.device.type, enabled=False):
            if not self.cfg.probabilistic:
                scale = self.scale("baseline")
                terms[self.baseline_term()] = cosine_contrast_loss(mu_v, mu_t, pids, scale=scale,
                                                                   loss=L.baseline_loss, backend=L.backend, ctx=ctx)
                stats["scale_baseline"] = scale.detach()
            else:
                lv_v, lv_t = img["logvar"].float(), txt["logvar"].float()
                stats["sigma_image"] = (0.5 * lv_v.detach()).exp().mean()
                stats["sigma_text"] = (0.5 * lv_t.detach()).exp().mean()
                if L.dcl_weight > 0:
                    scale, bias = self.scale("dcl"), self.bias("dcl")
                    terms["dcl"] = dcl_loss(mu_v, lv_v, mu_t, lv_t, pids, metric=L.metric, loss=L.term_loss("dcl"),
                                            scale=scale, bias=bias, backend=L.backend, ctx=ctx)
                    stats["scale_dcl"] = scale.detach()
                    if "dcl" in self.bias_names():
                        stats["bias_dcl"] = bias.detach()
                z_v = z_t = None
                if L.pcl_weight > 0 or L.amlr_weight > 0:
                    eps_v, eps_t = self.noise(mu_v.shape[0], generator, mu_v.device)
                    z_v = uca_kernels.losses.sample_points(mu_v, lv_v, L.num_samples, eps_v)  # [b*K, D]
                    z_t = uca_kernels.losses.sample_points(mu_t, lv_t, L.num_samples, eps_t)
                if L.pcl_weight > 0:
                    plab = pids.repeat_interleave(L.num_samples)
                    scale, bias = self.scale("pcl"), self.bias("pcl")
                    siblings = L.pcl_intra_siblings or not L.pcl_intra
                    p = pcl_loss(z_v, z_t, plab, similarity=L.pcl_similarity, scale=scale, loss=L.term_loss("pcl"),
                                 bias=bias, intra=L.pcl_intra and siblings, backend=L.backend, ctx=ctx)
                    if not siblings:
                        p.update(self._intra_without_siblings(z_v, z_t, plab, scale, bias))
                    stats["scale_pcl"] = scale.detach()
                    if "pcl" in self.bias_names():
                        stats["bias_pcl"] = bias.detach()
                    terms.update({f"pcl_{k}": v for k, v in p.items()})
                if L.occlusion_weight > 0:
                    occ = self._encode_copy("image", batch["occluded"])
                    m = occ["mu"].shape[0]
                    terms["occlusion"] = inclusion_kl(mu_v[:m], lv_v[:m], occ["mu"].float(),
                                                      occ["logvar"].float())
                if L.caption_inclusion_weight > 0:
                    vag = self._encode_copy("text", batch["vague_input_ids"], batch["vague_attention_mask"])
                    m = vag["mu"].shape[0]
                    terms["caption_inclusion"] = inclusion_kl(mu_t[:m], lv_t[:m], vag["mu"].float(),
                                                              vag["logvar"].float())
                if L.kl_weight > 0:
                    terms["kl_image"] = uca_kernels.prior_kl(mu_v, lv_v)
                    terms["kl_text"] = uca_kernels.prior_kl(mu_t, lv_t)
        if self.decoder is not None:
            masked = self.text(batch["mlm_input_ids"], batch["attention_mask"])[0]
            points = z_v.reshape(mu_v.shape[0], L.num_samples, -1).to(masked.dtype)
            terms["amlr"] = self.decoder(masked, points, img["tokens"][:, 1:], batch["mlm_labels"],
                                         batch["attention_mask"]).float()
        if self.classifier is not None:
            # cosine classifier shared by both modalities: one prototype per training identity
            w = F.normalize(self.classifier.weight.float(), dim=1)
            logits_v = L.id_scale * F.normalize(mu_v, dim=1) @ w.T
            logits_t = L.id_scale * F.normalize(mu_t, dim=1) @ w.T
            terms["id"] = 0.5 * (F.cross_entropy(logits_v, pids) + F.cross_entropy(logits_t, pids))
        return {"terms": terms, "stats": stats}


    def _encode_copy(self, modality: str, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """An inclusion term's copy (occluded image, vaguer caption) through its tower and head; with
        ``loss.inclusion_head_only`` the tower runs without gradient, so the term trains the head alone."""
        encode = self.encode_image if modality == "image" else self.encode_text
        return encode(*inputs, tower_grad=not self.cfg.loss.inclusion_head_only)

    def _intra_without_siblings(self, z_v, z_t, plab, scale, bias) -> dict[str, torch.Tensor]:
        """The intra terms with each point's own siblings left out (single process)."""
        if self.ctx.distributed:
            raise ValueError("model.loss.pcl_intra_siblings=false runs in one process only (its intra terms are "
                             "materialised per batch); set it to true for data-parallel training")
        L = self.cfg.loss
        kw = dict(similarity=L.pcl_similarity, scale=scale, bias=bias, loss=L.term_loss("pcl"))
        return {"intra_image": intra_without_siblings(z_v, plab, L.num_samples, **kw),
                "intra_text": intra_without_siblings(z_t, plab, L.num_samples, **kw)}


def build_model(cfg: ModelConfig, tokenizer, num_train_ids: int, ctx: DistContext = DistContext()) -> UCAModel:
    """A :class:`UCAModel` sized for ``tokenizer`` (its vocabulary and special tokens)."""
    return UCAModel(cfg, vocab_size=len(tokenizer), special=special_token_ids(tokenizer),
                    num_train_ids=num_train_ids, ctx=ctx)
