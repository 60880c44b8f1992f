"""Training-step time with immediate vs deferred finiteness checks (host syncs per step).

    python -m benchmarks.finite_checks [--steps 20] [--out benchmarks/results/finite-checks-cpu.json]

One demo-config UCA model (the `uca demo` defaults), a fixed batch of 128 synthetic pairs; steps
alternate between the two modes so both see the same machine load. Reports the median step time
of each mode, the syncs per step counted at ``uca_kernels._validation._host_bools``, and the load.
On a CPU a "sync" costs almost nothing, so the two should tie here; on a GPU each of them stalls
the launch queue.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    import torch

    import uca_kernels
    import uca_kernels._validation as val
    from uca_model.config import RunConfig
    from uca_model.model import UCAModel

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = RunConfig().model
    vocab = 600
    model = UCAModel(cfg, vocab_size=vocab, special={"pad": 0, "bos": 1, "eos": 2, "mask": 3}, num_train_ids=500)
    B, L = 128, cfg.encoder.text.max_len
    H, W = cfg.encoder.vision.image_size
    ids = torch.randint(4, vocab, (B, L))
    mask = torch.ones(B, L, dtype=torch.long)
    labels = torch.full((B, L), -100)
    labels[:, 3] = ids[:, 3]
    mlm = ids.clone()
    mlm[:, 3] = 3
    batch = {"images": torch.randn(B, 3, H, W), "input_ids": ids, "attention_mask": mask,
             "pids": torch.randint(0, 500, (B,)), "mlm_input_ids": mlm, "mlm_labels": labels}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    syncs = {"immediate": [], "deferred": []}
    times = {"immediate": [], "deferred": []}
    count = [0]
    real = val._host_bools

    def counting(flags):
        count[0] += 1
        return real(flags)

    val._host_bools = counting
    finite = uca_kernels.FiniteChecks()

    def step(deferred: bool):
        ctx = uca_kernels.deferred_finite_checks(finite) if deferred else _null()
        with ctx:
            terms = model(batch)["terms"]
            total = sum(w * terms[k] for k, w in model.loss_weights().items())
            opt.zero_grad(set_to_none=True)
            total.backward()
        opt.step()

    from contextlib import nullcontext as _null

    for _ in range(2):  # warm-up
        step(False)
        step(True)
    load = os.getloadavg()[0]
    for i in range(args.steps):
        for mode in ("immediate", "deferred"):
            count[0] = 0
            t0 = time.perf_counter()
            step(mode == "deferred")
            times[mode].append(time.perf_counter() - t0)
            syncs[mode].append(count[0])
    finite.check()
    val._host_bools = real
    out = {"device": "cpu", "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": args.steps,
           "batch": B, "load_1min_before": load, "load_1min_after": os.getloadavg()[0],
           **{f"{m}_median_s": statistics.median(times[m]) for m in times},
           **{f"{m}_syncs_per_step": statistics.mean(syncs[m]) for m in syncs}}
    out["deferred_over_immediate"] = out["deferred_median_s"] / out["immediate_median_s"]
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
