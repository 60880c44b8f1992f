"""SynthPedes: the embedded, procedurally generated text-image person retrieval dataset.

Every identity is a set of attributes (:class:`PersonAttributes`): gender, hair length and colour,
upper garment type and colour, lower garment type and colour, shoe colour, bag type and colour (or
none), hat type and colour (or none) and glasses (or none). About half of the identities of a split
are *variants* of an earlier identity of the same split that differ in one to three attributes, so
identities differ in a few attributes, not all.

Each identity gets 2–4 images (a drawn figure; pose, view, scale, position, background, lighting,
occlusion and horizontal flip vary per image) and every image 2 captions from a grammar with many
sentence forms and synonyms. A caption mentions a *random subset* of the attributes, so it fits
several identities; the generator records what each caption mentions and the dataset card reports
the fraction of test captions whose mentioned attributes fit more than one test identity, and the
*Bayes ceiling* of each split (the expected metrics of an oracle that knows the attributes; see
:mod:`uca_model.ceiling`).

Output (the CUHK-PEDES layout, so training on it exercises the real reader)::

    out_dir/
      reid_raw.json           [{"split", "captions", "file_path", "processed_tokens", "id"}, ...]
      imgs/<split>/<id>_<k>.png
      synth_attributes.json   identity attributes and per-caption mentions (for analysis and tests)
      tokenizer.json          WordPiece tokenizer trained on the training captions
      dataset_card.md / .json counts, sizes, the ambiguity figure, the Bayes ceiling per split
      contact_sheet.png       sample identities with one caption each
      .complete.json          written last; a folder without it is an interrupted run

Generation is deterministic: every random stream is seeded from ``(seed, purpose, id, image)``, so
the same seed gives byte-identical files (PNG carries no timestamp here).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from .ceiling import bayes_ceiling

__all__ = [
    "GENERATOR_VERSION",
    "COLOURS",
    "AttributeField",
    "SCHEMA",
    "FIELD_NAMES",
    "PersonAttributes",
    "SynthPreset",
    "PRESETS",
    "sample_attributes",
    "mutate_attributes",
    "make_caption",
    "render_person",
    "caption_ambiguity",
    "generate_synthpedes",
    "read_card",
]

GENERATOR_VERSION = 1  # bump whenever the output for a given (preset, seed) changes

# ----------------------------------------------------------------------------------------------
# Attribute schema
# ----------------------------------------------------------------------------------------------

#: Garment colours and their base RGB values (per-image jitter and lighting are added on top).
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 32),
    "white": (232, 232, 226),
    "grey": (128, 128, 132),
    "red": (196, 32, 38),
    "blue": (38, 72, 186),
    "green": (44, 138, 62),
    "yellow": (232, 200, 44),
    "brown": (116, 74, 42),
    "pink": (236, 142, 180),
    "purple": (118, 52, 148),
    "orange": (236, 128, 32),
}
HAIR_RGB: dict[str, tuple[int, int, int]] = {
    "black": (22, 20, 20),
    "brown": (96, 60, 30),
    "blonde": (220, 190, 110),
    "grey": (168, 168, 168),
    "red": (170, 72, 30),
}
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (241, 204, 176), (226, 180, 142), (198, 146, 108), (160, 108, 72), (112, 74, 50),
)


@dataclass(frozen=True)
class AttributeField:
    """One attribute of an identity: its name, its values and their prior weights.

    The weights are the unconditional prior; :func:`sample_attributes` conditions some fields on
    others (hair length and skirts on gender, jeans colours, "none" colours of absent items).
    """

    name: str  # field name of PersonAttributes
    values: tuple[str, ...]  # possible values ("none" where the item may be absent)
    weights: tuple[float, ...]  # unnormalised prior weights, same length as values


_GARMENT_COLOURS = tuple(COLOURS)
_GARMENT_WEIGHTS = (3.0, 2.0, 2.0, 1.2, 2.0, 1.0, 0.8, 1.0, 0.8, 0.6, 0.6)

SCHEMA: tuple[AttributeField, ...] = (
    AttributeField("gender", ("male", "female"), (1.0, 1.0)),
    AttributeField("hair_length", ("short", "long"), (1.0, 1.0)),
    AttributeField("hair_colour", tuple(HAIR_RGB), (4.0, 3.0, 1.5, 0.8, 0.7)),
    AttributeField("upper_type", ("t-shirt", "shirt", "jacket", "coat", "sweater", "hoodie"),
                   (3.0, 2.0, 2.0, 1.2, 1.5, 1.2)),
    AttributeField("upper_colour", _GARMENT_COLOURS, _GARMENT_WEIGHTS),
    AttributeField("lower_type", ("trousers", "jeans", "shorts", "skirt"), (2.5, 2.2, 1.1, 0.8)),
    AttributeField("lower_colour", _GARMENT_COLOURS, _GARMENT_WEIGHTS),
    AttributeField("shoe_colour", ("black", "white", "brown", "grey", "red", "blue"),
                   (3.0, 2.5, 1.0, 1.0, 0.5, 0.5)),
    AttributeField("bag_type", ("none", "backpack", "handbag", "shoulder bag"), (2.0, 1.2, 0.7, 0.8)),
    AttributeField("bag_colour", ("none",) + _GARMENT_COLOURS, (0.0,) + _GARMENT_WEIGHTS),
    AttributeField("hat_type", ("none", "cap", "beanie"), (5.0, 1.0, 0.8)),
    AttributeField("hat_colour", ("none",) + _GARMENT_COLOURS, (0.0,) + _GARMENT_WEIGHTS),
    AttributeField("glasses", ("none", "glasses", "sunglasses"), (6.0, 1.2, 0.8)),
)
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in SCHEMA)
_FIELDS: dict[str, AttributeField] = {f.name: f for f in SCHEMA}


@dataclass(frozen=True)
class PersonAttributes:
    """The attribute set that defines one SynthPedes identity (values from :data:`SCHEMA`)."""

    gender: str  # "male" | "female"
    hair_length: str  # "short" | "long"
    hair_colour: str  # key of HAIR_RGB
    upper_type: str  # "t-shirt" | "shirt" | "jacket" | "coat" | "sweater" | "hoodie"
    upper_colour: str  # key of COLOURS
    lower_type: str  # "trousers" | "jeans" | "shorts" | "skirt"
    lower_colour: str  # key of COLOURS
    shoe_colour: str  # one of the shoe colours
    bag_type: str  # "none" | "backpack" | "handbag" | "shoulder bag"
    bag_colour: str  # "none" iff bag_type == "none"
    hat_type: str  # "none" | "cap" | "beanie"
    hat_colour: str  # "none" iff hat_type == "none"
    glasses: str  # "none" | "glasses" | "sunglasses"

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    def key(self) -> tuple[str, ...]:
        return tuple(getattr(self, f) for f in FIELD_NAMES)

    def validate(self) -> None:
        """Raise ValueError if a value is outside the schema or the none-colours disagree."""
        for f in SCHEMA:
            v = getattr(self, f.name)
            if v not in f.values:
                raise ValueError(f"PersonAttributes.{f.name}={v!r} is not one of {f.values}")
        for item in ("bag", "hat"):
            if (getattr(self, f"{item}_type") == "none") != (getattr(self, f"{item}_colour") == "none"):
                raise ValueError(f"{item}_colour must be 'none' exactly when {item}_type is 'none': {self}")
        if self.gender == "male" and self.lower_type == "skirt":
            raise ValueError("the schema gives skirts to female identities only")


def _conditional(name: str, a: dict[str, str]) -> tuple[tuple[str, ...], np.ndarray]:
    """Values and normalised probabilities of field ``name`` given the fields already in ``a``."""
    f = _FIELDS[name]
    w = np.asarray(f.weights, dtype=np.float64).copy()
    male = a.get("gender") == "male"
    if name == "hair_length":
        w = np.array([0.85, 0.15] if male else [0.3, 0.7])
    elif name == "lower_type":
        w = np.array([3.0, 2.5, 1.2, 0.0] if male else [2.0, 2.0, 1.0, 1.6])
    elif name == "lower_colour" and a.get("lower_type") == "jeans":
        jeans = {"blue": 6.0, "black": 2.5, "grey": 1.2, "white": 0.6, "brown": 0.3}
        w = np.array([jeans.get(v, 0.0) for v in f.values])
    elif name == "bag_type" and male:
        w = np.array([2.0, 1.4, 0.15, 0.9])
    elif name in ("bag_colour", "hat_colour"):
        absent = a.get(name.replace("colour", "type")) == "none"
        w = np.zeros(len(f.values)) if absent else w
        if absent:
            w[0] = 1.0
    return f.values, w / w.sum()


def _draw(rng: np.random.Generator, values: Sequence[str], p: np.ndarray) -> str:
    return values[int(rng.choice(len(values), p=p))]


def sample_attributes(rng: np.random.Generator) -> PersonAttributes:
    """Draw one identity from the (conditional) prior of :data:`SCHEMA`."""
    a: dict[str, str] = {}
    for name in FIELD_NAMES:
        a[name] = _draw(rng, *_conditional(name, a))
    out = PersonAttributes(**a)
    out.validate()
    return out


_MUTABLE = ("hair_length", "hair_colour", "upper_type", "upper_colour", "lower_type", "lower_colour",
            "shoe_colour", "bag_type", "bag_colour", "hat_type", "hat_colour", "glasses")


def mutate_attributes(base: PersonAttributes, rng: np.random.Generator, n_changes: int) -> PersonAttributes:
    """A variant of ``base`` that differs in ``n_changes`` chosen attributes (colours of items that
    appear or disappear follow along). Gender is kept, so variants look alike."""
    a = base.as_dict()
    candidates = [f for f in _MUTABLE if not (f.endswith("_colour") and f.startswith(("bag", "hat"))
                                              and a[f] == "none")]
    chosen = rng.choice(len(candidates), size=min(n_changes, len(candidates)), replace=False)
    for i in sorted(int(c) for c in chosen):
        name = candidates[i]
        values, p = _conditional(name, a)
        p = np.where(np.asarray(values) == a[name], 0.0, p)
        if p.sum() <= 0:
            continue
        a[name] = _draw(rng, values, p / p.sum())
        for item in ("bag", "hat"):  # keep colour consistent with presence
            if name == f"{item}_type":
                if a[name] == "none":
                    a[f"{item}_colour"] = "none"
                elif a[f"{item}_colour"] == "none":
                    a[f"{item}_colour"] = _draw(rng, *_conditional(f"{item}_colour", a))
    out = PersonAttributes(**a)
    out.validate()
    return out


# ----------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------


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


def _resolve_preset(preset: str | SynthPreset) -> SynthPreset:
    if isinstance(preset, SynthPreset):
        preset.validate()
        return preset
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is not one of {', '.join(map(repr, PRESETS))}")
    return PRESETS[preset]


# ----------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------

_COLOUR_WORDS = {"grey": ("grey", "gray"), "purple": ("purple", "violet")}
_HAIR_COLOUR_WORDS = {"black": ("black", "jet-black"), "brown": ("brown", "brunette"),
                      "blonde": ("blonde", "blond", "fair"), "grey": ("grey", "gray", "silver"),
                      "red": ("red", "ginger", "auburn")}
_HAIR_LENGTH_WORDS = {"short": ("short", "cropped", "short-cut"), "long": ("long", "shoulder-length", "long flowing")}
_UPPER_WORDS = {"t-shirt": ("t-shirt", "tee", "T-shirt", "tee shirt"),
                "shirt": ("shirt", "button-up shirt", "collared shirt", "long-sleeved shirt"),
                "jacket": ("jacket", "zip-up jacket"),
                "coat": ("coat", "long coat", "overcoat"),
                "sweater": ("sweater", "jumper", "pullover"),
                "hoodie": ("hoodie", "hooded sweatshirt")}
_UPPER_GENERIC = ("top", "upper garment", "outfit top")
_LOWER_WORDS = {"trousers": ("trousers", "pants", "slacks"), "jeans": ("jeans", "denim jeans"),
                "shorts": ("shorts",), "skirt": ("skirt", "knee-length skirt")}
_LOWER_GENERIC = ("bottoms", "lower garment")
_SHOE_WORDS = ("shoes", "sneakers", "trainers", "footwear")
_BAG_WORDS = {"backpack": ("backpack", "rucksack", "knapsack"), "handbag": ("handbag", "purse"),
              "shoulder bag": ("shoulder bag", "messenger bag", "crossbody bag")}
_HAT_WORDS = {"cap": ("cap", "baseball cap"), "beanie": ("beanie", "knit hat", "woolly hat")}
_GLASSES_WORDS = {"glasses": ("glasses", "spectacles", "eyeglasses"),
                  "sunglasses": ("sunglasses", "shades", "dark sunglasses")}
_SUBJECTS = {"male": ("man", "guy", "young man", "gentleman", "male pedestrian", "boy"),
             "female": ("woman", "lady", "young woman", "girl", "female pedestrian"),
             None: ("person", "pedestrian", "individual", "walker")}
_PRONOUNS = {  # subject, possessive, be, have, wear, carry
    "male": ("he", "his", "is", "has", "wears", "carries"),
    "female": ("she", "her", "is", "has", "wears", "carries"),
    None: ("they", "their", "are", "have", "wear", "carry"),
}
_PLACES = ("", "", "", " down the street", " along the sidewalk", " through a plaza", " near a building",
           " across the road")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeio" else "a ") + phrase


def _colour_word(rng: np.random.Generator, colour: str) -> str:
    return _pick(rng, _COLOUR_WORDS.get(colour, (colour,)))


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _choose_mentions(a: PersonAttributes, rng: np.random.Generator) -> dict[str, str]:
    """Which attribute values a caption mentions: a random subset, at least two facets besides gender."""
    m: dict[str, str] = {}
    if rng.random() < 0.8:
        m["gender"] = a.gender

    def typed(prefix: str, p_colour_only: float = 0.2, p_type_only: float = 0.2) -> None:
        u = rng.random()
        if u < p_colour_only:
            m[f"{prefix}_colour"] = getattr(a, f"{prefix}_colour")
        elif u < p_colour_only + p_type_only:
            m[f"{prefix}_type"] = getattr(a, f"{prefix}_type")
        else:
            m[f"{prefix}_type"] = getattr(a, f"{prefix}_type")
            m[f"{prefix}_colour"] = getattr(a, f"{prefix}_colour")

    def hair() -> None:
        u = rng.random()
        if u < 0.55:
            m["hair_length"], m["hair_colour"] = a.hair_length, a.hair_colour
        elif u < 0.8:
            m["hair_colour"] = a.hair_colour
        else:
            m["hair_length"] = a.hair_length

    def item(prefix: str) -> None:  # bag / hat: absent items are mentioned as such
        if getattr(a, f"{prefix}_type") == "none":
            m[f"{prefix}_type"] = "none"
        else:
            typed(prefix, 0.15, 0.25)

    facets = {
        "upper": (0.75, lambda: typed("upper")),
        "lower": (0.65, lambda: typed("lower", 0.1, 0.25)),
        "hair": (0.5, hair),
        "shoes": (0.4, lambda: m.__setitem__("shoe_colour", a.shoe_colour)),
        "bag": (0.5 if a.bag_type != "none" else 0.2, lambda: item("bag")),
        "hat": (0.6 if a.hat_type != "none" else 0.1, lambda: item("hat")),
        "glasses": (0.6 if a.glasses != "none" else 0.08, lambda: m.__setitem__("glasses", a.glasses)),
    }
    names = list(facets)
    chosen = [n for n in names if rng.random() < facets[n][0]]
    rest = [n for n in names if n not in chosen]
    while len(chosen) < 2:
        chosen.append(rest.pop(int(rng.integers(len(rest)))))
    for n in names:  # fixed call order keeps the random stream independent of list order
        if n in chosen:
            facets[n][1]()
    return m


def _phrases(m: dict[str, str], a: PersonAttributes, rng: np.random.Generator, pos: str) -> dict[str, str]:
    """Noun phrases (with articles) for every mentioned facet; negatives as full predicates."""
    out: dict[str, str] = {}
    col = lambda k: _colour_word(rng, m[k])  # noqa: E731
    if "upper_type" in m or "upper_colour" in m:
        if "upper_type" in m and "upper_colour" in m:
            t = _pick(rng, _UPPER_WORDS[m["upper_type"]])
            out["upper"] = _pick(rng, (_article(f"{col('upper_colour')} {t}"), _article(f"{t} in {col('upper_colour')}"),
                                       _article(f"{col('upper_colour')} colored {t}")))
        elif "upper_type" in m:
            out["upper"] = _article(_pick(rng, _UPPER_WORDS[m["upper_type"]]))
        else:
            out["upper"] = _article(f"{col('upper_colour')} {_pick(rng, _UPPER_GENERIC)}")
    if "lower_type" in m or "lower_colour" in m:
        if "lower_type" in m:
            t = _pick(rng, _LOWER_WORDS[m["lower_type"]])
            c = f"{col('lower_colour')} " if "lower_colour" in m else ""
            if m["lower_type"] == "skirt":
                out["lower"] = _article(c + t)
            else:
                out["lower"] = _pick(rng, (c + t, f"a pair of {c}{t}"))
        else:
            out["lower"] = f"{col('lower_colour')} {_pick(rng, _LOWER_GENERIC)}"
    if "shoe_colour" in m:
        s = _pick(rng, _SHOE_WORDS)
        out["shoes"] = _pick(rng, (f"{col('shoe_colour')} {s}", f"a pair of {col('shoe_colour')} {s}"))
    if "hat_type" in m or "hat_colour" in m:
        if m.get("hat_type") == "none":
            out["hat_neg"] = _pick(rng, ("no hat", "nothing on {pos} head"))
        elif "hat_type" in m:
            t = _pick(rng, _HAT_WORDS[m["hat_type"]])
            out["hat"] = _article(f"{col('hat_colour')} {t}" if "hat_colour" in m else t)
        else:
            out["hat"] = _article(f"{col('hat_colour')} hat")
    if "glasses" in m:
        if m["glasses"] == "none":
            out["glasses_neg"] = "no glasses"
        else:
            g = _pick(rng, _GLASSES_WORDS[m["glasses"]])
            out["glasses"] = _pick(rng, (g, f"a pair of {g}"))
    if "hair_length" in m or "hair_colour" in m:
        words = []
        if "hair_length" in m:
            words.append(_pick(rng, _HAIR_LENGTH_WORDS[m["hair_length"]]))
        if "hair_colour" in m:
            words.append(_pick(rng, _HAIR_COLOUR_WORDS[m["hair_colour"]]))
        out["hair"] = " ".join(words) + " hair"
    if "bag_type" in m or "bag_colour" in m:
        if m.get("bag_type") == "none":
            out["bag_neg"] = _pick(rng, ("no bag", "nothing in {pos} hands"))
        elif "bag_type" in m:
            t = _pick(rng, _BAG_WORDS[m["bag_type"]])
            out["bag"] = _article(f"{col('bag_colour')} {t}" if "bag_colour" in m else t)
        else:
            out["bag"] = _article(f"{col('bag_colour')} bag")
    return {k: v.replace("{pos}", pos) for k, v in out.items()}


def make_caption(a: PersonAttributes, rng: np.random.Generator) -> tuple[str, dict[str, str]]:
    """One caption of identity ``a`` and the attribute values it mentions.

    The sentence form, the order of the items and the synonyms are random; every mention is true of
    ``a`` (the mentions dict maps field names of :class:`PersonAttributes` to values).
    """
    m = _choose_mentions(a, rng)
    gender = m.get("gender")
    subj_pron, pos, be, have, wear, carry = _PRONOUNS[gender]  # pronoun verb forms
    s_be, s_have, s_walk = "is", "has", "walks"  # the subject noun is always singular
    ph = _phrases(m, a, rng, pos)
    noun = _pick(rng, _SUBJECTS[gender])
    subject = _pick(rng, ("a ", "the ", "this ")) + noun
    worn = [ph[k] for k in ("upper", "lower", "shoes", "hat", "glasses") if k in ph]
    order = rng.permutation(len(worn))
    worn = [worn[i] for i in order]
    hair, bag = ph.get("hair"), ph.get("bag")
    negs = [ph[k] for k in ("bag_neg", "hat_neg", "glasses_neg") if k in ph]
    place = _pick(rng, _PLACES)
    sentences: list[str] = []
    form = int(rng.integers(7))
    if not worn:  # only hair / bag / absent items mentioned: the form that needs no worn items
        form = 2
    if form == 0:  # "A man wearing X, Y and Z, with H, carrying B."
        s = f"{subject} wearing {_join(worn)}"
        if hair:
            s += f", with {hair}"
            hair = None
        if bag:
            s += f", carrying {bag}"
            bag = None
        sentences.append(s)
    elif form == 1:  # "The woman with H is dressed in X and Y."
        s = subject + (f" with {hair}" if hair else "")
        hair = None
        sentences.append(f"{s} {s_be} {_pick(rng, ('dressed in', 'wearing', 'clothed in'))} {_join(worn)}")
    elif form == 2:  # "This person has H. They are walking ... . They wear X."
        if hair:
            sentences.append(f"{subject} {s_have} {hair}")
            hair = None
        else:
            sentences.append(f"{subject} {s_be} walking{place}")
        if worn:
            sentences.append(f"{subj_pron} {_pick(rng, (wear, f'{be} wearing', f'{have} on'))} {_join(worn)}")
    elif form == 3:  # "Wearing X and Y, the man walks ... ."
        sentences.append(f"wearing {_join(worn)}, {subject} {s_walk}{place or ' forward'}")
    elif form == 4:  # "A lady in X. She has on Y."
        first, rest = worn[:1], worn[1:]
        sentences.append(f"{subject} in {first[0]}" + (f" {s_be} walking{place}" if place else ""))
        if rest:
            sentences.append(f"{subj_pron} also {_pick(rng, (wear, f'{have} on'))} {_join(rest)}")
    elif form == 5:  # "The pedestrian is seen in X, Y and Z while carrying B."
        s = f"{subject} {s_be} {_pick(rng, ('seen in', 'dressed in', 'wearing'))} {_join(worn)}"
        if bag:
            s += f" while {_pick(rng, ('carrying', 'holding'))} {bag}"
            bag = None
        sentences.append(s)
    else:  # "A man: X, Y, H." (attribute-list style)
        items = worn + ([hair] if hair else []) + ([bag] if bag else [])
        hair = bag = None
        sentences.append(f"{subject} with {_join(items)}")
    if hair:
        sentences.append(_pick(rng, (f"{subj_pron} {have} {hair}", f"{pos} hair is {ph['hair'].removesuffix(' hair')}")))
    if bag:
        sentences.append(f"{subj_pron} {_pick(rng, (carry, f'{be} carrying', f'{have}'))} {bag}")
    if negs:
        sentences.append(f"{subj_pron} {have} {_join(negs)}")
    text = " ".join(s[0].upper() + s[1:] + "." for s in sentences)
    text = re.sub(r"\s+", " ", text).strip()
    return text, m


def _processed_tokens(caption: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", caption.lower())


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Traits:
    """Per-identity looks that are not attributes (kept fixed across the identity's images)."""

    skin: tuple[int, int, int]
    height: float  # fraction of the nominal figure height
    build: float  # width factor


def _sample_traits(rng: np.random.Generator) -> _Traits:
    base = np.array(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], dtype=np.float64)
    skin = tuple(int(v) for v in np.clip(base + rng.normal(0, 6, 3), 0, 255))
    return _Traits(skin=skin, height=float(rng.uniform(0.9, 1.04)), build=float(rng.uniform(0.94, 1.08)))


def _jitter(rng: np.random.Generator, rgb: Sequence[int], amount: float = 10.0) -> tuple[int, int, int]:
    v = np.clip(np.asarray(rgb, dtype=np.float64) + rng.normal(0, amount, 3), 0, 255)
    return tuple(int(x) for x in v)


def _shade(rgb: Sequence[int], f: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c * f))) for c in rgb)


def _background(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    top = rng.uniform(60, 210, 3)
    bottom = rng.uniform(60, 210, 3)
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    arr = (1 - t) * top + t * bottom
    arr = np.broadcast_to(arr, (h, w, 3)).copy()
    ground = int(h * rng.uniform(0.68, 0.9))
    arr[ground:] = rng.uniform(70, 170, 3) * rng.uniform(0.9, 1.1, (1, 1, 3))
    img = Image.fromarray(arr.astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 5))):  # clutter: facades, windows, signs
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.1, 0.7) * h
        x1, y1 = x0 + rng.uniform(0.1, 0.6) * w, y0 + rng.uniform(0.05, 0.4) * h
        d.rectangle((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.uniform(40, 220, 3)))
    return img


def render_person(
    a: PersonAttributes,
    traits: _Traits,
    rng: np.random.Generator,
    size: tuple[int, int],
    supersample: int = 2,
) -> tuple[Image.Image, dict[str, Any]]:
    """Draw one image of identity ``a`` at ``size`` = (H, W); returns the image and its nuisance
    parameters (view, flip, occlusion, ...). Pose, view, scale, position, background, lighting,
    occlusion and flip are drawn from ``rng``."""
    H, W = size
    h, w = H * supersample, W * supersample
    img = _background(rng, h, w)
    d = ImageDraw.Draw(img)

    view = "back" if rng.random() < 0.25 else "front"
    stride = float(rng.uniform(-1, 1))
    fh = h * float(rng.uniform(0.74, 0.93)) * traits.height
    top = float(rng.uniform(0.02, 0.98)) * (h - fh)
    cx = w / 2 + float(rng.uniform(-0.1, 0.1)) * w
    female = a.gender == "female"

    def P(x: float, y: float) -> tuple[float, float]:
        return (cx + x * fh, top + y * fh)

    def line(p0, p1, width: float, fill) -> None:
        r = width * fh / 2
        x0, y0 = P(*p0)
        x1, y1 = P(*p1)
        d.line((x0, y0, x1, y1), fill=fill, width=max(1, int(round(2 * r))))
        for x, y in ((x0, y0), (x1, y1)):
            d.ellipse((x - r, y - r, x + r, y + r), fill=fill)

    def poly(points, fill) -> None:
        d.polygon([P(x, y) for x, y in points], fill=fill)

    def ellipse(x: float, y: float, rx: float, ry: float, fill, outline=None, width: int = 1) -> None:
        x0, y0 = P(x - rx, y - ry)
        x1, y1 = P(x + rx, y + ry)
        d.ellipse((x0, y0, x1, y1), fill=fill, outline=outline, width=width)

    skin = _jitter(rng, traits.skin, 4)
    upper = _jitter(rng, COLOURS[a.upper_colour])
    lower = _jitter(rng, COLOURS[a.lower_colour])
    shoes = _jitter(rng, COLOURS[a.shoe_colour], 8)
    hair = _jitter(rng, HAIR_RGB[a.hair_colour], 8)
    bagc = _jitter(rng, COLOURS[a.bag_colour]) if a.bag_type != "none" else None
    hatc = _jitter(rng, COLOURS[a.hat_colour]) if a.hat_type != "none" else None

    sw = 0.12 * traits.build * (0.92 if female else 1.05)  # shoulder half-width
    hw = 0.095 * traits.build * (1.1 if female else 1.0)  # hip half-width
    y_sh, y_hip, y_knee, y_ank = 0.175, 0.5, 0.72, 0.94
    legs = []
    for side in (-1, 1):  # hip, knee, ankle per leg; stride swings them in opposite directions
        ang = side * stride * 0.13
        hip = (side * 0.048, y_hip)
        knee = (hip[0] + math.sin(ang) * (y_knee - y_hip), y_knee)
        ank = (knee[0] + math.sin(ang * 1.2) * (y_ank - y_knee), y_ank)
        legs.append((hip, knee, ank))
    arms = []
    for side in (-1, 1):
        ang = -side * stride * 0.25
        sh = (side * (sw - 0.018), y_sh + 0.015)
        out = side * 0.1
        elbow = (sh[0] + math.sin(out + ang) * 0.17, sh[1] + math.cos(out + ang) * 0.17)
        wrist = (elbow[0] + math.sin(out * 0.6 + ang * 1.3) * 0.16, elbow[1] + math.cos(out * 0.6 + ang) * 0.16)
        arms.append((sh, elbow, wrist))

    # -- behind the body: backpack body (front view), long hair (back part) --
    if a.bag_type == "backpack" and view == "front":
        side = 1 if rng.random() < 0.5 else -1
        poly([(side * (sw - 0.03), 0.2), (side * (sw + 0.035), 0.21), (side * (sw + 0.035), 0.45),
              (side * (sw - 0.03), 0.45)], bagc)
    if a.hair_length == "long":
        poly([(-0.068, 0.06), (0.068, 0.06), (0.085, 0.3), (-0.085, 0.3)], hair)

    # -- legs and lower garment --
    leg_w = 0.062
    for hip, knee, ank in legs:
        if a.lower_type in ("trousers", "jeans"):
            line(hip, knee, leg_w, lower)
            line(knee, ank, leg_w * 0.85, lower)
            if a.lower_type == "jeans":  # light outer seam
                seam = _shade(lower, 1.35)
                line((hip[0] * 1.45, hip[1] + 0.02), (ank[0] * 1.2 + (0.012 if hip[0] > 0 else -0.012), ank[1] - 0.02),
                     0.008, seam)
        elif a.lower_type == "shorts":
            mid = (hip[0] + 0.6 * (knee[0] - hip[0]), hip[1] + 0.6 * (knee[1] - hip[1]))
            line(mid, knee, leg_w * 0.8, skin)
            line(knee, ank, leg_w * 0.75, skin)
            line(hip, mid, leg_w * 1.1, lower)
        else:  # skirt: bare legs, the skirt is drawn over the hips
            line(hip, knee, leg_w * 0.8, skin)
            line(knee, ank, leg_w * 0.75, skin)
        ellipse(ank[0] + 0.008, ank[1] + 0.025, 0.042, 0.022, shoes)
    if a.lower_type in ("trousers", "jeans", "shorts"):
        poly([(-hw, y_hip - 0.03), (hw, y_hip - 0.03), (hw * 0.95, y_hip + 0.06), (-hw * 0.95, y_hip + 0.06)], lower)
    else:
        poly([(-hw, y_hip - 0.03), (hw, y_hip - 0.03), (hw + 0.07, 0.7), (-hw - 0.07, 0.7)], lower)

    # -- torso and upper garment --
    y_end = {"coat": 0.72, "jacket": 0.53, "hoodie": 0.53}.get(a.upper_type, 0.51)
    flare = 0.03 if a.upper_type == "coat" else 0.0
    line((0, 0.13), (0, 0.18), 0.04, skin)  # neck
    torso = [(-sw, y_sh), (sw, y_sh), (hw + 0.005 + flare, y_end), (-hw - 0.005 - flare, y_end)]
    if a.upper_type == "hoodie" and view == "front":
        ellipse(0, 0.155, 0.07, 0.035, _shade(upper, 0.8))  # hood folded around the neck
    poly(torso, upper)
    for side in (-1, 1):
        ellipse(side * (sw - 0.02), y_sh + 0.02, 0.035, 0.03, upper)
    if view == "front":
        if a.upper_type == "shirt":
            poly([(-0.035, y_sh - 0.01), (0.0, y_sh + 0.045), (0.035, y_sh - 0.01)], _shade(upper, 1.25))
            line((0, y_sh + 0.05), (0, y_end - 0.02), 0.008, _shade(upper, 0.7))
        elif a.upper_type in ("jacket", "coat"):
            line((0, y_sh + 0.01), (0, y_end - 0.01), 0.014, _shade(upper, 0.6))
            if a.upper_type == "coat":
                for yb in (0.27, 0.37, 0.47):
                    ellipse(0.03, yb, 0.008, 0.008, _shade(upper, 0.5))
        elif a.upper_type == "hoodie":
            poly([(-0.06, 0.4), (0.06, 0.4), (0.07, 0.5), (-0.07, 0.5)], _shade(upper, 0.8))
        elif a.upper_type == "t-shirt":
            poly([(-0.03, y_sh - 0.005), (0.0, y_sh + 0.025), (0.03, y_sh - 0.005)], skin)
    if a.upper_type == "sweater":
        poly([(-hw - 0.005, y_end - 0.03), (hw + 0.005, y_end - 0.03), (hw + 0.005, y_end), (-hw - 0.005, y_end)],
             _shade(upper, 0.75))

    # -- arms --
    long_sleeves = a.upper_type != "t-shirt"
    for sh, elbow, wrist in arms:
        if long_sleeves:
            line(sh, elbow, 0.05, upper)
            line(elbow, wrist, 0.045, upper)
        else:
            mid = (sh[0] + 0.55 * (elbow[0] - sh[0]), sh[1] + 0.55 * (elbow[1] - sh[1]))
            line(mid, elbow, 0.04, skin)
            line(elbow, wrist, 0.038, skin)
            line(sh, mid, 0.056, upper)
        ellipse(wrist[0], wrist[1] + 0.012, 0.02, 0.022, skin)

    # -- bags over the body --
    if a.bag_type == "backpack":
        if view == "front":
            for side in (-1, 1):
                line((side * (sw - 0.04), y_sh), (side * (sw - 0.05), 0.4), 0.016, _shade(bagc, 0.8))
        else:
            poly([(-0.085, 0.2), (0.085, 0.2), (0.09, 0.47), (-0.09, 0.47)], bagc)
            line((-0.08, 0.26), (0.08, 0.26), 0.01, _shade(bagc, 0.7))
    elif a.bag_type == "shoulder bag":
        side = 1 if rng.random() < 0.5 else -1
        line((-side * (sw - 0.03), y_sh), (side * (hw + 0.02), 0.47), 0.012, _shade(bagc, 0.8))
        poly([(side * (hw - 0.02), 0.44), (side * (hw + 0.08), 0.44), (side * (hw + 0.08), 0.56),
              (side * (hw - 0.02), 0.56)], bagc)
    elif a.bag_type == "handbag":
        wrist = arms[int(rng.integers(2))][2]
        x, y = wrist[0], wrist[1] + 0.03
        line((x - 0.02, y + 0.005), (x + 0.02, y + 0.005), 0.008, _shade(bagc, 0.7))
        poly([(x - 0.045, y + 0.02), (x + 0.045, y + 0.02), (x + 0.05, y + 0.1), (x - 0.05, y + 0.1)], bagc)

    # -- head, hair, hat, glasses --
    if view == "front":
        if a.hair_length == "long":
            for side in (-1, 1):  # strands falling over the shoulders
                poly([(side * 0.04, 0.06), (side * 0.072, 0.06), (side * 0.085, 0.26), (side * 0.05, 0.24)], hair)
        ellipse(0, 0.068, 0.06, 0.066, hair)
        ellipse(0, 0.086, 0.05, 0.058, skin)
        if a.glasses == "none":
            for side in (-1, 1):
                ellipse(side * 0.02, 0.08, 0.006, 0.005, (40, 30, 30))
        else:
            dark = a.glasses == "sunglasses"
            for side in (-1, 1):
                ellipse(side * 0.022, 0.08, 0.017, 0.012, (15, 15, 20) if dark else None,
                        outline=(20, 20, 25), width=max(1, int(fh * 0.006)))
            line((-0.006, 0.079), (0.006, 0.079), 0.005, (20, 20, 25))
    else:
        ellipse(0, 0.07, 0.058, 0.068, hair)
    if a.hat_type == "cap":
        x0, y0 = P(-0.062, 0.0)
        x1, y1 = P(0.062, 0.1)
        d.chord((x0, y0, x1, y1), 180, 360, fill=hatc)
        if view == "front":
            line((-0.07, 0.05), (0.07, 0.05), 0.016, _shade(hatc, 0.75))
    elif a.hat_type == "beanie":
        x0, y0 = P(-0.064, -0.012)
        x1, y1 = P(0.064, 0.11)
        d.chord((x0, y0, x1, y1), 170, 370, fill=hatc)
        line((-0.062, 0.045), (0.062, 0.045), 0.02, _shade(hatc, 0.8))

    # -- occlusion: a pole, an object in front of the legs, or a passer-by at the side --
    occluder = None
    if rng.random() < 0.25:
        occluder = _pick(rng, ("pole", "box", "passer-by"))
        c = tuple(int(v) for v in rng.uniform(30, 200, 3))
        if occluder == "pole":
            x = cx + float(rng.uniform(-0.15, 0.15)) * fh
            half = float(rng.uniform(0.02, 0.045)) * fh
            d.rectangle((x - half, 0, x + half, h), fill=c)
        elif occluder == "box":
            y = top + fh * float(rng.uniform(0.7, 0.85))
            x0 = cx + float(rng.uniform(-0.5, 0.0)) * fh
            d.rectangle((x0, y, x0 + float(rng.uniform(0.25, 0.6)) * fh, h), fill=c)
        else:
            side = 1 if rng.random() < 0.5 else -1
            x = cx + side * float(rng.uniform(0.22, 0.3)) * fh
            r = 0.14 * fh
            d.ellipse((x - r, top + 0.25 * fh, x + r, top + 1.1 * fh), fill=c)

    # -- downsample (anti-aliasing), lighting, sensor noise, flip --
    img = img.resize((W, H), Image.Resampling.BOX)
    arr = np.asarray(img, dtype=np.float32)
    brightness = float(rng.uniform(0.7, 1.2))
    tint = rng.uniform(0.92, 1.08, 3).astype(np.float32)
    ramp = np.linspace(-1.0, 1.0, W, dtype=np.float32)[None, :, None] * float(rng.uniform(-0.15, 0.15))
    arr = arr * brightness * tint * (1.0 + ramp)
    arr = arr + rng.normal(0.0, float(rng.uniform(1.5, 5.0)), arr.shape).astype(np.float32)
    img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    flipped = bool(rng.random() < 0.5)
    if flipped:
        img = ImageOps.mirror(img)
    return img, {"view": view, "flipped": flipped, "occluder": occluder}


# ----------------------------------------------------------------------------------------------
# Ambiguity
# ----------------------------------------------------------------------------------------------


def caption_ambiguity(identities: Sequence[PersonAttributes], mentions: Sequence[dict[str, str]]) -> dict[str, float]:
    """How many identities each caption fits.

    A caption *fits* an identity when every attribute value it mentions equals the identity's.

    Args:
        identities: the N identities of one split.
        mentions: C dicts field -> value (what each caption of the split mentions).

    Returns:
        ``fraction_ambiguous``: share of captions fitting more than one identity;
        ``mean_matches`` / ``median_matches``: identities fitted per caption.
    """
    if not identities or not mentions:
        raise ValueError("caption_ambiguity needs at least one identity and one caption")
    index = {f.name: {v: i for i, v in enumerate(f.values)} for f in SCHEMA}
    codes = np.array([[index[f][getattr(a, f)] for f in FIELD_NAMES] for a in identities])  # [N, F]
    wanted = np.full((len(mentions), len(FIELD_NAMES)), -1)  # [C, F], -1 = not mentioned
    for c, m in enumerate(mentions):
        for f, v in m.items():
            if f not in index or v not in index[f]:
                raise ValueError(f"mention {f}={v!r} of caption {c} is not in the schema")
            wanted[c, FIELD_NAMES.index(f)] = index[f][v]
    fits = ((wanted[:, None, :] < 0) | (wanted[:, None, :] == codes[None, :, :])).all(-1)  # [C, N]
    n = fits.sum(1)
    if (n == 0).any():
        raise ValueError("a caption fits no identity of its split (a mention is false)")
    return {"fraction_ambiguous": float((n > 1).mean()), "mean_matches": float(n.mean()),
            "median_matches": float(np.median(n))}


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

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
    from tqdm.auto import tqdm

    from .text import train_wordpiece

    p = _resolve_preset(preset)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    out = Path(out_dir)
    fp = _fingerprint(p, seed)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    ours = (out / _MARKER).exists() or (out / _PROGRESS).exists()
    if overwrite and ours:
        for f in _OUTPUTS + (_MARKER, _PROGRESS):
            (out / f).unlink(missing_ok=True)
        shutil.rmtree(out / "imgs", ignore_errors=True)
    elif _is_complete(out, fp):
        return out
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
    (out / _MARKER).unlink(missing_ok=True)
    _atomic_write(out / _PROGRESS, _json_bytes(fp))

    # -- identities: sequential draws (variants refer back to earlier identities of the split) --
    rng = np.random.default_rng([seed, 0])
    splits = (("train", p.num_train_ids), ("val", p.num_val_ids), ("test", p.num_test_ids))
    seen: set[tuple[str, ...]] = set()
    identities: list[tuple[int, str, PersonAttributes]] = []  # (1-based id, split, attributes)
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

    # -- images and captions: one random stream per (identity, image) --
    plan = []
    for pid, split, attrs in identities:
        r = np.random.default_rng([seed, 1, pid])
        plan.append((pid, split, attrs, _sample_traits(r), int(r.integers(p.min_images, p.max_images + 1))))
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
                            "processed_tokens": [_processed_tokens(c) for c in caps], "id": pid})
            image_meta.append({"file_path": rel, "id": pid, **nuisance, "mentions": list(ments)})
            if k == 0 and pid in sheet_ids:
                sheet_cells.append((img, caps[0]))
            bar.update(1)
    bar.close()

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

    by_split = {s: [a for _, sp, a in identities if sp == s] for s, _ in splits}
    ments_by_split = {s: [m for im, e in zip(image_meta, entries) if e["split"] == s for m in im["mentions"]]
                      for s, _ in splits}
    ambiguity = {s: caption_ambiguity(by_split[s], ments_by_split[s]) for s, _ in splits}
    ceiling = {s: bayes_ceiling(attributes_doc["fields"], attributes_doc["identities"], image_meta, s)
               for s, _ in splits}
    words = [len(_processed_tokens(c)) for e in entries for c in e["captions"]]
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
        "tokenizer_vocab_size": len(tok),
        "attribute_counts": {f: dict(sorted(Counter(getattr(a, f) for *_, a in identities).items()))
                             for f in FIELD_NAMES},
        "files": {"annotations": "reid_raw.json", "images": "imgs/", "attributes": "synth_attributes.json",
                  "tokenizer": "tokenizer.json", "contact_sheet": "contact_sheet.png"},
    }
    _atomic_write(out / "dataset_card.json", _json_bytes(card, indent=2))
    _atomic_write(out / "dataset_card.md", _card_markdown(card).encode("utf-8"))
    _atomic_write(out / "contact_sheet.png", _png_bytes(_contact_sheet(sheet_cells)))
    _atomic_write(out / _MARKER, _json_bytes({"fingerprint": fp, "images": [e["file_path"] for e in entries]}))
    (out / _PROGRESS).unlink(missing_ok=True)
    return out

