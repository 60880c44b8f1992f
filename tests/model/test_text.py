"""Tokenisation and attribute masking: WordPiece training/loading, a local CLIP tokenizer folder,
tricky captions (punctuation, multi-token words, phrases, truncation), the 80/10/10 rule."""

from __future__ import annotations

import json

import pytest
import torch

from uca_model.text import (
    ATTRIBUTE_VOCAB,
    SPECIAL_TOKENS,
    AttributeMasker,
    attribute_spans,
    encode,
    load_tokenizer,
    train_wordpiece,
)

CAPTIONS = [
    "A man wearing a black jacket, blue jeans and white shoes.",
    "The woman has long blonde hair and carries a red handbag.",
    "A young man in a grey t-shirt and black shorts with a backpack.",
    "She is wearing a pink skirt, a white blouse and sunglasses.",
    "This pedestrian walks along the street in a green coat.",
    "A girl with a ponytail wears a yellow sweater and brown boots.",
    "He has short black hair and wears a cap and glasses.",
    "The person is walking near a building with a shoulder bag.",
] * 3


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_wordpiece(CAPTIONS, tmp_path_factory.mktemp("tok") / "tokenizer.json", vocab_size=300)


def words_of(tok, ids):
    return tok.convert_ids_to_tokens(ids)


# -- tokenizer -------------------------------------------------------------------------------


def test_train_and_load_wordpiece(tmp_path, tok):
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tok.pad_token_id == 0 and tok.mask_token == "[MASK]"
    path = tmp_path / "t"
    t2 = train_wordpiece(CAPTIONS, path, vocab_size=300)  # a folder receives tokenizer.json
    assert (path / "tokenizer.json").is_file()
    for loaded in (load_tokenizer(path), load_tokenizer(path / "tokenizer.json")):
        assert loaded.get_vocab() == t2.get_vocab() == tok.get_vocab()
        assert loaded("A red handbag!")["input_ids"] == tok("A red handbag!")["input_ids"]


def test_unseen_words_split_into_pieces_not_unk(tok):
    ids = tok("Xylophone-shaped UMBRELLA #42?")["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == "xylophone-shapedumbrella#42?"
    # accents are stripped; a character never seen in training is the only [UNK]
    toks = tok.convert_ids_to_tokens(tok("café ☂")["input_ids"])
    assert toks.count("[UNK]") == 1 and toks[-2] == "[UNK]"
    assert "".join(t.removeprefix("##") for t in toks[1:-2]) == "cafe"


def test_training_is_deterministic(tmp_path):
    a = train_wordpiece(CAPTIONS, tmp_path / "a.json", vocab_size=300)
    b = train_wordpiece(CAPTIONS, tmp_path / "b.json", vocab_size=300)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert a.get_vocab() == b.get_vocab()


def test_encode_pads_and_truncates(tok):
    long = "a man wearing " + " and ".join(["a red jacket"] * 20)
    out = encode(tok, ["A man.", long], max_len=12)
    assert out["input_ids"].dtype == torch.long and out["input_ids"].shape == (2, 12)
    assert out["attention_mask"].dtype == torch.long
    assert out["attention_mask"][0].tolist() == [1] * 5 + [0] * 7  # [CLS] a man . [SEP]
    ids = out["input_ids"]
    assert ids[0, 0] == tok.cls_token_id and tok.sep_token_id in ids[0].tolist()
    assert ids[0, 5:].eq(tok.pad_token_id).all()
    assert out["attention_mask"][1].sum() == 12 and ids[1, -1] == tok.sep_token_id  # end token kept


def test_encode_bad_arguments(tok):
    with pytest.raises(TypeError, match="single str"):
        encode(tok, "a caption", 8)
    with pytest.raises(TypeError, match=r"captions\[1\] is a int"):
        encode(tok, ["ok", 3], 8)
    with pytest.raises(ValueError, match="max_len"):
        encode(tok, ["ok"], 1)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no tokenizer files"):
        load_tokenizer(tmp_path / "empty")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        load_tokenizer(bad)
    bpe = tmp_path / "bpe.json"
    bpe.write_text(json.dumps({"model": {"type": "BPE"}}))
    with pytest.raises(ValueError, match="not a WordPiece"):
        load_tokenizer(bpe)


def _tiny_clip_folder(path):
    """vocab.json + merges.txt of a byte-level BPE in CLIP's format (no network, no weights)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    merges = [("b", "l"), ("bl", "u"), ("blu", "e</w>"), ("s", "h"), ("sh", "i"), ("shi", "r"), ("shir", "t</w>")]
    vocab += [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    path.mkdir()
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return len(vocab)


def test_clip_tokenizer_from_local_folder(tmp_path):
    n = _tiny_clip_folder(tmp_path / "clip")
    tok = load_tokenizer(tmp_path / "clip")
    assert type(tok).__name__.startswith("CLIPTokenizer")
    assert tok.mask_token == "<|mask|>" and len(tok) == n + 1  # mask token appended
    out = encode(tok, ["A blue shirt!"], max_len=10)
    toks = tok.convert_ids_to_tokens(out["input_ids"][0])
    assert toks[:6] == ["<|startoftext|>", "a</w>", "blue</w>", "shirt</w>", "!</w>", "<|endoftext|>"]
    assert out["attention_mask"][0].sum() == 6
    masker = AttributeMasker(tok, mask_rate=1.0, mask_prob=1.0, random_prob=0.0)
    m = masker(["A blue shirt!"], max_len=10)
    assert m["attribute_positions"][0].nonzero().flatten().tolist() == [2, 3]
    assert (m["input_ids"][0, 2:4] == tok.mask_token_id).all()
    # a saved folder (tokenizer_config.json) loads through AutoTokenizer, keeping the mask token
    tok.save_pretrained(tmp_path / "saved")
    again = load_tokenizer(tmp_path / "saved")
    assert again.mask_token_id == tok.mask_token_id and len(again) == len(tok)


# -- attribute spans -------------------------------------------------------------------------


@pytest.mark.parametrize("caption, expected", [
    ("A woman in a T-shirt, light-blue jeans and white sneakers.",
     ["T-shirt", "light-blue", "jeans", "white", "sneakers"]),
    ("He wears shorts (dark blue) and carries a shoulder bag!", ["shorts", "dark blue", "shoulder bag"]),
    ("Short hair; BLACK backpack... no hat?", ["Short", "hair", "BLACK", "backpack", "hat"]),
    ("Red-and-white striped shirts, two bags", ["Red", "white", "striped", "shirts", "bags"]),
    ("A man walking down the street.", []),
    ("a hatter with a capable shoelace", []),  # attribute words inside other words do not count
])
def test_attribute_spans(caption, expected):
    assert [caption[s:e] for s, e in attribute_spans(caption)] == expected


def test_vocabulary_has_the_curated_categories():
    assert {"colour", "upper", "lower", "hair", "footwear", "bag", "accessory"} <= set(ATTRIBUTE_VOCAB)
    words = {w for ws in ATTRIBUTE_VOCAB.values() for w in ws}
    assert {"gray", "grey", "sneakers", "backpacks", "sunglasses", "t-shirt", "trousers"} <= words


# -- masking ---------------------------------------------------------------------------------


def _labelled(m, b):
    return (m["mlm_labels"][b] != -100).nonzero().flatten().tolist()


def test_mask_only_attribute_words_with_whole_word_units(tok):
    cap = "A man in a sweatshirt, a t-shirt and blue jeans."
    enc = tok(cap, return_offsets_mapping=True)
    toks = tok.convert_ids_to_tokens(enc["input_ids"])
    assert sum(t.startswith("##") for t in toks) >= 1  # "sweatshirt" is split into pieces
    masker = AttributeMasker(tok, mask_rate=1.0, mask_prob=1.0, random_prob=0.0)
    m = masker([cap], max_len=32)
    attr = m["attribute_positions"][0].nonzero().flatten().tolist()
    covered = [cap[enc["offset_mapping"][i][0]:enc["offset_mapping"][i][1]] for i in attr]
    assert "".join(covered) == "sweatshirtt-shirtbluejeans"  # all pieces of each word, nothing else
    assert len(covered) > 4  # multi-token words: more tokens than words
    assert _labelled(m, 0) == attr  # every attribute token masked, nothing else
    assert (m["input_ids"][0, attr] == tok.mask_token_id).all()
    assert torch.equal(m["mlm_labels"][0, attr], m["clean_ids"][0, attr])
    keep = m["attention_mask"][0].bool().clone()
    keep[attr] = False
    assert torch.equal(m["input_ids"][0][keep], m["clean_ids"][0][keep])
    assert not m["used_fallback"][0]


def test_mask_rate_picks_that_share_of_units(tok):
    cap = "A woman with long hair wears a red coat, black trousers, white shoes and a backpack."
    n_units = len(attribute_spans(cap))
    assert n_units == 9  # long, hair, red, coat, black, trousers, white, shoes, backpack
    for rate in (0.1, 0.3, 0.5, 1.0):
        masker = AttributeMasker(tok, mask_rate=rate)
        m = masker([cap], max_len=40, generator=torch.Generator().manual_seed(0))
        spans = attribute_spans(cap)
        enc = tok(cap, return_offsets_mapping=True)
        labelled = set(_labelled(m, 0))
        chosen = [sp for sp in spans if any(
            i in labelled for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < sp[1] and b > sp[0])]
        assert len(chosen) == max(1, round(rate * n_units))


def test_80_10_10_rule(tok):
    caps = ["a red coat and blue jeans with a black backpack"] * 400
    masker = AttributeMasker(tok, mask_rate=1.0)
    m = masker(caps, max_len=16, generator=torch.Generator().manual_seed(0))
    sel = m["mlm_labels"] != -100
    n = int(sel.sum())
    assert n == 400 * 6
    masked = (m["input_ids"][sel] == tok.mask_token_id).float().mean().item()
    kept = (m["input_ids"][sel] == m["clean_ids"][sel]).float().mean().item()
    assert abs(masked - 0.8) < 0.04 and abs(kept - 0.1) < 0.03  # random replacements: the rest
    special = set(tok.all_special_ids)
    replaced = m["input_ids"][sel][(m["input_ids"][sel] != tok.mask_token_id) & (m["input_ids"][sel] != m["clean_ids"][sel])]
    assert replaced.numel() > 0 and not any(int(t) in special for t in replaced)


def test_fallback_masks_random_ordinary_tokens(tok):
    cap = "The person is walking near a building."
    m = AttributeMasker(tok, fallback_rate=0.15)([cap, cap], max_len=16,
                                                  generator=torch.Generator().manual_seed(3))
    assert m["used_fallback"].tolist() == [True, True]
    n_tokens = len(tok(cap)["input_ids"]) - 2
    for b in range(2):
        lab = _labelled(m, b)
        assert len(lab) == max(1, round(0.15 * n_tokens))
        assert all(0 < i <= n_tokens for i in lab)  # never [CLS], [SEP] or padding
    assert not m["attribute_positions"].any()


def test_truncation_drops_attribute_words_past_max_len(tok):
    cap = "The person is walking near a building with a red backpack."
    n = len(tok(cap)["input_ids"])
    masker = AttributeMasker(tok, mask_rate=1.0)
    full = masker([cap], max_len=n)
    assert not full["used_fallback"][0] and full["attribute_positions"][0].sum() == 2
    cut = masker([cap], max_len=n - 3)  # "red backpack ." fall off; only [SEP] is added back
    assert cut["used_fallback"][0] and not cut["attribute_positions"].any()
    assert cut["input_ids"].shape == (1, n - 3) and cut["clean_ids"][0, -1] == tok.sep_token_id
    half = masker([cap], max_len=n - 2)  # "red" survives, "backpack" does not
    pos = half["attribute_positions"][0].nonzero().flatten().tolist()
    assert tok.convert_ids_to_tokens(half["clean_ids"][0, pos].tolist()) == ["red"]


def test_masking_is_reproducible_with_a_generator(tok):
    masker = AttributeMasker(tok)
    a = masker(CAPTIONS, 24, generator=torch.Generator().manual_seed(7))
    b = masker(CAPTIONS, 24, generator=torch.Generator().manual_seed(7))
    c = masker(CAPTIONS, 24, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["mlm_labels"], c["mlm_labels"])
    m = AttributeMasker(tok, ignore_index=-1)(["a red coat"], 8)
    assert set(m["mlm_labels"][0].tolist()) - {-1} and (m["mlm_labels"] >= -1).all()


def test_masker_bad_arguments(tok):
    with pytest.raises(ValueError, match="mask_rate"):
        AttributeMasker(tok, mask_rate=0.0)
    with pytest.raises(ValueError, match="fallback_rate"):
        AttributeMasker(tok, fallback_rate=1.5)
    with pytest.raises(ValueError, match="mask_prob"):
        AttributeMasker(tok, mask_prob=0.95, random_prob=0.1)
    with pytest.raises(TypeError, match="fast tokenizer"):
        AttributeMasker(object())


def test_random_masking_ignores_attribute_words(tok):
    """attributes=False (the UCA-randommask control): a caption full of attribute words is masked as
    one without any, random 15 % of its ordinary tokens."""
    cap = "She is wearing a pink skirt, a white blouse and sunglasses."
    m = AttributeMasker(tok, attributes=False, fallback_rate=0.15)([cap] * 4, max_len=24,
                                                                   generator=torch.Generator().manual_seed(5))
    n_tokens = len(tok(cap)["input_ids"]) - 2
    assert m["used_fallback"].all() and not m["attribute_positions"].any()
    chosen = set()
    for b in range(4):
        lab = _labelled(m, b)
        assert len(lab) == max(1, round(0.15 * n_tokens)) and all(0 < i <= n_tokens for i in lab)
        chosen.update(lab)
    with_attrs = AttributeMasker(tok)([cap], max_len=24)
    assert not with_attrs["used_fallback"][0] and with_attrs["attribute_positions"].any()
