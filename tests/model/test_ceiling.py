"""The SynthPedes Bayes ceiling: exact on a hand-built split (brute force over every oracle order,
scored by the library's own metrics), between a random ranking and 100 on generated data, written
to the dataset card, recorded in metrics.json and printed by ``uca eval`` / ``uca train``."""

from __future__ import annotations

import itertools
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from uca_model import ceiling as C
from uca_model import cli
from uca_model.ceiling import (
    CEILING_KEYS,
    bayes_ceiling,
    ceiling_from_root,
    ceiling_report,
    fraction_of_ceiling,
    offset_pmf,
    random_ranking_metrics,
)
from uca_model.metrics import retrieval_metrics
from uca_model.synth import generate_synthpedes, read_card

# -- a hand-built split: A (2 images), B (3), C (1); a train identity D that must be ignored --
FIELDS = {"colour": ["red", "blue"], "bag": ["yes", "no"]}
IDENTITIES = [
    {"id": 1, "split": "test", "attributes": {"colour": "red", "bag": "yes"}},  # A
    {"id": 2, "split": "test", "attributes": {"colour": "red", "bag": "no"}},  # B
    {"id": 3, "split": "test", "attributes": {"colour": "blue", "bag": "no"}},  # C
    {"id": 4, "split": "train", "attributes": {"colour": "red", "bag": "yes"}},  # D (same as A, other split)
]
IMAGES = [
    {"file_path": "test/1_0.png", "id": 1, "mentions": [{"colour": "red", "bag": "yes"}]},  # fits {A}
    {"file_path": "test/1_1.png", "id": 1, "mentions": [{"colour": "red"}]},  # {A, B}
    {"file_path": "test/2_0.png", "id": 2, "mentions": [{"colour": "red"}, {"bag": "no"}]},  # {A, B}, {B, C}
    {"file_path": "test/2_1.png", "id": 2, "mentions": [{}]},  # all three
    {"file_path": "test/2_2.png", "id": 2, "mentions": [{"bag": "no", "colour": "red"}]},  # {B}
    {"file_path": "test/3_0.png", "id": 3, "mentions": [{}, {"colour": "blue"}]},  # all three, {C}
    {"file_path": "train/4_0.png", "id": 4, "mentions": [{"colour": "red", "bag": "yes"}]},
]


def fitting(mention: dict, split: str = "test") -> list[int]:
    return [d["id"] for d in IDENTITIES if d["split"] == split
            and all(d["attributes"][f] == v for f, v in mention.items())]


def brute_force(images, split: str = "test") -> dict[str, float]:
    """Average over captions of the average over every order of the fitting identities, each order
    turned into a score vector and scored by uca_model.metrics.retrieval_metrics."""
    gallery = [im for im in images if im["file_path"].startswith(split)]
    gpids = [im["id"] for im in gallery]
    per_caption, sizes = [], []
    for im in gallery:
        for mention in im["mentions"]:
            fit = fitting(mention, split)
            sizes.append(len(fit))
            acc = {k: 0.0 for k in CEILING_KEYS}
            perms = list(itertools.permutations(fit))
            for order in perms:
                rank = {pid: i for i, pid in enumerate(order)}
                # fitting identities first, in `order`; images of one identity adjacent; the rest last
                scores = torch.tensor([[-(rank.get(p, len(order)) * 100.0 + j) for j, p in enumerate(gpids)]],
                                      dtype=torch.float64)
                m = retrieval_metrics(scores, query_pids=[im["id"]], gallery_pids=gpids)
                for k in CEILING_KEYS:
                    acc[k] += m[k] / len(perms)
            per_caption.append(acc)
    out = {k: float(np.mean([a[k] for a in per_caption])) for k in CEILING_KEYS}
    out["mean_fitting_identities"] = float(np.mean(sizes))
    return out


def test_hand_built_split_matches_brute_force_exactly():
    got = bayes_ceiling(FIELDS, IDENTITIES, IMAGES, "test")
    want = brute_force(IMAGES)
    for k in (*CEILING_KEYS, "mean_fitting_identities"):
        assert got[k] == pytest.approx(want[k], abs=1e-9), k
    assert (got["queries"], got["gallery"], got["identities"]) == (8, 6, 3)
    assert got["mean_fitting_identities"] == pytest.approx((1 + 2 + 2 + 2 + 3 + 1 + 3 + 1) / 8)


def test_one_caption_by_hand():
    # a caption of B (3 images) fitting {A (2 images), B}: B first (O = 0) or A first (O = 2), each 1/2
    images = [{"file_path": f"test/{pid}_{k}.png", "id": pid, "mentions": []} for pid, k in
              ((1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (3, 0))]
    images[2]["mentions"] = [{"colour": "red"}]  # the only caption
    got = bayes_ceiling(FIELDS, IDENTITIES, images, "test")
    assert got["R1"] == pytest.approx(50.0, abs=1e-12)
    assert got["R5"] == got["R10"] == pytest.approx(100.0, abs=1e-12)
    assert got["mAP"] == pytest.approx(100 * (0.5 + 0.5 * (1 / 3 + 2 / 4 + 3 / 5) / 3), abs=1e-12)
    assert got["mINP"] == pytest.approx(100 * (0.5 + 0.5 * 3 / 5), abs=1e-12)
    assert got["mean_fitting_identities"] == 2.0
    one = C.oracle_metrics([(2, 1)], 3)  # the same caption through the per-caption entry point
    assert all(one[k] == pytest.approx(got[k], abs=1e-12) for k in CEILING_KEYS)


@pytest.mark.parametrize("groups", [((2, 2), (3, 1)), ((1, 3), (2, 2), (4, 2)), ((5, 1),), ((2, 4), (3, 3), (4, 1))])
def test_offset_distribution_brute_force_both_paths(groups, monkeypatch):
    sizes = [c for c, n in groups for _ in range(n)]
    want = np.zeros(sum(sizes) + 1)
    perms = list(itertools.permutations(range(len(sizes) + 1)))  # index len(sizes) is the true identity
    for order in perms:
        want[sum(sizes[i] for i in order[:order.index(len(sizes))])] += 1 / len(perms)
    np.testing.assert_allclose(offset_pmf(groups), want, atol=1e-12)
    monkeypatch.setattr(C, "_TENSOR_LIMIT", 0)  # force the Gauss-Legendre path
    np.testing.assert_allclose(offset_pmf(groups), want, atol=1e-12)


def test_large_groups_agree_across_paths(monkeypatch):
    g = ((2, 40), (3, 35), (4, 30))
    direct = offset_pmf(g)
    monkeypatch.setattr(C, "_TENSOR_LIMIT", 0)
    np.testing.assert_allclose(offset_pmf(g), direct, atol=1e-12)
    assert direct.sum() == pytest.approx(1.0, abs=1e-12)
    assert direct[0] == pytest.approx(1 / 106, rel=1e-10)  # t first: 1 / |F|


def test_random_ranking_brute_force():
    g, p = 6, 2
    acc = {k: 0.0 for k in CEILING_KEYS}
    perms = list(itertools.permutations(range(g)))
    gpids = [1, 1, 2, 2, 3, 3]
    for perm in perms:
        m = retrieval_metrics(torch.tensor([[-float(r) for r in perm]]), query_pids=[1], gallery_pids=gpids)
        for k in CEILING_KEYS:
            acc[k] += m[k] / len(perms)
    got = random_ranking_metrics([p], g)
    for k in CEILING_KEYS:
        assert got[k] == pytest.approx(acc[k], abs=1e-9), k
    assert got["R1"] == pytest.approx(100 * (1 - math.comb(g - p, 1) / math.comb(g, 1)))


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="does not fit its own identity"):
        bayes_ceiling(FIELDS, IDENTITIES, [{"id": 3, "mentions": [{"colour": "red"}]}], "test")
    with pytest.raises(ValueError, match="not in the schema"):
        bayes_ceiling(FIELDS, IDENTITIES, [{"id": 3, "mentions": [{"colour": "green"}]}], "test")
    with pytest.raises(ValueError, match="no identity"):
        bayes_ceiling(FIELDS, IDENTITIES, IMAGES, "val")


def test_fraction_of_ceiling():
    f = fraction_of_ceiling({"R1": 30.0, "R5": 45.0, "R10": 50.0, "mAP": 41.0, "mINP": 3.0},
                            {"R1": 60.0, "R5": 90.0, "R10": 100.0, "mAP": 82.0, "mINP": 85.0})
    assert f == {"R1": 50.0, "R5": 50.0, "R10": 50.0, "mAP": 50.0, "mINP": pytest.approx(300 / 85)}
    assert fraction_of_ceiling({"R1": 5.0}, {"R1": 10.0, "mAP": 0.0}) == {"R1": 50.0}  # only what the model has
    assert math.isnan(fraction_of_ceiling({"mAP": 5.0}, {"mAP": 0.0})["mAP"])


# -- generated data --


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return generate_synthpedes(tmp_path_factory.mktemp("ceil") / "tiny", "tiny", seed=0, progress=False)


def test_generated_ceiling_between_random_and_100_and_in_the_card(tiny, tmp_path):
    card = read_card(tiny)
    meta = json.loads((tiny / "synth_attributes.json").read_text())
    text = (tiny / "dataset_card.md").read_text()
    assert "## Bayes ceiling" in text
    for split in ("train", "val", "test"):
        c = ceiling_from_root(tiny, split, use_card=False)
        assert c == card["ceiling"][split]  # JSON round-trips floats exactly
        assert c == bayes_ceiling(meta["fields"], meta["identities"], meta["images"], split)
        assert c["gallery"] == card["splits"][split]["images"] and c["queries"] == card["splits"][split]["captions"]
        assert c["mean_fitting_identities"] == pytest.approx(card["ambiguity"][split]["mean_matches"])
        for k in CEILING_KEYS:
            assert c["random"][k] <= c[k] + 1e-9 and 0 < c[k] <= 100 + 1e-9, (split, k)
        assert c["R1"] <= c["R5"] <= c["R10"]
        assert f"| {split} | {c['R1']:.1f} | {c['R5']:.1f} |" in text
    assert ceiling_from_root(tmp_path, "test") is None  # not SynthPedes
    rep = ceiling_report(tiny, {"test": {"R1": 10.0, "R5": 20.0, "R10": 30.0, "mAP": 15.0}})
    assert rep["fraction_of_ceiling"]["test"]["R1"] == pytest.approx(1000.0 / rep["ceiling"]["test"]["R1"])
    assert ceiling_report(tmp_path, {"test": {"R1": 1.0}}) == {}


def test_a_card_without_the_ceiling_still_gets_it(tiny, tmp_path):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(tiny, copy)
    card = read_card(copy)
    want = card.pop("ceiling")
    (copy / "dataset_card.json").write_text(json.dumps(card))
    assert ceiling_from_root(copy, "test") == want["test"]


def test_eval_prints_and_writes_the_ceiling(tiny, tmp_path, capsys, monkeypatch):
    """``uca eval`` with the model and its evaluation faked: only the reporting is under test here."""
    from uca_model import evaluation
    from uca_model import trainer  # noqa: F401  imported before the patch, or it would bind the fake for good
    from uca_model.commands import evaluate

    cfg = SimpleNamespace(data=SimpleNamespace(root=str(tiny), val_from_train=None),
                          model=SimpleNamespace(probabilistic=False, loss=SimpleNamespace(metric="w2"),
                                                encoder=SimpleNamespace(vision=SimpleNamespace(image_size=(48, 24)),
                                                                        text=SimpleNamespace(max_len=32))),
                          eval=SimpleNamespace(batch_size=8))
    ds = SimpleNamespace(eval_split=lambda split: ([1, 2], [1]))
    monkeypatch.setattr(evaluate, "load_run", lambda *a, **k: (cfg, None, None, ds, "cpu", {"kind": "best"}))
    monkeypatch.setattr(evaluation, "evaluate_split",
                        lambda *a, **k: {"R1": 20.0, "R5": 40.0, "R10": 60.0, "mAP": 30.0, "mINP": 10.0})
    js = tmp_path / "m.json"
    assert cli.main(["eval", "--run", str(tmp_path), "--score", "cosine", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    ceil = read_card(tiny)["ceiling"]["test"]
    assert "| ceiling (Bayes oracle), test |" in out and f"{ceil['mINP']:.2f}" in out
    assert f"R@1 = {100 * 20 / ceil['R1']:.0f} % of the ceiling" in out
    assert f"mAP = {100 * 30 / ceil['mAP']:.0f} %, mINP = {100 * 10 / ceil['mINP']:.0f} %" in out
    got = json.loads(js.read_text())
    assert got["ceiling"]["R1"] == pytest.approx(ceil["R1"])
    assert got["fraction_of_ceiling"]["mAP"] == pytest.approx(100 * 30 / ceil["mAP"])
    assert got["fraction_of_ceiling"]["mINP"] == pytest.approx(100 * 10 / ceil["mINP"])


@pytest.mark.usefixtures("one_thread")
def test_training_records_the_ceiling(tiny, tmp_path, capsys):
    from uca_model.config import to_dict
    from uca_model.presets import smoke_config

    cfg_path = tmp_path / "smoke.json"
    cfg_path.write_text(json.dumps(to_dict(smoke_config(tiny))))
    assert cli.main(["train", "--config", str(cfg_path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    card = read_card(tiny)
    for split in ("val", "test"):
        assert m["ceiling"][split] == card["ceiling"][split]
        want = 100 * m[split]["R1"] / card["ceiling"][split]["R1"]
        assert m["fraction_of_ceiling"][split]["R1"] == pytest.approx(want)
        assert f"| ceiling (Bayes oracle), {split} |" in out
    assert "test R@1 = " in out and "% of the ceiling" in out
