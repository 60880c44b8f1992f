"""Finiteness checks off the training hot path: no host sync per step, the same named errors."""

from __future__ import annotations

import pytest
import torch

import uca_kernels
import uca_kernels._validation as val
from uca_model.model import UCAModel

from test_model_parts import SPECIAL, VOCAB, _batch, _tiny_model_cfg  # noqa: E402 (same folder)


@pytest.fixture
def sync_counter(monkeypatch):
    calls = []
    real = val._host_bools

    def counting(flags):
        calls.append(flags.numel())
        return real(flags)

    monkeypatch.setattr(val, "_host_bools", counting)
    return calls


def _step(model, batch):
    terms = model(batch)["terms"]
    total = sum(w * terms[k] for k, w in model.loss_weights().items())
    total.backward()
    return total


def test_a_training_step_syncs_only_when_checks_are_immediate(sync_counter):
    torch.manual_seed(0)
    model = UCAModel(_tiny_model_cfg(), vocab_size=VOCAB, special=SPECIAL, num_train_ids=4)
    _step(model, _batch())
    immediate = len(sync_counter)
    assert immediate >= 4  # every checked input of every loss term waited for the device
    sync_counter.clear()
    finite = uca_kernels.FiniteChecks()
    for _ in range(3):
        with uca_kernels.deferred_finite_checks(finite):
            _step(model, _batch())
    assert sync_counter == []  # three steps, no sync
    finite.check()
    assert len(sync_counter) == 1  # one sync for all of them


def test_deferred_checks_still_name_the_bad_input():
    mu = torch.randn(4, 3)
    lv = torch.zeros(4, 3)
    bad = mu.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="mu_v contains 1 non-finite"):
        uca_kernels.distribution_contrast_loss(bad, lv, mu, lv, backend="reference")
    finite = uca_kernels.FiniteChecks()
    with uca_kernels.deferred_finite_checks(finite):
        uca_kernels.distribution_contrast_loss(mu, lv, mu, lv, backend="reference")
        uca_kernels.distribution_contrast_loss(bad, lv, mu, lv, backend="reference")  # no raise here
        uca_kernels.distribution_contrast_loss(mu, lv, mu, lv, backend="reference")
    with pytest.raises(ValueError, match=r"^mu_v contained non-finite value\(s\)"):
        finite.check()
    finite.check()  # flags start over after a check
    # outside the block, checks are immediate again
    with pytest.raises(ValueError, match="mu_v contains 1 non-finite"):
        uca_kernels.distribution_contrast_loss(bad, lv, mu, lv, backend="reference")
