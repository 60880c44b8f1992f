"""``uca synth``: write the SynthPedes dataset with its card and contact sheet."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ._common import Command

def _synth_arguments(p: argparse.ArgumentParser) -> None:
    from ..synth import PRESETS

    p.add_argument("--preset", default="demo", choices=sorted(PRESETS), help="dataset size (default: demo)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: data/synthpedes-<preset>)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    p.add_argument("--force", action="store_true", help="regenerate even if the folder holds a finished build")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _synth_run(args: argparse.Namespace) -> int:
    from ..synth import generate_synthpedes, read_card

    out = args.out if args.out is not None else Path("data") / f"synthpedes-{args.preset}"
    if args.seed < 0:
        print(f"uca synth: --seed must be >= 0, got {args.seed}", file=sys.stderr)
        return 2
    done_before = (out / ".complete.json").is_file() and not args.force
    t0 = time.perf_counter()
    try:
        generate_synthpedes(out, preset=args.preset, seed=args.seed, progress=not args.no_progress,
                            overwrite=args.force)
    except ValueError as e:
        print(f"uca synth: {e}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t0
    card = read_card(out)
    t, amb = card["totals"], card["ambiguity"]["test"]
    print(f"SynthPedes '{card['preset']['name']}' (seed {card['seed']}) in {out}")
    for s in ("train", "val", "test"):
        c = card["splits"][s]
        print(f"  {s:5s}: {c['identities']:5d} identities, {c['images']:6d} images, {c['captions']:6d} captions")
    h, w = card["preset"]["image_size"]
    print(f"  images {h}x{w} (HxW); WordPiece vocabulary {card['tokenizer_vocab_size']} tokens")
    print(f"  ambiguity: {amb['fraction_ambiguous']:.1%} of test captions fit more than one test identity "
          f"(mean {amb['mean_matches']:.2f} identities per caption)")
    from ..ceiling import ceiling_from_root, ceiling_summary

    print(f"  Bayes ceiling on test (the best any model can do): {ceiling_summary(ceiling_from_root(out, 'test'))}")
    if done_before:
        print("  (already complete: nothing regenerated)")
    else:
        print(f"  generated {t['images']} images in {dt:.1f} s ({t['images'] / max(dt, 1e-9) * 60:.0f} images/min, "
              "tokenizer and card included)")
    print(f"  card: {out / 'dataset_card.md'}; contact sheet: {out / 'contact_sheet.png'}")
    return 0


COMMAND = Command("synth", "write the SynthPedes dataset (CUHK-PEDES layout) with its card and contact sheet",
                  _synth_arguments, _synth_run)
