"""SynthPedes captions: a grammar that mentions a random subset of an identity's attributes (so a
caption fits several identities), and how ambiguous a split's captions are."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from ..fitting import fitted_counts
from .schema import SCHEMA, PersonAttributes, pick


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


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeio" else "a ") + phrase


def _colour_word(rng: np.random.Generator, colour: str) -> str:
    return pick(rng, _COLOUR_WORDS.get(colour, (colour,)))


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


def _accessory(m: dict[str, str], rng: np.random.Generator, col, kind: str, words: dict, negations: tuple):
    """``(key, phrase)`` of a hat or bag mention: "no hat" (key ``<kind>_neg``), "a red cap", "a cap"
    or "a red hat" (key ``<kind>``), from what the caption mentions of its type and colour."""
    if m.get(f"{kind}_type") == "none":
        return f"{kind}_neg", pick(rng, negations)
    if f"{kind}_type" in m:
        t = pick(rng, words[m[f"{kind}_type"]])
        return kind, _article(f"{col(kind + '_colour')} {t}" if f"{kind}_colour" in m else t)
    return kind, _article(f"{col(kind + '_colour')} {kind}")


def _phrases(m: dict[str, str], a: PersonAttributes, rng: np.random.Generator, pos: str) -> dict[str, str]:
    """Noun phrases (with articles) for every mentioned facet; negatives as full predicates."""
    out: dict[str, str] = {}
    col = lambda k: _colour_word(rng, m[k])  # noqa: E731
    if "upper_type" in m or "upper_colour" in m:
        if "upper_type" in m and "upper_colour" in m:
            t = pick(rng, _UPPER_WORDS[m["upper_type"]])
            out["upper"] = pick(rng, (_article(f"{col('upper_colour')} {t}"), _article(f"{t} in {col('upper_colour')}"),
                                       _article(f"{col('upper_colour')} colored {t}")))
        elif "upper_type" in m:
            out["upper"] = _article(pick(rng, _UPPER_WORDS[m["upper_type"]]))
        else:
            out["upper"] = _article(f"{col('upper_colour')} {pick(rng, _UPPER_GENERIC)}")
    if "lower_type" in m or "lower_colour" in m:
        if "lower_type" in m:
            t = pick(rng, _LOWER_WORDS[m["lower_type"]])
            c = f"{col('lower_colour')} " if "lower_colour" in m else ""
            if m["lower_type"] == "skirt":
                out["lower"] = _article(c + t)
            else:
                out["lower"] = pick(rng, (c + t, f"a pair of {c}{t}"))
        else:
            out["lower"] = f"{col('lower_colour')} {pick(rng, _LOWER_GENERIC)}"
    if "shoe_colour" in m:
        s = pick(rng, _SHOE_WORDS)
        out["shoes"] = pick(rng, (f"{col('shoe_colour')} {s}", f"a pair of {col('shoe_colour')} {s}"))
    if "hat_type" in m or "hat_colour" in m:
        key, out[key] = _accessory(m, rng, col, "hat", _HAT_WORDS, ("no hat", "nothing on {pos} head"))
    if "glasses" in m:
        if m["glasses"] == "none":
            out["glasses_neg"] = "no glasses"
        else:
            g = pick(rng, _GLASSES_WORDS[m["glasses"]])
            out["glasses"] = pick(rng, (g, f"a pair of {g}"))
    if "hair_length" in m or "hair_colour" in m:
        words = []
        if "hair_length" in m:
            words.append(pick(rng, _HAIR_LENGTH_WORDS[m["hair_length"]]))
        if "hair_colour" in m:
            words.append(pick(rng, _HAIR_COLOUR_WORDS[m["hair_colour"]]))
        out["hair"] = " ".join(words) + " hair"
    if "bag_type" in m or "bag_colour" in m:
        key, out[key] = _accessory(m, rng, col, "bag", _BAG_WORDS, ("no bag", "nothing in {pos} hands"))
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
    noun = pick(rng, _SUBJECTS[gender])
    subject = pick(rng, ("a ", "the ", "this ")) + noun
    worn = [ph[k] for k in ("upper", "lower", "shoes", "hat", "glasses") if k in ph]
    order = rng.permutation(len(worn))
    worn = [worn[i] for i in order]
    hair, bag = ph.get("hair"), ph.get("bag")
    negs = [ph[k] for k in ("bag_neg", "hat_neg", "glasses_neg") if k in ph]
    place = pick(rng, _PLACES)
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
        sentences.append(f"{s} {s_be} {pick(rng, ('dressed in', 'wearing', 'clothed in'))} {_join(worn)}")
    elif form == 2:  # "This person has H. They are walking ... . They wear X."
        if hair:
            sentences.append(f"{subject} {s_have} {hair}")
            hair = None
        else:
            sentences.append(f"{subject} {s_be} walking{place}")
        if worn:
            sentences.append(f"{subj_pron} {pick(rng, (wear, f'{be} wearing', f'{have} on'))} {_join(worn)}")
    elif form == 3:  # "Wearing X and Y, the man walks ... ."
        sentences.append(f"wearing {_join(worn)}, {subject} {s_walk}{place or ' forward'}")
    elif form == 4:  # "A lady in X. She has on Y."
        first, rest = worn[:1], worn[1:]
        sentences.append(f"{subject} in {first[0]}" + (f" {s_be} walking{place}" if place else ""))
        if rest:
            sentences.append(f"{subj_pron} also {pick(rng, (wear, f'{have} on'))} {_join(rest)}")
    elif form == 5:  # "The pedestrian is seen in X, Y and Z while carrying B."
        s = f"{subject} {s_be} {pick(rng, ('seen in', 'dressed in', 'wearing'))} {_join(worn)}"
        if bag:
            s += f" while {pick(rng, ('carrying', 'holding'))} {bag}"
            bag = None
        sentences.append(s)
    else:  # "A man: X, Y, H." (attribute-list style)
        items = worn + ([hair] if hair else []) + ([bag] if bag else [])
        hair = bag = None
        sentences.append(f"{subject} with {_join(items)}")
    if hair:
        sentences.append(pick(rng, (f"{subj_pron} {have} {hair}", f"{pos} hair is {ph['hair'].removesuffix(' hair')}")))
    if bag:
        sentences.append(f"{subj_pron} {pick(rng, (carry, f'{be} carrying', f'{have}'))} {bag}")
    if negs:
        sentences.append(f"{subj_pron} {have} {_join(negs)}")
    text = " ".join(s[0].upper() + s[1:] + "." for s in sentences)
    text = re.sub(r"\s+", " ", text).strip()
    return text, m


def processed_tokens(caption: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", caption.lower())






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
    n = fitted_counts({f.name: f.values for f in SCHEMA}, [a.as_dict() for a in identities], mentions)
    if (n == 0).any():
        raise ValueError("a caption fits no identity of its split (a mention is false)")
    return {"fraction_ambiguous": float((n > 1).mean()), "mean_matches": float(n.mean()),
            "median_matches": float(np.median(n))}
