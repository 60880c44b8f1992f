"""What a free-text description says in SynthPedes' attributes: the inverse of the caption grammar.

:func:`mentions_of_text` reads a description ("a woman in a red coat with a black backpack") and
returns the attribute values it states, in the form the generator records for its own captions
(``{"gender": "female", "upper_type": "coat", "upper_colour": "red", "bag_type": "backpack",
"bag_colour": "black"}``), so that ``uca search`` can tell which gallery identities fit everything
a query says (:mod:`uca_model.fitting`). It knows the grammar's vocabulary (every synonym of
:mod:`uca_model.synth.captions`) and reads every caption the generator writes back to exactly its
recorded mentions (tested); words it does not know are ignored.
"""

from __future__ import annotations

import re

from . import captions as C
from .schema import COLOURS, HAIR_RGB

__all__ = ["mentions_of_text"]


def _phrases() -> dict[tuple[str, ...], tuple[str, str | None]]:
    """Token sequence -> (kind, value): nouns of each facet, colour and hair words, negations."""
    table: dict[tuple[str, ...], tuple[str, str | None]] = {}

    def add(words, kind, value):
        for w in words:
            table[tuple(w.lower().split())] = (kind, value)

    for value, words in C._UPPER_WORDS.items():
        add(words, "upper", value)
    add(C._UPPER_GENERIC, "upper", None)
    for value, words in C._LOWER_WORDS.items():
        add(words, "lower", value)
    add(C._LOWER_GENERIC, "lower", None)
    add(C._SHOE_WORDS, "shoe", None)
    for value, words in C._BAG_WORDS.items():
        add(words, "bag", value)
    add(("bag",), "bag", None)
    for value, words in C._HAT_WORDS.items():
        add(words, "hat", value)
    add(("hat",), "hat", None)
    for value, words in C._GLASSES_WORDS.items():
        add(words, "glasses", value)
    add(("hair",), "hair", None)
    for gender, words in C._SUBJECTS.items():
        add(words, "subject", gender)
    add(("he", "his", "him"), "subject", "male")
    add(("she", "her"), "subject", "female")
    for value, words in C._HAIR_LENGTH_WORDS.items():
        add(words, "length", value)
    for colour in COLOURS:
        add(C._COLOUR_WORDS.get(colour, (colour,)), "colour", colour)
    return table


_TABLE = _phrases()
_LONGEST = max(len(k) for k in _TABLE)
_HAIR_COLOURS = {w: c for c, words in C._HAIR_COLOUR_WORDS.items() for w in words}
_HAIR_COLOURS.update({c: c for c in HAIR_RGB})
_SEPARATORS = {",", ".", "and", "with", "wearing", "carrying", "holding", "while", "also"}


def _tokens(text: str) -> list[tuple[str, str | None, str]]:
    """(kind, value, word) per phrase, longest match first; unknown words as ("word", None, w)."""
    words = re.findall(r"[a-z]+(?:-[a-z]+)*|[,.]", text.lower())
    out, i = [], 0
    while i < len(words):
        for n in range(min(_LONGEST, len(words) - i), 0, -1):
            key = tuple(words[i:i + n])
            if key in _TABLE:
                out.append((*_TABLE[key], " ".join(key)))
                i += n
                break
        else:
            out.append(("word", None, words[i]))
            i += 1
    return out


def _set_item(m: dict, facet: str, value, colour) -> None:
    if value is not None:
        m[f"{facet}_type"] = value
    if colour is not None:
        m[f"{facet}_colour"] = colour


def mentions_of_text(text: str) -> dict[str, str]:
    """The SynthPedes attribute values ``text`` states (field name -> value); empty if none.

    A colour (or a hair length) applies to the next garment, item or hair noun ("a red coat", "a
    pair of blue jeans"), or to the noun just before it after "in" ("a t-shirt in red"); "hair is
    long brown" and "no bag" / "nothing in her hands" / "no hat" / "nothing on his head" /
    "no glasses" are read as the grammar writes them.
    """
    toks = _tokens(text)
    m: dict[str, str] = {}
    pending: list[tuple[str, str]] = []  # (kind, word) of colours / lengths waiting for their noun
    for i, (kind, value, word) in enumerate(toks):
        prev = toks[i - 1][2] if i else ""
        if kind in ("colour", "length") or (kind == "word" and word in _HAIR_COLOURS):
            after_in = i >= 2 and prev == "in" and toks[i - 2][0] in ("upper", "lower", "shoe", "bag", "hat")
            nxt = toks[i + 1][0] if i + 1 < len(toks) else "end"
            if after_in and nxt not in ("upper", "lower", "shoe", "bag", "hat", "hair", "colour"):
                k, v, _ = toks[i - 2]
                _set_item(m, {"shoe": "shoe"}.get(k, k), v if k != "shoe" else None, value)
                continue
            pending.append((kind, word))
            continue
        if kind == "word" and word in _SEPARATORS and not (word == "and" and pending):
            pending = []
            continue
        if kind == "subject":
            if value is not None:
                m["gender"] = value
            pending = []
        elif kind == "hair":
            descr = list(pending)
            if i + 1 < len(toks) and toks[i + 1][2] == "is":  # "her hair is long brown"
                for k2, _, w2 in toks[i + 2:]:  # the words right after "is", up to the first other word
                    if not (k2 in ("colour", "length") or w2 in _HAIR_COLOURS):
                        break
                    descr.append((k2, w2))
            for k2, w2 in descr:
                if k2 == "length":
                    m["hair_length"] = _TABLE[(w2,)][1] if (w2,) in _TABLE else _TABLE[tuple(w2.split())][1]
                elif w2 in _HAIR_COLOURS:
                    m["hair_colour"] = _HAIR_COLOURS[w2]
            pending = []
        elif kind in ("upper", "lower", "shoe", "bag", "hat", "glasses"):
            colours = [_TABLE[tuple(w.split())][1] for k, w in pending if k == "colour"]
            colour = colours[-1] if colours else None
            if prev == "no" and value is None and kind in ("bag", "hat"):
                m[f"{kind}_type"] = "none"
            elif kind == "glasses":
                m["glasses"] = "none" if prev == "no" else value
            elif kind == "shoe":
                if colour is not None:
                    m["shoe_colour"] = colour
            else:
                _set_item(m, kind, value, colour)
            pending = []
        elif word == "nothing" and i + 3 < len(toks) and toks[i + 1][2] in ("in", "on"):
            target = toks[i + 3][2]
            if target == "hands":
                m["bag_type"] = "none"
            elif target == "head":
                m["hat_type"] = "none"
    return m
