"""SynthPedes: determinism, idempotent and interrupted runs, structure, caption faithfulness, the
ambiguity figure, and that the real CUHK-PEDES reader and the tokenizer load what it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uca_model import synth
from uca_model.data import load_dataset
from uca_model.synth import (
    FIELD_NAMES,
    PRESETS,
    PersonAttributes,
    SynthPreset,
    caption_ambiguity,
    generate_synthpedes,
    make_caption,
    mutate_attributes,
    read_card,
    sample_attributes,
)
from uca_model.text import load_tokenizer

# an even smaller build for the run-control tests
MICRO = SynthPreset("micro", 4, 2, 3, (32, 16), max_images=3, vocab_size=300, contact_sheet_ids=3)


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate_synthpedes(tmp_path_factory.mktemp("tiny") / "ds", "tiny", seed=0, progress=False)


@pytest.fixture(scope="module")
def meta(tiny):
    return json.loads((tiny / "synth_attributes.json").read_text())


def test_same_seed_gives_byte_identical_files(tiny, tmp_path):
    again = generate_synthpedes(tmp_path / "again", "tiny", seed=0, progress=False)
    a, b = files_of(tiny), files_of(again)
    assert a.keys() == b.keys()
    assert {"reid_raw.json", "tokenizer.json", "dataset_card.json", "dataset_card.md", "contact_sheet.png",
            "synth_attributes.json", ".complete.json"} <= a.keys()
    assert sum(k.startswith("imgs/") for k in a) == read_card(tiny)["totals"]["images"]
    assert [k for k in a if a[k] != b[k]] == []


def test_other_seed_gives_other_data(tiny, tmp_path):
    other = generate_synthpedes(tmp_path / "other", MICRO, seed=1, progress=False)
    same = generate_synthpedes(tmp_path / "same", MICRO, seed=0, progress=False)
    assert (other / "reid_raw.json").read_bytes() != (same / "reid_raw.json").read_bytes()


def test_complete_folder_is_not_regenerated(tmp_path, monkeypatch):
    out = generate_synthpedes(tmp_path / "ds", MICRO, seed=0, progress=False)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    def boom(*a, **k):
        raise AssertionError("rendered again")

    monkeypatch.setattr(synth.build, "render_person", boom)
    assert generate_synthpedes(out, MICRO, seed=0, progress=False) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_interrupted_run_is_detected_and_finished(tmp_path, monkeypatch):
    ref = files_of(generate_synthpedes(tmp_path / "ref", MICRO, seed=0, progress=False))

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(synth.build, "_contact_sheet", interrupted)  # dies after images and annotations
        with pytest.raises(KeyboardInterrupt):
            generate_synthpedes(tmp_path / "ds", MICRO, seed=0, progress=False)
    out = tmp_path / "ds"
    assert (out / ".in_progress.json").is_file() and not (out / ".complete.json").exists()
    some_image = next((out / "imgs").rglob("*.png"))
    some_image.unlink()  # as if it had not been written yet
    (some_image.parent / f".{some_image.name}.tmp999").write_bytes(b"partial")  # a write cut short
    generate_synthpedes(out, MICRO, seed=0, progress=False)
    assert files_of(out) == ref


def test_folder_with_other_content_is_refused(tmp_path):
    out = generate_synthpedes(tmp_path / "ds", MICRO, seed=0, progress=False)
    with pytest.raises(ValueError, match="different settings"):
        generate_synthpedes(out, MICRO, seed=5, progress=False)
    regenerated = generate_synthpedes(out, MICRO, seed=5, progress=False, overwrite=True)
    assert read_card(regenerated)["seed"] == 5
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no SynthPedes build"):
        generate_synthpedes(foreign, MICRO, progress=False)
    with pytest.raises(ValueError, match="preset='huge' is not one of"):
        generate_synthpedes(tmp_path / "x", "huge", progress=False)
    with pytest.raises(ValueError, match="max_images=1 < min_images=2"):
        generate_synthpedes(tmp_path / "x", SynthPreset("bad", 2, 1, 1, (32, 16), max_images=1), progress=False)


# -- structure --------------------------------------------------------------------------------


def test_layout_counts_and_images(tiny, meta):
    p = PRESETS["tiny"]
    entries = json.loads((tiny / "reid_raw.json").read_text())
    assert all(set(e) == {"split", "captions", "file_path", "processed_tokens", "id"} for e in entries)
    ids = {s: {e["id"] for e in entries if e["split"] == s} for s in ("train", "val", "test")}
    assert [len(ids[s]) for s in ("train", "val", "test")] == [p.num_train_ids, p.num_val_ids, p.num_test_ids]
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert sorted(ids["train"] | ids["val"] | ids["test"]) == list(range(1, 1 + sum(len(v) for v in ids.values())))
    per_id = np.bincount([e["id"] for e in entries])[1:]
    assert per_id.min() >= p.min_images and per_id.max() <= p.max_images
    for e in entries:
        assert len(e["captions"]) == p.captions_per_image
        assert e["processed_tokens"] == [[w for w in c.lower().replace("-", " ").replace(",", " ").replace(".", " ")
                                          .replace("'", " ").split()] for c in e["captions"]]
    with Image.open(tiny / "imgs" / entries[0]["file_path"]) as im:
        assert im.size == (p.image_size[1], p.image_size[0]) and im.mode == "RGB"
    card = read_card(tiny)
    assert card["totals"] == {"identities": len(per_id), "images": len(entries),
                              "captions": p.captions_per_image * len(entries)}
    with Image.open(tiny / "contact_sheet.png") as im:
        assert im.width >= 3 * 100 and im.height > 100


def test_identities_are_unique_and_some_differ_in_few_attributes(meta):
    attrs = [PersonAttributes(**i["attributes"]) for i in meta["identities"]]
    for a in attrs:
        a.validate()
    assert len({a.key() for a in attrs}) == len(attrs)
    diffs = [sum(x != y for x, y in zip(a.key(), b.key())) for i, a in enumerate(attrs) for b in attrs[:i]]
    assert min(diffs) <= 3  # variants: a few attributes apart
    assert max(diffs) >= 6


def test_every_caption_mention_is_true_and_a_subset(tiny, meta):
    by_id = {i["id"]: i["attributes"] for i in meta["identities"]}
    entries = {e["file_path"]: e for e in json.loads((tiny / "reid_raw.json").read_text())}
    sizes = []
    for im in meta["images"]:
        assert len(im["mentions"]) == len(entries[im["file_path"]]["captions"])
        for m in im["mentions"]:
            assert m and all(by_id[im["id"]][f] == v for f, v in m.items())
            sizes.append(len(m))
    assert max(sizes) < len(FIELD_NAMES) and np.mean(sizes) < 0.7 * len(FIELD_NAMES)
    assert len(set(sizes)) > 2  # different subsets, not one fixed pattern


def test_card_ambiguity_matches_a_brute_force_count(tiny, meta):
    card = read_card(tiny)
    for split in ("train", "val", "test"):
        people = [i["attributes"] for i in meta["identities"] if i["split"] == split]
        split_ids = {i["id"] for i in meta["identities"] if i["split"] == split}
        mentions = [m for im in meta["images"] if im["id"] in split_ids for m in im["mentions"]]
        fits = [sum(all(p[f] == v for f, v in m.items()) for p in people) for m in mentions]
        assert min(fits) >= 1
        assert card["ambiguity"][split]["fraction_ambiguous"] == pytest.approx(np.mean([n > 1 for n in fits]))
        assert card["ambiguity"][split]["mean_matches"] == pytest.approx(np.mean(fits))
    text = (tiny / "dataset_card.md").read_text()
    assert f"{card['ambiguity']['test']['fraction_ambiguous']:.1%} of test captions" in text


def test_caption_ambiguity_by_hand():
    rng = np.random.default_rng(0)
    a = sample_attributes(rng)
    b = PersonAttributes(**{**a.as_dict(), "upper_colour": "red" if a.upper_colour != "red" else "blue"})
    r = caption_ambiguity([a, b], [{"upper_type": a.upper_type}, {"upper_colour": b.upper_colour}])
    assert r == {"fraction_ambiguous": 0.5, "mean_matches": 1.5, "median_matches": 1.5}
    with pytest.raises(ValueError, match="fits no identity"):
        caption_ambiguity([a], [{"upper_colour": b.upper_colour}])
    with pytest.raises(ValueError, match="not in the schema"):
        caption_ambiguity([a], [{"upper_colour": "chartreuse"}])


def test_mutation_changes_a_few_attributes():
    rng = np.random.default_rng(3)
    for _ in range(200):
        a = sample_attributes(rng)
        n = int(rng.integers(1, 4))
        b = mutate_attributes(a, rng, n)
        changed = sum(x != y for x, y in zip(a.key(), b.key()))
        assert 1 <= changed <= 2 * n and b.gender == a.gender  # an item's colour may follow its type


def test_captions_vary_in_form_and_wording():
    rng = np.random.default_rng(0)
    a = sample_attributes(rng)
    caps = {make_caption(a, rng)[0] for _ in range(60)}
    openings = {" ".join(c.split()[:2]) for c in caps}
    assert len(caps) > 50 and len(openings) > 8


# -- the readers and tokenizer on the generated data -----------------------------------------


def test_reader_and_tokenizer_load_synthpedes(tiny):
    ds = load_dataset(tiny, "synthpedes")
    p = PRESETS["tiny"]
    assert ds.num_train_ids == p.num_train_ids and ds.skipped == {}
    vq, vg = ds.eval_split("val")
    tq, tg = ds.eval_split("test")
    assert len({g.pid for g in vg}) == p.num_val_ids and len({g.pid for g in tg}) == p.num_test_ids
    assert len(tq) == p.captions_per_image * len(tg)
    tok = load_tokenizer(tiny / "tokenizer.json")
    ids = tok([q.caption for q in tq])["input_ids"]
    assert all(tok.unk_token_id not in row for row in ids)
    assert read_card(tiny)["tokenizer_vocab_size"] == len(tok)
