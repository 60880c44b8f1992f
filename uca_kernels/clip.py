r"""Drop-in replacements for open_clip's ``ClipLoss`` and ``SigLipLoss`` on the fused contrast op.

Change one import (``from uca_kernels import ClipLoss, SigLipLoss``) and keep the calls::

    loss = ClipLoss()(image_features, text_features, logit_scale)              # CLIP
    loss = SigLipLoss()(image_features, text_features, logit_scale, logit_bias)  # SigLIP

Maths (features as the model returns them, normalised by the model as open_clip's are; s =
``logit_scale``, already exponentiated, b = ``logit_bias``; S = s·I Tᵀ (+ b), B image–text pairs):

- :class:`ClipLoss`: ½ [ (1/B) Σᵢ CE(Sᵢ·, i) + (1/B) Σⱼ CE(S·ⱼ, j) ], the mean of the two
  cross-entropy directions (open_clip's value). With ``labels`` (identities), positives are every
  pair of one identity and each direction is the multi-positive InfoNCE
  LSEⱼ Sᵢⱼ − LSE_{j∈P(i)} Sᵢⱼ (``loss="infonce"``) or IRRA's SDM (``loss="sdm"``).
- :class:`SigLipLoss`: −(1/B) Σᵢⱼ log σ(yᵢⱼ Sᵢⱼ), yᵢⱼ = +1 for positives (the diagonal, or
  the same identity with ``labels``), −1 otherwise (open_clip's value).

Neither ever holds the B × B logits (the op's memory is O(B·D)); every backend of
:func:`uca_kernels.contrast` runs them.

**Data parallel.** Under an initialised process group (or with explicit ``rank`` / ``world_size``,
and ``group``), each rank passes its local features; each pair is computed once across the ranks
(:mod:`uca_kernels.distributed`), the returned value is the loss of the global batch on every rank,
and each rank's gradients are world_size × the global gradients of its inputs, so that
DistributedDataParallel's averaging gives the global gradient. This is open_clip's
``gather_with_grad=True`` result; ``local_loss`` changes only what open_clip reports per rank (the
mean over ranks is the same), so it is accepted and has no effect, as are ``cache_labels``,
``dist_impl`` and ``bidir``. ``labels=None`` means diagonal positives of the global batch.
"""

from __future__ import annotations

from torch import nn

from ._validation import check_choice, check_features, check_labels, check_same_device
from .distributed import DistContext, cross_share, global_value

__all__ = ["ClipLoss", "SigLipLoss"]


def _check_pair(image_features, text_features, labels):
    check_features("image_features", image_features)
    check_features("text_features", text_features, rows=image_features.shape[0], cols=image_features.shape[1])
    check_same_device(image_features=image_features, text_features=text_features)
    if labels is not None:
        labels = check_labels("labels", labels, image_features.shape[0], image_features.device)
    return labels


def _dot_maps(scale, bias):
    def maps(a, b):
        return a[0], b[0], a[0].new_zeros(a[0].shape[0]), b[0].new_zeros(b[0].shape[0]), scale, bias

    return maps


class _DropIn(nn.Module):
    def _init_dist(self, rank, world_size, group, use_horovod, backend):
        if use_horovod:
            raise ValueError("use_horovod=True is not supported: initialise a torch.distributed process group")
        self.rank, self.world_size, self.group, self.backend = rank, world_size, group, backend

    def dist_context(self) -> DistContext:
        """The context of this call: explicit rank / world_size, else the process group (if any)."""
        return DistContext.resolve(self.rank, self.world_size, self.group)

    def _dist_repr(self) -> str:
        s = f", backend={self.backend!r}" if self.backend != "auto" else ""
        return s + (f", rank={self.rank}, world_size={self.world_size}" if self.world_size is not None else "")


class ClipLoss(_DropIn):
    """open_clip's ``ClipLoss`` on the fused op (module docstring).

    Args:
        local_loss, gather_with_grad, cache_labels: open_clip's; accepted for its call signature
            (gradients are always the global ones, as with ``gather_with_grad=True``).
        rank, world_size: this process in its group (default: from the initialised process
            group, else one process).
        use_horovod: not supported (ValueError).
        loss: ``"infonce"`` (CLIP's cross-entropy; multi-positive with ``labels``) or ``"sdm"``.
        backend: ``"auto"`` or a backend name of :func:`uca_kernels.contrast`.
        group: the process group of the collectives (default: the default group).

    ``forward(image_features [B, D], text_features [B, D], logit_scale, output_dict=False, *,
    labels=None)`` returns the scalar loss (``{"contrastive_loss": loss}`` with ``output_dict``);
    ``logit_scale`` is the exponentiated scale (a number or 0-d tensor), ``labels`` [B] identities.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, cache_labels: bool = False,
                 rank: int | None = None, world_size: int | None = None, use_horovod: bool = False, *,
                 loss: str = "infonce", backend: str = "auto", group=None):
        super().__init__()
        self.loss = check_choice("loss", loss, ("infonce", "sdm"))
        self._init_dist(rank, world_size, group, use_horovod, backend)

    def forward(self, image_features, text_features, logit_scale, output_dict: bool = False, *, labels=None):
        labels = _check_pair(image_features, text_features, labels)
        ctx = self.dist_context()
        share = cross_share(_dot_maps(logit_scale, 0.0), (image_features,), (text_features,), labels, labels,
                            loss=self.loss, ctx=ctx, backend=self.backend, reduction="mean")
        value = global_value(share / 2, ctx)  # mean of the two directions, not their sum
        return {"contrastive_loss": value} if output_dict else value

    def extra_repr(self) -> str:
        return f"loss={self.loss!r}" + self._dist_repr()


class SigLipLoss(_DropIn):
    """open_clip's ``SigLipLoss`` on the fused op (module docstring).

    Args:
        cache_labels, dist_impl, bidir: open_clip's; accepted for its call signature (no effect:
            each pair is computed once across ranks whatever the exchange open_clip would use).
        rank, world_size, use_horovod, backend, group: as :class:`ClipLoss`.

    ``forward(image_features [B, D], text_features [B, D], logit_scale, logit_bias=None,
    output_dict=False, *, labels=None)`` returns Σᵢⱼ softplus(−yᵢⱼ Sᵢⱼ) / B over the (global)
    batch; ``logit_scale`` (exponentiated) and ``logit_bias`` are numbers or 0-d tensors (SigLIP
    learns both, starting at 10 and −10; None: bias 0).
    """

    def __init__(self, cache_labels: bool = False, rank: int | None = None, world_size: int | None = None,
                 dist_impl: str | None = None, bidir: bool = True, use_horovod: bool = False, *,
                 backend: str = "auto", group=None):
        super().__init__()
        self._init_dist(rank, world_size, group, use_horovod, backend)

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict: bool = False, *,
                labels=None):
        labels = _check_pair(image_features, text_features, labels)
        ctx = self.dist_context()
        bias = 0.0 if logit_bias is None else logit_bias
        share = cross_share(_dot_maps(logit_scale, bias), (image_features,), (text_features,), labels, labels,
                            loss="sigmoid", ctx=ctx, backend=self.backend, reduction="mean")
        value = global_value(share, ctx)
        return {"contrastive_loss": value} if output_dict else value

    def extra_repr(self) -> str:
        return self._dist_repr().removeprefix(", ")

