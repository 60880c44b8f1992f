"""What a data-parallel point term costs per rank, now (each pair once across the group) against
what it computed before, in one run.

    python -m benchmarks.ddp_cost [--term intra|cross] [--world 2] [--local 512] [--samples 4] [--dim 128]
        [--repeats 5]

``intra`` (image + text intra-modal terms): local rows against the gathered columns
(``uca_model.losses.pcl_loss``) against the whole global problem on every rank. ``cross`` (the
inter-modal term, SDM): local rows against the gathered columns with the column losses assembled
from every rank's statistics (``uca_kernels.contrast_row_share``) against the two calls it made
before (local rows x global columns, then global rows x local columns, half of each kept).

Two (or ``--world``) gloo processes on the CPU, one thread each, the fused ``cpu`` backend, float32;
forward + backward of both intra terms (image and text), median of ``--repeats`` after a warm-up.
Prints a Markdown table and, with ``--out``, writes it with the machine's load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _old_intra(z, labels, ctx, scale):
    """The previous intra term: the gathered square problem on every rank (L on every rank)."""
    from uca_kernels import contrast
    from uca_kernels.losses import point_maps
    from uca_model.distributed import gather, gather_labels

    gz, gl = gather(z, ctx), gather_labels(labels, ctx)
    A, B, r, c, sign = point_maps(gz, gz, "cosine")
    rows, cols = contrast(A, B, r, c, sign * scale, 0.0, gl, gl, loss="sdm", exclude_self=True, backend="cpu")
    return rows.mean() + cols.mean()


def _old_inter(zv, zt, labels, ctx, scale):
    """The previous inter term: two calls, local rows x global columns and global rows x local columns."""
    from uca_kernels import contrast
    from uca_kernels.losses import point_maps
    from uca_model.distributed import gather, gather_labels

    gl, gv, gt = gather_labels(labels, ctx), gather(zv, ctx), gather(zt, ctx)
    A, B, r, c, _ = point_maps(zv, gt, "cosine")
    rows, _ = contrast(A, B, r, c, scale, 0.0, labels, gl, loss="sdm", backend="cpu")
    A, B, r, c, _ = point_maps(gv, zt, "cosine")
    _, cols = contrast(A, B, r, c, scale, 0.0, gl, labels, loss="sdm", backend="cpu")
    return ctx.world_size * (rows.sum() + cols.sum()) / gl.shape[0]


def _worker(rank, world, init, args, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        from uca_model.distributed import DistContext
        from uca_model.losses import pcl_loss

        ctx = DistContext.current()
        g = torch.Generator().manual_seed(rank)
        n = args.local * args.samples
        zv = torch.randn(n, args.dim, generator=g, requires_grad=True)
        zt = torch.randn(n, args.dim, generator=g, requires_grad=True)
        labels = torch.randint(0, max(2, args.local // 2), (args.local,), generator=g).repeat_interleave(args.samples)

        def new():
            p = pcl_loss(zv, zt, labels, scale=10.0, loss="sdm", intra=args.term == "intra", backend="cpu", ctx=ctx)
            (p["inter"] if args.term == "cross" else p["intra_image"] + p["intra_text"]).backward()

        def old():
            if args.term == "cross":
                _old_inter(zv, zt, labels, ctx, 10.0).backward()
            else:
                (_old_intra(zv, labels, ctx, 10.0) + _old_intra(zt, labels, ctx, 10.0)).backward()

        times = {}
        for name, fn in ((NAMES[args.term][0], new), (NAMES[args.term][1], old)):
            fn()  # warm-up
            ts = []
            for _ in range(args.repeats):
                dist.barrier()
                t0 = time.perf_counter()
                fn()
                dist.barrier()
                ts.append(time.perf_counter() - t0)
            times[name] = statistics.median(ts)
        if rank == 0:
            torch.save(times, out)
    finally:
        dist.destroy_process_group()


NAMES = {"intra": ("local rows x global columns (now)", "global problem on every rank (before)"),
         "cross": ("local rows x global columns, column statistics combined (now)",
                   "two calls, local x global and global x local (before)")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--term", choices=sorted(NAMES), default="intra")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--local", type=int, default=512, help="pairs per rank (b)")
    ap.add_argument("--samples", type=int, default=4, help="points per pair (K)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="write the table here (Markdown)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        res = os.path.join(tmp, "times.pt")
        mp.spawn(_worker, args=(args.world, os.path.join(tmp, "init"), args, res), nprocs=args.world, join=True)
        times = torch.load(res)
    n = args.world * args.local * args.samples
    load = os.getloadavg()[0]
    base = times[NAMES[args.term][1]]
    what = ("intra-modal point terms (image + text" if args.term == "intra" else "inter-modal point term (image-text")
    lines = [f"Data-parallel {what}, SDM, forward + backward), {args.world} gloo "
             f"processes x 1 thread, cpu backend, float32: b = {args.local} pairs x K = {args.samples} points "
             f"per rank (n = {n} global points), D = {args.dim}; median of {args.repeats}; "
             f"load average {load:.1f} when it finished.", "",
             f"| {args.term} term per rank | pairs per rank | time (s) | vs before |", "|---|---:|---:|---:|"]
    for name, t in times.items():
        share = (n // args.world) * n
        pairs = share if "now" in name else (n * n if args.term == "intra" else 2 * share)
        lines.append(f"| {name} | {pairs:,} | {t:.3f} | {t / base:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
