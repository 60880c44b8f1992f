"""Fused-op time in two source trees (before / after a kernel change), interleaved in one run.

    python -m benchmarks.ab_trees OLD_TREE NEW_TREE [--backend cpu] [--losses sdm,infonce,sigmoid]
        [--b 4096] [--e 512] [--rounds 5] [--reps 3] [--out FILE.md]

Each tree must hold a built ``uca_kernels`` (e.g. ``git worktree add /tmp/old HEAD~1`` and
``python setup.py build_ext --inplace`` there). Every round times each tree in a fresh process,
old then new, forward + backward of ``contrast(..., reduction="none")`` with random upstream
gradients (median of ``--reps`` calls after one warm-up call). The ratio new / old is taken per
round, so a load change between rounds moves both sides; the table gives the median ratio and its
range over the rounds. Time it only on a quiet machine and say the load beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
import uca_kernels as uk
assert uk.__file__.startswith(sys.argv[1]), uk.__file__
backend, losses, B, E, reps = sys.argv[2], sys.argv[3].split(","), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
g = torch.Generator().manual_seed(0)
A = torch.nn.functional.normalize(torch.randn(B, E, generator=g), dim=1)
Bm = torch.nn.functional.normalize(torch.randn(B, E, generator=g), dim=1)
r, c = torch.zeros(B), torch.zeros(B)
scale, bias = torch.tensor(-10.0), torch.tensor(0.0)
labels = torch.arange(B) // 4
gr, gc = torch.rand(B, generator=g), torch.rand(B, generator=g)
out = {}
for loss in losses:
    def step():
        a, b = A.clone().requires_grad_(), Bm.clone().requires_grad_()
        rows, cols = uk.contrast(a, b, r, c, scale, bias, labels, labels, loss=loss, backend=backend)
        ((rows * gr).sum() + (cols * gc).sum()).backward()
    step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
    out[loss] = sorted(times)[len(times) // 2]
print(json.dumps(out))
"""


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def time_tree(tree: str, args) -> dict[str, float]:
    cmd = [sys.executable, "-c", _CHILD, os.path.abspath(tree), args.backend, args.losses, str(args.b), str(args.e),
           str(args.reps)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"timing {tree} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--losses", default="sdm,infonce,sigmoid")
    ap.add_argument("--b", type=int, default=4096, help="M = N")
    ap.add_argument("--e", type=int, default=512, help="feature width")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the table (markdown) here too")
    args = ap.parse_args(argv)

    losses = args.losses.split(",")
    ratios: dict[str, list[float]] = {loss: [] for loss in losses}
    times = {"old": {loss: [] for loss in losses}, "new": {loss: [] for loss in losses}}
    load_before = os.getloadavg()[0]
    for k in range(args.rounds):
        old, new = time_tree(args.old, args), time_tree(args.new, args)
        for loss in losses:
            times["old"][loss].append(old[loss])
            times["new"][loss].append(new[loss])
            ratios[loss].append(new[loss] / old[loss])
        print(f"round {k + 1}/{args.rounds}: " + ", ".join(f"{loss} {new[loss] / old[loss]:.3f}" for loss in losses),
              flush=True)
    load_after = os.getloadavg()[0]

    lines = [f"# Fused `{args.backend}` op, fwd + bwd, before / after (`benchmarks/ab_trees.py`)", "",
             f"- command: `python -m benchmarks.ab_trees {args.old} {args.new} --backend {args.backend} "
             f"--losses {args.losses} --b {args.b} --e {args.e} --rounds {args.rounds} --reps {args.reps}`",
             f"- machine: {cpu_name()}, {os.cpu_count()} cores; "
             f"1-min load {load_before:.2f} before, {load_after:.2f} after",
             f"- problem: M = N = {args.b}, E = {args.e}, float32, 4 rows per identity", "",
             "| loss | old median (s) | new median (s) | new / old, median of rounds | range |",
             "| --- | --- | --- | --- | --- |"]
    for loss in losses:
        r = ratios[loss]
        lines.append(f"| {loss} | {statistics.median(times['old'][loss]):.3f} | "
                     f"{statistics.median(times['new'][loss]):.3f} | {statistics.median(r):.3f} | "
                     f"{min(r):.3f} – {max(r):.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
