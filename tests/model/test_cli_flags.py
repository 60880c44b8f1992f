"""Every ``uca`` flag is exercised by some test, and the flags no end-to-end test needs
(``--threads``, ``demo --baseline / --force``) do what they say without a full run."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from uca_model import cli

TESTS = Path(__file__).resolve().parents[1]


def _flags() -> list[tuple[str, str]]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [(name, opt) for name, p in sub.choices.items() for a in p._actions for opt in a.option_strings
            if opt.startswith("--") and opt != "--help"]


def test_every_uca_flag_appears_in_a_test():
    """A flag that no test passes is a flag nobody has run (``--threads`` crashed every command)."""
    text = "\n".join(f.read_text(encoding="utf-8") for f in TESTS.rglob("*.py"))
    missing = [f"uca {name} {opt}" for name, opt in _flags() if f'"{opt}"' not in text]
    assert not missing, f"flags no test passes: {missing}"


@pytest.mark.parametrize("argv", [
    ["train", "--config", "{missing}/cfg.json"],
    ["eval", "--run", "{missing}"],
    ["search", "a man in a blue coat", "--run", "{missing}"],
], ids=lambda a: a[0])
def test_threads_sets_torch_threads_in_every_command(argv, tmp_path, capsys):
    """``--threads N`` sets torch's CPU threads before the command fails on its missing input (it
    used to end every command in an AttributeError traceback)."""
    argv = [a.replace("{missing}", str(tmp_path / "missing")) for a in argv]
    n = torch.get_num_threads()
    want = 1 if n != 1 else 2
    try:
        assert cli.main(argv + ["--threads", str(want)]) == 2
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(n)
    err = capsys.readouterr().err
    assert err.startswith(f"uca {argv[0]}: error:") and "missing" in err
    assert cli.main(argv + ["--threads", "0"]) == 2
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err


def test_demo_flags_threads_baseline_force(tmp_path, monkeypatch, capsys):
    """``demo --threads / --baseline / --force``, stopped where the data would be generated."""
    import uca_model.presets as presets
    import uca_model.synth as synth

    seen = {}
    real_overrides = presets.variant_overrides

    def spy_overrides(variant):
        seen["variant"] = variant
        return real_overrides(variant)

    def stop(*a, **k):
        raise FileNotFoundError("stopped before generating the data")

    monkeypatch.setattr(presets, "variant_overrides", spy_overrides)
    monkeypatch.setattr(synth, "generate_synthpedes", stop)
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("a finished run")
    n = torch.get_num_threads()
    want = 1 if n != 1 else 2
    argv = ["demo", "--preset", "tiny", "--out", str(out), "--data", str(tmp_path / "d"), "--no-progress"]
    try:
        assert cli.main(argv + ["--threads", str(want), "--baseline"]) == 2
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(n)
    assert seen["variant"] == "baseline" and (out / "old.txt").is_file()  # no --force: the folder is kept
    assert "stopped before generating the data" in capsys.readouterr().err
    assert cli.main(argv + ["--force"]) == 2
    assert seen["variant"] == "UCA" and not out.exists()  # --force removes the old run first


def test_synth_force_regenerates(tmp_path, capsys):
    out = tmp_path / "ds"
    assert cli.main(["synth", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 0
    first = (out / "reid_raw.json").stat().st_mtime_ns
    capsys.readouterr()
    assert cli.main(["synth", "--preset", "tiny", "--out", str(out), "--no-progress", "--force"]) == 0
    assert "already complete" not in capsys.readouterr().out
    assert (out / "reid_raw.json").stat().st_mtime_ns != first
