"""The benchmark cases, in one place: what is computed, on which inputs, and its analytic cost.

A :class:`Case` is one loss at one feature size and mode; the batch size B is swept separately.

- ``dist``  distribution contrast: ``distribution_contrast_loss(mu_v, logvar_v, mu_t, logvar_t)``,
            a Gaussian metric (``w2``/``kl``) between B images and B texts, loss ``sdm``/``infonce``,
            identity labels. The op sees A, B of width E = 2D.
- ``point`` point contrast: ``point_contrast_loss(..., num_samples=K)["total"]``, cosine similarity
            of K samples per distribution, inter-modal (B·K vs B·K) plus, with ``intra``, the two
            intra-modal terms (a point never its own pair); width E = D.
- ``clip``  the CLIP special case of ``point``: K = 1, inter-modal only, InfoNCE, diagonal labels
            (the only case inf-cl computes).

Cost (DESIGN.md section 6): one pass over S is 2·M·N·E flops; forward is 1 pass, forward+backward
is 4 (forward, recompute, dA, dB). Every provider is credited with this same useful work, so
GFLOP/s compare providers directly (the naive form does more arithmetic than it is credited with).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

__all__ = ["Case", "CPU_CASES", "GPU_CASES", "CI_CASES", "make_inputs", "select_cases"]

DIST_SCALE = 0.05  # logits = -0.05·d: with the inputs below the row softmax is spread, not one-hot
POINT_SCALE = 1 / 0.02  # IRRA's temperature for cosine logits (the library default)


@dataclass(frozen=True)
class Case:
    """One benchmarked computation (the batch size is not part of it)."""

    family: str  # "dist" | "point" | "clip"
    D: int  # Gaussian / point dimension
    backward: bool  # False: forward only (no autograd graph); True: forward + backward
    metric: str = "w2"  # dist: "w2" | "kl"
    loss: str = "sdm"  # "sdm" | "infonce"
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
        return f"clip-D{self.D}-{mode}"

    @property
    def group(self) -> str:
        """The case without D and mode (one plot panel per group, D and mode as line styles)."""
        return self.name.rsplit("-D", 1)[0]

    @property
    def E(self) -> int:
        return 2 * self.D if self.family == "dist" else self.D

    def rows(self, B: int) -> int:
        """M = N of each contrast (B distributions, or B·K points)."""
        return B if self.family == "dist" else B * self.K

    def contrasts(self) -> int:
        return 3 if (self.family == "point" and self.intra) else 1

    def flops(self, B: int) -> float:
        passes = 4 if self.backward else 1
        n = self.rows(B)
        return float(self.contrasts() * passes * 2 * n * n * self.E)

    def as_dict(self) -> dict:
        metric = self.metric if self.family == "dist" else "cosine"
        return {"case": self.name, "group": self.group, "family": self.family, "metric": metric,
                "loss": self.loss, "D": self.D, "E": self.E, "K": self.K, "intra": self.intra,
                "diagonal": self.diagonal, "mode": "fwd+bwd" if self.backward else "fwd"}


def _both_modes(cases):
    return [replace(c, backward=b) for c in cases for b in (False, True)]


def _sweep_cases(dims) -> list[Case]:
    dist = [Case("dist", D, False, metric=m, loss=l) for D in dims for m in ("w2", "kl") for l in ("sdm", "infonce")]
    point = [Case("point", D, False, K=K, intra=True) for D in dims for K in (1, 4, 8)]
    clip = [Case("clip", D, False, loss="infonce", diagonal=True) for D in dims]
    return _both_modes(dist + point + clip)


CPU_CASES = _sweep_cases((256, 512))  # issue 7: D = 256 and 512
GPU_CASES = _sweep_cases((512,))  # E = 1024 for the distribution cases
CI_CASES = [Case("dist", 64, True, metric="w2", loss="sdm"), Case("dist", 64, True, metric="kl", loss="infonce"),
            Case("point", 64, True, K=2, intra=True), Case("clip", 64, True, loss="infonce", diagonal=True)]


def select_cases(cases: list[Case], patterns: str | None) -> list[Case]:
    """Cases whose name contains any of the comma-separated ``patterns`` (all when None)."""
    if not patterns:
        return list(cases)
    pats = [p for p in patterns.split(",") if p]
    return [c for c in cases if any(p in c.name for p in pats)]


def make_inputs(case: Case, B: int, device="cpu", dtype=torch.float32, seed: int = 0) -> dict:
    """The inputs every provider of ``case`` receives, made on ``device`` from a seeded generator.

    Returns a dict with ``mu_v, logvar_v, mu_t, logvar_t`` ([B, D], leaves that require grad when
    ``case.backward``), ``labels`` ([B] int64 identities, or None for diagonal labels), ``scale``
    (a float), and for point/clip cases ``eps_v, eps_t`` ([B, K, D] standard normal noise).
    """
    g = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*shape, std=1.0, mean=0.0):
        return (torch.randn(*shape, generator=g) * std + mean).to(device=device, dtype=dtype)

    x = {"mu_v": randn(B, case.D, std=0.3), "logvar_v": randn(B, case.D, std=0.1, mean=-1.0),
         "mu_t": randn(B, case.D, std=0.3), "logvar_t": randn(B, case.D, std=0.1, mean=-1.0)}
    # Text is a noisy copy of its image so the positive pair stands out (as after some training).
    x["mu_t"] = x["mu_v"] + 0.5 * x["mu_t"]
    for k in ("mu_v", "logvar_v", "mu_t", "logvar_t"):
        x[k] = x[k].contiguous().requires_grad_(case.backward)
    # About two images per identity, as an identity-balanced sampler gives (IRRA-style batches).
    x["labels"] = None if case.diagonal else torch.randint(0, max(1, B // 2), (B,), generator=g).to(device)
    x["scale"] = DIST_SCALE if case.family == "dist" else POINT_SCALE
    if case.family != "dist":
        x["eps_v"] = randn(B, case.K, case.D)
        x["eps_t"] = randn(B, case.K, case.D)
    return x
