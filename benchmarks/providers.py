"""The providers, in one place: every way of computing a case's loss that the benchmarks compare.

Each provider maps a case's inputs (:func:`benchmarks.cases.make_inputs`) to the same scalar loss:

==============  ===================================================================================
``cpu``         the library's fused backends, through the public entry points with ``backend=``
``triton``      (never an M×N matrix); whichever are built and usable on the device
``cuda``
``reference``   the library's materialised plain-PyTorch form (GEMM of the feature maps, then
                the B×B logit matrix and the loss on it)
``compile``     ``torch.compile`` of ``reference``
``naive``       the broadcast form research code writes today (PCME++/IRRA style): pairwise
                distances or cosines through [M, N, D] intermediates, then an IRRA-style loss on
                the materialised logits
``keops``       pykeops LazyTensor reductions of the same W2/KL log-sum-exp (distribution cases;
                CPU and GPU; when installed)
``infcl``       inf-cl's ``cal_inf_loss`` (GPU, CLIP case only: diagonal-label InfoNCE on points;
                when installed)
==============  ===================================================================================

:func:`skip_reason` says why a provider cannot run a case here (missing package, wrong device,
unsupported case); the harness records that as "skipped", not as an error.
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch
import torch.nn.functional as F

import uca_kernels
from uca_kernels import dispatch

from .cases import Case

__all__ = ["FUSED", "PROVIDERS", "loss_fn", "min_peak_bytes", "skip_reason"]

FUSED = ("cuda", "triton", "cpu")
PROVIDERS = (*FUSED, "reference", "compile", "naive", "keops", "infcl")
SDM_EPS = 1e-8  # as in the library (and IRRA)


# -- the library: fused backends, reference, torch.compile of the reference ------------------------


def _library_loss(case: Case, x: dict, backend: str) -> torch.Tensor:
    if case.family == "dist":
        return uca_kernels.distribution_contrast_loss(
            x["mu_v"], x["logvar_v"], x["mu_t"], x["logvar_t"], labels=x["labels"], metric=case.metric,
            loss=case.loss, scale=x["scale"], backend=backend)
    return uca_kernels.point_contrast_loss(
        x["mu_v"], x["logvar_v"], x["mu_t"], x["logvar_t"], labels=x["labels"], num_samples=case.K,
        eps_v=x["eps_v"], eps_t=x["eps_t"], scale=x["scale"], loss=case.loss, intra=case.intra,
        backend=backend)["total"]


_COMPILED: dict = {}


def _compiled_reference(case: Case, x: dict) -> torch.Tensor:
    # One compiled function per case; the batch size is marked dynamic so one graph serves every B.
    if case not in _COMPILED:
        _COMPILED[case] = torch.compile(lambda xx: _library_loss(case, xx, "reference"), dynamic=True)
    return _COMPILED[case](x)


# -- naive: [M, N, D] broadcasts and an IRRA-style loss on the materialised logits -----------------


def _naive_gaussian_logits(x: dict, metric: str) -> torch.Tensor:
    mu_v, lv_v, mu_t, lv_t = x["mu_v"], x["logvar_v"], x["mu_t"], x["logvar_t"]
    dmu2 = (mu_v[:, None, :] - mu_t[None, :, :]) ** 2  # [B, B, D]
    if metric == "w2":
        std_v, std_t = torch.exp(0.5 * lv_v), torch.exp(0.5 * lv_t)
        d = (dmu2 + (std_v[:, None, :] - std_t[None, :, :]) ** 2).sum(-1)
    else:  # kl(image || text)
        var_v, var_t = lv_v.exp(), lv_t.exp()
        d = 0.5 * (lv_t[None, :, :] - lv_v[:, None, :] + (var_v[:, None, :] + dmu2) / var_t[None, :, :] - 1).sum(-1)
    return -x["scale"] * d


def _naive_direction(S: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor | None, loss: str) -> torch.Tensor:
    """Mean over rows of the loss of a materialised logit matrix (IRRA's ``compute_sdm`` shape,
    extended with self-exclusion and rows without positives, which count 0 as in the library)."""
    if valid is not None:
        S = S.masked_fill(~valid, float("-inf"))
        pos = pos & valid
    npos = pos.sum(1, keepdim=True)
    if loss == "sdm":
        labels_distribute = pos / npos.clamp(min=1)
        pred = F.softmax(S, dim=1)
        log_pred = F.log_softmax(S, dim=1)
        if valid is not None:
            log_pred = log_pred.masked_fill(~valid, 0.0)
        per_row = (pred * (log_pred - torch.log(labels_distribute + SDM_EPS))).sum(1)
    else:  # multi-positive InfoNCE
        S_pos = torch.where(npos > 0, S.masked_fill(~pos, float("-inf")), 0.0)
        per_row = torch.logsumexp(S, 1) - torch.logsumexp(S_pos, 1)
    return torch.where(npos[:, 0] > 0, per_row, 0.0).mean()


def _naive_loss(case: Case, x: dict) -> torch.Tensor:
    B = x["mu_v"].shape[0]
    labels = x["labels"] if x["labels"] is not None else torch.arange(B, device=x["mu_v"].device)
    if case.family == "dist":
        S = _naive_gaussian_logits(x, case.metric)
        pos = labels[:, None] == labels[None, :]
        return _naive_direction(S, pos, None, case.loss) + _naive_direction(S.t(), pos.t(), None, case.loss)
    zv = (x["mu_v"][:, None, :] + torch.exp(0.5 * x["logvar_v"])[:, None, :] * x["eps_v"]).flatten(0, 1)
    zt = (x["mu_t"][:, None, :] + torch.exp(0.5 * x["logvar_t"])[:, None, :] * x["eps_t"]).flatten(0, 1)
    lab = labels.repeat_interleave(case.K)
    pos = lab[:, None] == lab[None, :]

    def term(za, zb, exclude_self):
        S = x["scale"] * F.cosine_similarity(za[:, None, :], zb[None, :, :], dim=-1)  # [BK, BK, D] inside
        valid = ~torch.eye(len(za), dtype=torch.bool, device=za.device) if exclude_self else None
        return _naive_direction(S, pos, valid, case.loss) + _naive_direction(S.t(), pos, valid, case.loss)

    total = term(zv, zt, False)
    if case.intra:
        total = total + term(zv, zv, True) + term(zt, zt, True)
    return total


# -- pykeops: LazyTensor reductions of the same log-sum-exp ----------------------------------------


def _keops_direction(S, pos, log_n, dim: int, loss: str) -> torch.Tensor:
    """Mean over the kept axis of the loss, from KeOps reductions over ``dim`` (1: rows, 0: cols)."""
    lse = S.logsumexp(dim=dim).squeeze(-1)
    if loss == "infonce":
        per = lse - (S + (pos - 1) * 1e30).logsumexp(dim=dim).squeeze(-1)  # −1e30 off the positives
    else:  # sdm: Σ p (log p − log(q + ε)) = Σ p S − LSE − P_pos·log(1/n + ε) − (1 − P_pos)·log ε
        ps, p_pos = S.sumsoftmaxweight(S.concat(pos), dim=dim).unbind(-1)
        log_q = torch.log(torch.exp(-log_n) + SDM_EPS)
        per = ps - lse - p_pos * log_q - (1 - p_pos) * math.log(SDM_EPS)
    return per.mean()  # every row has a positive (itself, or its pair's identity)


def _keops_loss(case: Case, x: dict) -> torch.Tensor:
    from pykeops.torch import LazyTensor

    mu_v, lv_v, mu_t, lv_t = x["mu_v"], x["logvar_v"], x["mu_t"], x["logvar_t"]
    B, D = mu_v.shape
    if case.metric == "w2":  # ‖[μ, σ]_i − [μ, σ]_j‖²
        zi = LazyTensor(torch.cat([mu_v, torch.exp(0.5 * lv_v)], 1)[:, None, :])
        zj = LazyTensor(torch.cat([mu_t, torch.exp(0.5 * lv_t)], 1)[None, :, :])
        d = ((zi - zj) ** 2).sum(-1)
    else:  # ½ Σ [(σᵢ² + Δμ²)/σⱼ²] + row and column terms
        mi, vi = LazyTensor(mu_v[:, None, :]), LazyTensor(lv_v.exp()[:, None, :])
        mj, ivj = LazyTensor(mu_t[None, :, :]), LazyTensor((-lv_t).exp()[None, :, :])
        ri = LazyTensor((-0.5 * lv_v.sum(1) - 0.5 * D)[:, None, None])
        cj = LazyTensor((0.5 * lv_t.sum(1))[None, :, None])
        d = 0.5 * ((vi + (mi - mj) ** 2) * ivj).sum(-1) + ri + cj
    scale = torch.as_tensor(-x["scale"], dtype=mu_v.dtype, device=mu_v.device).reshape(1)
    S = LazyTensor(scale) * d
    labels = x["labels"] if x["labels"] is not None else torch.arange(B, device=mu_v.device)
    lab = labels.to(mu_v.dtype)  # exact for identities < 2**24
    li, lj = LazyTensor(lab[:, None, None]), LazyTensor(lab[None, :, None])
    pos = (0.5 - (li - lj) ** 2).step()  # 1 where the identities match
    _, inv, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    log_n = counts[inv].to(mu_v.dtype).log()  # both directions: labels are shared
    return _keops_direction(S, pos, log_n, 1, case.loss) + _keops_direction(S, pos, log_n, 0, case.loss)


# -- inf-cl ----------------------------------------------------------------------------------------


def _infcl_loss(case: Case, x: dict) -> torch.Tensor:
    from inf_cl import cal_inf_loss

    zv = (x["mu_v"] + torch.exp(0.5 * x["logvar_v"]) * x["eps_v"][:, 0]).float()
    zt = (x["mu_t"] + torch.exp(0.5 * x["logvar_t"]) * x["eps_t"][:, 0]).float()
    a, b = F.normalize(zv, dim=1), F.normalize(zt, dim=1)
    scale = torch.tensor(x["scale"], device=a.device)
    return cal_inf_loss(a, b, scale=scale) + cal_inf_loss(b, a, scale=scale)  # mean rows + mean cols


# -- the table -------------------------------------------------------------------------------------


def min_peak_bytes(name: str, case: Case, B: int, dtype: torch.dtype = torch.float32) -> float:
    """An estimate from below of the peak memory of ``name`` on ``case`` at batch ``B`` where it is
    large by construction (0 elsewhere), so that a sweep refuses a first point that cannot fit
    rather than running into the out-of-memory killer. ``naive`` holds about three [M, N, D]
    tensors at once in the forward, and 3 + 2.5 per contrast with backward (measured on CPU:
    3.0-4.0 and 6.2 for one contrast, 10.9 for three)."""
    if name != "naive":
        return 0.0
    n = case.rows(B)
    per = n * n * case.D * torch.finfo(dtype).bits / 8
    return per * (3 + 2.5 * case.contrasts() if case.backward else 3)




def skip_reason(name: str, case: Case, device: str, dtype: torch.dtype = torch.float32) -> str | None:
    """Why ``name`` cannot run ``case`` on ``device`` here, or None when it can."""
    if name in FUSED:
        if name == "triton" and device == "cpu" and not os.environ.get("UCA_BENCH_TRITON_CPU"):
            return ("the Triton CPU interpreter is for tests, not timing "
                    "(to force: UCA_BENCH_TRITON_CPU=1 TRITON_INTERPRET=1)")
        probe = torch.zeros(2, 2, device=device, dtype=dtype)
        reasons = dispatch.get_backend(name).not_supported_reasons(A=probe, B=probe, loss=case.loss,
                                                                   exclude_self=case.intra, explicit=True)
        return "; ".join(reasons) or None
    if name == "keops":
        if importlib.util.find_spec("pykeops") is None:
            return "pykeops is not installed"
        if case.family != "dist":
            return "compared on the W2/KL distribution cases only"
        if dtype not in (torch.float32, torch.float64):
            return f"not set up for {dtype}"
    if name == "infcl":
        if importlib.util.find_spec("inf_cl") is None:
            return "inf-cl is not installed"
        if device != "cuda":
            return "inf-cl runs on CUDA only"
        if case.family != "clip":
            return "inf-cl computes diagonal-label InfoNCE on points only (the clip case)"
        if case.D % 256:
            return "inf-cl needs D divisible by its head_dim 256"
    return None


def loss_fn(name: str, case: Case, x: dict) -> torch.Tensor:
    """The scalar loss of ``case`` on inputs ``x`` computed by provider ``name``."""
    if name in FUSED or name == "reference":
        return _library_loss(case, x, name)
    if name == "compile":
        return _compiled_reference(case, x)
    if name == "naive":
        return _naive_loss(case, x)
    if name == "keops":
        return _keops_loss(case, x)
    if name == "infcl":
        return _infcl_loss(case, x)
    raise ValueError(f"unknown provider {name!r}; choose from {', '.join(PROVIDERS)}")
