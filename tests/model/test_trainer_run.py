"""The trainer end to end on SynthPedes "tiny": one epoch, files, kill + resume == uninterrupted."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from uca_model.checkpoint import CheckpointError, load_checkpoint
from uca_model.config import to_dict
from uca_model.presets import smoke_config
from uca_model.synth import generate_synthpedes
from uca_model.trainer import RunExistsError, TrainingStopped, train

QUIET = {"log": lambda *a: None}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "tiny"
    generate_synthpedes(root, "tiny", seed=0, progress=False)
    return root


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_one_epoch_writes_a_complete_run(tiny_data, tmp_path):
    cfg = smoke_config(tiny_data)
    run = tmp_path / "run"
    result = train(cfg, run, **QUIET)
    for name in ("config.json", "checkpoint_last.pt", "checkpoint_best.pt", "history.csv", "eval.csv",
                 "metrics.json", "curves.png"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text()) == to_dict(cfg)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(result))
    for split in ("val", "test"):
        for k in ("R1", "R5", "R10", "mAP", "mINP"):
            assert 0.0 <= result[split][k] <= 100.0
    assert result["score"] == "distance" and result["test"]["alt"]["score"] == "cosine"
    hist = _rows(run / "history.csv")
    assert [int(r["step"]) for r in hist] == [2, 4]
    for col in ("loss/total", "loss/dcl", "loss/pcl_inter", "loss/pcl_intra_image", "loss/amlr", "loss/kl_image",
                "sigma_image", "sigma_text", "samples_per_s", "lr", "grad_norm", "data_time", "step_time"):
        assert col in hist[0] and float(hist[-1][col]) == float(hist[-1][col])  # present, not NaN
    ev = _rows(run / "eval.csv")
    assert [r["split"] for r in ev] == ["val", "test"]
    last = load_checkpoint(run / "checkpoint_last.pt")
    assert last["finished"] and last["position"] == {"epoch": 1, "batch": 0, "step": 4}
    # a finished run is not retrained
    again = train(cfg, run, **QUIET)
    assert again == saved


def test_killed_run_resumes_to_the_same_result(tiny_data, tmp_path):
    cfg = smoke_config(tiny_data, train={"epochs": 2, "ckpt_every": 2, "log_every": 1})
    full = train(cfg, tmp_path / "full", **QUIET)

    killed = smoke_config(tiny_data, train={"epochs": 2, "ckpt_every": 2, "log_every": 1, "stop_after_steps": 5})
    with pytest.raises(TrainingStopped, match="stopped after step 5"):
        train(killed, tmp_path / "resumed", **QUIET)
    # step 5 ran but was never checkpointed (the last checkpoint is from step 4): lost work, like a kill
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint_last.pt")["position"] == {"epoch": 1, "batch": 0,
                                                                                       "step": 4}
    resumed = train(cfg, tmp_path / "resumed", resume=True, **QUIET)

    for split in ("val", "test"):
        for k in ("R1", "R5", "R10", "mAP", "mINP"):
            assert resumed[split][k] == pytest.approx(full[split][k], abs=1e-6), (split, k)
    a = load_checkpoint(tmp_path / "full" / "checkpoint_last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint_last.pt")["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    # the logs have each step once, and the same losses
    ha, hb = _rows(tmp_path / "full" / "history.csv"), _rows(tmp_path / "resumed" / "history.csv")
    assert [r["step"] for r in hb] == [r["step"] for r in ha]
    for ra, rb in zip(ha, hb):
        assert float(rb["loss/total"]) == pytest.approx(float(ra["loss/total"]), rel=1e-5)


TIMING = ("samples_per_s", "data_time", "step_time")


def test_resume_inside_a_log_interval_logs_exactly_the_same_rows(tiny_data, tmp_path):
    # checkpoints every 2 steps, logs every 3: the step-2 checkpoint holds an open log interval
    kw = {"epochs": 2, "ckpt_every": 2, "log_every": 3}
    cfg = smoke_config(tiny_data, train=kw)
    train(cfg, tmp_path / "full", **QUIET)
    with pytest.raises(TrainingStopped):
        train(smoke_config(tiny_data, train={**kw, "stop_after_steps": 3}), tmp_path / "cut", **QUIET)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint_last.pt")["log_acc"]["n"] == 2
    config_before = (tmp_path / "cut" / "config.json").stat().st_mtime_ns
    train(cfg, tmp_path / "cut", resume=True, **QUIET)
    assert (tmp_path / "cut" / "config.json").stat().st_mtime_ns == config_before  # not rewritten
    ha, hb = _rows(tmp_path / "full" / "history.csv"), _rows(tmp_path / "cut" / "history.csv")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(hb) == strip(ha)  # every logged value, not only the losses, to the digit
    a = load_checkpoint(tmp_path / "full" / "checkpoint_last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint_last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical parameters


def test_mid_epoch_kill_resumes_inside_the_epoch(tiny_data, tmp_path):
    cfg = smoke_config(tiny_data, train={"epochs": 1, "ckpt_every": 1})
    full = train(cfg, tmp_path / "full", **QUIET)
    with pytest.raises(TrainingStopped):
        train(smoke_config(tiny_data, train={"epochs": 1, "ckpt_every": 1, "stop_after_steps": 2}),
              tmp_path / "cut", **QUIET)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint_last.pt")["position"] == {"epoch": 0, "batch": 2, "step": 2}
    resumed = train(cfg, tmp_path / "cut", **QUIET)  # resume="auto"
    assert resumed["test"]["mAP"] == pytest.approx(full["test"]["mAP"], abs=1e-6)


def test_resume_refuses_other_configs_and_existing_runs(tiny_data, tmp_path):
    cfg = smoke_config(tiny_data, train={"stop_after_steps": 2})
    with pytest.raises(TrainingStopped):
        train(cfg, tmp_path / "run", **QUIET)
    with pytest.raises(RunExistsError, match="already holds a run"):
        train(cfg, tmp_path / "run", resume=False, **QUIET)
    other = smoke_config(tiny_data, optim={"lr": 0.5})
    with pytest.raises(CheckpointError, match=r"optim\.lr: 0\.003 -> 0\.5"):
        train(other, tmp_path / "run", **QUIET)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train(cfg, tmp_path / "empty", resume=True, **QUIET)
    # a torn checkpoint is reported, not half-loaded
    (tmp_path / "run" / "checkpoint_last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        train(cfg, tmp_path / "run", **QUIET)


def test_baseline_run_ranks_by_cosine(tiny_data, tmp_path):
    cfg = smoke_config(tiny_data, model={"mode": "baseline", "loss": {"dcl_weight": 0, "pcl_weight": 0,
                                                                      "amlr_weight": 0, "kl_weight": 0}})
    result = train(cfg, tmp_path / "b", **QUIET)
    assert result["score"] == "cosine" and "alt" not in result["test"]
    assert "loss/cosine_sdm" in _rows(tmp_path / "b" / "history.csv")[0]  # IRRA's SDM on cosine
