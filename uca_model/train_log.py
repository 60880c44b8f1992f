"""The training run's logs: ``history.csv`` every ``train.log_every`` steps, ``eval.csv``, and
TensorBoard events under ``tb/`` when ``tensorboard`` is installed.

:class:`StepLog` keeps the open log interval's running sums on the device (no host sync until a
log step); its :meth:`StepLog.state` goes into ``checkpoint_last.pt``, so a resumed run writes
exactly the rows the uninterrupted run would (timing columns aside).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch
import torch.distributed as dist

from .distributed import DistContext
from .evaluation import METRIC_KEYS

__all__ = ["CsvLog", "EVAL_FIELDS", "StepLog", "eval_row", "tensorboard_writer"]

EVAL_FIELDS = ["split", "epoch", "step", *METRIC_KEYS, "cosine_R1", "cosine_mAP", "distance_R1", "distance_mAP",
               "sigma_image", "sigma_text"]


class CsvLog:
    """Append rows to a CSV file with a fixed header; ``truncate_after(step)`` drops later rows."""

    def __init__(self, path: Path, fields: list[str]) -> None:
        self.path, self.fields = path, fields

    def truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        with self.path.open(newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if float(r["step"]) <= step]
        self.rewrite(rows)

    def rewrite(self, rows: list[dict]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path)

    def append(self, row: dict) -> None:
        new = not self.path.is_file()
        with self.path.open("a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


def eval_row(split: str, epoch: int, step: int, m: dict) -> dict:
    """One ``eval.csv`` row of the metrics ``m``."""
    row = {"split": split, "epoch": epoch, "step": step, **{k: round(m[k], 4) for k in METRIC_KEYS}}
    if "alt" in m:
        row.update({f"{m['alt']['score']}_{k}": round(m["alt"][k], 4) for k in ("R1", "mAP")})
        row["sigma_image"], row["sigma_text"] = m["sigma_image"], m["sigma_text"]
    return row


def tensorboard_writer(run_dir: Path, purge_step: int | None = None):
    """A TensorBoard writer for the run (None without tensorboard); on resume ``purge_step`` drops
    the events a killed run logged after its last checkpoint, so no step is shown twice."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - optional dependency (ImportError, or a broken install)
        return None
    return SummaryWriter(str(run_dir / "tb"), purge_step=purge_step)


class StepLog:
    """The run's logs. Rank 0 writes; every rank accumulates (the log step averages over ranks).

    Args:
        run: the run folder. fields: the ``history.csv`` columns. ctx: the process group.
        resumed_at: the step of the checkpoint a resumed run starts from (None: a new run, whose
            old log files are removed). log_state: the checkpoint's open log interval.
        device: where the running sums live.
    """

    def __init__(self, run: Path, fields: list[str], ctx: DistContext, *, resumed_at: int | None,
                 log_state: dict | None, device: torch.device) -> None:
        self.ctx = ctx
        self.history = CsvLog(run / "history.csv", fields)
        self.evals = CsvLog(run / "eval.csv", EVAL_FIELDS)
        if ctx.is_main:
            if resumed_at is not None:
                self.history.truncate_after(resumed_at)
            else:
                for p in (run / "history.csv", run / "eval.csv", run / "metrics.json"):
                    p.unlink(missing_ok=True)
        self.tb = (tensorboard_writer(run, purge_step=resumed_at + 1 if resumed_at is not None else None)
                   if ctx.is_main else None)
        self._reset()
        if log_state:  # the log interval the checkpoint was written in
            self.acc = {k: v.to(device) for k, v in log_state["acc"].items()}
            self.n, self.samples = log_state["n"], log_state["samples"]
            self.data_time, self.step_time = log_state["data_time"], log_state["step_time"]

    def _reset(self) -> None:
        self.acc: dict[str, torch.Tensor] = {}
        self.n, self.samples, self.data_time, self.step_time = 0, 0, 0.0, 0.0

    def state(self) -> dict:
        """The open log interval (running sums of the logged values), for the checkpoint."""
        return {"acc": {k: v.detach().cpu() for k, v in self.acc.items()}, "n": self.n, "samples": self.samples,
                "data_time": self.data_time, "step_time": self.step_time}

    def add(self, values: dict[str, torch.Tensor], samples: int, data_time: float, step_time: float) -> None:
        """One step's values (0-d tensors, summed on their device: no sync)."""
        for k, v in values.items():
            self.acc[k] = self.acc[k] + v if k in self.acc else v.clone()
        self.n += 1
        self.samples += samples
        self.data_time += data_time
        self.step_time += step_time

    def flush(self, step: int, epoch: float, lr: float) -> tuple[dict[str, float], float]:
        """Close the interval: the means over its steps (and ranks: one collective) as a
        ``history.csv`` row and TensorBoard scalars; returns ``(means, samples/s)``."""
        keys = sorted(self.acc)
        vec = torch.stack([self.acc[k].float() for k in keys]) / self.n
        if self.ctx.distributed:
            dist.all_reduce(vec)
            vec /= self.ctx.world_size
        means = dict(zip(keys, vec.tolist()))
        sps = self.samples / max(1e-9, self.data_time + self.step_time)
        row = {"step": step, "epoch": round(epoch, 4), "lr": lr, **{k: round(v, 6) for k, v in means.items()},
               "samples_per_s": round(sps, 2), "data_time": round(self.data_time / self.n, 4),
               "step_time": round(self.step_time / self.n, 4)}
        if self.ctx.is_main:
            self.history.append(row)
            if self.tb is not None:
                for k, v in row.items():
                    if k not in ("step", "epoch"):
                        self.tb.add_scalar(k, v, step)
        self._reset()
        return means, sps

    def evaluation(self, eval_history: list[dict], step: int, metrics: dict | None = None,
                   prefix: str = "val") -> None:
        """Rewrite ``eval.csv`` from ``eval_history``; with ``metrics``, also their TensorBoard scalars."""
        self.evals.rewrite(eval_history)
        if metrics is not None and self.tb is not None:
            for k in METRIC_KEYS:
                self.tb.add_scalar(f"{prefix}/{k}", metrics[k], step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
