"""Training: AdamW + warm-up/cosine, clipping, AMP, DDP, resumable checkpoints, val selection.

    train(cfg, run_dir) -> final metrics          # one process, or each rank under torchrun

**Reproducibility.** Model initialisation uses ``train.seed``; every training step draws *all* its
randomness (data order of the epoch, flips, attribute masking, point samples, dropout) from
generators seeded by ``(seed, epoch)`` or ``(seed, step, rank)``. A run resumed from a checkpoint
written at any step therefore continues exactly as the uninterrupted run would: bit-identical
parameters and the same ``history.csv`` rows apart from the timing columns (the open log interval is
checkpointed too; the RNG states are saved as well, for code outside this loop). A resumed run keeps
its ``config.json`` and drops TensorBoard events logged after the checkpoint.

**Checkpoints** (:mod:`uca_model.checkpoint`): ``checkpoint_last.pt`` every ``train.ckpt_every``
steps and at each epoch end (model, optimiser, schedule, position, best-so-far, evaluation
history, RNG states; atomic), ``checkpoint_best.pt`` whenever the val ``train.select_metric``
improves. After the last epoch the best weights are evaluated once on ``test``.

**Logs** in the run folder: ``config.json`` (resolved config), ``history.csv`` (every
``train.log_every`` steps: lr, each unweighted loss term and the weighted total, mean sigma per
modality, gradient norm, samples/s, data and step time), ``eval.csv`` (val per evaluation, test at
the end), ``metrics.json``, ``curves.png``, TensorBoard events under ``tb/`` when ``tensorboard``
is installed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

import uca_kernels

from . import data as data_mod
from .checkpoint import (
    FORMAT,
    RESUME_MUTABLE,
    VERSION,
    atomic_save,
    check_config_match,
    check_state_dict,
    load_checkpoint,
)
from .config import DataConfig, OptimConfig, RunConfig, save_config, to_dict
from .distributed import DistContext, check_same_backend
from .evaluation import evaluate_split
from .model import UCAModel, build_model
from .text import AttributeMasker, encode, load_tokenizer, vaguer_caption
from .train_log import StepLog, eval_row

__all__ = [
    "train",
    "TrainingStopped",
    "RunExistsError",
    "EpochBatchSampler",
    "make_sampler",
    "init_distributed",
    "resolve_device",
    "prepare_data",
    "build_optimizer",
    "lr_lambda",
    "seed_for",
    "eval_score",
]


class TrainingStopped(RuntimeError):
    """Raised when ``train.stop_after_steps`` is reached (a simulated kill; resume continues)."""


class RunExistsError(FileExistsError):
    """The run folder already holds a run and resuming was not asked for."""


# ----------------------------------------------------------------------------------------------
# Set-up helpers
# ----------------------------------------------------------------------------------------------


def seed_for(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy SeedSequence): independent streams per purpose."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def init_distributed(device_name: str = "auto") -> DistContext:
    """Join the torchrun process group if launched by torchrun (gloo on CPU, NCCL on GPU)."""
    if DistContext.launched_by_torchrun() and not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_name != "cpu"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistContext.current()


def resolve_device(name: str, ctx: DistContext) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"train.device={name!r} but CUDA is not available here; use 'cpu' or 'auto'")
        if name == "cuda":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", ctx.rank if ctx.distributed else 0)))
    return torch.device(name)


def prepare_data(cfg: DataConfig, ctx: DistContext, progress: bool = True):
    """Generate SynthPedes if asked and missing (rank 0), load the dataset and the tokenizer."""
    root = Path(cfg.root)
    is_synth = cfg.name.strip().lower().replace("-", "").startswith("synth")
    if is_synth and cfg.synth_preset is not None:
        if ctx.is_main:
            from .synth import generate_synthpedes

            generate_synthpedes(root, cfg.synth_preset, seed=cfg.synth_seed, progress=progress)
        if ctx.distributed:
            dist.barrier()
    ds = data_mod.load_dataset(root, cfg.name, val_from_train=cfg.val_from_train)
    tok_path = Path(cfg.tokenizer) if cfg.tokenizer else root / "tokenizer.json"
    if not tok_path.exists():
        raise FileNotFoundError(f"tokenizer {str(tok_path)!r} not found: set data.tokenizer to a tokenizer.json or a "
                                "local CLIP folder (SynthPedes writes <root>/tokenizer.json)")
    return ds, load_tokenizer(tok_path)


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of one rank: epoch ``e`` shuffles all samples with a generator seeded by
    ``(seed, e)``; global batch ``j`` is ``perm[j·B:(j+1)·B]`` and rank ``r`` takes its ``r``-th
    slice of ``B / W``. The incomplete last batch is dropped (equal batch sizes on all ranks).
    ``set_position(epoch, start)`` starts an epoch at batch ``start`` (resume)."""

    def __init__(self, n: int, global_batch: int, seed: int, ctx: DistContext) -> None:
        if global_batch % ctx.world_size:
            raise ValueError(f"data.batch_size={global_batch} is not divisible by the {ctx.world_size} processes")
        self.n, self.global_batch, self.seed, self.ctx = n, global_batch, seed, ctx
        self.local = global_batch // ctx.world_size
        self.steps_per_epoch = n // global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"data.batch_size={global_batch} exceeds the {n} training samples")
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start

    def __iter__(self):
        g = torch.Generator().manual_seed(seed_for(self.seed, 1, self.epoch))
        perm = torch.randperm(self.n, generator=g)
        r, b, B = self.ctx.rank, self.local, self.global_batch
        for j in range(self.start, self.steps_per_epoch):
            yield perm[j * B + r * b: j * B + (r + 1) * b].tolist()


def make_sampler(cfg: DataConfig, samples: list, seed: int, ctx: DistContext):
    """The training batch sampler of ``data.sampler``: :class:`EpochBatchSampler` ("random") or
    :class:`uca_model.sampling.IdentityBatchSampler` ("identity")."""
    if cfg.sampler == "identity":
        from .sampling import IdentityBatchSampler

        return IdentityBatchSampler([s.pid for s in samples], [s.image_id for s in samples],
                                    [s.caption for s in samples], cfg.batch_size, cfg.samples_per_id,
                                    cfg.lookalike_group, seed, ctx)
    return EpochBatchSampler(len(samples), cfg.batch_size, seed, ctx)


def _param_groups(params: list, lr: float, weight_decay: float) -> list[dict]:
    decay = [p for p in params if p.ndim >= 2]  # matrices and embeddings; not biases, norms, scalars
    other = [p for p in params if p.ndim < 2]
    return [g for g in ({"params": decay, "lr": lr, "weight_decay": weight_decay},
                        {"params": other, "lr": lr, "weight_decay": 0.0}) if g["params"]]


def build_optimizer(model: UCAModel, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW; encoder parameters at ``lr · encoder_lr_scale``, the rest at ``lr``; decay on matrices."""
    groups = _param_groups(model.encoder_parameters(), cfg.lr * cfg.encoder_lr_scale, cfg.weight_decay) + \
        _param_groups(model.new_parameters(), cfg.lr, cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def lr_lambda(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Multiplier of the peak LR at step ``s``: linear warm-up, then cosine to ``min_ratio``."""

    def f(s: int) -> float:
        if warmup_steps > 0 and s < warmup_steps:
            return (s + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        t = min(1.0, (s - warmup_steps) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def eval_score(cfg: RunConfig) -> str:
    """The ranking of a run: ``eval.score`` with ``auto`` resolved by the model mode."""
    if cfg.eval.score != "auto":
        return cfg.eval.score
    return "distance" if cfg.model.probabilistic else "cosine"


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def _open_run(cfg: RunConfig, run: Path, resume: bool | str, main: bool, say) -> tuple[dict | None, dict | None]:
    """``(checkpoint to resume from or None, metrics of a finished run or None)``; writes the
    ``config.json`` of a new run (a resumed run keeps the one it was started with)."""
    last_path = run / "checkpoint_last.pt"
    state = None
    if last_path.exists():
        if resume is False:
            raise RunExistsError(f"{run} already holds a run (checkpoint_last.pt); resume it (--resume) or choose "
                                 "another output folder")
        state = load_checkpoint(last_path)
        check_config_match(state["config"], cfg, f"{last_path}", mutable=RESUME_MUTABLE)
        if state.get("finished") and (run / "metrics.json").is_file():
            say(f"{run} is a finished run; its metrics are in metrics.json")
            return state, json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    elif resume is True:
        raise FileNotFoundError(f"cannot resume: {last_path} does not exist")
    elif main and any(run.glob("*.pt")):
        raise RunExistsError(f"{run} holds checkpoints but no checkpoint_last.pt; choose another output folder")
    if main and state is None:
        save_config(cfg, run / "config.json")
    return state, None


class _RunState:
    """What one training run holds between steps: model, optimiser, schedule, position, the best
    val result so far and the evaluation history; it writes the two checkpoints."""

    def __init__(self, cfg: RunConfig, run: Path, ctx: DistContext, model: UCAModel, opt, sched) -> None:
        self.cfg, self.run, self.ctx, self.model, self.opt, self.sched = cfg, run, ctx, model, opt, sched
        self.last_path, self.best_path = run / "checkpoint_last.pt", run / "checkpoint_best.pt"
        self.epoch, self.start_batch, self.step = 0, 0, 0
        self.best = {"value": -math.inf, "epoch": None, "metrics": None}
        self.eval_history: list[dict] = []
        self.train_time = 0.0

    def restore(self, state: dict) -> None:
        check_state_dict(self.model, state["model"], str(self.last_path))
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        pos = state["position"]
        self.epoch, self.start_batch, self.step = pos["epoch"], pos["batch"], pos["step"]
        self.best, self.eval_history, self.train_time = state["best"], state["eval_history"], state["train_time"]
        rng = state["rng"]  # one entry per rank of the run that wrote it
        _set_rng_state(rng[self.ctx.rank] if self.ctx.rank < len(rng) else rng[0])

    def save_last(self, batch: int, log_state: dict, finished: bool = False) -> None:
        rng = [_rng_state()]
        if self.ctx.distributed:
            rng = [None] * self.ctx.world_size
            dist.all_gather_object(rng, _rng_state())
        if self.ctx.is_main:
            atomic_save({"format": FORMAT, "version": VERSION, "kind": "last", "config": to_dict(self.cfg),
                         "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                         "scheduler": self.sched.state_dict(),
                         "position": {"epoch": self.epoch, "batch": batch, "step": self.step}, "best": self.best,
                         "eval_history": self.eval_history, "train_time": self.train_time, "rng": rng,
                         "finished": finished, "log_acc": log_state, "vocab_size": self.model.vocab_size,
                         "num_train_ids": self.model.num_train_ids}, self.last_path)

    def save_best(self, metrics: dict) -> None:
        atomic_save({"format": FORMAT, "version": VERSION, "kind": "best", "config": to_dict(self.cfg),
                     "model": self.model.state_dict(), "epoch": self.epoch, "step": self.step, "val": metrics,
                     "vocab_size": self.model.vocab_size, "num_train_ids": self.model.num_train_ids}, self.best_path)


def _build(cfg: RunConfig, tok, num_train_ids: int, ctx: DistContext, device, steps_per_epoch: int):
    """``(model, the module the step calls (DDP-wrapped when distributed), the caption masker or
    None, optimiser, LR schedule)``; the initial weights come from ``train.seed``."""
    mcfg, oc, tc = cfg.model, cfg.optim, cfg.train
    torch.manual_seed(seed_for(tc.seed, 0))
    check_same_backend(mcfg.loss.backend, device, ctx)  # the ranks' loss terms must run the same collectives
    model = build_model(mcfg, tok, num_train_ids, ctx).to(device)
    masker = (AttributeMasker(tok, mask_rate=mcfg.loss.mask_rate, attributes=mcfg.loss.mask_words == "attributes")
              if model.decoder is not None else None)
    opt = build_optimizer(model, oc)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(int(round(oc.warmup_epochs * steps_per_epoch)),
                                                             steps_per_epoch * tc.epochs, oc.min_lr_ratio))
    net = model
    if ctx.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, net, masker, opt, sched


def _make_batch(cfg: RunConfig, step: int, ctx: DistContext, masker, tok, pids, images, captions, device):
    """One step's batch on ``device`` and the generator of the step's draws (flips, crops,
    erasing, occluded copies, masking; the model's point samples), seeded by ``(seed, step, rank)``."""
    tc, max_len = cfg.train, cfg.model.encoder.text.max_len
    g = torch.Generator().manual_seed(seed_for(tc.seed, 2, step, ctx.rank))
    torch.manual_seed(seed_for(tc.seed, 3, step, ctx.rank))  # dropout and any other global draws
    if device.type == "cuda":
        torch.cuda.manual_seed(seed_for(tc.seed, 4, step, ctx.rank))
    images = data_mod.augment_batch(images, g, flip_prob=cfg.data.flip_prob, pad=cfg.data.crop_pad,
                                    erase_prob=cfg.data.erase_prob)
    batch = {"images": images, "pids": pids}
    L = cfg.model.loss
    if L.occlusion_weight > 0 and cfg.model.probabilistic:  # copies of the first images with a drawn occluder
        m = max(1, int(round(L.occlusion_fraction * images.shape[0])))
        batch["occluded"] = data_mod.occlude_batch(images[:m], g)
    if L.caption_inclusion_weight > 0 and cfg.model.probabilistic:  # vaguer copies of the first captions
        m = max(1, int(round(L.caption_inclusion_fraction * len(captions))))
        vague = encode(tok, [vaguer_caption(c, g, L.caption_drop_rate) for c in captions[:m]], max_len)
        batch.update(vague_input_ids=vague["input_ids"], vague_attention_mask=vague["attention_mask"])
    if masker is not None:
        mk = masker(list(captions), max_len, generator=g)
        batch.update(input_ids=mk["clean_ids"], attention_mask=mk["attention_mask"],
                     mlm_input_ids=mk["input_ids"], mlm_labels=mk["mlm_labels"])
    else:
        batch.update(encode(tok, list(captions), max_len))
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}, g


def _optimiser_step(net, model: UCAModel, batch, g, weights: dict, opt, sched, grad_clip: float, finite, autocast):
    """Forward, weighted total, backward, clip, step. Returns the values to log (0-d tensors)."""
    with autocast(), uca_kernels.deferred_finite_checks(finite):  # checked at the log step: no sync
        out = net(batch, generator=g)
    terms = out["terms"]
    if set(terms) != set(weights):
        raise RuntimeError(f"the model returned terms {sorted(terms)} but has weights for {sorted(weights)}")
    total = sum(weights[k] * terms[k] for k in weights)
    opt.zero_grad(set_to_none=True)
    with uca_kernels.deferred_finite_checks(finite):
        total.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    opt.step()
    sched.step()
    return {"loss/total": total.detach(), **{f"loss/{k}": terms[k].detach() for k in weights},
            "grad_norm": gnorm.detach(), **out["stats"]}


def _validate(cfg: RunConfig, state: _RunState, logs: StepLog, evaluate, say) -> None:
    """Epoch end on rank 0: val metrics, ``eval.csv``, the best checkpoint when the selection metric improves."""
    tc = cfg.train
    m = evaluate("val")
    state.eval_history.append(eval_row("val", state.epoch, state.step, m))
    logs.evaluation(state.eval_history, state.step, m, "val")
    msg = (f"epoch {state.epoch}/{tc.epochs} step {state.step}: val R1 {m['R1']:.2f} R5 {m['R5']:.2f} "
           f"R10 {m['R10']:.2f} mAP {m['mAP']:.2f} mINP {m['mINP']:.2f}")
    if "sigma_image" in m:
        msg += f" | sigma image {m['sigma_image']:.4f} text {m['sigma_text']:.4f}"
    if m[tc.select_metric] > state.best["value"]:
        state.best = {"value": m[tc.select_metric], "epoch": state.epoch, "metrics": m}
        state.save_best(m)
        msg += "  (best)"
    say(msg)


def _finish(cfg: RunConfig, state: _RunState, logs: StepLog, evaluate, say) -> dict:
    """On rank 0: the single test evaluation with the weights selected on val, ``metrics.json``
    (with the Bayes ceiling on SynthPedes) and ``curves.png``."""
    run, mcfg, tc = state.run, cfg.model, cfg.train
    if state.best_path.is_file():
        check_state_dict(state.model, load_checkpoint(state.best_path)["model"], str(state.best_path))
    test = evaluate("test")
    state.eval_history.append(eval_row("test", state.best["epoch"], state.step, test))
    logs.evaluation(state.eval_history, state.step)
    result = {"run": str(run), "mode": mcfg.mode, "score": eval_score(cfg), "seed": tc.seed,
              "best_epoch": state.best["epoch"], "select_metric": tc.select_metric, "steps": state.step,
              "train_time_s": round(state.train_time, 1), "world_size": state.ctx.world_size,
              "val": state.best["metrics"], "test": test}
    try:  # SynthPedes: the Bayes ceiling of each split and the result as a percentage of it
        from .ceiling import ceiling_report

        val_m = state.best["metrics"] if cfg.data.val_from_train is None else None  # a held-out val is not the card's
        per_split = {"val": val_m, "test": test} if val_m is not None else {"test": test}
        result.update(ceiling_report(cfg.data.root, per_split))
    except Exception as e:  # noqa: BLE001 - a failed ceiling must not lose a finished run
        say(f"warning: could not compute the Bayes ceiling of {cfg.data.root}: {e}")
    tmp = run / ".metrics.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, run / "metrics.json")
    try:
        from .plots import plot_curves

        plot_curves(run / "history.csv", run / "eval.csv", run / "curves.png",
                    title=f"{run.name}: {mcfg.mode}, test R1 {test['R1']:.1f} mAP {test['mAP']:.1f}")
    except Exception as e:  # noqa: BLE001 - a plotting failure must not lose a finished run
        say(f"warning: could not draw curves.png: {e}")
    return result


def _progress_postfix(means: dict, sps: float) -> dict:
    shown = {k[5:]: f"{v:.3g}" for k, v in means.items() if k.startswith("loss/")}
    if "sigma_image" in means:
        shown["σv"], shown["σt"] = f"{means['sigma_image']:.3g}", f"{means['sigma_text']:.3g}"
    shown["samples/s"] = f"{sps:.0f}"
    return shown


def train(cfg: RunConfig, run_dir: str | os.PathLike, *, resume: bool | str = "auto",
          log: Callable[[str], None] = print) -> dict:
    """Train ``cfg`` into ``run_dir`` and return the final metrics (``metrics.json``).

    Args:
        cfg: a validated :class:`RunConfig`.
        run_dir: the run folder (created).
        resume: ``"auto"`` continues a run found in ``run_dir``; ``True`` requires one; ``False``
            refuses to touch a folder that already holds a run.
        log: where progress lines go (rank 0 only).

    Raises:
        TrainingStopped: ``train.stop_after_steps`` was reached (the last checkpoint is on disk).
        RunExistsError, CheckpointError, ConfigError, FileNotFoundError: with what to do.
    """
    cfg.validate()
    ctx = init_distributed(cfg.train.device)
    device = resolve_device(cfg.train.device, ctx)
    tc, oc, mcfg = cfg.train, cfg.optim, cfg.model
    main = ctx.is_main
    say = log if main else (lambda *_: None)
    run = Path(run_dir)
    if main:
        run.mkdir(parents=True, exist_ok=True)
    if ctx.distributed:
        dist.barrier()
    ckpt, finished = _open_run(cfg, run, resume, main, say)
    if finished is not None:
        return finished

    # -- data --
    ds, tok = prepare_data(cfg.data, ctx, progress=tc.progress and main)
    if "val" not in ds.eval_splits:
        raise ValueError(f"{cfg.data.root} has no val split for model selection: set data.val_from_train to hold "
                         "out some training identities (e.g. ICFG-PEDES)")
    image_size = tuple(mcfg.encoder.vision.image_size)
    train_set = data_mod.TrainImageTextDataset(ds.train, image_size, flip_prob=0.0, cache=cfg.data.cache_images)
    sampler = make_sampler(cfg.data, ds.train, tc.seed, ctx)
    ctx = dataclasses.replace(ctx, equal_batches=True)  # the sampler's batches: global_batch / world_size rows
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                                         persistent_workers=False, pin_memory=device.type == "cuda")
    steps_per_epoch = sampler.steps_per_epoch

    model, net, masker, opt, sched = _build(cfg, tok, ds.num_train_ids, ctx, device, steps_per_epoch)
    weights = model.loss_weights()
    amp = tc.amp == "bf16" or (tc.amp == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else nullcontext
    state = _RunState(cfg, run, ctx, model, opt, sched)
    if ckpt is not None:
        state.restore(ckpt)
        say(f"resuming {run} at epoch {state.epoch + 1}, batch {state.start_batch}, step {state.step}")

    fields = ["step", "epoch", "lr", "loss/total", *[f"loss/{k}" for k in weights], "grad_norm",
              "sigma_image", "sigma_text", *[f"scale_{n}" for n in model.scale_names()],
              *[f"bias_{n}" for n in model.bias_names()], "samples_per_s", "data_time", "step_time"]
    logs = StepLog(run, fields, ctx, resumed_at=state.step if ckpt is not None else None,
                   log_state=ckpt.get("log_acc") if ckpt is not None else None, device=device)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"run {run}: {len(train_set)} training pairs, {ds.num_train_ids} identities, {steps_per_epoch} steps/epoch x "
        f"{tc.epochs} epochs, batch {cfg.data.batch_size} on {ctx.world_size} process(es), {device}, "
        f"{'bf16' if amp else 'fp32'}; model {mcfg.mode} ({n_params / 1e6:.2f} M parameters), terms: "
        + ", ".join(f"{k}x{w:g}" for k, w in weights.items()))

    def evaluate(split: str) -> dict:
        q, g = ds.eval_split(split)
        return evaluate_split(model, tok, q, g, score=eval_score(cfg), metric=mcfg.loss.metric, image_size=image_size,
                              max_len=mcfg.encoder.text.max_len, batch_size=cfg.eval.batch_size, device=device,
                              amp=amp)

    # -- epochs --
    model.train()
    finite = uca_kernels.FiniteChecks()  # the losses' input checks, kept on the device between log steps
    from tqdm.auto import tqdm

    while state.epoch < tc.epochs:
        sampler.set_position(state.epoch, state.start_batch)
        bar = tqdm(total=steps_per_epoch, initial=state.start_batch, desc=f"epoch {state.epoch + 1}/{tc.epochs}",
                   disable=not (tc.progress and main), dynamic_ncols=True, leave=False)
        t_prev = time.perf_counter()
        for batch_idx, (pids, _image_ids, images, captions) in enumerate(loader, start=state.start_batch):
            t_data = time.perf_counter()
            batch, g = _make_batch(cfg, state.step, ctx, masker, tok, pids, images, captions, device)
            values = _optimiser_step(net, model, batch, g, weights, opt, sched, oc.grad_clip, finite, autocast)
            state.step += 1
            t_end = time.perf_counter()
            logs.add(values, pids.shape[0] * ctx.world_size, t_data - t_prev, t_end - t_data)
            state.train_time += t_end - t_prev
            bar.update(1)
            if state.step % tc.log_every == 0 or batch_idx + 1 == steps_per_epoch:
                finite.check()  # NaN/inf inputs of the losses since the last log step: named error
                means, sps = logs.flush(state.step, state.epoch + (batch_idx + 1) / steps_per_epoch,
                                        sched.get_last_lr()[-1])
                bar.set_postfix(_progress_postfix(means, sps), refresh=False)
            if state.step % tc.ckpt_every == 0 and batch_idx + 1 < steps_per_epoch:
                state.save_last(batch_idx + 1, logs.state())
            if tc.stop_after_steps is not None and state.step >= tc.stop_after_steps:
                bar.close()
                raise TrainingStopped(f"stopped after step {state.step} (train.stop_after_steps); the last "
                                      f"checkpoint is {state.last_path}, resume to continue")
            t_prev = time.perf_counter()
        bar.close()

        # -- epoch end: evaluate on val, keep the best --
        state.epoch += 1
        state.start_batch = 0
        if state.epoch % tc.eval_every == 0 or state.epoch == tc.epochs:
            if main:
                _validate(cfg, state, logs, evaluate, say)
            if ctx.distributed:
                dist.barrier()
        state.save_last(0, logs.state())

    result = _finish(cfg, state, logs, evaluate, say) if main else {}
    logs.close()
    state.save_last(0, logs.state(), finished=True)
    if ctx.distributed:
        obj = [result]
        dist.broadcast_object_list(obj, src=0)
        result = obj[0]
    return result
