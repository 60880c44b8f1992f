"""Where the fused GPU op's time goes: each launch of the Triton backend and each op of both GPU
backends, timed alone, beside one [B, E] @ [E, B] matmul of the same shape (one GEMM pass).

    python -m benchmarks.gpu_phases --device cuda --out DIR                # B = 32768, E = 256 and 1024
    TRITON_INTERPRET=1 python -m benchmarks.gpu_phases --device cpu --dry  # the code path, tiny sizes

The fused op does two forward launches (row and column statistics, one GEMM pass each) and two
backward launches (row and column owners: the logits again plus the dX GEMM, two passes each), so
an ideal launch costs 1 (forward) or 2 (backward) matmuls. The column ``÷ matmul`` says how far
each launch is from that. The first H200 run measured the whole op at 10-14x four matmuls; this
tells which launch, and how it grows with E (the backward's read-modify-write of dX in global
memory when E > BLOCK_E grows with E, the GEMMs with E too, so compare E = 256 with 1024).
SDM loss, labels = identities, W2-like logits (scale 0.05 on unit-scale features).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def _timer(device: str, fn, reps: int, warmup: int = 2) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def _problem(B: int, E: int, dtype: torch.dtype, device: str):
    g = torch.Generator(device="cpu").manual_seed(0)
    acc = torch.float32
    A = (torch.randn(B, E, generator=g) / E**0.5).to(device, dtype)
    Bm = (torch.randn(B, E, generator=g) / E**0.5).to(device, dtype)
    r, c = torch.zeros(B, device=device, dtype=acc), torch.zeros(B, device=device, dtype=acc)
    scale, bias = torch.tensor(0.05, device=device), torch.tensor(0.0, device=device)
    labels = torch.arange(B, device=device)
    return A, Bm, r, c, scale, bias, labels, labels.clone()


def _triton_phases(args_op, device, reps):
    """(phase, ms) for the four launches of the Triton tile kernels on one problem, the tile chosen by a
    forward first."""
    from uca_kernels import triton_contrast as tc

    import inspect

    A, B, r, c, scale, bias, la, lb = args_op
    precision = tc.get_input_precision()
    # the launches below are the tile kernels': where the op also has the chunked design, ask for the tiles
    tiles = (-1,) if "chunk_rows" in inspect.signature(tc._forward).parameters else ()
    loss_rows, loss_cols, row_stats, col_stats = tc._forward(A, B, r, c, scale, bias, la, lb, "sdm", False, precision,
                                                             *tiles)
    flags = tc._flags(A, "sdm", False, precision)
    cfg = tc._TILE_CONFIGS[tc._tile_key(A, B, flags)]
    M, E = A.shape
    N = B.shape[0]
    odt = r.dtype
    g_rows, g_cols = torch.full((M,), 1.0 / M, device=device), torch.full((N,), 1.0 / N, device=device)
    dA, dB = torch.empty(M, E, dtype=odt, device=device), torch.empty(N, E, dtype=odt, device=device)
    s_rows, st_rows, s_cols = (torch.empty(n, dtype=odt, device=device) for n in (M, M, N))
    tile = f"{cfg.kwargs['BLOCK_A']}x{cfg.kwargs['BLOCK_B']}x{cfg.kwargs['BLOCK_E']} w{cfg.num_warps} s{cfg.num_stages}"
    launches = {
        "fwd rows": lambda: tc._fwd_launch(A, B, r, c, la, lb, scale, bias, loss_rows, row_stats, False, flags, cfg),
        "fwd cols": lambda: tc._fwd_launch(A, B, r, c, la, lb, scale, bias, loss_cols, col_stats, True, flags, cfg),
        "bwd rows": lambda: tc._bwd_launch(A, B, r, c, la, lb, scale, bias, g_rows, g_cols, loss_rows, loss_cols,
                                           row_stats, col_stats, dA, s_rows, st_rows, False, flags, cfg),
        "bwd cols": lambda: tc._bwd_launch(A, B, r, c, la, lb, scale, bias, g_cols, g_rows, loss_cols, loss_rows,
                                           col_stats, row_stats, dB, s_cols, s_cols, True, flags, cfg),
    }
    return [(name, _timer(device, fn, reps), tile) for name, fn in launches.items()]


def _op_phases(backend, args_op, device, reps):
    """(phase, ms) of the registered forward and backward ops of ``backend`` ('triton' or 'cuda')."""
    from uca_kernels import backends as bk

    ops = torch.ops.uca
    fwd, bwd = ((ops.triton_contrast_forward, ops.triton_contrast_backward) if backend == "triton"
                else (ops.contrast_forward, ops.contrast_backward))
    flags = ("sdm", False, bk.get_backend(backend).precision())
    out = fwd(*args_op, *flags)
    M, N = args_op[0].shape[0], args_op[1].shape[0]
    g_rows, g_cols = torch.full((M,), 1.0 / M, device=device), torch.full((N,), 1.0 / N, device=device)
    return [("forward op", _timer(device, lambda: fwd(*args_op, *flags), reps), ""),
            ("backward op", _timer(device, lambda: bwd(g_rows, g_cols, *args_op, *out, *flags), reps), "")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    ap.add_argument("--B", type=int, default=32768)
    ap.add_argument("--E", default="256,1024", help="comma-separated feature widths")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--backends", default="triton,cuda")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dry", action="store_true", help="tiny sizes (B = 64, E = 40), one rep: the code path only")
    ap.add_argument("--out", default=None, help="folder for gpu-phases.json / .md (default: print only)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is visible")
    if args.dry:
        args.B, args.E, args.reps = 64, "40", 1
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the float32 rows: TF32, as the headline
        os.environ["UCA_TRITON_PRECISION"] = os.environ["UCA_CUDA_PRECISION"] = "tf32"
    from uca_kernels import backends as bk

    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    rows = []
    for dt in args.dtypes.split(","):
        dtype = DTYPES[dt]
        for E in (int(e) for e in args.E.split(",")):
            prob = _problem(args.B, E, dtype, args.device)
            a, b = prob[0], prob[1]
            mm = _timer(args.device, lambda: a @ b.T, args.reps)
            rows.append(dict(backend="torch", phase="one matmul", dtype=dt, E=E, B=args.B, ms=mm, tile=""))
            for backend in args.backends.split(","):
                why = bk.get_backend(backend).not_supported_reasons(A=a, B=b, loss="sdm", exclude_self=False,
                                                                 explicit=True)
                if why:
                    print(f"{backend} {dt} E={E}: skipped ({'; '.join(why)})", flush=True)
                    continue
                phases = _op_phases(backend, prob, args.device, args.reps)
                if backend == "triton":
                    phases += _triton_phases(prob, args.device, args.reps)
                for phase, ms, tile in phases:
                    rows.append(dict(backend=backend, phase=phase, dtype=dt, E=E, B=args.B, ms=ms, tile=tile))
            for row in rows:
                if row["dtype"] == dt and row["E"] == E:
                    row["per_matmul"] = row["ms"] / mm
                    if "printed" not in row:
                        print(f"{row['backend']:7s} {row['phase']:12s} {dt:9s} E={E:5d} B={args.B}: "
                              f"{row['ms']:9.3f} ms = {row['per_matmul']:6.2f} matmuls  {row['tile']}", flush=True)
                        row["printed"] = True
    for row in rows:
        row.pop("printed", None)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        meta = dict(device=name, torch=torch.__version__, B=args.B, reps=args.reps, dry=args.dry,
                    date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        with open(os.path.join(args.out, "gpu-phases.json"), "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
        lines = [f"# Fused op phases on {name}", "",
                 f"torch {torch.__version__}, B = {args.B}, SDM, medians of {args.reps} calls; "
                 "one matmul = one [B, E] @ [E, B] in the same dtype (float32 as TF32).", "",
                 "| backend | phase | dtype | E | ms | ÷ one matmul | tile |", "|---|---|---|---:|---:|---:|---|"]
        lines += [f"| {r['backend']} | {r['phase']} | {r['dtype']} | {r['E']} | {r['ms']:.3f} | {r['per_matmul']:.2f} | "
                  f"{r['tile']} |" for r in rows]
        with open(os.path.join(args.out, "gpu-phases.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
