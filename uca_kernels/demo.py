"""A small end-to-end check of the installed package: the W2 + SDM distribution contrast loss on a
random batch, computed by every usable backend, with values, gradient agreement and timings.

    python -m uca_kernels.demo [--batch 2048] [--dim 256]
"""

from __future__ import annotations

import argparse
import time

import torch

from . import dispatch, distribution_contrast_loss


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=2048, help="batch size B (logit matrix is B x B)")
    ap.add_argument("--dim", type=int, default=256, help="embedding dimension D")
    ap.add_argument("--metric", default="w2")
    ap.add_argument("--loss", default="sdm")
    args = ap.parse_args(argv)

    g = torch.Generator().manual_seed(0)
    B, D = args.batch, args.dim
    base = [torch.randn(B, D, generator=g) * 0.3, torch.randn(B, D, generator=g) * 0.1 - 1.0,
            torch.randn(B, D, generator=g) * 0.3, torch.randn(B, D, generator=g) * 0.1 - 1.0]
    labels = torch.randint(0, B // 2, (B,), generator=g)
    usable = [n for n, reasons in dispatch.usable_backends("cpu").items() if not reasons]
    print(f"B={B} D={D} metric={args.metric} loss={args.loss}; usable CPU backends: {', '.join(usable)}")
    grads = {}
    for name in usable:
        leaves = [t.clone().requires_grad_() for t in base]
        t0 = time.perf_counter()
        value = distribution_contrast_loss(*leaves, labels=labels, metric=args.metric, loss=args.loss,
                                           scale=0.5, backend=name)
        value.backward()
        dt = time.perf_counter() - t0
        grads[name] = torch.cat([t.grad.flatten() for t in leaves])
        print(f"  {name:10s} loss {value.item():.6f}   forward+backward {dt * 1e3:8.1f} ms")
    if "reference" in grads:
        for name, gr in grads.items():
            if name != "reference":
                err = (gr - grads["reference"]).abs().max().item()
                print(f"  max |grad {name} - grad reference| = {err:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
