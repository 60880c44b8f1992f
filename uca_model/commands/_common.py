"""What the ``uca`` commands share: the command record, user-error handling, metric tables.

Errors a user can fix (bad config values, missing files, incompatible checkpoints) are printed as
one line on stderr with exit status 2; a run stopped by ``train.stop_after_steps`` exits with 3.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["Command", "CEILING_LABEL", "DEMO_DATA", "DEMO_RUN", "EXAMPLE_QUERY", "ceiling_lines", "fail",
           "format_metrics_table", "set_threads", "user_errors", "with_ceiling"]

DEMO_RUN = Path("runs/demo")
DEMO_DATA = Path("data/synthpedes-demo")  # the default; data/synthpedes-<preset> in general
EXAMPLE_QUERY = "a woman in a red coat with a black backpack"


@dataclass(frozen=True)
class Command:
    """One subcommand of ``uca``."""

    name: str
    help: str  # one line shown by ``uca --help``
    add_arguments: Callable[[argparse.ArgumentParser], None]  # declares the command's options
    run: Callable[[argparse.Namespace], int]  # executes it; returns the exit status


def user_errors():
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..encoders import PretrainedCLIPError
    from ..trainer import RunExistsError

    return (ConfigError, CheckpointError, PretrainedCLIPError, RunExistsError, FileNotFoundError, ValueError)


def fail(cmd: str, e: BaseException) -> int:
    print(f"uca {cmd}: error: {e}", file=sys.stderr)
    return 2


def set_threads(n: int | None) -> None:
    """``--threads``: torch's intra-op CPU threads (None: torch's default)."""
    if n is not None:
        import torch

        if n < 1:
            raise ValueError(f"--threads must be >= 1, got {n}")
        torch.set_num_threads(n)


def format_metrics_table(rows: Sequence[tuple[str, dict]]) -> str:
    """A Markdown table of R@1/5/10, mAP, mINP for ``(label, metrics)`` rows."""
    keys = ("R1", "R5", "R10", "mAP", "mINP")
    out = ["| | " + " | ".join(("R@1", "R@5", "R@10", "mAP", "mINP")) + " |", "|---|" + "---:|" * len(keys)]
    for label, m in rows:
        out.append(f"| {label} | " + " | ".join(f"{m[k]:.2f}" for k in keys) + " |")
    return "\n".join(out)


CEILING_LABEL = "ceiling (Bayes oracle)"


def ceiling_lines(fractions: dict) -> list[str]:
    """One line per split: the model's R@1/5/10, mAP and mINP as percentages of the Bayes ceiling (mINP
    left out for a result recorded without it)."""
    return [f"{split} R@1 = {f['R1']:.0f} % of the ceiling, R@5 = {f['R5']:.0f} %, R@10 = {f['R10']:.0f} %, "
            f"mAP = {f['mAP']:.0f} %" + (f", mINP = {f['mINP']:.0f} %" if "mINP" in f else "")
            for split, f in fractions.items()]


def with_ceiling(result: dict, root) -> dict:
    """``result`` (``val`` / ``test`` metrics) with ``ceiling`` / ``fraction_of_ceiling`` filled in if missing
    (a run finished before they were recorded); unchanged for data that is not SynthPedes."""
    if "ceiling" in result:
        return result
    from ..ceiling import ceiling_report

    try:
        return {**result, **ceiling_report(root, {s: result[s] for s in ("val", "test") if result.get(s)})}
    except (OSError, ValueError, KeyError) as e:
        print(f"warning: could not compute the Bayes ceiling of {root}: {e}", file=sys.stderr)
        return result
