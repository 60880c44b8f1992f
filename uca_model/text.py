"""Tokenisation and uncertainty-aware attribute masking (the input side of UA-AMLR).

- :func:`train_wordpiece` trains a small WordPiece tokenizer on training captions with the
  ``tokenizers`` library and saves it as one ``tokenizer.json`` (SynthPedes writes it beside the
  data); :func:`load_tokenizer` turns that file -- or a local CLIP tokenizer folder for real runs --
  into a ``transformers`` fast tokenizer.
- :func:`encode` batches captions into fixed-length ``input_ids`` / ``attention_mask``.
- :class:`AttributeMasker` masks the *attribute words* of each caption (colours, garments, hair,
  footwear, bags, accessories; :data:`ATTRIBUTE_VOCAB`), whole words at a time, mapped to token
  positions through the tokenizer's character offsets; a caption without attribute words falls back
  to random token masking. Selected tokens follow BERT's 80/10/10 rule ([MASK] / random / kept).
"""

from __future__ import annotations

import json
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

import torch

__all__ = [
    "SPECIAL_TOKENS",
    "ATTRIBUTE_VOCAB",
    "train_wordpiece",
    "load_tokenizer",
    "encode",
    "attribute_spans",
    "vaguer_caption",
    "AttributeMasker",
]

#: special tokens of the WordPiece tokenizer, in id order (pad = 0)
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: mask token added to CLIP tokenizers (CLIP has none; IRRA uses the same string)
CLIP_MASK_TOKEN = "<|mask|>"

# Characters always present in the WordPiece vocabulary, as word starts and as "##" continuations,
# so that an unseen word is split into known pieces instead of becoming [UNK].
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def _plurals(*words: str) -> tuple[str, ...]:
    out: list[str] = []
    for w in words:
        out.append(w)
        out.append(w + "es" if w.endswith(("s", "sh", "ch", "x")) else w + "s")
    return tuple(out)


#: Curated attribute vocabulary: category -> words and phrases (lower case; plurals and synonyms
#: included). Matching is case-insensitive on whole words; multi-word phrases ("shoulder bag",
#: "t-shirt", "dark blue") are one masking unit, and longer phrases win over their parts.
ATTRIBUTE_VOCAB: dict[str, tuple[str, ...]] = {
    "colour": (
        "black", "white", "grey", "gray", "red", "blue", "green", "yellow", "brown", "pink", "purple",
        "violet", "orange", "beige", "khaki", "navy", "tan", "maroon", "cream", "gold", "golden",
        "silver", "teal", "turquoise", "olive", "burgundy", "colorful", "colourful", "striped",
        "plaid", "checkered", "floral", "denim", "dark", "light", "bright", "pale",
        "dark blue", "light blue", "navy blue", "dark green", "light green", "dark grey", "dark gray",
        "light grey", "light gray", "dark brown", "light brown", "bright red", "dark red",
        "jet-black", "dark black",
    ),
    "upper": _plurals(
        "shirt", "t-shirt", "tshirt", "tee", "top", "blouse", "jacket", "coat", "overcoat", "sweater",
        "jumper", "pullover", "hoodie", "sweatshirt", "cardigan", "vest", "polo", "tank top",
        "windbreaker", "parka", "blazer", "suit", "uniform", "dress", "upper garment",
    ) + ("tee shirt", "t shirt", "tee shirts", "button-up shirt", "collared shirt", "long-sleeved shirt",
         "short-sleeved shirt", "zip-up jacket", "hooded sweatshirt", "long coat", "sleeves", "sleeve",
         "long sleeves", "short sleeves", "sleeveless"),
    "lower": _plurals("skirt", "knee-length skirt", "legging", "lower garment") + (
        "pants", "trousers", "jeans", "denim jeans", "shorts", "slacks", "leggings", "capris", "bottoms",
        "sweatpants", "joggers", "khakis"),
    "hair": (
        "hair", "hairs", "haired", "ponytail", "ponytails", "bun", "braid", "braids", "bangs", "curly",
        "wavy", "straight", "bald", "blonde", "blond", "brunette", "ginger", "auburn", "fair",
        "long", "short", "cropped", "short-cut", "shoulder-length", "long flowing", "flowing",
    ),
    "footwear": _plurals("shoe", "sneaker", "boot", "sandal", "heel", "trainer", "slipper", "loafer") + (
        "footwear", "high heels", "flip flops", "flip-flops"),
    "bag": _plurals(
        "bag", "backpack", "rucksack", "knapsack", "handbag", "purse", "satchel", "shoulder bag",
        "messenger bag", "crossbody bag", "tote", "tote bag", "suitcase", "briefcase", "luggage",
        "plastic bag", "shopping bag"),
    "accessory": _plurals(
        "hat", "cap", "baseball cap", "beanie", "knit hat", "woolly hat", "helmet", "hood", "scarf",
        "umbrella", "watch", "belt", "glove", "mask", "necklace", "bracelet", "earring", "headphone",
        "headband") + ("glasses", "sunglasses", "eyeglasses", "spectacles", "shades", "dark sunglasses",
                       "gloves"),
}

_SPAN_RE = re.compile(
    r"(?<!\w)(?:"
    + "|".join(
        re.escape(w).replace(r"\ ", r"[\s-]+")  # a phrase may be spaced or hyphenated
        for w in sorted({w for ws in ATTRIBUTE_VOCAB.values() for w in ws}, key=lambda w: (-len(w), w))
    )
    + r")(?!\w)",
    re.IGNORECASE,
)


def attribute_spans(caption: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the attribute words/phrases of ``caption`` (the masking
    units), left to right, non-overlapping, longest phrase first at each position."""
    return [m.span() for m in _SPAN_RE.finditer(caption)]


_COLOUR_RE = re.compile(
    r"(?:\s+in)?\s+(?:"  # "a shirt in red" -> "a shirt"; "a red shirt" -> "a shirt"
    + "|".join(re.escape(w).replace(r"\ ", r"[\s-]+")
               for w in sorted(ATTRIBUTE_VOCAB["colour"], key=lambda w: (-len(w), w)))
    + r")(?:[\s-]+colou?red)?(?!\w)",
    re.IGNORECASE,
)


def vaguer_caption(caption: str, generator: torch.Generator, drop_rate: float = 0.5) -> str:
    """``caption`` with some of its colour words left out: a caption that says less about the same
    person ("a red backpack" -> "a backpack"), still fluent, for the caption inclusion term
    (:mod:`uca_model.terms`). ``max(1, round(drop_rate * n))`` of its n colour mentions (with an "in"
    before or a "colored" after them) are dropped, chosen with ``generator``; a caption without a
    colour word comes back unchanged."""
    if not 0.0 < drop_rate <= 1.0:
        raise ValueError(f"drop_rate must be in (0, 1], got {drop_rate}")
    spans = [m.span() for m in _COLOUR_RE.finditer(caption)]
    if not spans:
        return caption
    k = max(1, round(drop_rate * len(spans)))
    drop = sorted(torch.randperm(len(spans), generator=generator)[:k].tolist())
    out, at = [], 0
    for i in drop:
        s, e = spans[i]
        out.append(caption[at:s])
        at = e
    out.append(caption[at:])
    return "".join(out)


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------


def _wordpiece_fast(tokenizer_file: str | os.PathLike):
    from transformers import PreTrainedTokenizerFast

    pad, unk, cls, sep, mask = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), pad_token=pad, unk_token=unk,
                                   cls_token=cls, sep_token=sep, mask_token=mask, model_max_length=512)


def train_wordpiece(
    captions: Iterable[str],
    out_path: str | os.PathLike,
    vocab_size: int = 2000,
    min_frequency: int = 1,
):
    """Train a lower-casing WordPiece tokenizer on ``captions`` and save it.

    The vocabulary always holds :data:`SPECIAL_TOKENS` (ids 0..4) and every character of the
    captions plus every ASCII letter, digit and punctuation mark, as a word start and as a ``##``
    continuation, so only characters never seen in training can become ``[UNK]``. Sequences are
    wrapped as ``[CLS] ... [SEP]``. Training is deterministic: the same captions give a
    byte-identical file.

    Args:
        captions: training captions (iterated once).
        out_path: a ``.json`` file, or a folder that receives ``tokenizer.json``.
        vocab_size: vocabulary size budget, special tokens and character pieces included (the
            result is smaller when the captions need fewer pieces).
        min_frequency: minimum count for a merge.

    Returns:
        The tokenizer, loaded back with :func:`load_tokenizer`.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    captions = [c for c in captions]
    if not captions:
        raise ValueError("train_wordpiece needs at least one caption")
    bad = [i for i, c in enumerate(captions) if not isinstance(c, str)]
    if bad:
        raise TypeError(f"captions[{bad[0]}] is a {type(captions[bad[0]]).__name__}, expected str")
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    path = Path(out_path)
    if path.suffix != ".json":
        path = path / "tokenizer.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def build(model):
        tok = Tokenizer(model)
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=True, lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        return tok

    tok = build(models.WordPiece(unk_token="[UNK]"))
    # The trainer numbers "##x" continuation pieces in hash-map order, and merge ties are broken by
    # those numbers, so plain training is not reproducible across processes. Declaring every
    # character (start and "##" form) up front fixes all initial ids and makes training deterministic.
    chars = sorted({ch for c in captions for ch in tok.normalizer.normalize_str(c) if not ch.isspace()}
                   | set(_ALPHABET))
    pinned = list(SPECIAL_TOKENS) + ["##" + ch for ch in chars]
    if vocab_size < len(pinned) + len(chars):
        raise ValueError(f"vocab_size={vocab_size} is below the {len(pinned) + len(chars)} special tokens and "
                         "character pieces these captions need")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=pinned, initial_alphabet=chars,
                                        limit_alphabet=len(chars), continuing_subword_prefix="##",
                                        show_progress=False)
    tok.train_from_iterator(captions, trainer=trainer, length=len(captions))
    vocab = dict(sorted(tok.get_vocab().items(), key=lambda kv: kv[1]))
    tok = build(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    data = tok.to_str(pretty=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)
    return _wordpiece_fast(path)


def load_tokenizer(path_or_dir: str | os.PathLike, *, add_mask_token: bool = True):
    """Load a tokenizer for captions, offline.

    Args:
        path_or_dir: a ``tokenizer.json`` written by :func:`train_wordpiece` (or a folder holding
            only that file), or a local Hugging Face tokenizer folder -- e.g. a
            ``clip-vit-base-patch16`` download with ``tokenizer_config.json`` / ``vocab.json`` +
            ``merges.txt``.
        add_mask_token: give a tokenizer without a mask token (CLIP) one, ``<|mask|>``, appended to
            the vocabulary (so ``len(tokenizer)`` grows by one; size the embedding with it).

    Returns:
        A ``transformers`` fast tokenizer (``PreTrainedTokenizerFast`` / ``CLIPTokenizer``).
    """
    path = Path(path_or_dir)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer path {str(path)!r} does not exist")
    if path.is_file():
        if path.suffix != ".json":
            raise ValueError(f"{path} is not a tokenizer.json file (expected a .json file or a folder)")
        return _load_json(path)
    hf_files = ("tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")
    if (path / "tokenizer.json").is_file() and not any((path / f).is_file() for f in hf_files):
        return _load_json(path / "tokenizer.json")
    if not any((path / f).is_file() for f in hf_files + ("tokenizer.json",)):
        raise FileNotFoundError(f"{path} holds no tokenizer files (tokenizer.json, tokenizer_config.json, "
                                "or vocab.json + merges.txt)")
    from transformers import AutoTokenizer, CLIPTokenizer

    if (path / "tokenizer_config.json").is_file():
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    else:  # bare CLIP BPE files
        tok = CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
    if add_mask_token and tok.mask_token is None:
        tok.add_special_tokens({"mask_token": CLIP_MASK_TOKEN})
    if tok.pad_token is None:
        raise ValueError(f"tokenizer in {path} has no pad token")
    return tok


def _load_json(path: Path):
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if spec.get("model", {}).get("type") != "WordPiece":
        raise ValueError(f"{path} is not a WordPiece tokenizer.json (model type "
                         f"{spec.get('model', {}).get('type')!r}); pass a Hugging Face tokenizer folder instead")
    return _wordpiece_fast(path)


def _check_captions(captions) -> list[str]:
    if isinstance(captions, str):
        raise TypeError("captions must be a sequence of str, got a single str (wrap it in a list)")
    captions = list(captions)
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise TypeError(f"captions[{i}] is a {type(c).__name__}, expected str")
    if not captions:
        raise ValueError("captions is empty")
    return captions


def _check_max_len(max_len) -> int:
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 2:
        raise ValueError(f"max_len must be an int >= 2 (room for the start and end tokens), got {max_len!r}")
    return max_len


def encode(tokenizer, captions: Sequence[str], max_len: int) -> dict[str, torch.Tensor]:
    """Tokenise, truncate and pad captions to ``max_len``.

    Returns:
        ``input_ids`` [B, max_len] and ``attention_mask`` [B, max_len] (1 on real tokens), LongTensors.
        A truncated caption keeps its end token (``[SEP]`` / ``<|endoftext|>``) in the last slot.
    """
    captions = _check_captions(captions)
    max_len = _check_max_len(max_len)
    enc = tokenizer(captions, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}


# ----------------------------------------------------------------------------------------------
# Attribute masking
# ----------------------------------------------------------------------------------------------


class AttributeMasker:
    """Whole-word attribute masking for masked language reconstruction.

    For each caption, the attribute words/phrases (:func:`attribute_spans`) that survive truncation
    are the masking units; ``max(1, round(mask_rate * n_units))`` of them are chosen uniformly. A
    caption with no attribute word falls back to ``max(1, round(fallback_rate * n_tokens))`` random
    ordinary tokens (never [CLS]/[SEP]/padding). Each chosen unit -- every token of it together -- is
    replaced by the mask token with probability ``mask_prob`` (0.8), by random ordinary tokens with
    probability ``random_prob`` (0.1), and kept otherwise; its labels are the original ids.

    Args:
        tokenizer: a fast ``transformers`` tokenizer with a mask token (offsets are needed).
        mask_rate: share of attribute units masked per caption, in (0, 1].
        fallback_rate: share of tokens masked when a caption has no attribute word, in (0, 1].
        ignore_index: label of every position that is not masked.
        mask_prob, random_prob: the 80/10/10 split (the rest is kept unchanged).
        attributes: False masks every caption as one without attribute words (random
            ``fallback_rate`` of its tokens): BERT / IRRA-style random masking, for the control.
    """

    def __init__(self, tokenizer, mask_rate: float = 0.5, fallback_rate: float = 0.15, ignore_index: int = -100,
                 mask_prob: float = 0.8, random_prob: float = 0.1, attributes: bool = True) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError("AttributeMasker needs a fast tokenizer (character offsets); "
                            f"got {type(tokenizer).__name__}")
        if tokenizer.mask_token_id is None:
            raise ValueError("tokenizer has no mask token; load it with load_tokenizer(..., add_mask_token=True)")
        for name, v in (("mask_rate", mask_rate), ("fallback_rate", fallback_rate)):
            if not 0.0 < float(v) <= 1.0:
                raise ValueError(f"{name}={v} is not in (0, 1]")
        if mask_prob < 0 or random_prob < 0 or mask_prob + random_prob > 1:
            raise ValueError(f"mask_prob={mask_prob}, random_prob={random_prob} must be >= 0 and sum to <= 1")
        self.tokenizer = tokenizer
        self.mask_rate = float(mask_rate)
        self.fallback_rate = float(fallback_rate)
        self.ignore_index = int(ignore_index)
        self.mask_prob = float(mask_prob)
        self.random_prob = float(random_prob)
        self.attributes = bool(attributes)

    @cached_property
    def _random_ids(self) -> torch.Tensor:
        special = set(self.tokenizer.all_special_ids)
        ids = torch.tensor([i for i in range(len(self.tokenizer)) if i not in special], dtype=torch.long)
        if ids.numel() == 0:
            raise ValueError("tokenizer vocabulary has no ordinary tokens")
        return ids

    def attribute_units(self, caption: str, offsets: Sequence[tuple[int, int]], special: Sequence[int]) -> list[list[int]]:
        """Token positions of each attribute unit of ``caption`` present in the encoding."""
        units = []
        for s, e in attribute_spans(caption):
            pos = [t for t, (a, b) in enumerate(offsets) if not special[t] and b > a and a < e and b > s]
            if pos:
                units.append(pos)
        return units

    def __call__(self, captions: Sequence[str], max_len: int,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Mask a batch of captions.

        Returns (all [B, max_len] unless noted):
            ``input_ids`` (masked, LongTensor), ``attention_mask`` (LongTensor), ``mlm_labels``
            (original id at masked positions, ``ignore_index`` elsewhere, LongTensor),
            ``clean_ids`` (the unmasked ids, for the contrastive text encoder),
            ``attribute_positions`` (bool: token belongs to an attribute word),
            ``used_fallback`` [B] (bool: the caption had no attribute word in its first max_len tokens).
        """
        captions = _check_captions(captions)
        max_len = _check_max_len(max_len)
        enc = self.tokenizer(captions, padding="max_length", truncation=True, max_length=max_len,
                             return_offsets_mapping=True, return_special_tokens_mask=True)
        clean = torch.tensor(enc["input_ids"], dtype=torch.long)
        attn = torch.tensor(enc["attention_mask"], dtype=torch.long)
        ids = clean.clone()
        labels = torch.full_like(clean, self.ignore_index)
        attr_pos = torch.zeros_like(clean, dtype=torch.bool)
        fallback = torch.zeros(len(captions), dtype=torch.bool)
        rnd = self._random_ids
        for b, caption in enumerate(captions):
            special = [s or not a for s, a in zip(enc["special_tokens_mask"][b], enc["attention_mask"][b])]
            units = self.attribute_units(caption, enc["offset_mapping"][b], special) if self.attributes else []
            for u in units:
                attr_pos[b, u] = True
            if units:
                k = max(1, round(self.mask_rate * len(units)))
            else:
                fallback[b] = True
                units = [[t] for t, s in enumerate(special) if not s]
                if not units:
                    continue
                k = max(1, round(self.fallback_rate * len(units)))
            chosen = torch.randperm(len(units), generator=generator)[:k]
            fate = torch.rand(k, generator=generator)  # one 80/10/10 draw per unit
            for j, f in zip(chosen.tolist(), fate.tolist()):
                pos = torch.tensor(units[j])
                labels[b, pos] = clean[b, pos]
                if f < self.mask_prob:
                    ids[b, pos] = self.tokenizer.mask_token_id
                elif f < self.mask_prob + self.random_prob:
                    ids[b, pos] = rnd[torch.randint(len(rnd), (len(pos),), generator=generator)]
        return {"input_ids": ids, "attention_mask": attn, "mlm_labels": labels, "clean_ids": clean,
                "attribute_positions": attr_pos, "used_fallback": fallback}
