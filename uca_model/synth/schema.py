"""SynthPedes identities: the attribute schema (fields, values, conditional frequencies), sampling an
identity and its variants (an identity that differs from another in a few attributes)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np


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


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]
