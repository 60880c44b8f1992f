"""Writing a SynthPedes folder (CUHK-PEDES layout): images, annotations, tokenizer, dataset card with
the Bayes ceiling, contact sheet; restartable, byte-identical for a seed."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..ceiling import bayes_ceiling
from .captions import caption_ambiguity, make_caption, processed_tokens
from .presets import SynthPreset, resolve_preset
from .render import render_person, sample_traits
from .schema import FIELD_NAMES, SCHEMA, PersonAttributes, mutate_attributes, sample_attributes


GENERATOR_VERSION = 1  # bump whenever the output for a given (preset, seed) changes


_MARKER = ".complete.json"
_PROGRESS = ".in_progress.json"
_OUTPUTS = ("reid_raw.json", "synth_attributes.json", "tokenizer.json", "dataset_card.md",
            "dataset_card.json", "contact_sheet.png")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader never sees a partial file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _json_bytes(obj: Any, indent: int | None = None) -> bytes:
    seps = (",", ": ") if indent is not None else (",", ":")
    return (json.dumps(obj, indent=indent, separators=seps, ensure_ascii=False) + "\n").encode("utf-8")


def _fingerprint(p: SynthPreset, seed: int) -> dict[str, Any]:
    fp = {"generator_version": GENERATOR_VERSION, "seed": seed, "preset": dataclasses.asdict(p)}
    return json.loads(json.dumps(fp))  # as read back from disk (tuples become lists)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """Greedy word wrap to ``width`` pixels."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _contact_sheet(cells: list[tuple[Image.Image, str]], columns: int = 6) -> Image.Image:
    """Grid of (image, caption) cells: images upscaled to about 192 px tall, captions wrapped below."""
    font = ImageFont.load_default(size=11)
    iw, ih = cells[0][0].size
    scale = max(1, 192 // ih)
    cw = max(iw * scale, 150) + 10
    wrapped = [_wrap(c, font, cw - 8) for _, c in cells]
    th = 13 * max(len(w) for w in wrapped) + 6
    chh = ih * scale + th + 8
    rows = math.ceil(len(cells) / columns)
    sheet = Image.new("RGB", (min(columns, len(cells)) * cw, rows * chh), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    for k, ((img, _), lines) in enumerate(zip(cells, wrapped)):
        x, y = (k % columns) * cw, (k // columns) * chh
        sheet.paste(img.resize((iw * scale, ih * scale), Image.Resampling.NEAREST), (x + (cw - iw * scale) // 2, y + 4))
        for j, ln in enumerate(lines):
            d.text((x + 4, y + ih * scale + 8 + 13 * j), ln, fill=(0, 0, 0), font=font)
    return sheet


def _card_markdown(card: dict[str, Any]) -> str:
    p, amb = card["preset"], card["ambiguity"]
    lines = [
        f"# SynthPedes ({p['name']} preset, seed {card['seed']})",
        "",
        "Procedurally generated text-image person retrieval data in the CUHK-PEDES layout "
        "(`reid_raw.json` + `imgs/`). Identities are attribute sets; captions mention a random subset "
        "of the attributes, so one caption fits several identities. Splits are disjoint by identity.",
        "",
        "| split | identities | images | captions |",
        "|---|---:|---:|---:|",
    ]
    for s in ("train", "val", "test"):
        c = card["splits"][s]
        lines.append(f"| {s} | {c['identities']} | {c['images']} | {c['captions']} |")
    t = card["totals"]
    lines += [
        f"| total | {t['identities']} | {t['images']} | {t['captions']} |",
        "",
        f"- image size (H x W): {p['image_size'][0]} x {p['image_size'][1]} pixels, PNG",
        f"- images per identity: {p['min_images']}-{p['max_images']}; captions per image: {p['captions_per_image']}",
        f"- mean caption length: {card['caption_words_mean']:.1f} words (max {card['caption_words_max']})",
        f"- WordPiece vocabulary (trained on train captions): {card['tokenizer_vocab_size']} tokens",
        f"- variants: {p['variant_rate']:.0%} of identities differ from an earlier one in 1-{p['max_changes']} attributes",
        "",
        "## Ambiguity",
        "",
        f"**{amb['test']['fraction_ambiguous']:.1%} of test captions** fit more than one test identity "
        f"(mean {amb['test']['mean_matches']:.2f} identities per caption).",
        "",
        "| split | captions fitting > 1 identity | mean identities per caption |",
        "|---|---:|---:|",
    ]
    for s in ("train", "val", "test"):
        lines.append(f"| {s} | {amb[s]['fraction_ambiguous']:.1%} | {amb[s]['mean_matches']:.2f} |")
    if card.get("ceiling"):
        ceil = card["ceiling"]
        lines += [
            "",
            "## Bayes ceiling",
            "",
            "The best any model can do: for each caption, rank first the images of the identities that fit "
            "every attribute it mentions, grouped per identity, in random order among them (exact "
            "expectation over that order; `uca_model.ceiling`). Read every result on SynthPedes as a "
            "fraction of it; the random ranking is the floor.",
            "",
            "| split | R@1 | R@5 | R@10 | mAP | mINP | identities fitting a caption | random R@1 | random mAP |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in ("train", "val", "test"):
            if s in ceil:
                c = ceil[s]
                lines.append(f"| {s} | {c['R1']:.1f} | {c['R5']:.1f} | {c['R10']:.1f} | {c['mAP']:.1f} | "
                             f"{c['mINP']:.1f} | {c['mean_fitting_identities']:.2f} | {c['random']['R1']:.2f} | "
                             f"{c['random']['mAP']:.2f} |")
    lines += ["", f"Generator version {card['generator_version']}.", ""]
    return "\n".join(lines)


def read_card(root: str | os.PathLike) -> dict[str, Any]:
    """The ``dataset_card.json`` of a generated SynthPedes folder."""
    path = Path(root) / "dataset_card.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (not a generated SynthPedes folder?)")
    return json.loads(path.read_text(encoding="utf-8"))


def _is_complete(out: Path, fp: dict[str, Any]) -> bool:
    marker = out / _MARKER
    if not marker.is_file():
        return False
    try:
        done = json.loads(marker.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError):
        return False
    if done.get("fingerprint") != fp:
        raise ValueError(f"{out} already holds SynthPedes generated with different settings "
                         f"({done.get('fingerprint')}); choose another folder or pass overwrite=True")
    return all((out / f).is_file() for f in _OUTPUTS) and all(
        (out / "imgs" / rel).is_file() for rel in done.get("images", []))


def _prepare_folder(out: Path, fp: dict[str, Any], overwrite: bool) -> bool:
    """Make ``out`` ready for a build with fingerprint ``fp``: True when it already holds that
    finished build (nothing to do); clears our own outputs on ``overwrite``; refuses foreign content."""
    out.mkdir(parents=True, exist_ok=True)
    ours = (out / _MARKER).exists() or (out / _PROGRESS).exists()
    if overwrite and ours:
        for f in _OUTPUTS + (_MARKER, _PROGRESS):
            (out / f).unlink(missing_ok=True)
        shutil.rmtree(out / "imgs", ignore_errors=True)
    elif _is_complete(out, fp):
        return True
    elif (out / _PROGRESS).exists():
        try:
            same = json.loads((out / _PROGRESS).read_text(encoding="utf-8")) == fp
        except json.JSONDecodeError:
            same = False
        if not same:
            raise ValueError(f"{out} holds an interrupted SynthPedes build with different settings; "
                             "choose another folder or pass overwrite=True")
        for stale in out.rglob(".*.tmp*"):  # partial writes of the interrupted run
            stale.unlink()
    elif any(out.iterdir()):
        raise ValueError(f"out_dir={str(out)!r} is not empty and holds no SynthPedes build; "
                         "refusing to write into it")
    return False


def _draw_identities(p: SynthPreset, seed: int, splits) -> list[tuple[int, str, PersonAttributes]]:
    """``(1-based id, split, attributes)`` of every identity: sequential draws (a variant refers back
    to an earlier identity of its split), all distinct."""
    rng = np.random.default_rng([seed, 0])
    seen: set[tuple[str, ...]] = set()
    identities: list[tuple[int, str, PersonAttributes]] = []
    for split, n in splits:
        members: list[PersonAttributes] = []
        while len(members) < n:
            if members and rng.random() < p.variant_rate:
                base = members[int(rng.integers(len(members)))]
                cand = mutate_attributes(base, rng, int(rng.integers(1, p.max_changes + 1)))
            else:
                cand = sample_attributes(rng)
            if cand.key() in seen:
                continue
            seen.add(cand.key())
            members.append(cand)
            identities.append((len(identities) + 1, split, cand))
    return identities


def _write_images(out: Path, p: SynthPreset, seed: int, identities, progress: bool):
    """Render every image (one random stream per (identity, image); an image already on disk is
    kept) and draw its captions. Returns ``(reid_raw entries, per-image metadata, contact-sheet cells)``."""
    from tqdm.auto import tqdm

    plan = []
    for pid, split, attrs in identities:
        r = np.random.default_rng([seed, 1, pid])
        plan.append((pid, split, attrs, sample_traits(r), int(r.integers(p.min_images, p.max_images + 1))))
    total = sum(n for *_, n in plan)
    entries: list[dict[str, Any]] = []
    image_meta: list[dict[str, Any]] = []
    sheet_cells: list[tuple[Image.Image, str]] = []
    sheet_ids = {pid for pid, split, *_ in plan if split == "test"}
    sheet_ids = set(sorted(sheet_ids)[: p.contact_sheet_ids])
    bar = tqdm(total=total, desc=f"SynthPedes {p.name}", unit="img", disable=not progress)
    for pid, split, attrs, traits, n_img in plan:
        for k in range(n_img):
            rel = f"{split}/{pid:05d}_{k}.png"
            path = out / "imgs" / rel
            img_rng = np.random.default_rng([seed, 2, pid, k])
            img, nuisance = render_person(attrs, traits, img_rng, p.image_size)
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                _atomic_write(path, _png_bytes(img))
            cap_rng = np.random.default_rng([seed, 3, pid, k])
            caps, ments = zip(*(make_caption(attrs, cap_rng) for _ in range(p.captions_per_image)))
            entries.append({"split": split, "captions": list(caps), "file_path": rel,
                            "processed_tokens": [processed_tokens(c) for c in caps], "id": pid})
            image_meta.append({"file_path": rel, "id": pid, **nuisance, "mentions": list(ments)})
            if k == 0 and pid in sheet_ids:
                sheet_cells.append((img, caps[0]))
            bar.update(1)
    bar.close()

    return entries, image_meta, sheet_cells


def _card(p: SynthPreset, seed: int, splits, identities, entries, image_meta, attributes_doc, vocab_size: int) -> dict:
    """The dataset card: counts, the ambiguity of each split's captions, the Bayes ceiling per split."""
    by_split = {s: [a for _, sp, a in identities if sp == s] for s, _ in splits}
    ments_by_split = {s: [m for im, e in zip(image_meta, entries) if e["split"] == s for m in im["mentions"]]
                      for s, _ in splits}
    ambiguity = {s: caption_ambiguity(by_split[s], ments_by_split[s]) for s, _ in splits}
    ceiling = {s: bayes_ceiling(attributes_doc["fields"], attributes_doc["identities"], image_meta, s)
               for s, _ in splits}
    words = [len(processed_tokens(c)) for e in entries for c in e["captions"]]
    split_counts = {}
    for s, _ in splits:
        es = [e for e in entries if e["split"] == s]
        split_counts[s] = {"identities": len(by_split[s]), "images": len(es),
                           "captions": sum(len(e["captions"]) for e in es)}
    card = {
        "name": "SynthPedes",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "preset": dataclasses.asdict(p),
        "splits": split_counts,
        "totals": {k: sum(c[k] for c in split_counts.values()) for k in ("identities", "images", "captions")},
        "ambiguity": ambiguity,
        "ceiling": ceiling,
        "caption_words_mean": float(np.mean(words)),
        "caption_words_max": int(max(words)),
        "tokenizer_vocab_size": vocab_size,
        "attribute_counts": {f: dict(sorted(Counter(getattr(a, f) for *_, a in identities).items()))
                             for f in FIELD_NAMES},
        "files": {"annotations": "reid_raw.json", "images": "imgs/", "attributes": "synth_attributes.json",
                  "tokenizer": "tokenizer.json", "contact_sheet": "contact_sheet.png"},
    }
    return card


def generate_synthpedes(
    out_dir: str | os.PathLike,
    preset: str | SynthPreset = "demo",
    seed: int = 0,
    progress: bool = True,
    *,
    overwrite: bool = False,
) -> Path:
    """Write SynthPedes to ``out_dir`` (see the module docstring for the layout) and return it.

    Args:
        out_dir: target folder; created if missing. An existing folder must be empty, a finished
            build of the same (preset, seed) -- returned as is, nothing redone -- or an interrupted
            one (``.in_progress.json`` without ``.complete.json``), which is finished, reusing the
            images already written (each is written atomically, so any that exists is whole).
        preset: a key of :data:`PRESETS` or a :class:`SynthPreset`.
        seed: the single source of randomness; the same seed gives byte-identical files.
        progress: show a tqdm progress bar.
        overwrite: regenerate from scratch even if the folder holds a (different) SynthPedes build.

    Raises:
        ValueError: the folder holds something else (foreign files, or another build without
            ``overwrite``), or a bad preset.
    """
    from ..text import train_wordpiece

    p = resolve_preset(preset)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    out = Path(out_dir)
    fp = _fingerprint(p, seed)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={str(out)!r} exists and is not a folder")
    if _prepare_folder(out, fp, overwrite):
        return out
    (out / _MARKER).unlink(missing_ok=True)
    _atomic_write(out / _PROGRESS, _json_bytes(fp))

    splits = (("train", p.num_train_ids), ("val", p.num_val_ids), ("test", p.num_test_ids))
    identities = _draw_identities(p, seed, splits)

    entries, image_meta, sheet_cells = _write_images(out, p, seed, identities, progress)

    # -- annotations, attributes, tokenizer, card, contact sheet; the marker last --
    _atomic_write(out / "reid_raw.json", _json_bytes(entries))
    attributes_doc = {
        "fingerprint": fp,
        "fields": {f.name: list(f.values) for f in SCHEMA},
        "identities": [{"id": pid, "split": s, "attributes": a.as_dict()} for pid, s, a in identities],
        "images": image_meta,
    }
    _atomic_write(out / "synth_attributes.json", _json_bytes(attributes_doc))
    train_caps = [c for e in entries if e["split"] == "train" for c in e["captions"]]
    tok = train_wordpiece(train_caps, out / "tokenizer.json", vocab_size=p.vocab_size)

    card = _card(p, seed, splits, identities, entries, image_meta, attributes_doc, len(tok))
    _atomic_write(out / "dataset_card.json", _json_bytes(card, indent=2))
    _atomic_write(out / "dataset_card.md", _card_markdown(card).encode("utf-8"))
    _atomic_write(out / "contact_sheet.png", _png_bytes(_contact_sheet(sheet_cells)))
    _atomic_write(out / _MARKER, _json_bytes({"fingerprint": fp, "images": [e["file_path"] for e in entries]}))
    (out / _PROGRESS).unlink(missing_ok=True)
    return out
