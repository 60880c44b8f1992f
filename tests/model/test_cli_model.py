"""``uca train / eval / search / demo``: a tiny run end to end, and clear errors (exit status 2)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from uca_model import cli


pytestmark = pytest.mark.usefixtures("one_thread")

# ``trained`` (a tiny SynthPedes and a one-epoch run) is in conftest.py, shared with test_uncertainty_report.py


def test_train_prints_the_table(trained, capsys):
    out = capsys.readouterr().out
    assert (trained["run"] / "metrics.json").is_file()
    # a second train into the same folder needs --resume; with it, the finished run is reported
    assert cli.main(["train", "--config", str(trained["config"]), "--out", str(trained["run"])]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli.main(["train", "--config", str(trained["config"]), "--out", str(trained["run"]), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "| test |" in out and "R@1" in out


def test_eval_rebuilds_the_run_and_matches_training(trained, capsys):
    js = trained["tmp"] / "eval.json"
    assert cli.main(["eval", "--run", str(trained["run"]), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "ranking by distance (csd)" in out and "| test (distance) |" in out and "| test (cosine) |" in out
    got = json.loads(js.read_text())
    want = json.loads((trained["run"] / "metrics.json").read_text())["test"]
    for k in ("R1", "R5", "R10", "mAP", "mINP"):
        assert got[k] == pytest.approx(want[k], abs=1e-6)
    assert cli.main(["eval", "--run", str(trained["run"]), "--split", "val", "--score", "cosine",
                     "--checkpoint", "last"]) == 0


def test_search_writes_the_picture(trained, capsys):
    out_png = trained["tmp"] / "grid.png"
    assert cli.main(["search", "a woman in a red coat with a black backpack", "--run", str(trained["run"]),
                     "--topk", "5", "--out", str(out_png)]) == 0
    out = capsys.readouterr().out
    assert out_png.is_file() and out_png.stat().st_size > 1000
    lines = [ln for ln in out.splitlines() if re.match(r"^\s*\d+\. ", ln)]
    assert len(lines) == 5 and "csd" in lines[0] and "sigma" in lines[0]
    dists = [float(ln.split()[2]) for ln in lines]
    assert dists == sorted(dists)  # nearest first


def test_user_errors_exit_2_with_a_message(trained, tmp_path, capsys):
    run = str(trained["run"])
    cases = [
        (["train", "--config", str(tmp_path / "missing.json")], "config file"),
        (["train", "--config", str(trained["config"]), "--set", "model.loss.metric=l1", "--out", str(tmp_path / "r")],
         "model.loss.metric: 'l1' is not one of"),
        (["eval", "--run", str(tmp_path / "nope")], "does not exist"),
        (["eval", "--run", str(tmp_path)], "holds no config.json"),
        (["search", "", "--run", run], "the query is empty"),
        (["search", "x", "--run", run, "--topk", "0"], "--topk must be >= 1"),
        (["eval", "--run", run, "--checkpoint", str(tmp_path / "x.pt")], "not found"),
    ]
    for argv, needle in cases:
        assert cli.main(argv) == 2, argv
        assert needle in capsys.readouterr().err, argv


def test_incompatible_checkpoints_are_explained(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained["run"], run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["head"]["embed_dim"] = 24
    (run / "config.json").write_text(json.dumps(cfg))
    assert cli.main(["eval", "--run", str(run)]) == 2
    assert "different config: model.head.embed_dim: 16 -> 24" in capsys.readouterr().err
    # a checkpoint whose weights do not fit the model
    cfg["model"]["head"]["embed_dim"] = 16
    (run / "config.json").write_text(json.dumps(cfg))
    ck = torch.load(run / "checkpoint_best.pt", weights_only=False)
    ck["model"]["image_head.mu.weight"] = torch.zeros(3, 3)
    torch.save(ck, run / "checkpoint_best.pt")
    assert cli.main(["eval", "--run", str(run)]) == 2
    assert "shape mismatch" in capsys.readouterr().err
    (run / "checkpoint_best.pt").write_text("garbage")
    assert cli.main(["eval", "--run", str(run)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_demo_tiny_preset_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--preset", "tiny", "--epochs", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| test |" in out and "mean sigma on test" in out
    for name in ("retrieval.png", "search.png", "curves.png", "metrics.json"):
        assert (tmp_path / "runs" / "demo" / name).is_file(), name


def test_attribute_errors_agree_with_the_evaluation(trained):
    from benchmarks.attribute_errors import attribute_errors

    r = attribute_errors(trained["run"], "val")
    metrics = json.loads((trained["run"] / "metrics.json").read_text())
    # same model, same ranking: its R@1 is the (best checkpoint's) val R@1 of the run
    assert r["R1"] == pytest.approx(metrics["val"]["R1"], abs=1e-6)
    # a top-1 image of the right identity fits every mention, so consistency >= R@1
    assert r["R1"] <= r["top1_fits_every_mention"] <= 100.0
    assert r["violated_pct"] and all(0.0 <= v <= 100.0 for v in r["violated_pct"].values())
