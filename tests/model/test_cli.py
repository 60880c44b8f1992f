"""The ``uca`` command line: ``synth``, the command registry, ``python -m uca_model``."""

from __future__ import annotations

import subprocess
import sys

from uca_model import cli
from uca_model.synth import read_card


def test_synth_writes_the_dataset_and_prints_the_card(tmp_path, capsys):
    out = tmp_path / "ds"
    assert cli.main(["synth", "--preset", "tiny", "--out", str(out), "--seed", "3", "--no-progress"]) == 0
    text = capsys.readouterr().out
    card = read_card(out)
    assert card["seed"] == 3 and card["preset"]["name"] == "tiny"
    amb = card["ambiguity"]["test"]["fraction_ambiguous"]
    assert f"ambiguity: {amb:.1%} of test captions fit more than one test identity" in text
    assert f"{card['splits']['train']['identities']:5d} identities" in text
    assert f"Bayes ceiling on test (the best any model can do): R@1 {card['ceiling']['test']['R1']:.1f}" in text
    assert "images/min" in text and (out / "contact_sheet.png").is_file()
    # second run: nothing redone
    assert cli.main(["synth", "--preset", "tiny", "--out", str(out), "--seed", "3", "--no-progress"]) == 0
    assert "already complete" in capsys.readouterr().out


def test_synth_errors_are_reported_with_status_2(tmp_path, capsys):
    assert cli.main(["synth", "--preset", "tiny", "--out", str(tmp_path), "--seed", "-1"]) == 2
    assert "--seed must be >= 0" in capsys.readouterr().err
    (tmp_path / "mine.txt").write_text("x")
    assert cli.main(["synth", "--preset", "tiny", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "holds no SynthPedes build" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "synth" in capsys.readouterr().out


def test_registered_commands_are_dispatched(capsys):
    seen = {}

    def add(p):
        p.add_argument("--n", type=int, default=1)

    def run(args):
        seen["n"] = args.n
        return 7

    cli.register("echo-test", "a test command", add, run)
    try:
        assert cli.main(["echo-test", "--n", "4"]) == 7 and seen == {"n": 4}
        cli.main([])
        assert "echo-test" in capsys.readouterr().out
    finally:
        del cli.COMMANDS["echo-test"]


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "uca_model", "synth", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--preset" in r.stdout and "large" in r.stdout
