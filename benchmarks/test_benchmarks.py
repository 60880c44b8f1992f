"""CI-sized benchmarks (seconds in all) with pytest-benchmark, apart from the correctness tests.

    pytest benchmarks/test_benchmarks.py --benchmark-enable                      # time them
    pytest benchmarks/test_benchmarks.py --benchmark-enable --benchmark-json out.json
    pytest benchmarks/test_benchmarks.py                                         # smoke run only

The project's pytest settings pass ``--benchmark-disable`` (the correctness suite must not spend
time benchmarking), so without ``--benchmark-enable`` each case runs once, as a smoke test. Every
provider is checked against the float64 reference before it is benchmarked; the device is CUDA
when one is visible, else the CPU. Cases: :data:`benchmarks.cases.CI_CASES` at B = 128.
"""

from __future__ import annotations

import pytest
import torch

from .cases import CI_CASES, make_inputs
from .harness import INPUT_KEYS, check, make_step
from .providers import FUSED, skip_reason

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B = 128
PROVIDERS = (*FUSED, "reference", "naive")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", CI_CASES, ids=lambda c: c.name)
def test_benchmark(benchmark, case, provider):
    reason = skip_reason(provider, case, DEVICE)
    if reason:
        pytest.skip(reason)
    chk = check(provider, case, B, DEVICE)
    assert chk["check_ok"], chk["reason"]
    x = make_inputs(case, B, DEVICE)
    step = make_step(provider, case, x)

    def call():
        step()
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    def reset():
        for k in INPUT_KEYS:
            x[k].grad = None

    benchmark.group = case.name
    benchmark.extra_info.update(provider=provider, case=case.name, B=B, device=DEVICE, gflop=case.flops(B) / 1e9,
                                check_err=chk["check_err"])
    benchmark.pedantic(call, setup=reset, rounds=10, warmup_rounds=1, iterations=1)
