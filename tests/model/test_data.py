"""Readers for CUHK-PEDES, ICFG-PEDES and RSTPReid on fixture files in their exact formats, the
bad-data rules (error naming file and entry, or counted skips), and the image datasets."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from uca_model.data import (
    CLIP_MEAN,
    CLIP_STD,
    GalleryImageDataset,
    Query,
    TrainImageTextDataset,
    load_dataset,
    load_image,
)

FORMATS = {  # name: (annotation file, path field, splits)
    "cuhk-pedes": ("reid_raw.json", "file_path", ("train", "val", "test")),
    "icfg-pedes": ("ICFG-PEDES.json", "file_path", ("train", "test")),
    "rstpreid": ("data_captions.json", "img_path", ("train", "val", "test")),
}


def _png(path, colour=(200, 30, 30), size=(8, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def make_fixture(root, name, *, n_ids_per_split=3, images_per_id=2, captions_per_image=2):
    """Write a tiny dataset in ``name``'s exact format; returns the entry list."""
    anno, field, splits = FORMATS[name]
    entries = []
    pid = 1 if name != "rstpreid" else 0  # CUHK/ICFG ids are 1-based, RSTPReid's 0-based
    for split in splits:
        for _ in range(n_ids_per_split):
            for k in range(images_per_id):
                rel = f"{split}/{pid:04d}_{k}.jpg" if name != "icfg-pedes" else f"{split}/{pid:04d}/{k}.jpg"
                _png(root / "imgs" / rel, colour=(pid * 20 % 256, k * 80, 100))
                caps = [f"A person {pid} in a red coat, image {k} caption {c}." for c in range(captions_per_image)]
                e = {"split": split, "captions": caps, field: rel, "id": pid}
                if name == "cuhk-pedes":
                    e["processed_tokens"] = [c.lower().split() for c in caps]
                entries.append(e)
            pid += 1
    (root / anno).write_text(json.dumps(entries))
    return entries


def write(root, name, entries):
    (root / FORMATS[name][0]).write_text(json.dumps(entries))


@pytest.mark.parametrize("name", FORMATS)
def test_reader_on_fixture(tmp_path, name):
    entries = make_fixture(tmp_path, name)
    ds = load_dataset(tmp_path, name)
    assert ds.name == name and ds.root == tmp_path and ds.skipped == {}
    train_entries = [e for e in entries if e["split"] == "train"]
    assert len(ds.train) == sum(len(e["captions"]) for e in train_entries)
    assert ds.num_train_ids == 3 and ds.num_train_images == len(train_entries)
    # pids remapped to 0..n-1 in increasing original id; image ids shared by an image's captions
    assert sorted({s.pid for s in ds.train}) == [0, 1, 2]
    orig = sorted({e["id"] for e in train_entries})
    assert ds.train_id_map == {o: k for k, o in enumerate(orig)}
    field = FORMATS[name][1]
    for s in ds.train:
        e = train_entries[s.image_id]
        assert s.image_path == str(tmp_path / "imgs" / e[field])
        assert s.caption in e["captions"] and s.pid == ds.train_id_map[e["id"]]
    for split in ("val", "test"):
        if split not in FORMATS[name][2]:
            continue
        queries, gallery = ds.eval_split(split)
        es = [e for e in entries if e["split"] == split]
        assert [q.caption for q in queries] == [c for e in es for c in e["captions"]]
        assert [q.pid for q in queries] == [e["id"] for e in es for _ in e["captions"]]  # original ids
        assert [(g.pid, g.image_id) for g in gallery] == [(e["id"], i) for i, e in enumerate(es)]
        assert all(g.image_path.endswith(e[field]) for g, e in zip(gallery, es))
    # splits are disjoint by identity in the fixture and stay so
    test_ids = {q.pid for q in ds.eval_split("test")[0]}
    assert not test_ids & set(orig)


def test_dataset_names_are_case_insensitive_and_checked(tmp_path):
    make_fixture(tmp_path, "cuhk-pedes")
    assert load_dataset(tmp_path, "CUHK-PEDES").name == "cuhk-pedes"
    assert load_dataset(tmp_path, "synthpedes").name == "synthpedes"
    with pytest.raises(ValueError, match="name='market1501' is not one of"):
        load_dataset(tmp_path, "market1501")


def test_icfg_has_no_val_split_unless_held_out(tmp_path):
    make_fixture(tmp_path, "icfg-pedes", n_ids_per_split=5)
    ds = load_dataset(tmp_path, "icfg-pedes")
    with pytest.raises(ValueError, match="icfg-pedes has no val split .*val_from_train"):
        ds.eval_split("val")
    held = load_dataset(tmp_path, "icfg-pedes", val_from_train=2)
    vq, vg = held.eval_split("val")
    val_ids = {g.pid for g in vg}
    assert len(val_ids) == 2 and {q.pid for q in vq} == val_ids
    assert held.num_train_ids == 3 and not val_ids & set(held.train_id_map)
    assert sorted(held.train_id_map.values()) == [0, 1, 2]
    # deterministic rule, and test untouched
    assert {g.pid for g in load_dataset(tmp_path, "icfg-pedes", val_from_train=2).eval_split("val")[1]} == val_ids
    assert held.eval_split("test") == ds.eval_split("test")
    with pytest.raises(ValueError, match="leaves no training identity"):
        load_dataset(tmp_path, "icfg-pedes", val_from_train=5)


def test_val_from_train_refused_when_a_val_split_exists(tmp_path):
    make_fixture(tmp_path, "cuhk-pedes")
    with pytest.raises(ValueError, match="already has a val split"):
        load_dataset(tmp_path, "cuhk-pedes", val_from_train=1)
    with pytest.raises(ValueError, match="split='train' is not an evaluation split"):
        load_dataset(tmp_path, "cuhk-pedes").eval_split("train")


def test_rstpreid_needs_img_path_not_file_path(tmp_path):
    entries = make_fixture(tmp_path, "rstpreid")
    entries[0]["file_path"] = entries[0].pop("img_path")
    write(tmp_path, "rstpreid", entries)
    with pytest.raises(ValueError, match=r"data_captions.json: entry 0 .*missing field\(s\) 'img_path'"):
        load_dataset(tmp_path, "rstpreid")


# -- bad data ----------------------------------------------------------------------------------

# (mutation of entry 1, expected error type, message pattern, skip reason)
BAD_CASES = {
    "missing_image": (lambda root, e, f: (root / "imgs" / e[f]).unlink(), FileNotFoundError,
                      r"entry 1 .*image file .* does not exist", "missing_image"),
    "missing_field": (lambda root, e, f: e.pop("captions"), ValueError,
                      r"entry 1 .*missing field\(s\) 'captions'", "missing_field"),
    "unknown_split": (lambda root, e, f: e.__setitem__("split", "dev"), ValueError,
                      r"entry 1 .*split='dev' is not one of", "unknown_split"),
    "bad_id": (lambda root, e, f: e.__setitem__("id", "seven"), ValueError,
               r"entry 1 .*id='seven' is not a non-negative integer", "bad_value"),
    "captions_not_list": (lambda root, e, f: e.__setitem__("captions", "a man"), ValueError,
                          r"entry 1 .*captions must be a non-empty list", "bad_value"),
}


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_entry_raises_naming_file_and_entry_or_is_skipped(tmp_path, name, case):
    entries = make_fixture(tmp_path, name)
    mutate, exc, pattern, reason = BAD_CASES[case]
    field = FORMATS[name][1]
    mutate(tmp_path, entries[1], field)
    write(tmp_path, name, entries)
    anno = re.escape(str(tmp_path / FORMATS[name][0]))
    with pytest.raises(exc, match=anno + ": " + pattern):
        load_dataset(tmp_path, name)
    with pytest.warns(UserWarning, match=f"skipped 1 bad .*{reason}=1"):
        ds = load_dataset(tmp_path, name, skip_bad=True)
    assert ds.skipped == {reason: 1} and len(ds.skipped_details) == 1
    assert "entry 1" in ds.skipped_details[0]
    good = [e for i, e in enumerate(entries) if i != 1 and e["split"] == "train"]
    assert len(ds.train) == sum(len(e["captions"]) for e in good)  # only entry 1 is gone


@pytest.mark.parametrize("name", FORMATS)
def test_empty_caption(tmp_path, name):
    entries = make_fixture(tmp_path, name)
    entries[2]["captions"][0] = "   "
    write(tmp_path, name, entries)
    with pytest.raises(ValueError, match=r"entry 2 .*captions\[0\] is empty"):
        load_dataset(tmp_path, name)
    with pytest.warns(UserWarning, match="empty_caption=1"):
        ds = load_dataset(tmp_path, name, skip_bad=True)
    assert ds.skipped == {"empty_caption": 1}
    n_train = sum(len(e["captions"]) for e in entries if e["split"] == "train")
    assert len(ds.train) == n_train - 1  # the caption is gone, the image stays
    assert ds.num_train_images == sum(e["split"] == "train" for e in entries)


@pytest.mark.parametrize("name", FORMATS)
def test_malformed_json_is_always_an_error(tmp_path, name):
    make_fixture(tmp_path, name)
    path = tmp_path / FORMATS[name][0]
    path.write_text(path.read_text()[:-10])
    for skip in (False, True):
        with pytest.raises(ValueError, match=re.escape(str(path)) + " is not valid JSON.*line 1"):
            load_dataset(tmp_path, name, skip_bad=skip)


def test_missing_files_and_wrong_shapes(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_dataset(tmp_path / "nope", "cuhk-pedes")
    with pytest.raises(FileNotFoundError, match="reid_raw.json not found"):
        load_dataset(tmp_path, "cuhk-pedes")
    (tmp_path / "reid_raw.json").write_text(json.dumps({"split": "train"}))
    with pytest.raises(ValueError, match="must hold a JSON list of entries, got a JSON dict"):
        load_dataset(tmp_path, "cuhk-pedes")
    (tmp_path / "reid_raw.json").write_text(json.dumps([[1, 2]]))
    (tmp_path / "imgs").mkdir()
    with pytest.raises(ValueError, match="entry 0: is a JSON list, expected an object"):
        load_dataset(tmp_path, "cuhk-pedes")
    with pytest.raises(ValueError, match=r"no usable training entries \(skipped: not_an_object=1\)"):
        load_dataset(tmp_path, "cuhk-pedes", skip_bad=True)


def test_many_bad_entries_are_all_counted(tmp_path):
    entries = make_fixture(tmp_path, "cuhk-pedes")
    entries[0]["split"] = "training"
    entries[3].pop("id")
    (tmp_path / "imgs" / entries[5]["file_path"]).unlink()
    entries[6]["captions"] = ["", "ok caption"]
    write(tmp_path, "cuhk-pedes", entries)
    with pytest.warns(UserWarning, match="skipped 4"):
        ds = load_dataset(tmp_path, "cuhk-pedes", skip_bad=True)
    assert ds.skipped == {"unknown_split": 1, "missing_field": 1, "missing_image": 1, "empty_caption": 1}


def test_no_warning_when_nothing_is_skipped(tmp_path):
    make_fixture(tmp_path, "rstpreid")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_dataset(tmp_path, "rstpreid", skip_bad=True).skipped == {}


# -- image datasets ----------------------------------------------------------------------------


def test_train_dataset_items_and_normalisation(tmp_path):
    make_fixture(tmp_path, "cuhk-pedes")
    ds = load_dataset(tmp_path, "cuhk-pedes")
    data = TrainImageTextDataset(ds.train, image_size=(24, 12))
    pid, image_id, img, caption = data[3]
    s = ds.train[3]
    assert (pid, image_id, caption) == (s.pid, s.image_id, s.caption)
    assert img.shape == (3, 24, 12) and img.dtype == torch.float32
    raw = np.asarray(Image.open(s.image_path).convert("RGB"), dtype=np.float32)[0, 0] / 255  # solid colour
    expected = (torch.tensor(raw) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(img[:, 5, 5], expected, atol=1e-5, rtol=0)
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    pids, image_ids, imgs, caps = next(iter(loader))
    assert pids.dtype == torch.long and imgs.shape == (4, 3, 24, 12) and len(caps) == 4
    cached = TrainImageTextDataset(ds.train, image_size=(24, 12), cache=True)
    assert torch.equal(cached[3][2], img) and torch.equal(cached[3][2], img)


def test_flip_augmentation(tmp_path):
    path = tmp_path / "imgs" / "a.png"
    arr = np.zeros((16, 8, 3), np.uint8)
    arr[:, :4] = (255, 0, 0)  # left half red, right half blue
    arr[:, 4:] = (0, 0, 255)
    path.parent.mkdir()
    Image.fromarray(arr).save(path)
    from uca_model.data import TrainSample

    sample = [TrainSample(0, 0, str(path), "a caption")]
    plain = TrainImageTextDataset(sample, image_size=(16, 8))[0][2]
    flipped = TrainImageTextDataset(sample, image_size=(16, 8), flip_prob=1.0)[0][2]
    torch.testing.assert_close(flipped, plain.flip(-1))
    assert plain[0, 8, 0] > plain[0, 8, 7]  # red on the left before the flip
    torch.manual_seed(0)
    half = TrainImageTextDataset(sample, image_size=(16, 8), flip_prob=0.5)
    n = sum(torch.equal(half[0][2], flipped) for _ in range(200))
    assert 60 < n < 140


def test_gallery_dataset_and_load_image(tmp_path):
    make_fixture(tmp_path, "rstpreid")
    ds = load_dataset(tmp_path, "rstpreid")
    _, gallery = ds.eval_split("test")
    data = GalleryImageDataset(gallery, image_size=(32, 16))
    img, pid = data[1]
    assert img.shape == (3, 32, 16) and pid == gallery[1].pid
    torch.testing.assert_close(img, load_image(gallery[1].image_path, (32, 16)))
    with pytest.raises(ValueError, match="image_size must be"):
        GalleryImageDataset(gallery, image_size=(32,))
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        load_image(tmp_path / "missing.png", (8, 4))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        load_image(tmp_path / "broken.png", (8, 4))


def test_query_is_a_plain_record():
    assert Query("a caption", 3) == Query("a caption", 3)
