"""Data-parallel plumbing: who this process is (:class:`DistContext`) and all-gathers whose
backward hands each rank the gradient of the rows it owns. The loss terms built on them, and the
maths of doing each pair's work once across ranks, are :mod:`uca_model.losses`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["BackendMismatchError", "DistContext", "check_same_backend", "gather", "gather_labels", "gather_parts",
           "local_first", "sum_over_ranks", "UnequalBatchError"]


@dataclass(frozen=True)
class DistContext:
    """Rank and world size of this process (1 process: rank 0, world_size 1).

    ``equal_batches``: the caller guarantees that every rank's local batch has the same size (the
    trainer's sampler does), so :func:`gather_labels` skips the size exchange it otherwise runs
    before each gather: one collective less per loss term, and on a GPU one host sync less (the
    sizes are read on the host)."""

    rank: int = 0
    world_size: int = 1
    equal_batches: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls, equal_batches: bool = False) -> "DistContext":
        """From the initialised default process group, else single-process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), equal_batches)
        return cls(equal_batches=equal_batches)

    @staticmethod
    def launched_by_torchrun() -> bool:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient of the gathered tensor and
    hands each rank the rows it owns (all-reduce + slice: works on gloo and NCCL alike)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = rank, x.shape[0]
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None, None


def gather(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate ``x`` [b, ...] of every rank along dim 0 (rank order), with gradients."""
    if not ctx.distributed:
        return x
    return _GatherWithGrad.apply(x, ctx.rank, ctx.world_size)


class UnequalBatchError(ValueError):
    """The ranks of a data-parallel step hold local batches of different sizes (the gathers assume
    equal ones: use ``drop_last`` or pad the last batch)."""


class BackendMismatchError(RuntimeError):
    """The ranks resolved different contrast backends (the softmax terms' collectives differ between a
    fused backend and the reference: they would hang)."""


def check_same_backend(backend: str, device: torch.device, ctx: DistContext) -> str:
    """The contrast backend ``backend`` resolves to on this rank's ``device`` (float32 features),
    checked equal on every rank with one all-gather: run it once, before training.

    Raises:
        BackendMismatchError: some rank resolved another backend (every rank raises it).
    """
    from uca_kernels import dispatch

    x = torch.zeros(2, 2, device=device)
    name = dispatch.select(backend, A=x, B=x, loss="sdm", exclude_self=False).name
    if not ctx.distributed:
        return name
    names = [None] * ctx.world_size
    dist.all_gather_object(names, name)
    if len(set(names)) != 1:
        raise BackendMismatchError(f"the ranks resolved different contrast backends for {backend!r}: {names}; "
                                   "name one in the config (model.loss.backend) so that every rank runs it")
    return name


def gather_labels(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate an integer tensor of every rank (no gradients).

    Raises:
        UnequalBatchError: the ranks' tensors differ in length (every rank raises it), unless
            ``ctx.equal_batches`` says they cannot.
    """
    if not ctx.distributed:
        return x
    if not ctx.equal_batches:
        sizes = [torch.zeros(1, dtype=torch.int64, device=x.device) for _ in range(ctx.world_size)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device))
        sizes = [int(t) for t in sizes]
        if len(set(sizes)) != 1:
            raise UnequalBatchError(f"local batch sizes differ across ranks: {sizes} (rank {ctx.rank} holds "
                                    f"{x.shape[0]}); the all-gathers need equal ones (drop_last=True)")
    out = [torch.empty_like(x) for _ in range(ctx.world_size)]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, 0)


def gather_parts(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Every rank's ``x`` (same shape on every rank), stacked in rank order [W, ...]; no gradients."""
    if not ctx.distributed:
        return x[None]
    out = [torch.empty_like(x) for _ in range(ctx.world_size)]
    dist.all_gather(out, x.contiguous())
    return torch.stack(out)


def sum_over_ranks(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Σ over ranks of ``x`` (a new tensor; ``x`` is left as it is); no gradients."""
    if not ctx.distributed:
        return x
    out = x.detach().clone().contiguous()
    dist.all_reduce(out)
    return out


def local_first(g: torch.Tensor, x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The gathered ``g`` [W·b, ...] reordered as [this rank's ``x``, the other ranks' rows]."""
    if not ctx.distributed:
        return x
    b = x.shape[0]
    return torch.cat([x, g[:ctx.rank * b], g[(ctx.rank + 1) * b:]], 0)
