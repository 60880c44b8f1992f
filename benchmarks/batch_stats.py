"""What a training batch holds, on SynthPedes: per sample, how many other samples of its identity, how
many look-alike identities, how many other identities' images that fit its caption.

    python -m benchmarks.batch_stats data/synthpedes-large --batches 50 --out FILE.json
        [--set data.sampler=identity ...]   # any data.* field of the config

Per sample of a batch (averaged over the first ``--batches`` batches of epoch 0 of the run's
sampler, :func:`uca_model.trainer.make_sampler`):

- ``same_identity``: other samples of the same identity in the batch (the identity-aware positives
  beyond its own pair);
- ``lookalike_identities``: other identities in the batch at most ``--lookalike`` attributes apart
  from the sample's identity (the schema's fields, ``synth_attributes.json``);
- ``fitting_other_images``: images of other identities in the batch whose identity has every
  attribute the sample's caption mentions (positives by the caption's content, negatives by label).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def batch_stats(root: str, overrides: list[str], batches: int = 50, lookalike: int = 3, seed: int = 0) -> dict:
    from uca_model.config import DataConfig, apply_overrides, from_dict, to_dict, RunConfig
    from uca_model.data import load_dataset
    from uca_model.distributed import DistContext
    from uca_model.fitting import attribute_codes
    from uca_model.trainer import make_sampler

    cfg = from_dict(apply_overrides(to_dict(RunConfig(data=DataConfig(root=root))), overrides))
    ds = load_dataset(root, "synthpedes")
    attrs = json.loads((Path(root) / "synth_attributes.json").read_text(encoding="utf-8"))
    fields = attrs["fields"]
    names = list(fields)
    by_orig = {int(d["id"]): d["attributes"] for d in attrs["identities"]}
    inv = {k: orig for orig, k in ds.train_id_map.items()}
    codes = attribute_codes(fields, [by_orig[inv[k]] for k in range(ds.num_train_ids)], lambda i: f"identity {i}")
    imgs = Path(root) / "imgs"
    rec = {im["file_path"]: im for im in attrs["images"]}
    seen: dict[str, int] = defaultdict(int)
    wanted = []  # per sample: [F] code wanted (-1 = not mentioned)
    for s in ds.train:
        rel = Path(s.image_path).relative_to(imgs).as_posix()
        m = rec[rel]["mentions"][seen[rel]]
        seen[rel] += 1
        wanted.append([fields[f].index(m[f]) if f in m else -1 for f in names])
    wanted = np.asarray(wanted)
    pids = np.asarray([s.pid for s in ds.train])
    sampler = make_sampler(cfg.data, ds.train, seed, DistContext())
    same, look, fit = [], [], []
    for j, idx in enumerate(sampler):
        if j >= batches:
            break
        idx = np.asarray(idx)
        p = pids[idx]
        ids = np.unique(p)
        diff = (codes[ids][:, None, :] != codes[ids][None, :, :]).sum(-1)  # attributes apart, [u, u]
        pos = {int(v): i for i, v in enumerate(ids)}
        img_of = np.asarray([ds.train[i].image_id for i in idx])
        _, first = np.unique(img_of, return_index=True)
        img_ids = p[first]  # identity of each distinct image of the batch
        for t, i in enumerate(idx):
            same.append(int((p == p[t]).sum() - 1))
            row = diff[pos[int(p[t])]]
            look.append(int(((row > 0) & (row <= lookalike)).sum()))
            w = wanted[i]
            ok = np.all((w[None, :] < 0) | (codes[img_ids] == w[None, :]), 1) & (img_ids != p[t])
            fit.append(int(ok.sum()))
    return {"root": root, "overrides": overrides, "batches": min(batches, len(sampler)), "batch_size": cfg.data.batch_size,
            "sampler": cfg.data.sampler, "lookalike_max_attributes_apart": lookalike,
            "same_identity": float(np.mean(same)), "lookalike_identities": float(np.mean(look)),
            "fitting_other_images": float(np.mean(fit))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--lookalike", type=int, default=3, help="at most this many attributes apart (default 3)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    r = batch_stats(args.root, args.overrides, args.batches, args.lookalike)
    print(json.dumps(r, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
