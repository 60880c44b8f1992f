"""The user documentation works as written: the README's Python code blocks run, and every relative
link in README.md and docs/ points at a file of the repository."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def code_blocks(path: Path, language: str) -> list[tuple[int, str]]:
    """``(first line number, code)`` of each fenced block of ``language`` in ``path``."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(2)) for m in _FENCE.finditer(text) if m.group(1) == language]


README_PY = code_blocks(README, "python")


def test_readme_has_a_python_quick_start():
    assert README_PY, "README.md has no ```python block (the quick start is what this file tests)"


def test_readme_python_blocks_run_in_order(capsys):
    """As a reader runs them: top to bottom, each block continuing the namespace of the ones above."""
    namespace = {"__name__": "__readme__"}
    for line, code in README_PY:
        exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102 - the README's own code
        loss = namespace.get("loss")
        if isinstance(loss, torch.Tensor):  # a training block: it ends with a finite scalar loss
            assert loss.dim() == 0 and torch.isfinite(loss), f"README.md:{line} ended with loss {loss}"
            assert loss.grad_fn is not None, f"README.md:{line}: the loss it trained on has no graph"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path):
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        name, _, anchor = target.partition("#")
        file = (path.parent / name).resolve()
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file):
            broken.append(target)
    assert not broken, f"{path.name} links to files or headings that do not exist: {broken}"


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (lower case, punctuation dropped,
    spaces to hyphens)."""
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    titles = re.findall(r"^#+\s+(.*?)\s*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", t.lower()).replace(" ", "-") for t in titles}


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_user_docs_cite_nothing_outside_the_repository(path):
    text = path.read_text(encoding="utf-8")
    assert "DESIGN.md" not in text and "../shared" not in text
    issue_refs = re.findall(r"(?i)\bissue\s*#?\d+|(?<![\w&/])#\d+\b", text)
    assert not issue_refs, f"{path.name} refers to issue numbers: {issue_refs}"


def documented_uca_commands() -> list[tuple[str, list[str]]]:
    """Every ``uca ...`` / ``python -m uca_model ...`` / ``torchrun ... -m uca_model ...`` command line
    in the bash blocks of README.md and docs/, as ``(where, argv after the program)``."""
    found = []
    for path in [README, *DOCS]:
        for line, code in code_blocks(path, "bash"):
            for i, cmd in enumerate(code.replace("\\\n", " ").splitlines()):
                words = shlex.split(cmd, comments=True)
                for start, word in enumerate(words):
                    if word.endswith("/uca") or word == "uca" or (word == "uca_model" and words[start - 1] == "-m"):
                        found.append((f"{path.relative_to(ROOT).as_posix()}:{line + i}", words[start + 1:]))
                        break
    return found


COMMAND_LINES = documented_uca_commands()


def test_the_docs_show_uca_commands():
    assert {argv[0] for _, argv in COMMAND_LINES} >= {"synth", "demo", "train", "eval", "search"}


@pytest.mark.parametrize("where,argv", COMMAND_LINES, ids=[w for w, _ in COMMAND_LINES])
def test_documented_uca_command_parses(where, argv):
    from uca_model.cli import build_parser

    try:
        build_parser().parse_args(argv)
    except SystemExit as e:  # argparse's way to reject a command line
        pytest.fail(f"{where}: `uca {' '.join(argv)}` is not a valid command line (exit {e.code})")


@pytest.mark.parametrize("where,argv", [(w, a) for w, a in COMMAND_LINES if a[0] == "train"],
                         ids=[w for w, a in COMMAND_LINES if a[0] == "train"])
def test_documented_training_configs_load(where, argv):
    """The config file a documented ``uca train`` names exists, and its ``--set`` fields are real ones."""
    from uca_model.cli import build_parser
    from uca_model.config import load_config

    args = build_parser().parse_args(argv)
    if args.config is not None:
        load_config(ROOT / args.config, args.overrides)  # raises ConfigError naming a bad field
