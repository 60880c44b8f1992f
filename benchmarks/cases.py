"""The benchmark cases, in one place: what is computed, on which inputs, and its analytic cost.

A :class:`Case` is one loss at one feature size and mode; the batch size B is swept separately.

- ``dist``  distribution contrast: ``distribution_contrast_loss(mu_v, logvar_v, mu_t, logvar_t)``,
            a Gaussian metric (``w2``/``kl``/``csd``) between B images and B texts, loss
            ``sdm``/``infonce``/``sigmoid``, identity labels. The op sees A, B of width E = 2D
            (``csd``: E = D, its σ enter only the row and column terms; ``jeffreys``: 4D).
- ``point`` point contrast: ``point_contrast_loss(..., num_samples=K)["total"]``, cosine similarity
            of K samples per distribution, inter-modal (B·K vs B·K) plus, with ``intra``, the two
            intra-modal terms (a point never its own pair); width E = D.
- ``clip``  the CLIP special case of ``point``: K = 1, inter-modal only, diagonal labels; InfoNCE
            (the only case inf-cl computes) or the pairwise sigmoid (SigLIP: the only case
            open_clip's ``SigLipLoss`` computes).

Cost (docs/design.md section 2): one pass over S is 2·M·N·E flops; forward is 1 pass, forward+backward
is 4 (forward, recompute, dA, dB). Every provider is credited with this same useful work, so
GFLOP/s compare providers directly (the naive form does more arithmetic than it is credited with).
The sigmoid loss is credited with the same 4 passes so that its GFLOP/s compare with the other
losses', but its ideal is 3 (docs/design.md section 2: it needs no row statistics, so when only the
scalar is wanted the forward forms dA and dB itself): :attr:`Case.ideal_passes` and the rows'
``ideal_passes`` say so, and the markdown reports the four-matmul floor scaled to it.

Logits: ``sdm``/``infonce`` use :data:`DIST_SCALE` / :data:`POINT_SCALE` and no bias (softmax losses
do not depend on a bias). ``sigmoid`` gets SigLIP-like logits (:func:`logit_params`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

__all__ = ["Case", "CPU_CASES", "GPU_CASES", "CI_CASES", "logit_params", "make_inputs", "select_cases"]

DIST_SCALE = 0.05  # logits = -0.05·d: with the inputs below the row softmax is spread, not one-hot
POINT_SCALE = 1 / 0.02  # IRRA's temperature for cosine logits (the library default)

# The input model of make_inputs, per dimension: μᵛ ~ N(0, MU_STD²), μᵗ = μᵛ + TEXT_NOISE·N(0, MU_STD²),
# log σ² ~ N(LOGVAR_MEAN, LOGVAR_STD²) on both sides. logit_params derives the sigmoid logits from it.
MU_STD = 0.3
TEXT_NOISE = 0.5
LOGVAR_MEAN = -1.0
LOGVAR_STD = 0.1

# Sigmoid logits (SigLIP-like). SigLIP starts from scale 10, bias -10 on cosine logits: every pair
# sits near S = -10, so the B - 1 negatives of a row add only about B·e^-10 and the loss is O(1) per
# row rather than O(B). Here the bias puts a typical matching pair at the decision boundary
# (S = SIGMOID_POS_LOGIT = 0: loss ln 2, the largest gradient, as partway through training) and a
# typical non-matching pair at SigLIP's S = SIGMOID_NEG_LOGIT = -10: a row's loss is then ln 2 per
# matching pair plus about B·e^-10 (0.4 at B = 8192) from its negatives, and both kinds of pairs
# carry gradient. Same-identity pairs other than the diagonal are independent draws of the input
# model (as in the sdm/infonce cases), so they sit with the negatives at S ≈ -10 with y = +1: about
# two per row, loss ≈ 10 each. Measured at B = 256, D = 256: w2 and csd 20.6, clip (diagonal labels)
# 2.3, point K = 4 with intra terms 264 (3 contrasts, 4 samples of each same-identity image); none
# of these grows with B. The sdm/infonce logits would not do: -DIST_SCALE·d puts every pair near
# S ≈ -2.6 (D = 256), where the B negatives (softplus(-2.6) ≈ 0.07 each) make the loss O(B).
SIGMOID_POS_LOGIT = 0.0
SIGMOID_NEG_LOGIT = -10.0
# Points: cosine logits with the library's scale 1/0.02 and SigLIP's bias -10. A sampled image point
# and its own text point have cosine ≈ 0.19 under the input model (the noise σ ≈ 0.6 dominates
# μ ~ 0.3), so S ≈ -0.4 for them and -10 ± 50/√D for unrelated points (the spread of a random
# cosine, ±3 at D = 256, makes the negatives weigh more than in the distribution cases).
SIGMOID_POINT_BIAS = -10.0


@dataclass(frozen=True)
class Case:
    """One benchmarked computation (the batch size is not part of it)."""

    family: str  # "dist" | "point" | "clip"
    D: int  # Gaussian / point dimension
    backward: bool  # False: forward only (no autograd graph); True: forward + backward
    metric: str = "w2"  # dist: "w2" | "kl" | "csd"
    loss: str = "sdm"  # "sdm" | "infonce" | "sigmoid"
    K: int = 1  # point/clip: samples per distribution
    intra: bool = False  # point: also the image-image and text-text terms
    diagonal: bool = False  # labels=None (pair i matches only pair i) instead of identity labels

    @property
    def name(self) -> str:
        mode = "fwdbwd" if self.backward else "fwd"
        if self.family == "dist":
            return f"dist-{self.metric}-{self.loss}-D{self.D}-{mode}"
        if self.family == "point":
            return f"point-K{self.K}{'-intra' if self.intra else ''}-{self.loss}-D{self.D}-{mode}"
        loss = "" if self.loss == "infonce" else f"-{self.loss}"  # "clip-D…": the InfoNCE case's old name
        return f"clip{loss}-D{self.D}-{mode}"

    @property
    def group(self) -> str:
        """The case without D and mode (one plot panel per group, D and mode as line styles)."""
        return self.name.rsplit("-D", 1)[0]

    @property
    def E(self) -> int:
        """Width of the op's A and B (docs/design.md section 2): 2D for w2/kl, 4D for jeffreys, D for csd
        and points."""
        if self.family != "dist":
            return self.D
        return {"csd": 1, "jeffreys": 4}.get(self.metric, 2) * self.D

    def rows(self, B: int) -> int:
        """M = N of each contrast (B distributions, or B·K points)."""
        return B if self.family == "dist" else B * self.K

    def contrasts(self) -> int:
        return 3 if (self.family == "point" and self.intra) else 1

    @property
    def passes(self) -> int:
        """S passes credited per contrast (the flops and GFLOP/s of every provider): 1 forward, 4 with
        backward, for every loss (so that GFLOP/s compare across losses)."""
        return 4 if self.backward else 1

    @property
    def ideal_passes(self) -> int:
        """The fewest S passes the computation needs: 3 for sigmoid forward+backward (no statistics:
        one sweep forms S, dA and dB; docs/design.md section 2), else :attr:`passes`."""
        return 3 if (self.backward and self.loss == "sigmoid") else self.passes

    def gemms(self) -> int:
        """Matmuls of shape [M, E] @ [E, N] in the four-matmul floor: ``passes`` per contrast."""
        return self.contrasts() * self.passes

    def flops(self, B: int) -> float:
        n = self.rows(B)
        return float(self.gemms() * 2 * n * n * self.E)

    def as_dict(self) -> dict:
        metric = self.metric if self.family == "dist" else "cosine"
        scale, bias = logit_params(self)
        return {"case": self.name, "group": self.group, "family": self.family, "metric": metric,
                "loss": self.loss, "D": self.D, "E": self.E, "K": self.K, "intra": self.intra,
                "diagonal": self.diagonal, "mode": "fwd+bwd" if self.backward else "fwd",
                "scale": scale, "bias": bias, "passes": self.passes, "ideal_passes": self.ideal_passes}


def _expected_distance(metric: str, D: int, matching: bool) -> float:
    """E[d(i, j)] under the input model of :func:`make_inputs`, for an image and its own text
    (``matching``) or an unrelated pair (all D dimensions alike)."""
    dmu2 = (TEXT_NOISE**2 + (0.0 if matching else 2.0)) * MU_STD**2  # E[Δμ²] per dimension
    m, s2 = LOGVAR_MEAN, LOGVAR_STD**2  # log σ² ~ N(m, s2): log-normal moments
    e_var, e_std, e_inv_var = math.exp(m + s2 / 2), math.exp(m / 2 + s2 / 8), math.exp(-m + s2 / 2)
    if metric == "w2":  # Δμ² + (σᵢ − σⱼ)²
        per = dmu2 + 2 * (e_var - e_std**2)
    elif metric == "csd":  # Δμ² + σᵢ² + σⱼ²
        per = dmu2 + 2 * e_var
    elif metric == "kl":  # ½ [log σⱼ² − log σᵢ² + (σᵢ² + Δμ²)/σⱼ² − 1]
        per = 0.5 * ((e_var + dmu2) * e_inv_var - 1)
    elif metric == "jeffreys":  # ½ [(σᵢ² + Δμ²)/σⱼ² + (σⱼ² + Δμ²)/σᵢ² − 2]
        per = (e_var + dmu2) * e_inv_var - 1
    else:
        raise ValueError(f"no expected distance for metric {metric!r}")
    return D * per


def logit_params(case: Case) -> tuple[float, float]:
    """(scale, bias) of ``case``'s logits: S = −scale·d + bias (dist) or scale·cos + bias (points).

    ``sdm``/``infonce``: :data:`DIST_SCALE` or :data:`POINT_SCALE`, bias 0. ``sigmoid`` (SigLIP-like,
    see the comment at :data:`SIGMOID_POS_LOGIT`): distributions get the scale and bias that put the
    expected distance of a matching pair at S = 0 and of an unrelated pair at S = −10, so the
    logits do not depend on D; points get scale 1/0.02 and bias −10. Values are rounded to 4
    significant digits so that the rows show them readably; they depend only on the case (never
    on B, dtype or seed), so the float64 check sees the same logits as the timed run.
    """
    if case.loss != "sigmoid":
        return (DIST_SCALE if case.family == "dist" else POINT_SCALE), 0.0
    if case.family != "dist":
        return POINT_SCALE, SIGMOID_POINT_BIAS
    d_pos = _expected_distance(case.metric, case.D, True)
    d_neg = _expected_distance(case.metric, case.D, False)
    scale = (SIGMOID_POS_LOGIT - SIGMOID_NEG_LOGIT) / (d_neg - d_pos)
    bias = SIGMOID_POS_LOGIT + scale * d_pos
    return float(f"{scale:.4g}"), float(f"{bias:.4g}")


def _both_modes(cases):
    return [replace(c, backward=b) for c in cases for b in (False, True)]


def sigmoid_cases(dims, K: int = 4) -> list[Case]:
    """The pairwise sigmoid cases: W2 and CSD distributions, K points with intra terms
    (identity labels), and the SigLIP case (clip, diagonal labels), forward only."""
    return ([Case("dist", D, False, metric=m, loss="sigmoid") for D in dims for m in ("w2", "csd")]
            + [Case("point", D, False, K=K, intra=True, loss="sigmoid") for D in dims]
            + [Case("clip", D, False, loss="sigmoid", diagonal=True) for D in dims])


def _sweep_cases(dims) -> list[Case]:
    dist = [Case("dist", D, False, metric=m, loss=l) for D in dims for m in ("w2", "kl") for l in ("sdm", "infonce")]
    point = [Case("point", D, False, K=K, intra=True) for D in dims for K in (1, 4, 8)]
    clip = [Case("clip", D, False, loss="infonce", diagonal=True) for D in dims]
    return _both_modes(dist + point + clip + sigmoid_cases(dims))


CPU_CASES = _sweep_cases((256, 512))  # D = 256 and 512
GPU_CASES = _sweep_cases((512,))  # E = 1024 for the distribution cases
CI_CASES = [Case("dist", 64, True, metric="w2", loss="sdm"), Case("dist", 64, True, metric="kl", loss="infonce"),
            Case("point", 64, True, K=2, intra=True), Case("clip", 64, True, loss="infonce", diagonal=True),
            *(replace(c, backward=True) for c in sigmoid_cases((64,), K=2))]


def select_cases(cases: list[Case], patterns: str | None) -> list[Case]:
    """Cases whose name contains any of the comma-separated ``patterns`` (all when None)."""
    if not patterns:
        return list(cases)
    pats = [p for p in patterns.split(",") if p]
    return [c for c in cases if any(p in c.name for p in pats)]


def make_inputs(case: Case, B: int, device="cpu", dtype=torch.float32, seed: int = 0,
                draw_on_device: bool = False) -> dict:
    """The inputs every provider of ``case`` receives, made on ``device`` from a seeded generator.

    Returns a dict with ``mu_v, logvar_v, mu_t, logvar_t`` ([B, D], leaves that require grad when
    ``case.backward``), ``labels`` ([B] int64 identities, or None for diagonal labels), ``scale``
    and ``bias`` (floats, :func:`logit_params`), and for point/clip cases ``eps_v, eps_t``
    ([B, K, D] standard normal noise). The numbers are drawn on the CPU (the same on every
    device), or with ``draw_on_device`` by a generator on ``device`` (the same distribution, other
    numbers; seconds faster at the GPU's large batches).
    """
    g = torch.Generator(device=device if draw_on_device else "cpu").manual_seed(seed)

    def randn(*shape, std=1.0, mean=0.0):
        return (torch.randn(*shape, generator=g, device=g.device) * std + mean).to(device=device, dtype=dtype)

    x = {"mu_v": randn(B, case.D, std=MU_STD), "logvar_v": randn(B, case.D, std=LOGVAR_STD, mean=LOGVAR_MEAN),
         "mu_t": randn(B, case.D, std=MU_STD), "logvar_t": randn(B, case.D, std=LOGVAR_STD, mean=LOGVAR_MEAN)}
    # Text is a noisy copy of its image so the positive pair stands out (as after some training).
    x["mu_t"] = x["mu_v"] + TEXT_NOISE * x["mu_t"]
    for k in ("mu_v", "logvar_v", "mu_t", "logvar_t"):
        x[k] = x[k].contiguous().requires_grad_(case.backward)
    # About two images per identity, as an identity-balanced sampler gives (IRRA-style batches).
    x["labels"] = None if case.diagonal else \
        torch.randint(0, max(1, B // 2), (B,), generator=g, device=g.device).to(device)
    x["scale"], x["bias"] = logit_params(case)
    if case.family != "dist":
        x["eps_v"] = randn(B, case.K, case.D)
        x["eps_t"] = randn(B, case.K, case.D)
    return x
