r"""Two loss terms that give σ a reason to be where it belongs (single process, materialised: a
batch's B·K points are a few hundred, so the [B·K, B·K] logits are small).

**Intra-modal point contrast without siblings** (``loss.pcl_intra_siblings = false``). The seed's
intra terms take as positives every other point of the same identity, which includes a point's own
K − 1 siblings (samples of the same distribution): pulling siblings together is minimised by σ → 0.
Here a point's siblings are neither positives nor negatives; its positives are the points of the
*other* samples of its identity in the batch (the identity-balanced sampler puts K of them there).
With point logits S (scale·cos + bias, or −scale·‖Δz‖² + bias), valid pairs V = {(i, j): sample(i) ≠
sample(j)} and positives P = V ∩ {same identity}:

- ``sigmoid``: Σ_{(i,j)∈V} softplus(−y_ij S_ij) / n, y = ±1 (each pair once, as the fused op's term);
- ``infonce``: 2 Σᵢ [LSE_{j∈V(i)} S_ij − LSE_{j∈P(i)} S_ij] / n over the rows with a positive (rows
  and columns hold the same values: ×2, as :func:`uca_model.losses.pcl_loss`);
- ``sdm``: 2 Σᵢ Σ_{j∈V(i)} p_ij (log p_ij − log(q_ij + ε)) / n with p the softmax over V(i) and q
  uniform over P(i) (rows without a positive have q = 0, as in the fused op).

**Occlusion inclusion** (``loss.occlusion_weight``). Each of the first ``occlusion_fraction`` of the
batch's images is also encoded with a drawn occluder (:func:`uca_model.data.occlude_batch`), and the
occluded copy's Gaussian is asked to *include* the clean one:

    L_occ = mean_i KL( sg N(μ_c, σ_c²) ‖ N(sg μ_o, σ_o²) )
          = mean_i ½ Σ_d [ log σ_o,d² − log σ_c,d² + (σ_c,d² + Δμ_d²) / σ_o,d² − 1 ],

with sg = stop-gradient, so only σ_o learns from it. Its minimum over σ_o is σ_o,d² = σ_c,d² + Δμ_d²:
the copy gets more σ exactly in the dimensions the occluder moved its mean, never less than the
clean image's (ProLIP's inclusion loss between an image and its masked copy plays the same role).

**Caption inclusion** (``loss.caption_inclusion_weight``). The same KL between a caption and its
vaguer copy, some of its colour words left out (:func:`uca_model.text.vaguer_caption`): "a red
backpack" becomes "a backpack". The copy's σ grows in the dimensions where leaving the colour out
moved its mean, so a caption that does not say a colour learns to be vague where colours are
encoded, and a per-dimension score (``ce``) stops ranking images by what the caption never said.

With ``loss.inclusion_head_only`` the copies go through their towers without gradient: the terms
train the σ heads and nothing else, so they cannot pull the towers' features away from retrieval.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["intra_without_siblings", "inclusion_kl"]

_SDM_EPS = 1e-8


def _point_logits(z: torch.Tensor, similarity: str, scale, bias) -> torch.Tensor:
    if similarity == "cosine":
        u = F.normalize(z, dim=1)
        return scale * (u @ u.T) + bias
    if similarity == "euclidean":
        return -scale * torch.cdist(z, z).square() + bias
    raise ValueError(f"similarity={similarity!r} is not 'cosine' or 'euclidean'")


def intra_without_siblings(z: torch.Tensor, labels: torch.Tensor, num_samples: int, *, similarity: str = "cosine",
                           scale=10.0, bias=0.0, loss: str = "sigmoid") -> torch.Tensor:
    """One modality's intra-modal point term with a point's own siblings left out (module docstring).

    Args:
        z: [n, D] points, row i·K + k = sample k of distribution i (``uca_kernels.losses.sample_points``).
        labels: [n] identity of each point. num_samples: K.
        similarity: "cosine" | "euclidean"; scale, bias: logit = scale·cos + bias (or −scale·‖Δz‖² + bias).
        loss: "sigmoid" | "infonce" | "sdm".
    """
    n = z.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if num_samples < 1 or n % num_samples:
        raise ValueError(f"{n} points are not a whole number of distributions of num_samples={num_samples}")
    S = _point_logits(z, similarity, scale, bias)
    sample = torch.arange(n, device=z.device) // num_samples
    valid = sample[:, None] != sample[None, :]
    pos = (labels[:, None] == labels[None, :]) & valid
    if loss == "sigmoid":
        y = pos.to(S.dtype) * 2 - 1
        return (F.softplus(-y * S) * valid).sum() / n
    S = S.masked_fill(~valid, float("-inf"))
    if loss == "infonce":
        has = pos.any(1)
        rows = torch.logsumexp(S, 1) - torch.logsumexp(S.masked_fill(~pos, float("-inf")), 1)
        return 2.0 * torch.where(has, rows, torch.zeros_like(rows)).sum() / n
    if loss == "sdm":
        logp = torch.log_softmax(S, 1)
        q = pos.to(S.dtype) / pos.sum(1, keepdim=True).clamp(min=1)
        terms = logp.exp() * (logp - torch.log(q + _SDM_EPS))
        return 2.0 * torch.where(valid, terms, torch.zeros_like(terms)).sum() / n
    raise ValueError(f"loss={loss!r} is not 'sigmoid', 'infonce' or 'sdm'")


def inclusion_kl(mu_clean: torch.Tensor, logvar_clean: torch.Tensor, mu_occ: torch.Tensor,
                 logvar_occ: torch.Tensor) -> torch.Tensor:
    """mean_i KL(sg N_clean,i ‖ N(sg μ_occ,i, σ_occ,i²)) over [m, D] Gaussians: only ``logvar_occ``
    gets a gradient (module docstring)."""
    if not (mu_clean.shape == logvar_clean.shape == mu_occ.shape == logvar_occ.shape):
        raise ValueError("clean and occluded Gaussians must have the same [m, D] shapes, got "
                         f"{[tuple(t.shape) for t in (mu_clean, logvar_clean, mu_occ, logvar_occ)]}")
    lv_c, dmu2 = logvar_clean.detach(), (mu_clean.detach() - mu_occ.detach()).square()
    kl = 0.5 * (logvar_occ - lv_c + (lv_c.exp() + dmu2) * (-logvar_occ).exp() - 1.0).sum(1)
    return kl.mean()
