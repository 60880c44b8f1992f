"""Data-parallel plumbing of the model package: the library's (:mod:`uca_kernels.distributed`):
who this process is (:class:`DistContext`), all-gathers whose backward hands each rank the
gradient of the rows it owns, and the each-pair-once loss terms built on them."""

from __future__ import annotations

from uca_kernels.distributed import (  # noqa: F401  (the model package's names for them)
    BackendMismatchError,
    DistContext,
    UnequalBatchError,
    check_same_backend,
    gather,
    gather_labels,
    gather_parts,
    local_first,
    sum_over_ranks,
)

__all__ = ["BackendMismatchError", "DistContext", "check_same_backend", "gather", "gather_labels", "gather_parts",
           "local_first", "sum_over_ranks", "UnequalBatchError"]
