"""The self-test rule (docs/design.md section 3, uca_kernels/selftest.py): ``auto`` picks a fused backend only
after it has passed its self-test on the device kind; the verdict is cached; a failing backend is
skipped with a reason naming it."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import uca_kernels as uk
from uca_kernels import _ext, backends, dispatch, info, selftest
from uca_kernels.selftest import SelftestWarning

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not _ext.has_op("contrast_forward"),
                                reason=f"uca_kernels._C not loaded: {_ext.load_error()}")


class WrongBackend(backends.CpuBackend):
    """The cpu kernels with a row loss 1 % too large: what a racy kernel looks like from outside."""

    def contrast(self, *args):
        rows, cols = super().contrast(*args)
        return rows * 1.01, cols


class RaisingBackend(backends.CpuBackend):
    def contrast(self, *args):
        raise RuntimeError("illegal memory access (simulated)")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache folder and an empty process memo (restored afterwards), self-tests on."""
    monkeypatch.setenv("UCA_SELFTEST_CACHE", str(tmp_path))
    monkeypatch.delenv("UCA_SELFTEST", raising=False)
    monkeypatch.delenv("UCA_SELFTEST_ISOLATE", raising=False)
    monkeypatch.delenv("UCA_BACKEND", raising=False)
    saved = dict(selftest._MEMO)
    selftest.clear_memo()
    yield tmp_path / "selftest.json"
    selftest.clear_memo()
    selftest._MEMO.update(saved)


@pytest.fixture
def runs(monkeypatch):
    """Counts the self-tests actually run (in-process)."""
    calls = []
    real = selftest.run_selftest

    def counting(backend, device=None):
        calls.append((backend, str(device)))
        return real(backend, device)

    monkeypatch.setattr(selftest, "run_selftest", counting)
    return calls


def register(monkeypatch, impl):
    """Put ``impl`` first in auto's priority for this test."""
    monkeypatch.setitem(dispatch._BACKENDS, impl.name, impl)
    monkeypatch.setattr(dispatch, "PRIORITY", (impl.name,) + dispatch.PRIORITY)


def probe(n=6):
    return torch.randn(n, 4)


def test_cpu_backend_passes_its_selftest():
    rng = torch.get_rng_state()
    v = selftest.run_selftest("cpu", "cpu")
    assert v.ok, v.reason + "\n" + "\n".join(v.details)
    assert v.backend == "cpu" and v.device.startswith("cpu: ")
    for dtype in ("float64", "float32", "bfloat16", "float16"):
        for loss in uk.LOSSES:
            ok_line = f"{dtype} {loss}: {len(selftest.CASES)} shapes ok"
            assert any(d.startswith(ok_line) for d in v.details), (dtype, loss)
    assert torch.equal(torch.get_rng_state(), rng), "the self-test must not consume the global RNG"
    assert v.seconds < 30


def test_failing_backend_is_skipped_with_its_reason(cache, runs, monkeypatch):
    register(monkeypatch, WrongBackend("wrong"))
    A = probe()
    with pytest.warns(SelftestWarning, match=r"backend 'wrong' failed its self-test on cpu: .*loss_rows error"):
        chosen = dispatch.select("auto", A=A, B=A, loss="sdm", exclude_self=False)
    assert chosen.name == "cpu"  # the next backend, itself self-tested
    assert [b for b, _ in runs] == ["wrong", "cpu"]
    reasons = dispatch.auto_reasons(A=A, B=A, loss="infonce", exclude_self=False)
    assert reasons["wrong"] and reasons["wrong"][0].startswith("failed its self-test on cpu: ")
    assert reasons["cpu"] == [] and reasons["reference"] == []
    with warnings.catch_warnings():  # one warning per process, not per call
        warnings.simplefilter("error", SelftestWarning)
        rows, _ = uk.contrast(A, A, torch.zeros(6), torch.zeros(6), loss="sigmoid")
    assert len(runs) == 2
    # an explicit choice is trusted: no self-test, the (wrong) backend runs
    assert dispatch.select("wrong", A=A, B=A, loss="sdm", exclude_self=False).name == "wrong"
    assert len(runs) == 2


def test_backend_whose_kernels_raise_fails(cache, monkeypatch):
    register(monkeypatch, RaisingBackend("raises"))
    v = selftest.run_selftest("raises", "cpu")
    assert not v.ok and "raised RuntimeError: illegal memory access (simulated)" in v.reason


def test_no_backend_left_lists_the_failed_selftest(cache, monkeypatch):
    register(monkeypatch, WrongBackend("wrong"))
    monkeypatch.setattr(dispatch, "PRIORITY", ("wrong",))
    A = probe()
    with pytest.warns(SelftestWarning), pytest.raises(ValueError, match=r"wrong: failed its self-test on cpu"):
        dispatch.select("auto", A=A, B=A, loss="sdm", exclude_self=False)


def test_cache_is_written_and_reused(cache, runs):
    v = selftest.verdict("cpu", "cpu")
    assert v.ok and v.source == "run" and len(runs) == 1
    data = json.loads(cache.read_text())
    key = selftest.cache_key("cpu", "cpu")
    assert data["format"] == selftest.CACHE_FORMAT and data["verdicts"][key]["ok"] is True
    for part in ("backend=cpu", f"torch={torch.__version__}", "extension=", "device=cpu: "):
        assert part in key
    assert selftest.verdict("cpu", "cpu") is v  # the process memo
    selftest.clear_memo()  # a new process: reads the file, does not re-run
    again = selftest.verdict("cpu", "cpu")
    assert again.ok and again.source == "cache" and again.details == v.details and len(runs) == 1


def test_new_kernel_code_means_a_new_selftest(cache, runs, monkeypatch):
    selftest.verdict("cpu", "cpu")
    selftest.clear_memo()
    monkeypatch.setattr(backends.CpuBackend, "fingerprint", lambda self: {"extension": "rebuilt"})
    assert selftest.verdict("cpu", "cpu").source == "run" and len(runs) == 2
    assert len(json.loads(cache.read_text())["verdicts"]) == 2  # merged, not overwritten


def test_failed_verdict_is_cached_too(cache, runs, monkeypatch):
    register(monkeypatch, WrongBackend("wrong"))
    with pytest.warns(SelftestWarning):
        assert not selftest.verdict("wrong", "cpu").ok
    selftest.clear_memo()
    with pytest.warns(SelftestWarning, match="'wrong' failed"):  # each process warns once, from the cache
        v = selftest.verdict("wrong", "cpu")
    assert v.source == "cache" and not v.ok and len(runs) == 1


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 99, "verdicts": {}}), json.dumps([1, 2])])
def test_corrupt_cache_file_is_ignored_with_a_warning(cache, runs, content):
    cache.write_text(content)
    with pytest.warns(SelftestWarning, match="corrupt self-test cache"):
        v = selftest.verdict("cpu", "cpu")
    assert v.ok and v.source == "run" and len(runs) == 1
    assert json.loads(cache.read_text())["verdicts"][selftest.cache_key("cpu", "cpu")]["ok"] is True  # rewritten


def test_malformed_entry_is_ignored_with_a_warning(cache, runs):
    key = selftest.cache_key("cpu", "cpu")
    cache.write_text(json.dumps({"format": selftest.CACHE_FORMAT, "verdicts": {key: {"ok": "yes"}}}))
    with pytest.warns(SelftestWarning, match="malformed entry"):
        assert selftest.verdict("cpu", "cpu").source == "run"
    assert len(runs) == 1


@pytest.mark.parametrize("value", ["0", "off"])
def test_env_var_disables_the_cache(cache, runs, monkeypatch, tmp_path, value):
    monkeypatch.setenv("UCA_SELFTEST_CACHE", value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert selftest.cache_path() is None
    assert selftest.verdict("cpu", "cpu").ok and selftest.verdict("cpu", "cpu").ok
    assert len(runs) == 1  # once per process
    selftest.clear_memo()
    selftest.verdict("cpu", "cpu")
    assert len(runs) == 2  # nothing was kept on disk
    assert not (tmp_path / "xdg").exists() and not cache.exists()


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("UCA_SELFTEST_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert selftest.cache_path() == tmp_path / "uca" / "selftest.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert selftest.cache_path() == Path.home() / ".cache" / "uca" / "selftest.json"
    monkeypatch.setenv("UCA_SELFTEST_CACHE", str(tmp_path / "verdicts.json"))
    assert selftest.cache_path() == tmp_path / "verdicts.json"
    monkeypatch.setenv("UCA_SELFTEST_CACHE", str(tmp_path / "some" / "folder"))
    assert selftest.cache_path() == tmp_path / "some" / "folder" / "selftest.json"


def test_uca_selftest_0_skips_selftests_and_trusts(cache, runs, monkeypatch):
    monkeypatch.setenv("UCA_SELFTEST", "0")
    register(monkeypatch, WrongBackend("wrong"))
    A = probe()
    assert dispatch.select("auto", A=A, B=A, loss="sdm", exclude_self=False).name == "wrong"
    assert runs == [] and not cache.exists()
    assert selftest.verdict("wrong", "cpu").source == "skipped"


def test_selftest_runs_under_no_grad_inference_mode_and_compile(cache, runs):
    """The first auto call may come from an eval loop or from torch.compile's tracing."""
    with torch.inference_mode():
        A = probe()
        rows, _ = uk.contrast(A, A, torch.zeros(6), torch.zeros(6))
    assert len(runs) == 1 and selftest.verdict("cpu", "cpu").ok
    selftest.clear_memo()
    cache.unlink()  # a fresh machine
    torch._dynamo.reset()
    A, B = probe(), probe()

    def f(A, B):
        rows, cols = uk.contrast(A, B, torch.zeros(6), torch.zeros(6), 0.5, 0.0, loss="infonce")
        return rows.sum() + cols.sum()

    with torch.no_grad():
        got = torch.compile(f, fullgraph=True, backend="aot_eager")(A, B)
    assert len(runs) == 2  # run (eagerly) while tracing, a constant in the graph
    torch.testing.assert_close(got, f(A, B))


def test_isolated_selftest_runs_in_a_child_process(cache, runs, monkeypatch):
    """What CUDA devices do by default (a faulting kernel cannot poison this process's context)."""
    monkeypatch.setenv("UCA_SELFTEST_ISOLATE", "1")
    v = selftest.verdict("cpu", "cpu")
    assert v.ok and v.source == "run" and runs == [], v.reason
    assert json.loads(cache.read_text())["verdicts"][selftest.cache_key("cpu", "cpu")]["ok"] is True


def test_cli_exits_0_for_cpu(tmp_path):
    env = dict(os.environ, UCA_SELFTEST_CACHE=str(tmp_path), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "uca_kernels.selftest", "--backend", "cpu"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cpu on cpu: " in proc.stdout and "passed in" in proc.stdout
    assert (tmp_path / "selftest.json").exists()  # the command line records its verdict


def test_cli_exits_1_on_failure_and_json(cache, monkeypatch, capsys):
    register(monkeypatch, WrongBackend("wrong"))
    assert selftest.main(["--backend", "wrong", "--backend", "cpu", "--json", "--no-cache"]) == 1
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(v["backend"], v["ok"]) for v in out] == [("wrong", False), ("cpu", True)]
    assert "loss_rows error" in out[0]["reason"] and not cache.exists()
    assert selftest.main(["--backend", "cuda", "--device", "meta", "--no-cache"]) == 1  # cannot run: a failure


def test_cli_rejects_a_device_that_is_not_one(capsys):
    """``--device gpu`` is a usage error naming the flag (exit 2), not a torch traceback."""
    with pytest.raises(SystemExit) as e:
        selftest.main(["--device", "gpu", "--no-cache"])
    assert e.value.code == 2
    assert "--device 'gpu' is not a torch device (e.g. cpu, cuda, cuda:1)" in capsys.readouterr().err


def test_info_prints_the_verdicts(cache, runs, monkeypatch, capsys):
    register(monkeypatch, WrongBackend("wrong"))
    assert info.main([]) == 0
    out = capsys.readouterr().out
    assert "verdict cache: " + str(cache) in out
    assert "cpu        usable; self-test on cpu: " in out and "passed in" in out
    assert "wrong      usable; self-test on cpu: " in out and "FAILED (float64 sdm 1x1x3 diag: loss_rows error" in out
    assert len(runs) == 2
    selftest.clear_memo()  # another process: the verdicts come from the file
    assert info.main([]) == 0
    assert capsys.readouterr().out.count("[cached]") == 2 and len(runs) == 2


def test_auto_on_a_gpu_picks_the_backend_with_the_faster_speed_probe(monkeypatch):
    """Among GPU backends that passed their self-test, auto picks the faster speed probe (a backend not
    timed counts as slowest); PRIORITY's order decides only between equal timings."""
    cuda_inputs = dict(A=SimpleNamespace(device=torch.device("cuda")), B=None, loss="sdm", exclude_self=False)
    monkeypatch.setattr(dispatch, "_auto_reasons", lambda impl, kwargs: [])
    for timings, want in [({"triton": 30.0, "cuda": 12.0}, "cuda"), ({"triton": 12.0, "cuda": 30.0}, "triton"),
                          ({"triton": float("inf"), "cuda": 5.0}, "cuda"), ({"triton": 7.0, "cuda": 7.0}, "triton")]:
        monkeypatch.setattr(dispatch, "_probe_ms", lambda name, device, t=timings: t[name])
        assert dispatch._fastest_gpu_backend("triton", cuda_inputs).name == want, timings
    # CPU inputs: the first usable backend, no timing asked
    monkeypatch.setattr(dispatch, "_probe_ms", lambda name, device: pytest.fail("timed a CPU backend"))
    cpu_inputs = dict(cuda_inputs, A=torch.zeros(2, 2))
    assert dispatch._fastest_gpu_backend("cpu", cpu_inputs).name == "cpu"


def test_verdict_keeps_its_speed_probe_through_the_cache():
    v = selftest.Verdict(True, backend="triton", device="NVIDIA H100", probe_ms=3.25)
    back = selftest.Verdict.from_json(v.to_json())
    assert back.probe_ms == 3.25 and "speed probe 3.25 ms" in dataclasses.replace(back, source="cache").summary()
    assert selftest.Verdict.from_json({"ok": True}).probe_ms is None
    with pytest.raises(ValueError, match="malformed"):
        selftest.Verdict.from_json({"ok": True, "probe_ms": "fast"})
