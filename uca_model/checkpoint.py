"""Checkpoints and run folders: atomic writes, compatibility checks with actionable errors.

A run folder holds ``config.json`` (the resolved :class:`~uca_model.config.RunConfig`),
``checkpoint_last.pt`` (everything needed to resume: model, optimiser, schedule, position in the
data, RNG states, evaluation history) and ``checkpoint_best.pt`` (the weights selected on val).
Every file is written to a temporary name and renamed, so a run killed at any moment leaves either
the previous or the new file, never a torn one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig, diff_configs, load_config, to_dict

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "atomic_save",
    "load_checkpoint",
    "check_state_dict",
    "load_run_config",
    "resolve_checkpoint",
    "RESUME_MUTABLE",
]

FORMAT = "uca-checkpoint"
VERSION = 1
#: config fields that may differ between a checkpoint and the config that resumes it
RESUME_MUTABLE = ("train.stop_after_steps", "train.progress", "train.log_every", "data.num_workers",
                  "eval.batch_size", "train.device")


class CheckpointError(ValueError):
    """A checkpoint is unreadable, of another format, or does not fit the model/config."""


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read and check a checkpoint written by the trainer."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(p)!r} not found")
    try:
        state = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - torn/foreign files raise many kinds of errors
        raise CheckpointError(f"cannot read checkpoint {p}: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a UCA checkpoint (no '{FORMAT}' marker); it was not written by uca train")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{p} has checkpoint format version {state.get('version')}, this code reads {VERSION}")
    for key in ("config", "model"):
        if key not in state:
            raise CheckpointError(f"{p} lacks its {key!r} entry")
    return state


def check_state_dict(model: torch.nn.Module, state_dict: dict, where: str) -> None:
    """Load ``state_dict`` strictly, turning key and shape mismatches into one readable error."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensor(s) (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s) (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) (e.g. {'; '.join(shapes[:3])})")
        raise CheckpointError(f"{where} does not fit this model: " + ", ".join(parts)
                              + ". The checkpoint was written for another model config or tokenizer.")
    model.load_state_dict(state_dict, strict=True)


def load_run_config(run_dir: str | os.PathLike) -> RunConfig:
    """The resolved config saved beside a run."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {str(run)!r} does not exist")
    p = run / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"{run} holds no config.json: not a run folder written by uca train")
    return load_config(p)


def resolve_checkpoint(run_dir: str | os.PathLike, which: str = "best") -> Path:
    """Path of ``which`` ("best", "last" or a file path) in a run folder."""
    run = Path(run_dir)
    if which in ("best", "last"):
        p = run / f"checkpoint_{which}.pt"
        if not p.is_file():
            other = run / f"checkpoint_{'last' if which == 'best' else 'best'}.pt"
            hint = f" ({other.name} exists: pass --checkpoint {other.stem.split('_')[1]})" if other.is_file() else \
                " (the run has not written a checkpoint yet)"
            raise FileNotFoundError(f"{p} not found{hint}")
        return p
    p = Path(which)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {which!r} not found (use 'best', 'last' or a .pt path)")
    return p


def check_config_match(saved: dict, cfg: RunConfig, where: str, *, sections: tuple[str, ...] | None = None,
                       mutable: tuple[str, ...] = ()) -> None:
    """Raise :class:`CheckpointError` listing the differences between a checkpoint's config and ``cfg``."""
    now = to_dict(cfg)
    if sections is not None:
        saved = {k: v for k, v in saved.items() if k in sections}
        now = {k: v for k, v in now.items() if k in sections}
    diffs = [d for d in diff_configs(saved, now) if d.split(":", 1)[0] not in mutable]
    if diffs:
        raise CheckpointError(f"{where} was written with a different config: " + "; ".join(diffs[:8])
                              + (" ..." if len(diffs) > 8 else ""))
