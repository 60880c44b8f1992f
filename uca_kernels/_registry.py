"""The contract's constants and the registration every fused backend's ops go through.

A leaf module (it imports only torch): the extension loader (:mod:`uca_kernels._ext`) and the
Triton backend register their ops here, and :mod:`uca_kernels.contrast` re-exports it all. The
maths and the op contract are in :mod:`uca_kernels.contrast`'s docstring.
"""

from __future__ import annotations

import torch

__all__ = ["GRAD_PRESCALE_TARGET", "LOSSES", "N_STATS", "REDUCTIONS", "SDM_EPS", "STATS_DTYPE", "grad_prescale", "out_dtype",
           "register_contrast_autograd", "register_sigmoid_sum_autograd"]

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
    The CUDA bindings compute the same (csrc/cuda/bindings_cuda.cpp)."""
    gmax = torch.maximum(grad_rows.abs().amax(), grad_cols.abs().amax()).float() * scale.abs().float()
    exponent = torch.floor(torch.log2(GRAD_PRESCALE_TARGET / gmax.clamp_min(1e-30))).clamp(-60.0, 60.0)
    return torch.exp2(exponent)


def register_contrast_autograd(forward_op, backward_op) -> None:
    """Attach fake (meta) kernels and autograd to a backend's forward/backward op pair.

    ``forward_op`` / ``backward_op`` are ``torch.ops`` overloads (or ``custom_op`` objects) that
    follow the op contract (:mod:`uca_kernels.contrast`). Works for ops defined in C++ (``TORCH_LIBRARY``) and in Python.
    Both ops take a trailing ``precision`` (float32 products: "ieee", "tf32", ...; default "ieee"),
    which autograd passes from the forward to its backward.
    """

    def fake_forward(A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self, precision="ieee"):
        odt = out_dtype(A.dtype)
        M, N = A.shape[0], B.shape[0]
        return (
            A.new_empty((M,), dtype=odt),
            A.new_empty((N,), dtype=odt),
            A.new_empty((M, N_STATS), dtype=STATS_DTYPE),
            A.new_empty((N, N_STATS), dtype=STATS_DTYPE),
        )

    def fake_backward(grad_rows, grad_cols, A, B, r, c, scale, bias, labels_a, labels_b,
                      loss_rows, loss_cols, row_stats, col_stats, loss, exclude_self, precision="ieee"):
        return (torch.empty_like(A), torch.empty_like(B), torch.empty_like(r), torch.empty_like(c),
                torch.empty_like(scale), torch.empty_like(bias))

    def setup_context(ctx, inputs, output):
        A, B, r, c, scale, bias, labels_a, labels_b, loss, exclude_self, precision = inputs
        loss_rows, loss_cols, row_stats, col_stats = output
        ctx.save_for_backward(A, B, r, c, scale, bias, labels_a, labels_b, loss_rows, loss_cols, row_stats, col_stats)
        # the forward's float32 product precision goes to the backward, which must recompute the same logits
        ctx.loss, ctx.exclude_self, ctx.precision = loss, exclude_self, precision

    def backward(ctx, grad_rows, grad_cols, _grad_row_stats, _grad_col_stats):
        A, B, r, c, scale, bias, labels_a, labels_b, loss_rows, loss_cols, row_stats, col_stats = ctx.saved_tensors
        grad_rows = torch.zeros_like(loss_rows) if grad_rows is None else grad_rows.contiguous()
        grad_cols = torch.zeros_like(loss_cols) if grad_cols is None else grad_cols.contiguous()
        grads = backward_op(grad_rows, grad_cols, A, B, r, c, scale, bias, labels_a, labels_b,
                            loss_rows, loss_cols, row_stats, col_stats, ctx.loss, ctx.exclude_self, ctx.precision)
        grads = [g if need else None for g, need in zip(grads, ctx.needs_input_grad[:6])]
        return (*grads, None, None, None, None, None)

    torch.library.register_fake(forward_op)(fake_forward)
    torch.library.register_fake(backward_op)(fake_backward)
    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


def register_sigmoid_sum_autograd(op) -> None:
    """Fake kernel and autograd of a backend's ``sigmoid_loss_and_grads`` op (see
    :mod:`uca_kernels.contrast`): the backward multiplies the gradients the forward formed by the incoming one."""

    def fake(A, B, r, c, scale, bias, labels_a, labels_b, exclude_self):
        return (A.new_empty((), dtype=out_dtype(A.dtype)), torch.empty_like(A), torch.empty_like(B),
                torch.empty_like(r), torch.empty_like(c), torch.empty_like(scale), torch.empty_like(bias))

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*output[1:])

    def backward(ctx, grad_total, *_unused):
        grads = [g * grad_total if need else None for g, need in zip(ctx.saved_tensors, ctx.needs_input_grad[:6])]
        return (*grads, None, None, None)

    torch.library.register_fake(op)(fake)
    torch.library.register_autograd(op, backward, setup_context=setup_context)
