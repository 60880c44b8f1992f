"""The providers, in one place: every way of computing a case's loss that the benchmarks compare.

Each provider maps a case's inputs (:func:`benchmarks.cases.make_inputs`) to the same scalar loss:

==============  ===================================================================================
``cpu``         the library's fused backends, through the public entry points with ``backend=``
``triton``      (never an M×N matrix); whichever are built and usable on the device. On a GPU
``cuda``        ``triton`` and ``cuda`` run their default design: vendor GEMMs in row chunks with
                fused epilogues
``triton-tiles`` the same GPU backends under ``uca_kernels.gpu_chunking(chunk_rows=-1)``: their
``cuda-tiles``  older fully fused tile kernels (skipped where the op has no ``chunk_rows`` yet)
``reference``   the library's materialised plain-PyTorch form (GEMM of the feature maps, then
                the B×B logit matrix and the loss on it)
``compile``     ``torch.compile`` of ``reference``
``chunked``     the library's feature maps, then the loss in row chunks of the materialised logits
                with ordinary torch ops, each chunk under ``torch.utils.checkpoint`` (what a user
                writes in twenty lines; both directions for the softmax losses, one for sigmoid)
``naive``       the broadcast form research code writes today (PCME++/IRRA style): pairwise
                distances or cosines through [M, N, D] intermediates, then an IRRA-style loss on
                the materialised logits (sigmoid: SigLIP's ``-logsigmoid(y·S).sum() / M``)
``keops``       pykeops LazyTensor reductions of the same W2/KL/CSD losses (distribution cases;
                CPU and GPU; when installed): log-sum-exps, or the sigmoid's Σ softplus(−y·S)
``infcl``       inf-cl's ``cal_inf_loss`` (GPU, CLIP case only: diagonal-label InfoNCE on points;
                when installed)
``open_clip``   open_clip's ``SigLipLoss`` with world_size = 1 (the clip-sigmoid case only:
                diagonal labels; when installed, ``pip install -r benchmarks/requirements.txt``).
                Its value is Σᵢⱼ ℓᵢⱼ / B, exactly the library's sigmoid "mean" (no other factor)
``open_clip-chunked`` the same with its ``chunk_size`` option, where the installed version has one
``matmul4``     the arithmetic floor, not a loss: per contrast, 4 ``torch.matmul`` [M, E] @ [E, N]
                for forward+backward (1 for forward): the work every provider is credited with
                (:meth:`Case.flops`). The sigmoid's ideal is 3 of the 4 (``Case.ideal_passes``)
==============  ===================================================================================

Every loss provider returns the same value as the library's public function on the same inputs:
``sdm``/``infonce`` mean over rows + mean over columns per contrast, ``sigmoid`` Σᵢⱼ ℓᵢⱼ / M
(each pair once, SigLIP's normalisation), summed over the contrasts of a point case.

:func:`skip_reason` says why a provider cannot run a case here (missing package, wrong device,
unsupported case); the harness records that as "skipped", not as an error.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os

import torch
import torch.nn.functional as F

import uca_kernels
from uca_kernels import dispatch

from .cases import Case

__all__ = ["FLOOR", "FUSED", "PROVIDERS", "SWEEP_PROVIDERS", "TILES", "chunked_contrast", "chunked_rows",
           "floor_step", "fused_design", "is_fused", "loss_fn", "materialised_peak_bytes", "min_peak_bytes",
           "skip_reason"]

FUSED = ("cuda", "triton", "cpu")
TILES = {"triton-tiles": "triton", "cuda-tiles": "cuda"}  # provider → backend run with chunk_rows = -1
FLOOR = "matmul4"  # the four-matmul floor (not a loss: it is timed, never checked)
SWEEP_PROVIDERS = (*FUSED, "reference", "compile", "naive", "keops", "infcl", "open_clip", FLOOR)  # the sweep's default
PROVIDERS = (*FUSED, *TILES, "reference", "compile", "chunked", "naive", "keops", "infcl", "open_clip",
             "open_clip-chunked", FLOOR)
SDM_EPS = 1e-8  # as in the library (and IRRA)
NAIVE_METRICS = ("w2", "kl", "csd")  # what _naive_gaussian_logits and _keops_loss write out


# -- the library: fused backends, reference, torch.compile of the reference ------------------------


def _library_loss(case: Case, x: dict, backend: str) -> torch.Tensor:
    if case.family == "dist":
        return uca_kernels.distribution_contrast_loss(
            x["mu_v"], x["logvar_v"], x["mu_t"], x["logvar_t"], labels=x["labels"], metric=case.metric,
            loss=case.loss, scale=x["scale"], bias=x["bias"], backend=backend)
    return uca_kernels.point_contrast_loss(
        x["mu_v"], x["logvar_v"], x["mu_t"], x["logvar_t"], labels=x["labels"], num_samples=case.K,
        eps_v=x["eps_v"], eps_t=x["eps_t"], scale=x["scale"], loss=case.loss, intra=case.intra,
        backend=backend, bias=x["bias"])["total"]


def is_fused(name: str) -> bool:
    """A fused backend of the library (any design)."""
    return name in FUSED or name in TILES


def _gpu_chunking():
    """``uca_kernels.gpu_chunking`` (the GPU backends' chunk-size context), or None where absent."""
    fn = getattr(uca_kernels, "gpu_chunking", None)
    if fn is None:
        from uca_kernels import _registry

        fn = getattr(_registry, "gpu_chunking", None)
    return fn


def _op_takes_chunk_rows(backend: str) -> bool:
    """Whether the forward op of GPU ``backend`` has the ``chunk_rows`` argument (the chunked design)."""
    try:
        if backend == "triton":
            from uca_kernels import triton_contrast  # noqa: F401  (registers its ops)

            op = torch.ops.uca.triton_contrast_forward
        else:
            op = torch.ops.uca.contrast_forward
        return any(a.name == "chunk_rows" for a in op.default._schema.arguments)
    except (AttributeError, RuntimeError, ImportError):
        return False


def fused_design(name: str) -> str | None:
    """``"chunked"`` (vendor GEMMs in row chunks + fused epilogues) or ``"tiles"`` (the fully fused
    tile kernels) for the GPU providers, ``"cpu"`` for the CPU backend, None for the others."""
    if name == "cpu":
        return "cpu"
    if name in TILES:
        return "tiles"
    if name in FUSED:
        return "chunked" if _op_takes_chunk_rows(name) else "tiles"
    return None


def _fused_loss(case: Case, x: dict, name: str) -> torch.Tensor:
    if name not in TILES:
        return _library_loss(case, x, name)
    with _gpu_chunking()(chunk_rows=-1):  # the forward reads it; autograd hands its choice to the backward
        return _library_loss(case, x, TILES[name])


_COMPILED: dict = {}


def _compiled_reference(case: Case, x: dict) -> torch.Tensor:
    # One compiled function per case; the batch size is marked dynamic so one graph serves every B.
    if case not in _COMPILED:
        _COMPILED[case] = torch.compile(lambda xx: _library_loss(case, xx, "reference"), dynamic=True)
    return _COMPILED[case](x)


# -- chunked: row chunks of the materialised logits, ordinary torch ops, checkpointed ---------------

CHUNKED_BUDGET_BYTES = 2**30  # what one chunk's logits and their temporaries may take


def chunked_rows(n_rows: int, n_cols: int) -> int:
    """Rows per chunk of the chunked plain-PyTorch form: its c × N float32 logits and the ~8
    temporaries of that size that the recomputed backward holds within 1 GiB (at least 256 rows)."""
    return max(1, min(n_rows, max(256, CHUNKED_BUDGET_BYTES // (8 * 4 * max(n_cols, 1)))))


def _chunk_loss(Xc, Y, rx, cy, lx, ly, scale, bias, i0: int, exclude_self: bool, loss: str) -> torch.Tensor:
    """Σ over the chunk's rows of their loss (sigmoid: Σ ℓᵢⱼ over the chunk's pairs); float32 logits
    (float64 for float64 features)."""
    acc = torch.promote_types(Xc.dtype, torch.float32)  # float32 logits for fp16/bf16 features
    S = scale * ((Xc @ Y.T).to(acc) + rx[:, None] + cy[None, :]) + bias
    pos = lx[:, None] == ly[None, :]
    valid = None
    if exclude_self:  # global row index i0 + k is never its own pair
        rows = torch.arange(i0, i0 + Xc.shape[0], device=S.device)
        valid = rows[:, None] != torch.arange(S.shape[1], device=S.device)
        pos = pos & valid
    if loss == "sigmoid":
        ell = -F.logsigmoid(torch.where(pos, S, -S))
        return (ell if valid is None else ell.masked_fill(~valid, 0.0)).sum()
    Sv = S if valid is None else S.masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(Sv, 1, keepdim=True)
    npos = pos.sum(1)
    if loss == "infonce":
        per = lse[:, 0] - torch.logsumexp(S.masked_fill(~pos, float("-inf")), 1)
    else:  # sdm: Σⱼ pᵢⱼ (log pᵢⱼ − log(qᵢⱼ + ε)), q = the label distribution
        logp = (S if valid is None else S.masked_fill(~valid, 0.0)) - lse
        p = logp.exp() if valid is None else logp.exp() * valid
        per = (p * (logp - torch.log(pos.to(S.dtype) / npos.clamp(min=1)[:, None] + SDM_EPS))).sum(1)
    return torch.where(npos > 0, per, 0.0).sum()  # every row of the benchmark cases has a positive


def chunked_contrast(A, B, r, c, scale, bias, labels_a, labels_b, loss: str, exclude_self: bool = False,
                     rows: int | None = None) -> torch.Tensor:
    """The library's "mean" contrast loss (softmax: mean over rows + mean over columns; sigmoid:
    Σᵢⱼ ℓᵢⱼ / M) in plain PyTorch: row chunks of S = scale·(A Bᵀ + r + c) + bias, each chunk's loss
    under ``torch.utils.checkpoint`` (only the features are kept; the backward recomputes the
    chunk). The column direction is the same on Sᵀ. ``rows``: rows per chunk (default
    :func:`chunked_rows`)."""
    from torch.utils.checkpoint import checkpoint

    def direction(X, Y, rx, cy, lx, ly):
        step = rows or chunked_rows(X.shape[0], Y.shape[0])
        total = X.new_zeros((), dtype=torch.promote_types(X.dtype, torch.float32))
        for i0 in range(0, X.shape[0], step):
            i1 = min(i0 + step, X.shape[0])
            total = total + checkpoint(_chunk_loss, X[i0:i1], Y, rx[i0:i1], cy, lx[i0:i1], ly, scale, bias, i0,
                                       exclude_self, loss, use_reentrant=False)
        return total / X.shape[0]

    acc = torch.promote_types(A.dtype, torch.float32)
    r, c = r.to(acc), c.to(acc)
    if loss == "sigmoid":  # both directions hold the same pairs: each once
        return direction(A, B, r, c, labels_a, labels_b)
    return direction(A, B, r, c, labels_a, labels_b) + direction(B, A, c, r, labels_b, labels_a)


def _chunked_loss(case: Case, x: dict) -> torch.Tensor:
    B = x["mu_v"].shape[0]
    labels = x["labels"] if x["labels"] is not None else torch.arange(B, device=x["mu_v"].device)
    if case.family == "dist":
        A, Bm, r, c = uca_kernels.feature_maps(x["mu_v"], x["logvar_v"], x["mu_t"], x["logvar_t"], case.metric)
        return chunked_contrast(A, Bm, r, c, -x["scale"], x["bias"], labels, labels, case.loss)
    zv = uca_kernels.losses.sample_points(x["mu_v"], x["logvar_v"], case.K, x["eps_v"])
    zt = uca_kernels.losses.sample_points(x["mu_t"], x["logvar_t"], case.K, x["eps_t"])
    a, b = F.normalize(zv, dim=1), F.normalize(zt, dim=1)
    zero = a.new_zeros(a.shape[0], dtype=torch.float32)
    lab = labels.repeat_interleave(case.K)
    total = chunked_contrast(a, b, zero, zero, x["scale"], x["bias"], lab, lab, case.loss)
    if case.intra:
        total = total + chunked_contrast(a, a, zero, zero, x["scale"], x["bias"], lab, lab, case.loss, True)
        total = total + chunked_contrast(b, b, zero, zero, x["scale"], x["bias"], lab, lab, case.loss, True)
    return total


# -- naive: [M, N, D] broadcasts and an IRRA-style loss on the materialised logits -----------------


def _naive_gaussian_logits(x: dict, metric: str) -> torch.Tensor:
    mu_v, lv_v, mu_t, lv_t = x["mu_v"], x["logvar_v"], x["mu_t"], x["logvar_t"]
    dmu2 = (mu_v[:, None, :] - mu_t[None, :, :]) ** 2  # [B, B, D]
    if metric == "w2":
        std_v, std_t = torch.exp(0.5 * lv_v), torch.exp(0.5 * lv_t)
        d = (dmu2 + (std_v[:, None, :] - std_t[None, :, :]) ** 2).sum(-1)
    elif metric == "csd":  # PCME++'s closed-form sampled distance E‖zᵢ − zⱼ‖² = ‖Δμ‖² + Σ (σᵢ² + σⱼ²)
        var_v, var_t = lv_v.exp(), lv_t.exp()
        d = (dmu2 + var_v[:, None, :] + var_t[None, :, :]).sum(-1)
    elif metric == "kl":  # kl(image || text)
        var_v, var_t = lv_v.exp(), lv_t.exp()
        d = 0.5 * (lv_t[None, :, :] - lv_v[:, None, :] + (var_v[:, None, :] + dmu2) / var_t[None, :, :] - 1).sum(-1)
    else:
        raise ValueError(f"the naive form is written for {NAIVE_METRICS}, not {metric!r}")
    S = -x["scale"] * d
    return S + x["bias"] if x["bias"] else S  # the softmax cases have no bias: no extra [B, B] pass


def _naive_sigmoid(S: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """SigLIP's pairwise loss as its reference code writes it (open_clip ``SigLipLoss._loss``):
    y = ±1 from the label matrix, ``-logsigmoid(y·S).sum() / M``; pairs outside ``valid`` (a point
    with itself) are dropped."""
    y = 2.0 * pos.to(S.dtype) - 1.0
    ell = -F.logsigmoid(y * S)
    if valid is not None:
        ell = ell.masked_fill(~valid, 0.0)
    return ell.sum() / S.shape[0]


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
        if case.loss == "sigmoid":
            return _naive_sigmoid(S, pos, None)
        return _naive_direction(S, pos, None, case.loss) + _naive_direction(S.t(), pos.t(), None, case.loss)
    zv = (x["mu_v"][:, None, :] + torch.exp(0.5 * x["logvar_v"])[:, None, :] * x["eps_v"]).flatten(0, 1)
    zt = (x["mu_t"][:, None, :] + torch.exp(0.5 * x["logvar_t"])[:, None, :] * x["eps_t"]).flatten(0, 1)
    lab = labels.repeat_interleave(case.K)
    pos = lab[:, None] == lab[None, :]

    def term(za, zb, exclude_self):
        S = x["scale"] * F.cosine_similarity(za[:, None, :], zb[None, :, :], dim=-1)  # [BK, BK, D] inside
        if x["bias"]:  # the softmax cases have no bias: no extra [BK, BK] pass
            S = S + x["bias"]
        valid = ~torch.eye(len(za), dtype=torch.bool, device=za.device) if exclude_self else None
        if case.loss == "sigmoid":
            return _naive_sigmoid(S, pos, valid)
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


def _keops_sigmoid(S, pos, rows: int) -> torch.Tensor:
    """Σᵢⱼ softplus(−yᵢⱼ Sᵢⱼ) / M as one KeOps row reduction; softplus written stably,
    max(u, 0) + log(1 + e^−|u|) (KeOps differentiates relu and abs itself)."""
    u = -(2 * pos - 1) * S
    ell = u.relu() + (1 + (-u.abs()).exp()).log()
    return ell.sum(dim=1).sum() / rows


def _keops_loss(case: Case, x: dict) -> torch.Tensor:
    from pykeops.torch import LazyTensor

    mu_v, lv_v, mu_t, lv_t = x["mu_v"], x["logvar_v"], x["mu_t"], x["logvar_t"]
    B, D = mu_v.shape
    if case.metric == "w2":  # ‖[μ, σ]_i − [μ, σ]_j‖²
        zi = LazyTensor(torch.cat([mu_v, torch.exp(0.5 * lv_v)], 1)[:, None, :])
        zj = LazyTensor(torch.cat([mu_t, torch.exp(0.5 * lv_t)], 1)[None, :, :])
        d = ((zi - zj) ** 2).sum(-1)
    elif case.metric == "csd":  # ‖Δμ‖² + Σσᵢ² + Σσⱼ²
        mi, mj = LazyTensor(mu_v[:, None, :]), LazyTensor(mu_t[None, :, :])
        ri, cj = LazyTensor(lv_v.exp().sum(1)[:, None, None]), LazyTensor(lv_t.exp().sum(1)[None, :, None])
        d = ((mi - mj) ** 2).sum(-1) + ri + cj
    else:  # kl: ½ Σ [(σᵢ² + Δμ²)/σⱼ²] + row and column terms
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
    if case.loss == "sigmoid":
        bias = torch.as_tensor(x["bias"], dtype=mu_v.dtype, device=mu_v.device).reshape(1)
        return _keops_sigmoid(S + LazyTensor(bias), pos, B)
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


# -- open_clip -------------------------------------------------------------------------------------

_SIGLIP: dict = {}


@functools.lru_cache(maxsize=None)
def _open_clip_missing() -> str | None:
    """Why ``open_clip.loss.SigLipLoss`` cannot be imported here (None when it can)."""
    if importlib.util.find_spec("open_clip") is None:
        return "open_clip is not installed (pip install -r benchmarks/requirements.txt)"
    try:
        from open_clip.loss import SigLipLoss  # noqa: F401  (the package imports torchvision, timm)
    except Exception as e:  # noqa: BLE001  (a broken install is a skip with its reason, not a crash)
        return f"open_clip does not import: {type(e).__name__}: {e}"[:200]
    return None


def _open_clip_chunk_arg() -> str | None:
    """Where the installed ``SigLipLoss`` takes ``chunk_size``: "init", "forward", or None (3.3.0 has none)."""
    import inspect

    from open_clip.loss import SigLipLoss

    for where, fn in (("init", SigLipLoss.__init__), ("forward", SigLipLoss.forward)):
        if "chunk_size" in inspect.signature(fn).parameters:
            return where
    return None


def _open_clip_loss(case: Case, x: dict, chunked: bool = False) -> torch.Tensor:
    # open_clip 3.3.0 SigLipLoss (world_size = 1): logits = logit_scale · img @ txtᵀ + logit_bias on
    # the features it is given (its model normalises them and passes logit_scale already exp'd),
    # labels 2·I − 1, loss = −logsigmoid(labels · logits).sum() / B: Σᵢⱼ ℓᵢⱼ / B, the library's value.
    # chunked: its chunk_size option, as many rows per chunk as the chunked provider takes.
    from open_clip.loss import SigLipLoss

    zv = x["mu_v"] + torch.exp(0.5 * x["logvar_v"]) * x["eps_v"][:, 0]
    zt = x["mu_t"] + torch.exp(0.5 * x["logvar_t"]) * x["eps_t"][:, 0]
    a, b = F.normalize(zv, dim=1), F.normalize(zt, dim=1)
    scale = torch.tensor(x["scale"], device=a.device, dtype=a.dtype)
    bias = torch.tensor(x["bias"], device=a.device, dtype=a.dtype)
    where = _open_clip_chunk_arg() if chunked else None
    rows = chunked_rows(a.shape[0], b.shape[0])
    key = ("loss", rows if where == "init" else None)
    if key not in _SIGLIP:
        _SIGLIP[key] = SigLipLoss(rank=0, world_size=1, **({"chunk_size": rows} if where == "init" else {}))
    return _SIGLIP[key](a, b, scale, bias, **({"chunk_size": rows} if where == "forward" else {}))


# -- the four-matmul floor -------------------------------------------------------------------------


def floor_step(case: Case, x: dict):
    """A callable that runs ``case.gemms()`` ``torch.matmul`` of [M, E] @ [E, N] (M = N =
    ``case.rows(B)``) in the inputs' dtype on their device: the arithmetic the fused op must do
    (docs/design.md section 2: 4 passes per contrast forward+backward, 1 forward), at the matmul rate.
    The sigmoid's ideal is 3 passes: ``case.ideal_passes / case.passes`` of this time."""
    B, dev, dt = x["mu_v"].shape[0], x["mu_v"].device, x["mu_v"].dtype
    n = case.rows(B)
    g = torch.Generator(device=dev).manual_seed(0)  # drawn where they are used (the CPU draws as before)
    a = torch.randn(n, case.E, generator=g, device=dev).to(dtype=dt)
    b = torch.randn(case.E, n, generator=g, device=dev).to(dtype=dt)
    reps = case.gemms()

    def step():
        for _ in range(reps):
            torch.matmul(a, b)

    return step


# -- the table -------------------------------------------------------------------------------------


def min_peak_bytes(name: str, case: Case, B: int, dtype: torch.dtype = torch.float32) -> float:
    """An estimate from below of the peak memory of ``name`` on ``case`` at batch ``B`` where it is
    large by construction (0 elsewhere), so that a sweep refuses a first point that cannot fit
    rather than running into the out-of-memory killer. ``naive`` holds about three [M, N, D]
    tensors at once in the forward, and 3 + 2.5 per contrast with backward (measured on CPU:
    3.0-4.0 and 6.2 for one contrast, 10.9 for three)."""
    n = case.rows(B)
    if name == FLOOR:  # one [M, N] product at a time
        return n * n * torch.finfo(dtype).bits / 8
    if name != "naive":
        return 0.0
    per = n * n * case.D * torch.finfo(dtype).bits / 8
    return per * (3 + 2.5 * case.contrasts() if case.backward else 3)


def materialised_peak_bytes(name: str, case: Case, B: int, dtype: torch.dtype = torch.float32) -> float:
    """A lower bound of the peak memory of the providers that hold M × N matrices (``reference``,
    ``compile``, ``open_clip``): per contrast at least 6 of them in float32 with backward (the
    reference measured 14.9 at B = 32768 on the H200: 59.6 GiB), 2 forward; then
    :func:`min_peak_bytes`. For the GPU headline, which skips a point that cannot fit."""
    if name not in ("reference", "compile", "open_clip"):
        return min_peak_bytes(name, case, B, dtype)
    n = case.rows(B)
    return n * n * 4.0 * (6 if case.backward else 2) * case.contrasts()




def skip_reason(name: str, case: Case, device: str, dtype: torch.dtype = torch.float32) -> str | None:
    """Why ``name`` cannot run ``case`` on ``device`` here, or None when it can."""
    if name in TILES:
        why = skip_reason(TILES[name], case, device, dtype)
        if why:
            return why
        if _gpu_chunking() is None:
            return "uca_kernels has no gpu_chunking (the context that selects the tile kernels)"
        if not _op_takes_chunk_rows(TILES[name]):
            return (f"the {TILES[name]} op has no chunk_rows argument: its tile kernels are its only design "
                    f"here (measured as '{TILES[name]}')")
        return None
    if name in FUSED:
        if name == "triton" and device == "cpu" and not os.environ.get("UCA_BENCH_TRITON_CPU"):
            return ("the Triton CPU interpreter is for tests, not timing "
                    "(to force: UCA_BENCH_TRITON_CPU=1 TRITON_INTERPRET=1)")
        probe = torch.zeros(2, 2, device=device, dtype=dtype)
        reasons = dispatch.get_backend(name).not_supported_reasons(A=probe, B=probe, loss=case.loss,
                                                                   exclude_self=case.intra, explicit=True)
        return "; ".join(reasons) or None
    if name == "naive" and case.family == "dist" and case.metric not in NAIVE_METRICS:
        return f"the naive form is written for the {'/'.join(NAIVE_METRICS)} metrics only"
    if name == "keops":
        if importlib.util.find_spec("pykeops") is None:
            return "pykeops is not installed"
        if case.family != "dist":
            return "compared on the distribution cases only"
        if case.metric not in NAIVE_METRICS:
            return f"written for the {'/'.join(NAIVE_METRICS)} metrics only"
        if dtype not in (torch.float32, torch.float64):
            return f"not set up for {dtype}"
    if name == "infcl":
        if importlib.util.find_spec("inf_cl") is None:
            return "inf-cl is not installed"
        if device != "cuda":
            return "inf-cl runs on CUDA only"
        if case.family != "clip" or case.loss != "infonce":
            return "inf-cl computes diagonal-label InfoNCE on points only (the clip case)"
        if case.D % 256:
            return "inf-cl needs D divisible by its head_dim 256"
    if name in ("open_clip", "open_clip-chunked"):
        if case.family != "clip" or case.loss != "sigmoid":
            return "open_clip's SigLipLoss computes diagonal-label sigmoid on points only (the clip-sigmoid case)"
        missing = _open_clip_missing()
        if missing or name == "open_clip":
            return missing
        if _open_clip_chunk_arg() is None:
            import open_clip

            return f"open_clip {getattr(open_clip, '__version__', '?')}'s SigLipLoss has no chunk_size option"
    if name not in PROVIDERS:
        return f"unknown provider {name!r}; choose from {', '.join(PROVIDERS)}"
    return None


def loss_fn(name: str, case: Case, x: dict) -> torch.Tensor:
    """The scalar loss of ``case`` on inputs ``x`` computed by provider ``name``."""
    if is_fused(name):
        return _fused_loss(case, x, name)
    if name == "reference":
        return _library_loss(case, x, name)
    if name == "compile":
        return _compiled_reference(case, x)
    if name == "chunked":
        return _chunked_loss(case, x)
    if name == "open_clip-chunked":
        return _open_clip_loss(case, x, chunked=True)
    if name == "naive":
        return _naive_loss(case, x)
    if name == "keops":
        return _keops_loss(case, x)
    if name == "infcl":
        return _infcl_loss(case, x)
    if name == "open_clip":
        return _open_clip_loss(case, x)
    if name == FLOOR:
        raise ValueError(f"{FLOOR!r} computes no loss: time floor_step(case, x) instead")
    raise ValueError(f"unknown provider {name!r}; choose from {', '.join(PROVIDERS)}")
