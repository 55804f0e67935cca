"""STCH weights the tasks by the gradient of the smooth Tchebycheff scalarisation.

Lin et al. 2024, Eq. 6: ``f = m mu log sum_t exp(lambda_t f_t / mu)`` with ``f_t = log(l_t /
n_t)`` (the nadir ``n_t`` from the warm-up): task ``t``'s weight is
``m lambda_t softmax(lambda f / mu)_t / l_t``. Computed here by hand.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from mtl_lightning.balancing import SmoothTchebycheff

from .test_loss_weighting import bound, make_losses, weights_of

TASKS = ["a", "b", "c"]
LOSSES = {"a": 1.0, "b": 2.0, "c": 4.0}


def test_stch_weights_the_worst_task_most() -> None:
    # mu = 1/2: softmax(2 log l) = l^2 / sum l^2 = [1, 4, 16] / 21; weight 3 l / 21.
    balancer = bound(SmoothTchebycheff(mu=0.5), TASKS)
    combination = balancer.combine(make_losses(LOSSES)[0], step=0)
    expected = torch.tensor([3 / 21, 6 / 21, 12 / 21], dtype=torch.float64)
    torch.testing.assert_close(weights_of(combination.weights, TASKS), expected)
    assert float(combination.value) == pytest.approx(3 * 0.5 * math.log(21))


def test_stch_approaches_the_tchebycheff_max_as_mu_falls() -> None:
    # Plain losses, preference 1, 1, 0.25: lambda l = 1, 2, 1 -> all the weight on b.
    balancer = bound(SmoothTchebycheff(mu=0.01, log_losses=False,
                                       preference={"c": 0.25}), TASKS)
    combination = balancer.combine(make_losses(LOSSES)[0], step=0)
    weights = weights_of(combination.weights, TASKS)
    torch.testing.assert_close(weights, torch.tensor([0.0, 3.0, 0.0], dtype=torch.float64),
                               atol=1e-6, rtol=0)
    assert float(combination.value) == pytest.approx(3 * 2.0, abs=1e-3)


def test_stch_warm_up_sums_log_losses_then_uses_their_mean_as_the_nadir() -> None:
    balancer = bound(SmoothTchebycheff(mu=1.0, warmup_steps=2), TASKS)
    seen = [{"a": 1.0, "b": 2.0, "c": 4.0}, {"a": 3.0, "b": 2.0, "c": 8.0}]
    for step, values in enumerate(seen):
        combination = balancer.combine(make_losses(values)[0], step=step)
        expected = torch.tensor([1 / values[t] for t in TASKS], dtype=torch.float64)
        torch.testing.assert_close(weights_of(combination.weights, TASKS), expected)
    # Nadir: a 2, b 2, c 6. At losses 1, 4, 3: f = log(1/2), log 2, log(1/2);
    # softmax(f) = [1/2, 2, 1/2] / 3; weight 3 softmax_t / l_t.
    combination = balancer.combine(make_losses({"a": 1.0, "b": 4.0, "c": 3.0})[0], step=2)
    expected = torch.tensor([0.5 / 1, 2 / 4, 0.5 / 3], dtype=torch.float64)
    torch.testing.assert_close(weights_of(combination.weights, TASKS), expected)
    # The nadir survives a weights-only checkpoint.
    buffer = io.BytesIO()
    torch.save(balancer.state_dict(), buffer)
    buffer.seek(0)
    restored = bound(SmoothTchebycheff(mu=1.0, warmup_steps=2), TASKS)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    again = restored.combine(make_losses({"a": 1.0, "b": 4.0, "c": 3.0})[0], step=2)
    torch.testing.assert_close(weights_of(again.weights, TASKS), expected)


def test_stch_with_a_task_absent_uses_the_present_ones() -> None:
    balancer = bound(SmoothTchebycheff(mu=0.5), TASKS)
    combination = balancer.combine(make_losses({"a": 1.0, "c": 4.0})[0], step=0)
    # softmax(2 log l) = [1, 16] / 17; weight 2 l / 17.
    torch.testing.assert_close(weights_of(combination.weights, ["a", "c"]),
                               torch.tensor([2 / 17, 8 / 17], dtype=torch.float64))
