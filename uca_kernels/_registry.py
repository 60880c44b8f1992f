"""The contract's constants and the registration every fused backend's ops go through.

A leaf module (it imports only torch): the extension loader (:mod:`uca_kernels._ext`) and the
Triton backend register their ops here, and :mod:`uca_kernels.contrast` re-exports it all. The
maths and the op contract are in :mod:`uca_kernels.contrast`'s docstring.
"""

from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["CHUNK_MIN_ROWS", "DEFAULT_SCRATCH_MB", "GRAD_PRESCALE_TARGET", "LOSSES", "N_STATS", "REDUCTIONS", "SDM_EPS",
           "STATS_DTYPE", "auto_chunk_rows", "gpu_chunking", "grad_prescale", "out_dtype", "register_contrast_autograd",
           "register_sigmoid_sum_autograd", "resolve_chunk_rows"]

LOSSES = ("sdm", "infonce", "sigmoid")
REDUCTIONS = ("none", "sum", "mean")
SDM_EPS = 1e-8


def out_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the losses (and of r, c, scale, bias and the gradients' accumulators) for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# The per-row / per-column statistics (columns below) are float64 for every input dtype: O(M + N)
# numbers, and an LSE rounded to float32 at |S| ~ 1e5 (spacing 2⁻⁷) would shift every p = exp(S − LSE)
# of its row by up to 4e-3 in the backward. Kernels split each into float32 hi + lo parts.
STATS_DTYPE = torch.float64
# Their columns: LSE, LSEᴾ, n (#positives), Σ p·(S − LSE) (the softmax's negative entropy: with the
# LSEs it assembles SDM's loss over a split set, contrast.combine_stats). csrc/core/stats.h: kStats.
N_STATS = 4


# fp16/bf16 backward: the largest |scale · upstream gradient| is brought near this power of two.
GRAD_PRESCALE_TARGET = 2.0**8


def grad_prescale(grad_rows: torch.Tensor, grad_cols: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The power of two ``pre`` by which an fp16/bf16 backward multiplies the upstream gradients
    (and then divides its outputs), on the device, without a host sync.

    The GPU backends round dT = scale·dS to the feature dtype for the dX GEMM. With mean-reduced
    losses at large B, |dS| ~ g·p ~ 1/(M·N) (1.5e-8 at B = 8192) is below fp16's smallest
    subnormal (6e-8) and dX comes out 0. The backward is linear in the upstream gradients, and a
    power of two scales every float exactly, so running it on pre·g and dividing dA, dB and the row
    sums by pre changes no bit except those that underflowed. pre puts max |scale·g| near
    GRAD_PRESCALE_TARGET: |dT| ≤ ~80·|scale·g| (SDM's ∂L/∂S per side is below ~40) stays under
    fp16's 65504. The exponent is clamped to ±60 (all-zero gradients give 2^60: nothing to lose).
    The CUDA driver computes the same (csrc/cuda/chunked_driver.cpp, grad_prescale)."""
    gmax = torch.maximum(grad_rows.abs().amax(), grad_cols.abs().amax()).float() * scale.abs().float()
    exponent = torch.floor(torch.log2(GRAD_PRESCALE_TARGET / gmax.clamp_min(1e-30))).clamp(-60.0, 60.0)
    return torch.exp2(exponent)


# -- row chunks of the GPU backends ---------------------------------------------------------------------
# The GPU backends compute S in chunks of c rows with the vendor GEMM (S_c = A_c Bᵀ into a c × N
# scratch buffer) and run fused epilogue kernels over each chunk. The ops take ``chunk_rows``: c > 0,
# 0 for the automatic choice below, or a negative value for the older fully fused tile kernels
# (kept until GPU runs have measured both designs side by side). The CPU backend ignores it.

# chunk scratch budget (UCA_SCRATCH_MB, or gpu_chunking(scratch_mb=...)). 512 MiB: at B = 32768, E = 1024 the
# op's peak stays near 1 % of the materialised form's (~60 GiB), and c = 4096 rows keeps dB += dTᵀ A_c
# compute-bound (c / 4 flops per byte of the accumulator).
DEFAULT_SCRATCH_MB = 512
CHUNK_MIN_ROWS = 512  # below ~512 rows the dB += dTᵀ A_c accumulation is memory-bound on an H100
_chunking: list[tuple[int | None, float | None]] = []  # gpu_chunking's stack (innermost last)


def auto_chunk_rows(M: int, N: int, dtype: torch.dtype, budget_bytes: int) -> int:
    """Rows per chunk for a scratch budget: the c × N chunk holds ACC values (4 bytes, 8 for float64)
    and, for fp16/bf16 features, a copy of dT in their dtype (2 bytes). At least CHUNK_MIN_ROWS
    (the budget is exceeded rather than the GEMMs starved), a multiple of 64 below M, at most M.
    The CUDA driver computes the same (csrc/cuda/chunked_driver.cpp, resolve_chunk_rows)."""
    per_entry = (8 if dtype == torch.float64 else 4) + (2 if dtype in (torch.float16, torch.bfloat16) else 0)
    rows = max(int(budget_bytes) // (max(N, 1) * per_entry), CHUNK_MIN_ROWS)
    if rows < M:
        rows = max(64, rows - rows % 64)
    return int(min(rows, M))


def _env_number(name: str, kind):
    value = os.environ.get(name, "")
    if not value:
        return None
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number") from None


@contextlib.contextmanager
def gpu_chunking(chunk_rows: int | None = None, scratch_mb: float | None = None):
    """Within the block, GPU forwards use ``chunk_rows`` rows per chunk (> 0; a negative value runs the
    older fully fused tile kernels) or, with ``chunk_rows=None``, the most rows whose scratch fits
    ``scratch_mb`` MiB (default: ``UCA_SCRATCH_MB``, else 512). Outside any block the environment
    variables ``UCA_CHUNK_ROWS`` and ``UCA_SCRATCH_MB`` decide. The choice is read at each forward and
    autograd gives the backward the same number (it must recompute the forward's logits bit for bit)."""
    if chunk_rows is not None and not isinstance(chunk_rows, int):
        raise TypeError(f"chunk_rows must be an int or None, got {type(chunk_rows).__name__}")
    if scratch_mb is not None and not scratch_mb > 0:
        raise ValueError(f"scratch_mb must be positive, got {scratch_mb}")
    _chunking.append((chunk_rows, scratch_mb))
    try:
        yield
    finally:
        _chunking.pop()


def resolve_chunk_rows(M: int, N: int, dtype: torch.dtype) -> int:
    """The ``chunk_rows`` argument a GPU forward passes to its op now (see :func:`gpu_chunking`)."""
    rows, mb = _chunking[-1] if _chunking else (None, None)
    if rows is None:
        rows = _env_number("UCA_CHUNK_ROWS", int)
    if rows:
        return rows if rows < 0 else min(rows, M)
    if mb is None:
        mb = _env_number("UCA_SCRATCH_MB", float) or DEFAULT_SCRATCH_MB
    if not mb > 0:
        raise ValueError(f"UCA_SCRATCH_MB must be positive, got {mb}")
    return auto_chunk_rows(M, N, dtype, int(mb * 2**20))


def register_contrast_autograd(forward_op, backward_op) -> None:
    """Attach fake (meta) kernels and autograd to a backend's forward/backward op pair.

    ``forward_op`` / ``backward_op`` are ``torch.ops`` overloads (or ``custom_op`` objects) that
    follow the op contract (:mod:`uca_kernels.contrast`). Works for ops defined in C++ (``TORCH_LIBRARY``) and in Python.
    Both ops take a trailing ``precision`` (float32 products: "ieee", "tf32", ...; default "ieee") and
    ``chunk_rows`` (GPU row chunks, :func:`gpu_chunking`), which autograd passes from the forward to its
    backward.
    """

    def fake_forward(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self, precision="ieee", chunk_rows=0):
        odt = out_dtype(A.dtype)
        M, N = A.shape[0], B.shape[0]
        return (
            A.new_empty((M,), dtype=odt),
            A.new_empty((N,), dtype=odt),
            A.new_empty((M, N_STATS), dtype=STATS_DTYPE),
            A.new_empty((N, N_STATS), dtype=STATS_DTYPE),
        )

    def fake_backward(grad_rows, grad_cols, A, B, r, c, scale, bias, labels_a, labels_b,
                      loss_rows, loss_cols, row_stats, col_stats, loss, exclude_self, precision="ieee", chunk_rows=0):
        return (torch.empty_like(A), torch.empty_like(B), torch.empty_like(r), torch.empty_like(c),
                torch.empty_like(scale), torch.empty_like(bias))

    def setup_context(ctx, inputs, output):
        A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self, *config = inputs
        loss_rows, loss_cols, row_stats, col_stats = output
        ctx.save_for_backward(A, B, r, c, scale, bias, labels_a, labels_b, loss_rows, loss_cols, row_stats, col_stats)
        # the forward's precision and chunk rows go to the backward, which must recompute the same logits
        ctx.loss, ctx.exclude_self, ctx.config = loss, exclude_self, config

    def backward(ctx, grad_rows, grad_cols, _grad_row_stats, _grad_col_stats):
        A, B, r, c, scale, bias, labels_a, labels_b, loss_rows, loss_cols, row_stats, col_stats = ctx.saved_tensors
        grad_rows = torch.zeros_like(loss_rows) if grad_rows is None else grad_rows.contiguous()
        grad_cols = torch.zeros_like(loss_cols) if grad_cols is None else grad_cols.contiguous()
        grads = backward_op(grad_rows, grad_cols, A, B, r, c, scale, bias, labels_a, labels_b,
                            loss_rows, loss_cols, row_stats, col_stats, ctx.loss, ctx.exclude_self, *ctx.config)
        grads = [g if need else None for g, need in zip(grads, ctx.needs_input_grad[:6])]
        return (*grads, None, None, None, None, *([None] * len(ctx.config)))

    torch.library.register_fake(forward_op)(fake_forward)
    torch.library.register_fake(backward_op)(fake_backward)
    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


def register_sigmoid_sum_autograd(op) -> None:
    """Fake kernel and autograd of a backend's ``sigmoid_loss_and_grads`` op (see
    :mod:`uca_kernels.contrast`): the backward multiplies the gradients the forward formed by the incoming one."""

    def fake(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self, precision="ieee", chunk_rows=0):
        return (A.new_empty((), dtype=out_dtype(A.dtype)), torch.empty_like(A), torch.empty_like(B),
                torch.empty_like(r), torch.empty_like(c), torch.empty_like(scale), torch.empty_like(bias))

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*output[1:])

    def backward(ctx, grad_total, *_unused):
        grads = [g * grad_total if need else None for g, need in zip(ctx.saved_tensors, ctx.needs_input_grad[:6])]
        return (*grads, *([None] * (len(ctx.needs_input_grad) - 6)))

    torch.library.register_fake(op)(fake)
    torch.library.register_autograd(op, backward, setup_context=setup_context)
