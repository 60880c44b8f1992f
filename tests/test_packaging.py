"""Packaging: `pip install .` is the loss library with torch and numpy only, the `model` extra adds
what uca_model needs, every package is shipped, and the `uca` command names the missing extra."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
MODEL_ONLY = ("transformers", "tokenizers", "matplotlib", "PIL", "tqdm")  # import names of the model extra


def _names(requirements: list[str]) -> set[str]:
    return {r.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower() for r in requirements}


def _block(modules) -> str:
    """Python source that makes ``modules`` unimportable, as if not installed (import raises
    ModuleNotFoundError, importlib.util.find_spec returns None)."""
    return "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "UCA_SELFTEST_CACHE": "0", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_the_library_depends_on_torch_and_numpy_only():
    assert _names(PYPROJECT["project"]["dependencies"]) == {"torch", "numpy"}


def test_the_model_extra_is_what_the_cli_checks():
    from uca_model.cli import MODEL_EXTRA

    extras = PYPROJECT["project"]["optional-dependencies"]
    assert _names(extras["model"]) == set(MODEL_EXTRA.values())
    assert set(MODEL_EXTRA) == set(MODEL_ONLY)
    assert {"pytest", "hypothesis"} <= _names(extras["test"])


def test_every_package_is_shipped():
    from setuptools import find_packages

    rule = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    shipped = set(find_packages(where=str(ROOT), include=rule["include"]))
    on_disk = {p.parent.relative_to(ROOT).as_posix().replace("/", ".")
               for top in ("uca_kernels", "uca_model") for p in (ROOT / top).rglob("__init__.py")}
    assert on_disk <= shipped, f"packages not shipped: {sorted(on_disk - shipped)}"
    assert all(p.split(".")[0] in ("uca_kernels", "uca_model") for p in shipped), sorted(shipped)


def test_uca_kernels_works_without_the_model_extra_or_triton():
    code = _block(MODEL_ONLY + ("triton",)) + (
        "import torch, uca_kernels as uk\n"
        "mu, lv = torch.randn(6, 4, dtype=torch.float64, requires_grad=True), torch.zeros(6, 4, dtype=torch.float64)\n"
        "loss = uk.distribution_contrast_loss(mu, lv, mu.detach(), lv, metric='w2', loss='sdm', backend='reference')\n"
        "loss.backward()\n"
        "print('ok', float(loss), bool(torch.isfinite(mu.grad).all()))\n"
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ") and done.stdout.split()[-1] == "True", done.stdout


def test_uca_kernels_imports_none_of_the_model_packages():
    # torch itself imports some of them when they are installed (tqdm); what counts is what the library adds
    done = _run("import sys, torch\n"
                f"before = {{m for m in {MODEL_ONLY!r} if m in sys.modules}}\n"
                "import uca_kernels\n"
                f"print(' '.join(sorted({{m for m in {MODEL_ONLY!r} if m in sys.modules}} - before)) or 'none')")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none", f"importing uca_kernels imported {done.stdout.strip()}"


@pytest.mark.parametrize("missing", [("transformers",), ("PIL", "matplotlib")])
def test_uca_names_the_missing_extra(missing, monkeypatch, capsys):
    from uca_model import cli

    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "uca needs the model extra" in err and "pip install 'uca[model]'" in err, err
    for name in missing:
        assert cli.MODEL_EXTRA[name] in err, err  # the distribution to install, e.g. pillow for PIL


def test_uca_command_without_the_model_extra_is_one_line_not_a_traceback():
    done = _run(_block(MODEL_ONLY) + "import runpy\nsys.argv = ['uca', 'demo']\nrunpy.run_module('uca_model', run_name='__main__')")
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().startswith("uca: error: uca needs the model extra"), done.stderr
