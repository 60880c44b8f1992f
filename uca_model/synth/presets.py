"""SynthPedes sizes: identities per split, images per identity, image size, tokenizer vocabulary."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SynthPreset:
    """Size of a SynthPedes build."""

    name: str  # recorded in the card
    num_train_ids: int  # identities in the train split
    num_val_ids: int  # identities in the val split (checkpoint selection)
    num_test_ids: int  # identities in the test split (reported once)
    image_size: tuple[int, int]  # (H, W) of the written images, portrait
    min_images: int = 2  # images per identity, inclusive range
    max_images: int = 4
    captions_per_image: int = 2
    variant_rate: float = 0.5  # share of identities derived from an earlier one of the split
    max_changes: int = 3  # a variant differs in 1..max_changes attributes
    vocab_size: int = 2000  # WordPiece vocabulary budget (the grammar needs fewer)
    contact_sheet_ids: int = 12  # identities shown on contact_sheet.png

    def validate(self) -> None:
        for f in ("num_train_ids", "num_val_ids", "num_test_ids", "min_images", "captions_per_image"):
            if getattr(self, f) < 1:
                raise ValueError(f"SynthPreset.{f} must be >= 1, got {getattr(self, f)}")
        if self.max_images < self.min_images:
            raise ValueError(f"SynthPreset.max_images={self.max_images} < min_images={self.min_images}")
        h, w = self.image_size
        if h < 16 or w < 8:
            raise ValueError(f"SynthPreset.image_size={self.image_size} is too small (need H>=16, W>=8)")
        if not 0.0 <= self.variant_rate <= 1.0:
            raise ValueError(f"SynthPreset.variant_rate={self.variant_rate} is not in [0, 1]")


PRESETS: dict[str, SynthPreset] = {
    # for tests: seconds
    "tiny": SynthPreset("tiny", 12, 5, 6, (48, 24), vocab_size=400, contact_sheet_ids=6),
    # the CPU demo: many training identities, so the from-scratch towers learn attributes rather than
    # identities (at the same number of steps: 1000 ids val R@1 24, 2000 ids 31, 4000 ids 40); a gallery
    # of 100 test identities; ~40 s to write
    "demo": SynthPreset("demo", 4000, 100, 100, (96, 48)),
    # several times more identities, larger images
    "large": SynthPreset("large", 2400, 400, 400, (128, 64), vocab_size=4000),
}


def resolve_preset(preset: str | SynthPreset) -> SynthPreset:
    if isinstance(preset, SynthPreset):
        preset.validate()
        return preset
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is not one of {', '.join(map(repr, PRESETS))}")
    return PRESETS[preset]
