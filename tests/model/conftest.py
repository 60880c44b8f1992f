"""Fixtures shared by the model tests."""

import json

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine they lose a lot: modules
    that train opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny SynthPedes and a one-epoch run trained through ``uca train`` (once per session: the
    end-to-end tests of ``uca eval`` / ``uca search`` in several modules share it; they must not
    change the run, only read it or copy it)."""
    from uca_model import cli
    from uca_model.config import to_dict
    from uca_model.presets import smoke_config
    from uca_model.synth import generate_synthpedes

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # set up before any module's one_thread (session scope comes first)
    try:
        tmp = tmp_path_factory.mktemp("cli")
        data = tmp / "tiny"
        generate_synthpedes(data, "tiny", seed=0, progress=False)
        cfg_path = tmp / "smoke.json"
        cfg_path.write_text(json.dumps(to_dict(smoke_config(data))))
        run = tmp / "run"
        assert cli.main(["train", "--config", str(cfg_path), "--out", str(run), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(n)
    return {"tmp": tmp, "data": data, "config": cfg_path, "run": run}
