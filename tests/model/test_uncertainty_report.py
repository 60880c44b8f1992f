"""The σ calibration report: ``uca_model.uncertainty`` on synthetic arrays and a fake
``synth_attributes.json``, and ``uca eval`` / ``uca search`` / ``benchmarks.uncertainty`` on the tiny
trained run of conftest.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from uca_model import cli
from uca_model.data import GalleryItem, Query
from uca_model.metrics import retrieval_metrics
from uca_model.uncertainty import (PART_BANDS, calibration_table, fitted_bins, fitted_counts, partial_spearman,
                                   query_scores, sigma_of, sub_gallery_metrics,
                                   sigma_percentile, spearman, split_annotations)

TABLE_KEYS = {"version", "queries", "gallery", "sigma_text_mean", "sigma_text_std", "sigma_text_relative_spread",
              "sigma_image_mean", "sigma_image_std", "sigma_image_relative_spread", "overall", "by_sigma_decile",
              "spearman_sigma_decile_vs_R1", "retrieval_by_text_sigma", "synthpedes", "by_identities_fitted",
              "mean_identities_fitted", "spearman_text_sigma_vs_identities_fitted",
              "spearman_text_sigma_vs_attributes_mentioned",
              "partial_spearman_text_sigma_vs_identities_fitted_given_mentioned", "image_sigma_occluded",
              "image_sigma_unoccluded", "occluded_images"}
SYNTH_KEYS = ("by_identities_fitted", "mean_identities_fitted", "spearman_text_sigma_vs_identities_fitted",
              "spearman_text_sigma_vs_attributes_mentioned",
              "partial_spearman_text_sigma_vs_identities_fitted_given_mentioned", "image_sigma_occluded", "image_sigma_unoccluded",
              "occluded_images")


def _graded(Q: int = 203, G: int = 20):
    """Queries whose difficulty grows with σ: query i's positive (its only image) scores 1 - i / Q, the
    negatives sit at fixed levels k / G (k < G), so the positive's rank never improves as i grows."""
    qp = np.arange(Q) % G
    gp = np.arange(G)
    levels = np.arange(G) / G  # 0 .. 1 - 1/G: the easiest queries beat every negative
    s = np.tile(levels[None, :], (Q, 1))
    s[np.arange(Q), qp] = 1.0 - np.arange(Q) / Q
    sigma = 0.01 + 0.001 * np.arange(Q)
    perm = np.random.default_rng(0).permutation(Q)  # the table must sort by σ itself
    return sigma[perm], torch.from_numpy(s[perm]), qp[perm], gp


def _assert_close(a, b, path="table"):
    """Nested dicts / lists equal, floats to 1e-9 relative."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


# ----------------------------------------------------------------------------------------------
# the table on synthetic arrays
# ----------------------------------------------------------------------------------------------


def test_deciles_are_equal_sized_ordered_and_cover_every_query():
    sigma, s, qp, gp = _graded(Q=203)
    t = calibration_table(sigma, s, qp, gp)
    dec = t["by_sigma_decile"]
    assert [r["decile"] for r in dec] == list(range(1, 11))
    assert [r["queries"] for r in dec] == [len(a) for a in np.array_split(np.arange(203), 10)]  # 21 x 3, 20 x 7
    assert sum(r["queries"] for r in dec) == t["queries"] == 203 and t["gallery"] == 20
    for a, b in zip(dec, dec[1:]):  # σ ranges ascend and do not overlap
        assert a["sigma_min"] <= a["sigma_max"] < b["sigma_min"] <= b["sigma_max"]
    assert dec[0]["sigma_min"] == pytest.approx(sigma.min()) and dec[-1]["sigma_max"] == pytest.approx(sigma.max())
    # the per-decile means add up to the whole split's metrics
    whole = retrieval_metrics(s, query_pids=qp, gallery_pids=gp)
    assert t["overall"]["R1"] == pytest.approx(whole["R1"]) and t["overall"]["mAP"] == pytest.approx(whole["mAP"])
    halves = t["retrieval_by_text_sigma"]
    assert halves["certain_half"]["queries"] == 101 and halves["uncertain_half"]["queries"] == 102
    assert not t["synthpedes"] and all(t[k] is None for k in SYNTH_KEYS)  # no annotations: absent, not wrong
    assert set(t) == TABLE_KEYS
    json.dumps(t, allow_nan=False)  # JSON-ready


def test_monotone_sigma_to_difficulty_gives_monotone_retrieval():
    sigma, s, qp, gp = _graded()
    t = calibration_table(sigma, s, qp, gp)
    r1 = [r["R1"] for r in t["by_sigma_decile"]]
    ap = [r["mAP"] for r in t["by_sigma_decile"]]
    assert all(a >= b for a, b in zip(r1, r1[1:])) and r1[0] > r1[-1]
    assert all(a >= b for a, b in zip(ap, ap[1:])) and ap[0] > ap[-1]
    assert t["spearman_sigma_decile_vs_R1"] < -0.5
    h = t["retrieval_by_text_sigma"]
    assert h["certain_half"]["R1"] > h["uncertain_half"]["R1"]
    # σ reversed: the certain decile is now the hard one
    t2 = calibration_table(-sigma, s, qp, gp)
    assert t2["by_sigma_decile"][0]["R1"] < t2["by_sigma_decile"][-1]["R1"]


def test_a_score_callable_gives_the_same_table_as_the_matrix():
    g = torch.Generator().manual_seed(1)
    Q, G, D = 57, 13, 8
    txt = {"mu": torch.randn(Q, D, generator=g), "logvar": torch.randn(Q, D, generator=g) * 0.3 - 4}
    img = {"mu": torch.randn(G, D, generator=g), "logvar": torch.randn(G, D, generator=g) * 0.3 - 4}
    qp, gp = np.arange(Q) % G, np.arange(G)
    select = query_scores(txt, img, "distance", "w2")
    full = select(torch.arange(Q))(0, Q)
    a = calibration_table(sigma_of(txt["logvar"]), select, qp, gp, sigma_image=sigma_of(img["logvar"]))
    b = calibration_table(sigma_of(txt["logvar"]), full, qp, gp, sigma_image=sigma_of(img["logvar"]))
    _assert_close(a, b)
    assert a["sigma_image_mean"] == pytest.approx(float((0.5 * img["logvar"]).exp().mean()))


def test_few_queries_bad_inputs_and_small_helpers():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.2, 0.1]])
    t = calibration_table([0.3, 0.1, 0.2], s, [0, 1, 1], [0, 1])
    assert [r["queries"] for r in t["by_sigma_decile"]] == [1, 1, 1]  # fewer queries than deciles
    assert [r["sigma_min"] for r in t["by_sigma_decile"]] == pytest.approx([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="sigma_text has 2 values for 3 queries"):
        calibration_table([0.1, 0.2], s, [0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        calibration_table([0.1, float("nan"), 0.2], s, [0, 1, 1], [0, 1])
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 3, 1]) < 0
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert sigma_percentile(0.5, [0.1, 0.2, 0.6, 0.7]) == 50.0
    assert sigma_percentile(0.2, [0.1, 0.2, 0.6, 0.7]) == 37.5  # ties count half
    assert fitted_bins([1, 1, 2, 4, 7, 12, 40]) == [(1, 1), (2, 2), (4, 4), (5, 8), (9, 16), (33, 64)]


# ----------------------------------------------------------------------------------------------
# identities fitted on a fake synth_attributes.json
# ----------------------------------------------------------------------------------------------

FIELDS = {"gender": ["man", "woman"], "upper_color": ["red", "blue", "green"], "bag": ["none", "backpack"]}
IDENTITIES = {  # id -> attributes
    1: {"gender": "man", "upper_color": "red", "bag": "none"},
    2: {"gender": "man", "upper_color": "red", "bag": "backpack"},
    3: {"gender": "woman", "upper_color": "blue", "bag": "backpack"},
    4: {"gender": "man", "upper_color": "green", "bag": "none"},  # another split: never counted
}


def _fake_synth(root: Path, with_attributes: bool = True):
    """Three test identities, one image each (identity 2's image occluded), two captions per image."""
    mentions = {1: [{"gender": "man"}, {"gender": "man", "bag": "none"}],
                2: [{"upper_color": "red"}, {"gender": "man", "upper_color": "red", "bag": "backpack"}],
                3: [{"bag": "backpack"}, {"gender": "woman"}]}
    images = [{"file_path": f"test/{pid:05d}_0.png", "id": pid, "view": "front", "flipped": False,
               "occluder": "pole" if pid == 2 else None, "mentions": mentions[pid]} for pid in (1, 2, 3)]
    images.append({"file_path": "train/00004_0.png", "id": 4, "occluder": None, "mentions": [{"gender": "man"}]})
    doc = {"fields": FIELDS, "images": images,
           "identities": [{"id": i, "split": "train" if i == 4 else "test", "attributes": a}
                          for i, a in IDENTITIES.items()]}
    root.mkdir(parents=True, exist_ok=True)
    if with_attributes:
        (root / "synth_attributes.json").write_text(json.dumps(doc))
    gallery = [GalleryItem(str(root / "imgs" / im["file_path"]), im["id"], k) for k, im in enumerate(images[:3])]
    queries = [Query(f"caption {j} of {im['id']}", im["id"]) for im in images[:3] for j in range(2)]
    return queries, gallery


def test_fitted_counts_on_a_fake_synth_attributes_json(tmp_path):
    queries, gallery = _fake_synth(tmp_path)
    ann = split_annotations(tmp_path, queries, gallery)
    # man: ids 1, 2; man + none: 1; red: 1, 2; man + red + backpack: 2; backpack: 2, 3; woman: 3
    assert ann["fitted"].tolist() == [2, 1, 2, 1, 2, 1]
    assert ann["mentioned"].tolist() == [1, 2, 1, 3, 1, 1]
    assert ann["occluded"].tolist() == [False, True, False]
    # the counting rule alone: unmentioned fields fit anything, unknown values are refused
    ids = list(IDENTITIES.values())
    assert fitted_counts(FIELDS, ids, [{}, {"gender": "man"}, {"upper_color": "blue", "gender": "man"}]).tolist() \
        == [4, 3, 0]
    with pytest.raises(ValueError, match="purple"):
        fitted_counts(FIELDS, ids, [{"upper_color": "purple"}])
    # in the table: σ grows with the fitted count here, so ρ = +1 for it
    sigma = 0.01 * ann["fitted"] + 0.001 * np.arange(6) / 10
    s = torch.eye(3)[[0, 0, 1, 1, 2, 2]]
    t = calibration_table(sigma, s, [q.pid for q in queries], [g.pid for g in gallery],
                          sigma_image=[0.1, 0.3, 0.2], annotations=ann)
    assert t["synthpedes"] and set(t) == TABLE_KEYS
    assert [(r["label"], r["captions"]) for r in t["by_identities_fitted"]] == [("1", 3), ("2", 3)]
    assert t["by_identities_fitted"][1]["sigma_mean"] > t["by_identities_fitted"][0]["sigma_mean"]
    assert t["mean_identities_fitted"] == pytest.approx(1.5)
    assert t["spearman_text_sigma_vs_identities_fitted"] > 0.8
    assert t["image_sigma_occluded"] == pytest.approx(0.3) and t["image_sigma_unoccluded"] == pytest.approx(0.15)
    assert t["occluded_images"] == 1


def test_real_data_has_no_annotations_and_changed_data_is_refused(tmp_path):
    queries, gallery = _fake_synth(tmp_path / "real", with_attributes=False)
    assert split_annotations(tmp_path / "real", queries, gallery) is None
    queries, gallery = _fake_synth(tmp_path / "synth")
    with pytest.raises(ValueError, match="lists 6 captions for these images, the dataset 5"):
        split_annotations(tmp_path / "synth", queries[:5], gallery)


# ----------------------------------------------------------------------------------------------
# end to end on the tiny trained run
# ----------------------------------------------------------------------------------------------


def test_fitted_counts_agree_with_the_ceiling_on_synthpedes(trained):
    from uca_model.data import load_dataset
    from uca_model.synth import read_card

    card = read_card(trained["data"])
    ds = load_dataset(trained["data"], "synthpedes")
    for split in ("val", "test"):
        q, g = ds.eval_split(split)
        ann = split_annotations(trained["data"], q, g)
        assert ann["fitted"].min() >= 1
        assert ann["fitted"].mean() == pytest.approx(card["ceiling"][split]["mean_fitting_identities"])
        assert ann["fitted"].mean() == pytest.approx(card["ambiguity"][split]["mean_matches"])


@pytest.mark.usefixtures("one_thread")
def test_eval_writes_the_calibration_beside_the_run_or_where_asked(trained, tmp_path, capsys):
    run = trained["run"]
    js_metrics = tmp_path / "m.json"
    assert cli.main(["eval", "--run", str(run), "--json", str(js_metrics), "--calibration-out",
                     str(tmp_path / "cal")]) == 0
    out = capsys.readouterr().out
    png, js = tmp_path / "cal" / "calibration-test.png", tmp_path / "cal" / "calibration-test.json"
    assert f"calibration: {png}, {js}" in out
    assert png.is_file() and png.stat().st_size > 10_000
    t = json.loads(js.read_text())
    assert set(t) == TABLE_KEYS | {"run", "split", "checkpoint", "score", "metric"}
    assert t["split"] == "test" and t["score"] == "distance" and t["metric"] == "csd" and t["synthpedes"]
    m = json.loads(js_metrics.read_text())
    assert t["queries"] == m["num_queries"] and t["gallery"] == m["gallery_size"]
    assert t["overall"]["R1"] == pytest.approx(m["R1"]) and t["overall"]["mAP"] == pytest.approx(m["mAP"])
    assert t["sigma_text_mean"] == pytest.approx(m["sigma_text"], rel=1e-5)
    assert sum(r["queries"] for r in t["by_sigma_decile"]) == t["queries"]
    assert sum(r["captions"] for r in t["by_identities_fitted"]) == t["queries"]
    assert t["occluded_images"] is not None and t["image_sigma_unoccluded"] is not None
    # the default place: <run>-eval beside the run, one file pair per split; the run folder is left as it is
    before = sorted(p.name for p in run.iterdir())
    assert cli.main(["eval", "--run", str(run), "--split", "val"]) == 0
    out = capsys.readouterr().out
    beside = run.parent / f"{run.name}-eval"
    assert (beside / "calibration-val.png").is_file() and json.loads((beside / "calibration-val.json").read_text())
    assert f"calibration: {beside / 'calibration-val.png'}" in out
    assert sorted(p.name for p in run.iterdir()) == before


def test_eval_of_a_baseline_run_skips_the_calibration(trained, tmp_path, capsys, monkeypatch):
    import shutil

    from uca_model.commands import evaluate

    run = tmp_path / "baseline"
    shutil.copytree(trained["run"], run, ignore=shutil.ignore_patterns("calibration-*"))
    real = evaluate.load_run

    def as_baseline(*a, **k):  # the same run with its towers' logvar dropped: what a fixed-point model gives
        cfg, model, tok, ds, dev, ck = real(*a, **k)
        enc_img, enc_txt = model.encode_image, model.encode_text
        model.encode_image = lambda *x, **y: {**enc_img(*x, **y), "logvar": None}
        model.encode_text = lambda *x, **y: {**enc_txt(*x, **y), "logvar": None}
        return cfg, model, tok, ds, dev, ck

    monkeypatch.setattr(evaluate, "load_run", as_baseline)
    assert cli.main(["eval", "--run", str(run), "--score", "cosine"]) == 0
    out = capsys.readouterr().out
    assert "calibration: skipped (a fixed-point baseline run has no sigma)" in out
    assert not list(run.glob("calibration-*"))


@pytest.mark.usefixtures("one_thread")
def test_search_prints_where_the_query_sigma_falls(trained, tmp_path, capsys):
    assert cli.main(["search", "a woman in a red coat with a black backpack", "--run", str(trained["run"]),
                     "--topk", "3", "--out", str(tmp_path / "grid.png")]) == 0
    out = capsys.readouterr().out
    m = re.search(r"text sigma (\d+\.\d+): more ambiguous than (\d+) % of the test captions \((\d+) captions\)", out)
    assert m, out
    assert 0 <= int(m.group(2)) <= 100 and int(m.group(3)) > 0


@pytest.mark.usefixtures("one_thread")
def test_benchmark_cli_keeps_its_keys_and_takes_a_split(trained, tmp_path, capsys):
    from benchmarks import uncertainty as bench

    out = tmp_path / "u.json"
    assert bench.main([str(trained["run"]), "--split", "val", "--out", str(out)]) == 0
    (r,) = json.loads(out.read_text())
    assert tuple(r) == bench.KEYS and r["split"] == "val"
    assert set(r["retrieval_by_text_sigma"]) == {"certain_half", "uncertain_half"}
    assert set(r["retrieval_by_text_sigma"]["certain_half"]) == {"R1", "mAP"}
    assert r["occluded_images"] >= 0 and r["spearman_text_sigma_vs_identities_fitted"] is not None
    assert "(val):" in capsys.readouterr().out
    occ = r["occlusion_test"]  # tiny: every val image with and without a drawn occluder
    assert occ["images"] > 0 and set(occ["by_part"]) <= set(PART_BANDS)
    assert 0.0 <= occ["share_ratio_ge_1.1"] <= 1.0 and occ["ratio_mean"] > 0
    assert r["ceiling"]["R1"] > 0 and r["sub_galleries"] is None  # 5 val identities: no 100-identity sub-gallery


def test_partial_spearman_is_the_correlation_of_rank_residuals():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 8, 400)  # attributes mentioned
    h = rng.normal(size=400)  # what the count of attributes does not say
    fitted = -2.0 * g + h + 0.3 * rng.normal(size=400)
    sigma_knows = h + 0.3 * rng.normal(size=400)
    sigma_counts = -g + 0.01 * rng.normal(size=400)
    from uca_model.uncertainty import _ranks

    def residual(x):
        r, z = _ranks(np.asarray(x, float)), _ranks(g.astype(float))
        A = np.stack([z, np.ones_like(z)], 1)
        return r - A @ np.linalg.lstsq(A, r, rcond=None)[0]

    ra, rb = residual(sigma_knows), residual(fitted)
    want = float((ra * rb).sum() / np.sqrt((ra ** 2).sum() * (rb ** 2).sum()))
    assert partial_spearman(sigma_knows, fitted, g) == pytest.approx(want, abs=1e-9)
    assert partial_spearman(sigma_knows, fitted, g) > 0.3  # knows more than the count
    assert abs(partial_spearman(sigma_counts, fitted, g)) < 0.15 < spearman(sigma_counts, fitted)  # only the count
    assert np.isnan(partial_spearman([1, 2, 3], [3, 2, 1], [1, 2, 3]))


def test_sub_galleries_beside_their_ceilings():
    """6 test identities, 2 images each, captions that mention every attribute (the ceiling is 100);
    a perfect ranking is at 100 % of the ceiling on every 3-identity sub-gallery."""
    fields = {"upper_colour": ["red", "blue", "green", "black", "white", "grey"]}
    colours = fields["upper_colour"]
    attrs = {"fields": fields,
             "identities": [{"id": i, "split": "test", "attributes": {"upper_colour": colours[i]}} for i in range(6)],
             "images": [{"id": i, "file_path": f"test/{i}_{k}.png", "mentions": [{"upper_colour": colours[i]}]}
                        for i in range(6) for k in range(2)]}
    gp = np.repeat(np.arange(6), 2)
    qp = gp.copy()  # one caption per image
    perfect = torch.as_tensor((qp[:, None] == gp[None, :]).astype(np.float64))
    out = sub_gallery_metrics(perfect, qp, gp, attrs, "test", ids_per_gallery=3, draws=4)
    assert out["R1"] == pytest.approx(100.0) and out["ceiling_R1"] == pytest.approx(100.0)
    assert out["R1_fraction_of_ceiling"] == pytest.approx(100.0) and out["draws"] == 4
    for k in ("R5", "R10", "mAP", "mINP"):  # every metric beside its ceiling
        assert out[k] == pytest.approx(100.0) and out[f"{k}_fraction_of_ceiling"] == pytest.approx(100.0)
    worst = sub_gallery_metrics(-perfect, qp, gp, attrs, "test", ids_per_gallery=3, draws=4)
    assert worst["R1"] == 0.0 and worst["ceiling_mINP"] == pytest.approx(100.0)
    assert worst["mAP"] < 50.0 and worst["mINP_fraction_of_ceiling"] == pytest.approx(worst["mINP"])
    assert sub_gallery_metrics(perfect, qp, gp, attrs, "test", ids_per_gallery=6) is None  # the whole gallery
    assert sub_gallery_metrics(perfect, qp, gp, None, "test", ids_per_gallery=3) is None  # real data


def test_run_sub_galleries_of_a_trained_run(trained):
    from uca_model.uncertainty import run_sub_galleries

    assert run_sub_galleries(trained["run"], "test") is None  # 6 test identities: no 100-identity sub-gallery
    out = run_sub_galleries(trained["run"], "test", ids_per_gallery=3, draws=2)
    assert out["draws"] == 2 and 0 <= out["R1"] <= 100 and 0 < out["ceiling_R1"] <= 100
    assert out["R1_fraction_of_ceiling"] == pytest.approx(100 * out["R1"] / out["ceiling_R1"])


@pytest.mark.usefixtures("one_thread")
def test_sigma_ranking_reproduces_the_run_and_isolates_what_csd_ignores(trained, tmp_path):
    """The 'full' ranking is the run's own val result and 'cosine' its alternative; under csd a
    caption's sigma is a constant per query, so neither its shape nor a permutation of it can move
    the ranking, while the image sigma can."""
    from benchmarks import sigma_ranking

    out = tmp_path / "s.json"
    assert sigma_ranking.main([str(trained["run"]), "--split", "val", "--out", str(out)]) == 0
    (r,) = json.loads(out.read_text())
    val = json.loads((trained["run"] / "metrics.json").read_text())["val"]
    assert r["metric"] == "csd"
    assert r["full"]["R1"] == pytest.approx(val["R1"], abs=1e-3)
    assert r["full"]["mAP"] == pytest.approx(val["mAP"], abs=1e-3)
    assert r["cosine"]["R1"] == pytest.approx(val["alt"]["R1"], abs=1e-3)
    for k in ("isotropic_text", "shuffled_text", "shared_shape_text"):
        assert r[k]["mAP"] == pytest.approx(r["full"]["mAP"], abs=1e-3), k
