"""CI-sized benchmarks (seconds in all) with pytest-benchmark, apart from the correctness tests.

    pytest benchmarks/test_benchmarks.py --benchmark-enable                      # time them
    pytest benchmarks/test_benchmarks.py --benchmark-enable --benchmark-json out.json
    pytest benchmarks/test_benchmarks.py                                         # smoke run only

The project's pytest settings pass ``--benchmark-disable`` (the correctness suite must not spend
time benchmarking), so without ``--benchmark-enable`` each case runs once, as a smoke test. Every
provider is checked against the float64 reference before it is benchmarked (the four-matmul
floor, which computes no loss, is only timed); the device is CUDA when one is visible, else the
CPU. Cases: :data:`benchmarks.cases.CI_CASES` at B = 128 (the sigmoid cases included).

Also here: open_clip's ``SigLipLoss`` (when installed) gives the same value as the library's
sigmoid loss on the clip-sigmoid case, with no normalisation factor between them.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import uca_kernels

from .cases import CI_CASES, Case, make_inputs
from .harness import INPUT_KEYS, check, make_step
from .providers import FLOOR, FUSED, skip_reason

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B = 128
PROVIDERS = (*FUSED, "reference", "naive", "open_clip", FLOOR)


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


def test_open_clip_siglip_equals_library_sigmoid():
    """open_clip's SigLipLoss (3.3.0, world_size = 1) computes −Σᵢⱼ logsigmoid(yᵢⱼ Sᵢⱼ) / B with
    S = logit_scale · img @ txtᵀ + logit_bias on the features as given (its model normalises them and
    passes logit_scale already exponentiated) and y = 2I − 1. That is the library's sigmoid "mean"
    normalisation (Σᵢⱼ ℓᵢⱼ / M, each pair once): the values agree with factor 1 — not 2, as a
    mean over rows plus mean over columns would give, nor 1/B, as a mean over the B² pairs would.
    Checked for the fused ``cpu`` backend (and the reference), loss and both gradients, at B = 96."""
    pytest.importorskip("open_clip", reason="open_clip is not installed (pip install -r benchmarks/requirements.txt)")
    from open_clip.loss import SigLipLoss

    n, d, scale, bias = 96, 48, 10.0, -10.0  # SigLIP's initial scale and bias
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    txt = F.normalize(img + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)  # pairs stand out

    # normalised as their model does (F.normalize before the loss), so that the gradients, too, are
    # those of the library's point loss (which normalises its points itself)
    a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
    theirs = SigLipLoss(rank=0, world_size=1)(F.normalize(a, dim=1), F.normalize(b, dim=1),
                                              torch.tensor(scale, dtype=torch.float64),
                                              torch.tensor(bias, dtype=torch.float64))
    theirs.backward()
    pairs = -F.logsigmoid((2 * torch.eye(n, dtype=torch.float64) - 1) * (scale * img @ txt.T + bias))
    torch.testing.assert_close(theirs.detach(), pairs.sum() / n)  # their normalisation, stated: Σᵢⱼ ℓᵢⱼ / B

    for backend in ("reference", "cpu"):
        reason = skip_reason(backend, Case("clip", d, True, loss="sigmoid", diagonal=True), "cpu")
        if reason:
            pytest.skip(f"{backend}: {reason}")
        # the library's public point loss with K = 1, σ = 1 and ε = 0: the points are the features
        # (already unit-norm, so its normalisation changes nothing); inter-modal only, diagonal labels
        va, vb = img.float().clone().requires_grad_(), txt.float().clone().requires_grad_()
        zero, eps = torch.zeros(n, d), torch.zeros(n, 1, d)
        ours = uca_kernels.point_contrast_loss(va, zero, vb, zero, labels=None, num_samples=1, eps_v=eps,
                                               eps_t=eps, scale=scale, loss="sigmoid", intra=False,
                                               backend=backend, bias=bias)["total"]
        ours.backward()
        torch.testing.assert_close(ours.double(), theirs.detach(), rtol=1e-5, atol=0)
        torch.testing.assert_close(va.grad.double(), a.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(vb.grad.double(), b.grad, rtol=1e-4, atol=1e-6)


def test_open_clip_provider_equals_library_on_the_case():
    """The benchmark's open_clip provider and the fused cpu provider on the clip-sigmoid case's own
    inputs (sampled points, normalised, SigLIP-like scale and bias): one value."""
    pytest.importorskip("open_clip", reason="open_clip is not installed (pip install -r benchmarks/requirements.txt)")
    from .providers import loss_fn

    case = Case("clip", 64, False, loss="sigmoid", diagonal=True)
    x = make_inputs(case, B, "cpu", torch.float64)
    provider = "cpu" if skip_reason("cpu", case, "cpu") is None else "reference"
    torch.testing.assert_close(loss_fn(provider, case, x).double(), loss_fn("open_clip", case, x), rtol=1e-9, atol=0)
