r"""Data-parallel contrastive losses: each pair computed once across ranks, the loss and gradients of
the global batch.

With W processes each holding a local batch of b pairs (global batch B = W·b), the loss wanted is
the single-process loss on the concatenated batch, L. Rank k computes a *share* ``W · L_k`` with
``Σ_k L_k = L``, so that

- the mean over ranks of the shares is L, and
- the gradient of rank k's share with respect to its own inputs, after the gathers' backward has
  summed every rank's contribution, is ``W · ∂L/∂x_k``: DistributedDataParallel's averaging of
  parameter gradients then gives exactly ∂L/∂θ.

:func:`global_value` turns a share into L on every rank (one all-reduce of a detached scalar; the
gradient is the share's), which is what the library's functions and modules return.

**Cross-modal terms** (:func:`cross_share`: rows of one modality against columns of the other).
Rank k gathers the columns' side from every rank with gradients (an all-gather whose backward
all-reduces and keeps the rows this rank owns) and computes its local rows against the global
columns, once:

- ``sdm`` / ``infonce``: a column's softmax sums over every rank's rows. The op's column statistics
  of this rank's share (LSE, LSEᴾ, n, Σ p·(S − LSE)) are all-gathered and assembled into every
  column's statistics and loss (:func:`uca_kernels.contrast_row_share`); the backward all-reduces
  the column losses' upstream gradients and forms dS of the local rows against every column.
  ``L_k = Σ rows_k / M + Σ cols_k / N`` (rank k's rows and its own columns' losses). The
  ``reference`` backend has no op pair and makes a second call, global rows × local columns,
  instead; the two paths run different collectives, so every rank must resolve the same backend
  (:func:`check_same_backend`).
- ``sigmoid``: rows and columns hold the same pairs, and every global pair is in exactly one rank's
  local rows: ``L_k = Σ rows_k / M`` (M = global rows; each pair once).

**Intra-modal terms** (:func:`self_share`: one modality against itself, a point never its own pair).
Rank k computes its local rows against the global columns ordered *local first*, so its own pairs
are (i, i), i < b, which the op's ``exclude_self`` drops on a rectangular problem too. The
similarity is symmetric and both sides carry the same labels, so column j's loss equals row j's:
``L_k = 2 · Σ rows_k / n`` (softmax; ``sigmoid``: ``Σ rows_k / n``) over the n global points.

**Labels.** ``None`` means diagonal positives of the *global* batch: local pair i of rank k is
global pair k·b + i (the per-rank ``arange(b)`` habit makes pair i of every rank a positive of pair
i of every other rank, a silently different loss). Every rank's local batch must have the same size
(``drop_last``); the gathers check it once per call unless :attr:`DistContext.equal_batches` says
the caller guarantees it.

With W = 1 everything reduces to the plain single-process loss: the same code, no communication.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist

from ._registry import REDUCTIONS

__all__ = [
    "BackendMismatchError",
    "DistContext",
    "UnequalBatchError",
    "check_same_backend",
    "cross_share",
    "gather",
    "gather_labels",
    "gather_parts",
    "global_labels",
    "global_value",
    "local_first",
    "self_share",
    "sum_over_ranks",
]


@dataclass(frozen=True)
class DistContext:
    """Rank and world size of this process in its process group (1 process: rank 0, world_size 1).

    ``equal_batches``: the caller guarantees that every rank's local batch has the same size, so the
    gathers skip the size exchange they otherwise run first (one collective less per loss term, and
    on a GPU one host sync less: the sizes are read on the host). ``group``: the process group of
    the collectives (None: the default group)."""

    rank: int = 0
    world_size: int = 1
    equal_batches: bool = False
    group: Any = field(default=None, compare=False)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls, equal_batches: bool = False, group=None) -> "DistContext":
        """From the initialised process group (``group``, else the default one), else single-process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(group), dist.get_world_size(group), equal_batches, group)
        return cls(equal_batches=equal_batches, group=group)

    @classmethod
    def resolve(cls, rank: int | None = None, world_size: int | None = None, group=None,
                equal_batches: bool = False) -> "DistContext":
        """What a loss module runs under: explicit ``rank`` / ``world_size`` (open_clip's arguments;
        ``world_size=1`` means this process alone), else :meth:`current`.

        Raises:
            ValueError: an explicit world size above 1 without an initialised process group, a rank
                outside it, or only one of the two given.
        """
        if world_size is None and rank is None:
            return cls.current(equal_batches, group)
        if world_size is None or rank is None:
            raise ValueError(f"give both rank and world_size or neither, got rank={rank!r}, world_size={world_size!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        if world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            raise ValueError(f"world_size={world_size} needs an initialised process group "
                             "(torch.distributed.init_process_group)")
        return cls(rank, world_size, equal_batches, group)

    @staticmethod
    def launched_by_torchrun() -> bool:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


class UnequalBatchError(ValueError):
    """The ranks of a data-parallel step hold local batches of different sizes (the gathers assume
    equal ones: use ``drop_last`` or pad the last batch)."""


class BackendMismatchError(RuntimeError):
    """The ranks resolved different contrast backends (the softmax terms' collectives differ between a
    fused backend and the reference: they would hang)."""


# -- collectives -----------------------------------------------------------------------------------


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient of the gathered tensor and
    hands each rank the rows it owns (all-reduce + slice: works on gloo and NCCL alike)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rank: int, world_size: int, group) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(parts, x.contiguous(), group=group)
        ctx.rank, ctx.rows, ctx.group = rank, x.shape[0], group
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None, None, None


def gather(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate ``x`` [b, ...] of every rank along dim 0 (rank order), with gradients."""
    if not ctx.distributed:
        return x
    return _GatherWithGrad.apply(x, ctx.rank, ctx.world_size, ctx.group)


def _check_equal_sizes(n: int, device: torch.device, ctx: DistContext) -> None:
    if ctx.equal_batches:
        return
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.int64, device=device), group=ctx.group)
    sizes = [int(t) for t in sizes]
    if len(set(sizes)) != 1:
        raise UnequalBatchError(f"local batch sizes differ across ranks: {sizes} (rank {ctx.rank} holds {n}); "
                                "the all-gathers need equal ones (drop_last=True)")


def gather_labels(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate an integer tensor of every rank (no gradients).

    Raises:
        UnequalBatchError: the ranks' tensors differ in length (every rank raises it), unless
            ``ctx.equal_batches`` says they cannot.
    """
    if not ctx.distributed:
        return x
    _check_equal_sizes(x.shape[0], x.device, ctx)
    out = [torch.empty_like(x) for _ in range(ctx.world_size)]
    dist.all_gather(out, x.contiguous(), group=ctx.group)
    return torch.cat(out, 0)


def global_labels(labels: torch.Tensor | None, n: int, device, ctx: DistContext,
                  repeat: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(local, global)`` identities of a rank's n local pairs, each repeated ``repeat`` times
    (points: K samples per pair). ``None``: diagonal positives of the global batch, pair i of rank
    k is global pair k·n + i (no label gather; the sizes are still checked)."""
    if labels is None:
        if ctx.distributed:
            _check_equal_sizes(n, torch.device(device), ctx)
        local = torch.arange(n, device=device) + ctx.rank * n
        glob = torch.arange(ctx.world_size * n, device=device)
    else:
        local = labels
        glob = gather_labels(labels, ctx)
    if repeat != 1:
        local, glob = local.repeat_interleave(repeat), glob.repeat_interleave(repeat)
    return local, glob


def gather_parts(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Every rank's ``x`` (same shape on every rank), stacked in rank order [W, ...]; no gradients."""
    if not ctx.distributed:
        return x[None]
    out = [torch.empty_like(x) for _ in range(ctx.world_size)]
    dist.all_gather(out, x.contiguous(), group=ctx.group)
    return torch.stack(out)


def sum_over_ranks(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Σ over ranks of ``x`` (a new tensor; ``x`` is left as it is); no gradients."""
    if not ctx.distributed:
        return x
    out = x.detach().clone().contiguous()
    dist.all_reduce(out, group=ctx.group)
    return out


def local_first(g: torch.Tensor, x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The gathered ``g`` [W·b, ...] reordered as [this rank's ``x``, the other ranks' rows]."""
    if not ctx.distributed:
        return x
    b = x.shape[0]
    return torch.cat([x, g[:ctx.rank * b], g[(ctx.rank + 1) * b:]], 0)


def global_value(share, ctx: DistContext):
    """The global loss L on every rank from this rank's share W·L_k (a tensor, or a dict of them:
    one all-reduce for all), with the share's gradient (see the module docstring)."""
    if not ctx.distributed:
        return share
    if isinstance(share, dict):
        keys = list(share)
        values = global_value(torch.stack([share[k] for k in keys]), ctx)
        return dict(zip(keys, values.unbind(0)))
    mean = sum_over_ranks(share.detach(), ctx) / ctx.world_size
    return share + (mean - share).detach()


def check_same_backend(backend: str, device: torch.device, ctx: DistContext) -> str:
    """The contrast backend ``backend`` resolves to on this rank's ``device`` (float32 features),
    checked equal on every rank with one all-gather: run it once, before training.

    Raises:
        BackendMismatchError: some rank resolved another backend (every rank raises it).
    """
    from . import dispatch

    x = torch.zeros(2, 2, device=device)
    name = dispatch.select(backend, A=x, B=x, loss="sdm", exclude_self=False).name
    if not ctx.distributed:
        return name
    names = [None] * ctx.world_size
    dist.all_gather_object(names, name, group=ctx.group)
    if len(set(names)) != 1:
        raise BackendMismatchError(f"the ranks resolved different contrast backends for {backend!r}: {names}; "
                                   "name one explicitly (backend=...) so that every rank runs it")
    return name


# -- loss terms over the global batch ---------------------------------------------------------------

Maps = Callable[[tuple, tuple], tuple]  # (rows side, columns side) -> (A, B, r, c, scale, bias)


def _check_reduction(reduction: str, ctx: DistContext) -> None:
    from ._validation import check_choice

    check_choice("reduction", reduction, REDUCTIONS)
    if ctx.distributed and reduction == "none":
        raise ValueError("reduction='none' has no data-parallel form (each rank holds a share of the pairs): "
                         "use 'mean' or 'sum'")


def cross_share(maps: Maps, a: tuple, b: tuple, labels_a: torch.Tensor | None, labels_b: torch.Tensor | None, *,
                loss: str, ctx: DistContext = DistContext(), backend: str = "auto", reduction: str = "mean",
                global_a: torch.Tensor | None = None, global_b: torch.Tensor | None = None,
                gathered: tuple | None = None):
    """Rank k's share W·L_k of a cross-modal term (rows ``a`` against columns ``b``; the module docstring).

    Args:
        maps: ``maps(rows_side, cols_side) -> (A, B, r, c, scale, bias)``, the op's arguments of two
            sides (tuples of tensors with rows in dim 0).
        a, b: this rank's rows side and columns side.
        labels_a, labels_b: identities of this rank's rows and columns ([M], [N]; ``labels_b`` None
            with ``labels_a`` given: the same). Both None: global diagonal positives (M == N).
        loss, backend: as :func:`uca_kernels.contrast`.
        reduction: ``"mean"`` (mean over rows + mean over columns; ``sigmoid``: Σᵢⱼ ℓᵢⱼ / M) or
            ``"sum"``; ``"none"`` on one process only (the two vectors).
        global_a, global_b: the gathered labels when the caller already has them.
        gathered: ``(gather of each tensor of a, of b)`` when the caller already has them (None
            entries are gathered here).
    """
    from .contrast import contrast, contrast_row_share, reduce_losses, row_share_supported

    _check_reduction(reduction, ctx)
    if labels_b is None:
        labels_b = labels_a
    if labels_a is None and a[0].shape[0] != b[0].shape[0]:
        raise ValueError(f"diagonal positives (labels None) need as many rows as columns, got {a[0].shape[0]} "
                         f"and {b[0].shape[0]}")
    if not ctx.distributed:
        return contrast(*maps(a, b), labels_a, labels_b, loss=loss, backend=backend, reduction=reduction)
    M, N, device = a[0].shape[0], b[0].shape[0], a[0].device
    if labels_a is None:
        la, ga_lab = global_labels(None, M, device, ctx)
    else:
        la, ga_lab = labels_a, (global_a if global_a is not None else gather_labels(labels_a, ctx))
    if labels_b is labels_a:
        lb, gb_lab = la, ga_lab
    else:
        lb, gb_lab = labels_b, (global_b if global_b is not None else gather_labels(labels_b, ctx))
    W = ctx.world_size
    dm, dn = (W * M, W * N) if reduction == "mean" else (1, 1)
    ga, gb = gathered if gathered is not None else (None, None)
    gb = gb if gb is not None else tuple(gather(x, ctx) for x in b)
    A, B, r, c, scale, bias = maps(a, gb)
    if loss == "sigmoid":  # every global pair is in exactly one rank's local rows
        rows, _ = contrast(A, B, r, c, scale, bias, la, gb_lab, loss=loss, backend=backend)
        return W * rows.sum() / dm
    if row_share_supported(A, B, loss, backend):
        rows, cols = contrast_row_share(A, B, r, c, scale, bias, la, gb_lab, loss=loss, backend=backend,
                                        gather_stats=lambda part: gather_parts(part, ctx),
                                        sum_col_grads=lambda g: sum_over_ranks(g, ctx))
        mine = cols[ctx.rank * N:(ctx.rank + 1) * N]  # this rank's columns' losses
        return W * (rows.sum() / dm + mine.sum() / dn)
    rows, _ = contrast(A, B, r, c, scale, bias, la, gb_lab, loss=loss, backend=backend)
    ga = ga if ga is not None else tuple(gather(x, ctx) for x in a)
    _, cols = contrast(*maps(ga, b), ga_lab, lb, loss=loss, backend=backend)
    return W * (rows.sum() / dm + cols.sum() / dn)


def self_share(maps: Maps, x: tuple, labels: torch.Tensor | None, *, loss: str, ctx: DistContext = DistContext(),
               backend: str = "auto", reduction: str = "mean", global_x: torch.Tensor | None = None,
               gathered: tuple | None = None):
    """Rank k's share W·L_k of an intra-modal term: ``x`` against itself, self pairs excluded (the
    module docstring). ``maps`` must be symmetric (the logit of (i, j) equals that of (j, i)).

    Args:
        maps, loss, backend, reduction: as :func:`cross_share`.
        x: this rank's side (a tuple of tensors with rows in dim 0).
        labels: [n] identities of this rank's rows; None: global diagonal (no positives but a
            point's own, which is excluded: only negatives).
        global_x: the gathered labels when the caller already has them.
        gathered: the gather of each tensor of ``x`` when the caller already has it.
    """
    from .contrast import contrast

    _check_reduction(reduction, ctx)
    n, device = x[0].shape[0], x[0].device
    if not ctx.distributed:
        lab = labels if labels is not None else torch.arange(n, device=device)
        return contrast(*maps(x, x), lab, lab, loss=loss, exclude_self=True, backend=backend, reduction=reduction)
    if labels is None or global_x is None:
        labels, global_x = global_labels(labels, n, device, ctx)
    gx = gathered if gathered is not None else tuple(gather(t, ctx) for t in x)
    cols = tuple(local_first(g, t, ctx) for g, t in zip(gx, x))
    A, B, r, c, scale, bias = maps(x, cols)
    rows, _ = contrast(A, B, r, c, scale, bias, labels, local_first(global_x, labels, ctx), loss=loss,
                       exclude_self=True, backend=backend)
    per_rank = rows.sum() if loss == "sigmoid" else 2.0 * rows.sum()  # rows and columns hold the same losses
    return ctx.world_size * per_rank / (cols[0].shape[0] if reduction == "mean" else 1)
