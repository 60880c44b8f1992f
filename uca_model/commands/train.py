"""``uca train``: train a model from a JSON config (also under torchrun)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ._common import CEILING_LABEL, Command, ceiling_lines, fail, format_metrics_table, set_threads, user_errors

def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None,
                   help="JSON config (only the fields that differ from the defaults; default: the CPU demo config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set optim.lr=5e-4 --set model.loss.metric=kl (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (required if it exists)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _train_run(args: argparse.Namespace) -> int:
    from ..config import RunConfig, apply_overrides, from_dict, load_config, to_dict
    from ..trainer import TrainingStopped, train

    try:
        set_threads(args.threads)
        if args.config is not None:
            cfg = load_config(args.config, args.overrides)
        else:
            cfg = from_dict(apply_overrides(to_dict(RunConfig()), args.overrides))
        if args.no_progress:
            cfg.train.progress = False
        out = args.out or Path("runs") / (args.config.stem if args.config else "default")
        t0 = time.perf_counter()
        result = train(cfg, out, resume=True if args.resume else False)
        from ..distributed import DistContext

        is_main = DistContext.current().is_main  # under torchrun only rank 0 reports
    except TrainingStopped as e:
        print(f"uca train: {e}", file=sys.stderr)
        return 3
    except user_errors() as e:
        return fail("train", e)
    finally:
        _shutdown_distributed()
    if result and is_main:
        print(f"\n{result['run']}: trained in {time.perf_counter() - t0:.0f} s ({result['steps']} steps); "
              f"best val {result['select_metric']} at epoch {result['best_epoch']}; ranking by {result['score']}")
        rows = [("val (best)", result["val"]), ("test", result["test"])]
        rows += [(f"{CEILING_LABEL}, {s}", c) for s, c in result.get("ceiling", {}).items()]
        print(format_metrics_table(rows))
        for line in ceiling_lines(result.get("fraction_of_ceiling", {})):
            print(line)
    return 0


def _shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


COMMAND = Command("train", "train a model from a JSON config (torchrun --nproc_per_node=N works too)",
                  _train_arguments, _train_run)
