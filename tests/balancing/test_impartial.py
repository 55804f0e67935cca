"""IMTL-L: ``L = sum_t exp(s_t) L_t - s_t``; weight ``exp(s_t)``, optimum ``exp(s_t) = 1/L_t``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtl_lightning.balancing import ImpartialLossWeighting, TaskLosses

from .test_loss_weighting import bound, make_losses


def test_imtl_l_weights_are_exp_of_the_scales_and_the_scales_get_exp_s_l_minus_1() -> None:
    balancer = bound(ImpartialLossWeighting(init_log_scale=0.5), ["a", "b"])
    combination = balancer.combine(make_losses({"a": 2.0, "b": 0.25})[0], step=0)
    assert float(combination.weights["a"]) == pytest.approx(math.exp(0.5))
    assert float(combination.value) == pytest.approx(math.exp(0.5) * 2.25 - 1.0)
    combination.loss.backward()
    for task, loss in (("a", 2.0), ("b", 0.25)):
        grad = balancer.scalarizers[task].log_scale.grad
        assert float(grad) == pytest.approx(math.exp(0.5) * loss - 1.0)


def test_imtl_l_brings_every_scaled_loss_to_one() -> None:
    """Fixed losses of very different scales: the learned weights become 1 / L_t."""
    values = {"a": 0.05, "b": 20.0}
    balancer = bound(ImpartialLossWeighting(), list(values))
    optimizer = torch.optim.Adam(balancer.parameters(), lr=0.05)
    for step in range(600):
        losses = TaskLosses.gather({t: torch.tensor(v) for t, v in values.items()},
                                   dict.fromkeys(values, torch.tensor(4)))
        combination = balancer.combine(losses, step)
        optimizer.zero_grad()
        combination.loss.backward()
        optimizer.step()
    for task, value in values.items():
        assert float(combination.weights[task]) * value == pytest.approx(1.0, rel=0.05)
    assert isinstance(balancer.scalarizers["a"], nn.Module)


def test_imtl_l_leaves_an_absent_tasks_scale_alone() -> None:
    balancer = bound(ImpartialLossWeighting(init_log_scale=0.3), ["a", "b"])
    losses, _ = make_losses({"a": 2.0, "b": 1.0}, counts={"a": 4, "b": 0})
    balancer.combine(losses, step=0).loss.backward()
    assert balancer.scalarizers["b"].log_scale.grad is None or float(
        balancer.scalarizers["b"].log_scale.grad) == 0.0
