"""benchmarks.ablation: reusing finished runs of an earlier results folder, and the uncertainty columns."""

from __future__ import annotations

import json

import pytest

ablation = pytest.importorskip("benchmarks.ablation")


def _row(variant, seed, r1, run):
    return {"variant": variant, "seed": seed, "run": run, "score": "distance", "best_epoch": 3, "steps": 10,
            "train_time_s": 1.0, "wall_s": 1.0, "R1": r1, "R5": r1 + 10, "R10": r1 + 20, "mAP": r1 + 1,
            "mINP": r1 - 1, "val_R1": r1, "val_mAP": r1}


def _unc(run, rho):
    return {"run": run, "split": "test", "spearman_text_sigma_vs_identities_fitted": rho,
            "spearman_text_sigma_vs_attributes_mentioned": -rho, "image_sigma_occluded": 0.02,
            "image_sigma_unoccluded": 0.01, "retrieval_by_text_sigma": {"certain_half": {"R1": 30.0, "mAP": 31.0},
                                                                       "uncertain_half": {"R1": 20.0, "mAP": 21.0}}}


def test_reuse_takes_earlier_runs_and_averages_their_uncertainty(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    rows = [_row("UCA", 0, 20.0, "r/UCA-s0"), _row("UCA", 1, 24.0, "r/UCA-s1"), _row("UCA", 2, 99.0, "r/UCA-s2")]
    (old / "runs.json").write_text(json.dumps(rows))
    (old / "uncertainty.json").write_text(json.dumps([_unc("r/UCA-s0", 0.2), _unc("r/UCA-s1", 0.4)]))
    out = tmp_path / "out"
    # seeds 0 and 1 only: nothing is left to train (no data is generated), seed 2 of the old folder is not taken
    assert ablation.main(["--variants", "UCA", "--seeds", "0", "1", "--reuse", str(old), "--out", str(out),
                          "--runs", str(tmp_path / "runs"), "--data", str(tmp_path / "nodata")]) == 0
    assert not (tmp_path / "nodata").exists()
    (s,) = json.loads((out / "summary.json").read_text())
    assert s["variant"] == "UCA" and s["n"] == 2
    assert s["R1_mean"] == pytest.approx(22.0)
    assert s["spearman_text_sigma_vs_identities_fitted_mean"] == pytest.approx(0.3)
    runs = json.loads((out / "runs.json").read_text())
    assert [r["reused_from"] for r in runs] == [str(old)] * 2
    assert runs[0]["certain_half_R1"] == 30.0
    assert [u["run"] for u in json.loads((out / "uncertainty.json").read_text())] == ["r/UCA-s0", "r/UCA-s1"]
    assert "+0.30" in (out / "table.md").read_text()
    assert f"--reuse {old}" in (out / "command.txt").read_text()


def test_paired_differences_seed_by_seed(tmp_path):
    """UCA − UCA-nosigma per seed (the goal asks for a gain in every seed, not only on average)."""
    old = tmp_path / "old"
    old.mkdir()
    rows = [_row("UCA", 0, 30.0, "r/a0"), _row("UCA", 1, 29.0, "r/a1"), _row("UCA-nosigma", 0, 27.0, "r/b0"),
            _row("UCA-nosigma", 1, 29.5, "r/b1")]
    (old / "runs.json").write_text(json.dumps(rows))
    out = tmp_path / "out"
    assert ablation.main(["--variants", "UCA", "UCA-nosigma", "--seeds", "0", "1", "--reuse", str(old),
                          "--out", str(out), "--runs", str(tmp_path / "runs")]) == 0
    (p,) = json.loads((out / "paired.json").read_text())
    assert (p["a"], p["b"], p["seeds"]) == ("UCA", "UCA-nosigma", [0, 1])
    assert p["R1"]["by_seed"] == [3.0, -0.5] and p["R1"]["mean"] == pytest.approx(1.25)
    assert p["R1"]["positive_in_every_seed"] is False and p["mAP"]["by_seed"] == [3.0, -0.5]
    assert "sub100_R1" not in p  # no sub-gallery figures in these rows
    table = (out / "table.md").read_text()
    assert "| UCA − UCA-nosigma | 0, 1 | +3.00, -0.50; +1.25 ± 2.47 (not positive in every seed) |" in table


def test_reuse_of_a_folder_without_runs_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no runs.json"):
        ablation.main(["--variants", "UCA", "--reuse", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                       "--runs", str(tmp_path / "r")])


@pytest.mark.parametrize("extra, folder, seed", [([], "data/synthpedes-demo", 0),
                                                 (["--data-seed", "7"], "data/synthpedes-demo-seed7", 7)])
def test_data_seed_reaches_the_generator(tmp_path, monkeypatch, extra, folder, seed):
    """``--data-seed`` picks the SynthPedes build (it was fixed at 0) and its default folder."""
    import uca_model.synth as synth

    seen = {}

    def stop(root, preset, seed, progress):
        seen.update(root=root, seed=seed)
        raise RuntimeError("stopped before generating")

    monkeypatch.setattr(synth, "generate_synthpedes", stop)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="stopped before generating"):
        ablation.main(["--variants", "UCA", "--seeds", "0", "--out", "o", "--runs", "r", *extra])
    assert seen == {"root": folder, "seed": seed}


def test_nosigma_under_ce_holds_sigma_at_its_initial_value(tmp_path):
    """σ ≡ 0 makes every ce distance infinite: UCA-nosigma holds it at head.init_logvar; the other
    metrics keep σ ≈ 0, and every variant validates with the occlusion term set."""
    import argparse

    args = argparse.Namespace(data=str(tmp_path / "d"), epochs=1, preset="demo",
                              overrides=["model.loss.metric=ce", "model.loss.occlusion_weight=0.02"])
    cfg = ablation._config(args, "UCA-nosigma", 0)
    assert cfg.model.head.fixed_logvar == cfg.model.head.init_logvar and cfg.model.loss.occlusion_weight == 0
    assert ablation._config(args, "UCA", 0).model.head.fixed_logvar is None
    for v in ("baseline", "+DCL", "+DCL+PCL", "UCA-randommask"):
        ablation._config(args, v, 0).validate()
    args.overrides = []
    assert ablation._config(args, "UCA-nosigma", 0).model.head.fixed_logvar == -30.0


def test_rows_from_before_get_every_metric_beside_its_ceiling(tmp_path, monkeypatch):
    """Rows that had the ceiling and the sub-galleries for R@1 and mAP only are completed (the full
    gallery's ceiling from the data, the sub-galleries from the run folder when it is still there),
    and the table gives each of the five metrics beside its ceiling, on both galleries."""
    import uca_model.ceiling as ceiling
    import uca_model.uncertainty as unc

    full = {"R1": 50.0, "R5": 80.0, "R10": 90.0, "mAP": 60.0, "mINP": 40.0}
    monkeypatch.setattr(ceiling, "ceiling_from_root", lambda root, split: full)
    sub = {}
    for k, v in full.items():
        sub.update({k: v / 2 + 10, f"ceiling_{k}": v / 2 + 20, f"{k}_fraction_of_ceiling": 100 * (v / 2 + 10) / (v / 2 + 20)})
    asked = []
    monkeypatch.setattr(unc, "run_sub_galleries", lambda run, split: asked.append(str(run)) or sub)
    kept, gone = tmp_path / "runs" / "UCA-s0", tmp_path / "runs" / "UCA-s1"
    kept.mkdir(parents=True)
    (kept / "config.json").write_text(json.dumps({"model": {"loss": {"metric": "ce"}}}))
    old = tmp_path / "old"
    old.mkdir()
    rows = []
    for seed, run in ((0, kept), (1, gone)):
        r = _row("UCA", seed, 20.0 + seed, str(run))
        r.update({"ceiling_R1": 50.0, "ceiling_mAP": 60.0, "sub100_R1": 1.0, "sub100_mAP": 2.0})
        rows.append(r)
    (old / "runs.json").write_text(json.dumps(rows))
    out = tmp_path / "out"
    assert ablation.main(["--variants", "UCA", "--seeds", "0", "1", "--reuse", str(old), "--out", str(out),
                          "--runs", str(tmp_path / "runs")]) == 0
    assert asked == [str(kept)]  # the folder that is gone keeps its R@1 / mAP sub-gallery figures
    r0, r1 = json.loads((out / "runs.json").read_text())
    assert r0["ceiling_mINP"] == 40.0 and r0["pct_ceiling_R5"] == pytest.approx(100 * 30.0 / 80.0)
    assert r1["pct_ceiling_mINP"] == pytest.approx(100 * 20.0 / 40.0)
    assert r0["sub100_R10"] == 55.0 and r0["sub100_pct_ceiling_mINP"] == pytest.approx(100 * 30 / 40)
    assert "sub100_R5" not in r1 and r1["sub100_R1"] == 1.0
    table = (out / "table.md").read_text()
    # full gallery: R@5 of seeds 0 and 1 is 30 and 31, the ceiling 80
    assert "| UCA | 20.50 ± 0.71 (41.0 %) | 30.50 ± 0.71 (38.1 %) |" in table
    assert "| Bayes ceiling (oracle) | 50.00 | 80.00 | 90.00 | 60.00 | 40.00 | |" in table
    assert "Random 100-identity sub-galleries" in table
    assert r0["metric"] == "ce" and "metric" not in r1  # the table names the runs' own distance
    assert "cosine for the baseline, ce distance for the others" in table
    # seed 1's folder is gone: its sub-gallery R@1 (1.0, no ceiling) is averaged without a percentage,
    # its R@5 is not there to average
    assert "| UCA | 18.00 ± 24.04 | 50.00 (1 run) (83.3 %) |" in table


def test_report_only_trains_nothing_and_keeps_the_command(tmp_path):
    """--report-only rewrites the tables from the finished runs (an ablation still running elsewhere)
    and leaves command.txt; a variant with one seed shows no ± 0.00."""
    old = tmp_path / "old"
    old.mkdir()
    (old / "runs.json").write_text(json.dumps([_row("UCA", 0, 30.0, "r/a0"), _row("UCA", 1, 32.0, "r/a1"),
                                               _row("baseline", 0, 10.0, "r/b0")]))
    (old / "command.txt").write_text("the ablation's own command\n")
    # seeds 1 of baseline and 2 of both are missing: without --report-only they would be trained
    assert ablation.main(["--variants", "baseline", "UCA", "--seeds", "0", "1", "2", "--reuse", str(old),
                          "--out", str(old), "--runs", str(tmp_path / "runs"), "--data", str(tmp_path / "nodata"),
                          "--report-only"]) == 0
    assert not (tmp_path / "nodata").exists() and not list((tmp_path / "runs").iterdir())
    assert (old / "command.txt").read_text() == "the ablation's own command\n"
    table = (old / "table.md").read_text()
    assert "| baseline | 10.00 | 20.00 | 30.00 | 11.00 | 9.00 | 1 |" in table
    assert "| UCA | 31.00 ± 1.41 |" in table
    assert "| UCA − baseline | 0 | +20.00 | +20.00 | – |" in table
