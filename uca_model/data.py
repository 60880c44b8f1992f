"""Readers for the text-image person retrieval datasets and the training/gallery image datasets.

Supported annotation files (fields exactly as the datasets ship them; docs/reproduce.md):

=============  ========================  =============================================  ===========
``name``       annotation file           fields per entry (one entry = one image)      splits
=============  ========================  =============================================  ===========
cuhk-pedes     ``reid_raw.json``         ``split``, ``captions``, ``file_path``,        train/val/test
                                         ``processed_tokens`` (ignored), ``id`` (1-based)
icfg-pedes     ``ICFG-PEDES.json``       ``split``, ``captions``, ``file_path``, ``id``  train/test
rstpreid       ``data_captions.json``    ``split``, ``captions``, ``img_path``, ``id``   train/val/test
synthpedes     ``reid_raw.json``         as cuhk-pedes (written by :mod:`uca_model.synth`)
=============  ========================  =============================================  ===========

Images live under ``<root>/imgs/`` and the path field is relative to it (as in IRRA).

Training samples are one per caption, ``(pid, image_id, image_path, caption)``, with the training
identities remapped to ``0..n-1`` (in increasing original id) and ``image_id`` the index of the
image among training images. Evaluation uses captions as queries ``(caption, pid)`` and images as
the gallery ``(image_path, pid, image_id)``, with the original ids as ``pid`` (only equality
matters there).

**ICFG-PEDES has no val split.** ``eval_split("val")`` raises a ValueError saying so, unless the
dataset was loaded with ``val_from_train=k``: then the ``k`` training identities picked by the rule
of :func:`_held_out_ids` (every ``n/k``-th identity in increasing id order, deterministic) are moved
from ``train`` to a ``val`` split, so checkpoints can still be selected without touching ``test``.
The same option works for any dataset without a val split.

**Bad data** raises an error naming the annotation file and the entry: unreadable or malformed
JSON, an entry that is not an object or lacks a field, a field of the wrong type, an empty
caption, an unknown split, an image file that does not exist. With ``skip_bad=True`` the offending
caption (empty caption) or entry (everything else) is skipped instead, counted per reason in
``PedesDataset.skipped`` and described in ``PedesDataset.skipped_details``, and a warning states
the total -- nothing is dropped silently. Malformed JSON is never skipped.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = [
    "DATASETS",
    "TrainSample",
    "Query",
    "GalleryItem",
    "PedesDataset",
    "load_dataset",
    "CLIP_MEAN",
    "CLIP_STD",
    "load_image",
    "TrainImageTextDataset",
    "GalleryImageDataset",
    "augment_batch",
    "occlude_batch",
]


@dataclass(frozen=True)
class _Format:
    """How one dataset stores its annotations."""

    annotation: str  # annotation file name under the root
    path_field: str  # entry field holding the image path relative to imgs/
    splits: tuple[str, ...]  # splits the dataset defines
    required: tuple[str, ...]  # fields every entry must have


DATASETS: dict[str, _Format] = {
    "cuhk-pedes": _Format("reid_raw.json", "file_path", ("train", "val", "test"), ("split", "captions", "file_path", "id")),
    "icfg-pedes": _Format("ICFG-PEDES.json", "file_path", ("train", "test"), ("split", "captions", "file_path", "id")),
    "rstpreid": _Format("data_captions.json", "img_path", ("train", "val", "test"), ("split", "captions", "img_path", "id")),
}
_ALIASES = {"cuhk": "cuhk-pedes", "cuhkpedes": "cuhk-pedes", "icfg": "icfg-pedes", "icfgpedes": "icfg-pedes",
            "rstp": "rstpreid", "rstpreid": "rstpreid", "synthpedes": "cuhk-pedes", "synth": "cuhk-pedes"}


@dataclass(frozen=True)
class TrainSample:
    """One training pair: a caption and its image."""

    pid: int  # identity remapped to 0..num_train_ids-1
    image_id: int  # index of the image among the training images (0-based)
    image_path: str  # absolute path of the image file
    caption: str


@dataclass(frozen=True)
class Query:
    """One evaluation query: a caption and its identity (original id)."""

    caption: str
    pid: int


@dataclass(frozen=True)
class GalleryItem:
    """One evaluation gallery image and its identity (original id)."""

    image_path: str  # absolute path of the image file
    pid: int
    image_id: int  # index of the image within its split's gallery


@dataclass(frozen=True)
class _Entry:
    split: str
    pid: int  # original id
    image_path: str
    captions: tuple[str, ...]


@dataclass
class PedesDataset:
    """A loaded dataset: training samples and per-split evaluation lists.

    Attributes:
        root: dataset folder (holding the annotation file and ``imgs/``).
        name: canonical dataset name (a key of :data:`DATASETS`, or "synthpedes").
        train: one :class:`TrainSample` per training caption.
        train_id_map: original id -> remapped training pid.
        skipped: reason -> count of skipped captions/entries (empty unless ``skip_bad``).
        skipped_details: one message per skipped caption/entry.
    """

    root: Path
    name: str
    train: list[TrainSample]
    train_id_map: dict[int, int]
    _eval: dict[str, list[_Entry]] = field(repr=False)
    _missing_splits: dict[str, str] = field(repr=False, default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_details: list[str] = field(default_factory=list, repr=False)

    @property
    def num_train_ids(self) -> int:
        return len(self.train_id_map)

    @property
    def num_train_images(self) -> int:
        return len({s.image_id for s in self.train})

    @property
    def eval_splits(self) -> tuple[str, ...]:
        return tuple(s for s in ("val", "test") if s in self._eval)

    def eval_split(self, split: str = "test") -> tuple[list[Query], list[GalleryItem]]:
        """Queries (one per caption) and gallery (one per image) of ``split`` ("val" or "test")."""
        if split not in ("val", "test"):
            raise ValueError(f"split={split!r} is not an evaluation split ('val' or 'test')")
        if split not in self._eval:
            raise ValueError(self._missing_splits.get(split, f"{self.name} at {self.root} has no {split!r} entries"))
        entries = self._eval[split]
        queries = [Query(c, e.pid) for e in entries for c in e.captions]
        gallery = [GalleryItem(e.image_path, e.pid, i) for i, e in enumerate(entries)]
        return queries, gallery


class _Problems:
    """Raise on the first problem, or (skip_bad) count and record each one."""

    def __init__(self, anno: Path, skip_bad: bool) -> None:
        self.anno, self.skip_bad = anno, skip_bad
        self.counts: Counter[str] = Counter()
        self.details: list[str] = []

    def report(self, reason: str, index: int, entry: Any, message: str, exc: type[Exception] = ValueError) -> None:
        where = f"{self.anno}: entry {index}"
        if isinstance(entry, dict):
            for key in ("file_path", "img_path", "id"):
                if key in entry:
                    where += f" ({key}={entry[key]!r})"
                    break
        text = f"{where}: {message}"
        if not self.skip_bad:
            raise exc(text + " (pass skip_bad=True to skip such entries, with a count)")
        self.counts[reason] += 1
        self.details.append(text)


def _canonical(name: str) -> tuple[str, str]:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key.replace("-", "").replace("_", ""), key)
    if key not in DATASETS:
        raise ValueError(f"name={name!r} is not one of {', '.join(map(repr, DATASETS))} (or 'synthpedes')")
    shown = "synthpedes" if name.strip().lower().startswith("synth") else key
    return key, shown


def _held_out_ids(ids: Sequence[int], k: int) -> set[int]:
    """``k`` ids spread evenly over the sorted ``ids`` (positions round((i + 0.5) * n / k))."""
    ids = sorted(ids)
    n = len(ids)
    return {ids[min(n - 1, int((i + 0.5) * n / k))] for i in range(k)}


def _parse_entry(i: int, e, fmt, img_dir: Path, check_images: bool, problems: _Problems) -> _Entry | None:
    """Entry ``i`` of an annotation file checked and cleaned, or None (reported to ``problems``)."""
    if not isinstance(e, dict):
        problems.report("not_an_object", i, e, f"is a JSON {type(e).__name__}, expected an object")
        return None
    missing = [f for f in fmt.required if f not in e]
    if missing:
        problems.report("missing_field", i, e, f"missing field(s) {', '.join(map(repr, missing))}")
        return None
    split = e["split"]
    if not isinstance(split, str) or split not in fmt.splits:
        problems.report("unknown_split", i, e, f"split={split!r} is not one of {', '.join(map(repr, fmt.splits))}")
        return None
    pid = e["id"]
    if isinstance(pid, str) and pid.strip().lstrip("-").isdigit():
        pid = int(pid)
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
        problems.report("bad_value", i, e, f"id={e['id']!r} is not a non-negative integer")
        return None
    rel = e[fmt.path_field]
    if not isinstance(rel, str) or not rel.strip():
        problems.report("bad_value", i, e, f"{fmt.path_field}={rel!r} is not a non-empty path string")
        return None
    caps = e["captions"]
    if not isinstance(caps, list) or not caps:
        problems.report("bad_value", i, e, f"captions must be a non-empty list of strings, got {caps!r}"[:200])
        return None
    if any(not isinstance(c, str) for c in caps):
        problems.report("bad_value", i, e, "captions holds a non-string item")
        return None
    kept = []
    for j, c in enumerate(caps):
        if c.strip():
            kept.append(c.strip())
        else:
            problems.report("empty_caption", i, e, f"captions[{j}] is empty")
    if not kept:
        problems.report("no_captions", i, e, "no non-empty caption left")
        return None
    path = img_dir / rel
    if check_images and not path.is_file():
        problems.report("missing_image", i, e, f"image file {path} does not exist", FileNotFoundError)
        return None
    return _Entry(split, pid, str(path), tuple(kept))


def load_dataset(
    root: str | os.PathLike,
    name: str = "cuhk-pedes",
    *,
    skip_bad: bool = False,
    val_from_train: int | None = None,
    check_images: bool = True,
) -> PedesDataset:
    """Read a dataset folder.

    Args:
        root: the folder holding the annotation file and ``imgs/``.
        name: "cuhk-pedes", "icfg-pedes", "rstpreid" or "synthpedes" (case-insensitive).
        skip_bad: skip bad captions/entries with a count instead of raising (module docstring).
        val_from_train: for a dataset without a val split (ICFG-PEDES), move this many training
            identities to a held-out val split; an error if the dataset has val entries already.
        check_images: verify that every image file exists (on by default; a missing file is bad data).

    Raises:
        FileNotFoundError: the root, the annotation file or (without skip_bad) an image is missing.
        ValueError: malformed JSON, a bad entry (without skip_bad), no training entries.
    """
    key, shown = _canonical(name)
    fmt = DATASETS[key]
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {str(root)!r} is not a folder")
    anno = root / fmt.annotation
    if not anno.is_file():
        raise FileNotFoundError(f"{anno} not found: a {shown} root must hold {fmt.annotation} and imgs/")
    img_dir = root / "imgs"
    try:
        raw = json.loads(anno.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{anno} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{anno} is not UTF-8 text: {e}") from None
    if not isinstance(raw, list):
        raise ValueError(f"{anno} must hold a JSON list of entries, got a JSON {type(raw).__name__}")
    if check_images and not img_dir.is_dir():
        raise FileNotFoundError(f"image folder {img_dir} not found (images are read from <root>/imgs/)")

    problems = _Problems(anno, skip_bad)
    entries: list[_Entry] = []
    for i, e in enumerate(raw):
        entry = _parse_entry(i, e, fmt, img_dir, check_images, problems)
        if entry is not None:
            entries.append(entry)

    by_split: dict[str, list[_Entry]] = {s: [e for e in entries if e.split == s] for s in fmt.splits}
    skip_summary = ", ".join(f"{k}={v}" for k, v in sorted(problems.counts.items()))
    if not by_split["train"]:
        raise ValueError(f"{anno} has no usable training entries"
                         + (f" (skipped: {skip_summary})" if skip_summary else ""))
    missing_splits: dict[str, str] = {}
    if val_from_train is not None:
        if not isinstance(val_from_train, int) or isinstance(val_from_train, bool) or val_from_train < 1:
            raise ValueError(f"val_from_train must be a positive int, got {val_from_train!r}")
        if by_split.get("val"):
            raise ValueError(f"val_from_train={val_from_train} but {anno} already has a val split")
        train_ids = {e.pid for e in by_split["train"]}
        if val_from_train >= len(train_ids):
            raise ValueError(f"val_from_train={val_from_train} leaves no training identity "
                             f"({len(train_ids)} in {anno})")
        held = _held_out_ids(list(train_ids), val_from_train)
        by_split["val"] = [e for e in by_split["train"] if e.pid in held]
        by_split["train"] = [e for e in by_split["train"] if e.pid not in held]
    elif "val" not in fmt.splits:
        missing_splits["val"] = (f"{shown} has no val split ({fmt.annotation} defines only "
                                 f"{'/'.join(fmt.splits)}); load it with val_from_train=<k identities> to hold "
                                 "some training identities out for checkpoint selection, or evaluate on 'test'")

    train_ids = sorted({e.pid for e in by_split["train"]})
    id_map = {pid: k for k, pid in enumerate(train_ids)}
    train = [TrainSample(id_map[e.pid], image_id, e.image_path, c)
             for image_id, e in enumerate(by_split["train"]) for c in e.captions]
    evals = {s: by_split[s] for s in ("val", "test") if by_split.get(s)}
    for s in ("val", "test"):
        if s not in evals and s not in missing_splits:
            missing_splits[s] = f"{anno} has no usable {s!r} entries"
    if problems.counts:
        total = sum(problems.counts.values())
        warnings.warn(f"{anno}: skipped {total} bad caption(s)/entry(ies): {skip_summary}", stacklevel=2)
    return PedesDataset(root=root, name=shown, train=train, train_id_map=id_map, _eval=evals,
                        _missing_splits=missing_splits, skipped=dict(problems.counts),
                        skipped_details=problems.details)


# ----------------------------------------------------------------------------------------------
# Image datasets
# ----------------------------------------------------------------------------------------------

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _check_size(image_size) -> tuple[int, int]:
    if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in image_size)):
        raise ValueError(f"image_size must be (H, W) with positive ints, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def _read_resized(path: str, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [3, H, W] of the image at ``path`` resized (bicubic) to ``size`` = (H, W)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BICUBIC)
            arr = np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {path} does not exist") from None
    except OSError as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _normalise(img: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (img.float().div_(255.0) - mean) / std


def load_image(path: str | os.PathLike, image_size: tuple[int, int], mean: Sequence[float] = CLIP_MEAN,
               std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """One image as a normalised float tensor [3, H, W] (RGB, resized to ``image_size`` = (H, W))."""
    size = _check_size(image_size)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return _normalise(_read_resized(str(path), size), m, s)


class _ImageBase(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[str], image_size: tuple[int, int], mean: Sequence[float],
                 std: Sequence[float], cache: bool) -> None:
        self._paths = list(paths)
        self.image_size = _check_size(image_size)
        if len(mean) != 3 or len(std) != 3 or any(v <= 0 for v in std):
            raise ValueError(f"mean and std need 3 channels with std > 0, got mean={mean}, std={std}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.cache = cache
        self._cache: dict[str, torch.Tensor] = {}

    def _image(self, path: str) -> torch.Tensor:
        if self.cache:
            img = self._cache.get(path)
            if img is None:
                img = self._cache[path] = _read_resized(path, self.image_size)
        else:
            img = _read_resized(path, self.image_size)
        return _normalise(img, self.mean, self.std)


class TrainImageTextDataset(_ImageBase):
    """Training pairs for a ``DataLoader``: item -> ``(pid, image_id, image [3, H, W] float, caption)``.

    Args:
        samples: the :class:`TrainSample` list (``PedesDataset.train``).
        image_size: (H, W) the images are resized to (bicubic).
        flip_prob: probability of a horizontal flip (augmentation; drawn from torch's global RNG,
            which DataLoader seeds per worker).
        mean, std: per-channel normalisation of the [0, 1] pixels (CLIP's by default).
        cache: keep decoded, resized uint8 images in memory (per worker).

    The default collate gives ``pid`` [B] and ``image_id`` [B] LongTensors, images [B, 3, H, W] and
    a list of B captions.
    """

    def __init__(self, samples: Sequence[TrainSample], image_size: tuple[int, int] = (96, 48), *,
                 flip_prob: float = 0.0, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 cache: bool = False) -> None:
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob={flip_prob} is not in [0, 1]")
        self.samples = list(samples)
        super().__init__([s.image_path for s in self.samples], image_size, mean, std, cache)
        self.flip_prob = float(flip_prob)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[int, int, torch.Tensor, str]:
        s = self.samples[i]
        img = self._image(s.image_path)
        if self.flip_prob > 0 and float(torch.rand(())) < self.flip_prob:
            img = img.flip(-1)
        return s.pid, s.image_id, img, s.caption


class GalleryImageDataset(_ImageBase):
    """Evaluation gallery images: item -> ``(image [3, H, W] float, pid)`` (no augmentation)."""

    def __init__(self, gallery: Sequence[GalleryItem], image_size: tuple[int, int] = (96, 48), *,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD, cache: bool = False) -> None:
        self.gallery = list(gallery)
        super().__init__([g.image_path for g in self.gallery], image_size, mean, std, cache)

    def __len__(self) -> int:
        return len(self.gallery)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = self.gallery[i]
        return self._image(g.image_path), g.pid


def augment_batch(images: torch.Tensor, generator: torch.Generator, *, flip_prob: float = 0.0, pad: int = 0,
                  erase_prob: float = 0.0, erase_area: tuple[float, float] = (0.02, 0.15)) -> torch.Tensor:
    """Training augmentation of a normalised batch ``[B, 3, H, W]``, every draw from ``generator``.

    No colour is touched (colour is what the captions describe). Per image: a horizontal flip with
    probability ``flip_prob``; a random translation of up to ``pad`` pixels each way (zero-padded,
    i.e. the dataset mean after normalisation, then cropped back to H x W); with probability
    ``erase_prob`` one rectangle of ``erase_area`` of the image (aspect 0.3-3.3) set to zero
    (random erasing, for occlusion).
    """
    B, _, H, W = images.shape
    out = images
    if flip_prob > 0:
        flip = torch.rand(B, generator=generator) < flip_prob
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    if pad > 0:
        padded = torch.nn.functional.pad(out, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (B,), generator=generator).tolist()
        dx = torch.randint(0, 2 * pad + 1, (B,), generator=generator).tolist()
        out = torch.stack([padded[i, :, y:y + H, x:x + W] for i, (y, x) in enumerate(zip(dy, dx))])
    if erase_prob > 0:
        do = (torch.rand(B, generator=generator) < erase_prob).tolist()
        u = torch.rand(B, 4, generator=generator).tolist()
        out = out.clone() if out is images else out
        lo, hi = erase_area
        for i in range(B):
            if not do[i]:
                continue
            area = H * W * (lo + (hi - lo) * u[i][0])
            aspect = math.exp(math.log(0.3) + (math.log(3.3) - math.log(0.3)) * u[i][1])
            h = min(H, max(1, int(round(math.sqrt(area * aspect)))))
            w = min(W, max(1, int(round(math.sqrt(area / aspect)))))
            y, x = int(u[i][2] * (H - h + 1)), int(u[i][3] * (W - w + 1))
            out[i, :, y:y + h, x:x + w] = 0.0
    return out


def occlude_batch(images: torch.Tensor, generator: torch.Generator, *, bands: Sequence[tuple[float, float]] | None = None,
                  height: tuple[float, float] = (0.2, 0.35)) -> torch.Tensor:
    """Copies of a normalised batch ``[B, 3, H, W]`` with a drawn occluder: a full-width band of one
    random flat colour (an object in front of the person, not the blank of random erasing).

    Args:
        generator: every draw (band position and height, colour) comes from it.
        bands: per image ``(top, bottom)`` as fractions of the height (e.g. over a body part a caption
            mentions); None: a band of ``height`` (fractions) at a random vertical position.
    """
    B, C, H, W = images.shape
    out = images.clone()
    u = torch.rand(B, 2, generator=generator).tolist()
    colour = (torch.rand(B, C, generator=generator) * 3.0 - 1.5).tolist()  # roughly the normalised pixel range
    if bands is not None and len(bands) != B:
        raise ValueError(f"bands has {len(bands)} entries for {B} images")
    for i in range(B):
        if bands is not None:
            top, bottom = bands[i]
            if not 0.0 <= top < bottom <= 1.0:
                raise ValueError(f"band {i} = {bands[i]} is not 0 <= top < bottom <= 1")
        else:
            h = height[0] + (height[1] - height[0]) * u[i][0]
            top = (1.0 - h) * u[i][1]
            bottom = top + h
        y0, y1 = int(round(top * H)), max(int(round(top * H)) + 1, int(round(bottom * H)))
        out[i, :, y0:y1, :] = torch.tensor(colour[i], dtype=out.dtype).view(C, 1, 1)
    return out
