"""Fused probabilistic contrastive losses: pairwise Gaussian similarity and sampled-point
contrast that never materialise the B x B logit matrix.

Public API::

    gaussian_distance, feature_maps            # uca_kernels.gaussian
    contrast, contrast_reference, reduce_losses  # uca_kernels.contrast (the fused op)
    contrast_row_share, combine_stats          # a share of the rows (data-parallel softmax terms)
    distribution_contrast_loss, point_contrast_loss, prior_kl,
    DistributionContrastLoss, PointContrastLoss, PriorKLLoss  # uca_kernels.losses
    ClipLoss, SigLipLoss                       # uca_kernels.clip (drop-ins for open_clip's)
    DistContext                                # uca_kernels.distributed (data-parallel losses)
    deferred_finite_checks, FiniteChecks       # NaN/inf checks without a host sync per call
    gpu_chunking                               # rows per vendor-GEMM chunk of the GPU backends
"""

from . import _ext  # noqa: F401  (loads uca_kernels._C and registers its autograd)
from ._validation import FiniteChecks, deferred_finite_checks
from ._version import __version__
from .clip import ClipLoss, SigLipLoss
from ._registry import gpu_chunking
from .contrast import LOSSES, combine_stats, contrast, contrast_reference, contrast_row_share, reduce_losses
from .distributed import DistContext
from .gaussian import METRICS, feature_maps, gaussian_distance
from .losses import (
    DistributionContrastLoss,
    PointContrastLoss,
    PriorKLLoss,
    distribution_contrast_loss,
    point_contrast_loss,
    prior_kl,
)

__all__ = [
    "gpu_chunking",
    "LOSSES",
    "METRICS",
    "combine_stats",
    "contrast",
    "contrast_reference",
    "contrast_row_share",
    "reduce_losses",
    "DistContext",
    "feature_maps",
    "gaussian_distance",
    "distribution_contrast_loss",
    "point_contrast_loss",
    "prior_kl",
    "DistributionContrastLoss",
    "PointContrastLoss",
    "PriorKLLoss",
    "ClipLoss",
    "SigLipLoss",
    "FiniteChecks",
    "deferred_finite_checks",
]
