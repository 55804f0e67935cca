"""Loss weightings give the weights their papers define, on known inputs.

Each method is a scalarizer ``f`` of the task losses and its weights are ``df/dL_t`` at the
global losses; these tests compute the expected weights by hand (or with torchjd's own
scalarizer fed the same values) and compare.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchjd.scalarization import DWA, FAMO

from mtl_lightning.balancing import (
    DynamicWeightAverage,
    FastAdaptiveMultitask,
    GeometricLossStrategy,
    ImpartialLossWeighting,
    LossWeighting,
    RandomLossWeighting,
    SmoothTchebycheff,
    StaticWeighting,
    TaskLosses,
    UncertaintyWeighting,
)


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    """One thread: these tensors are tiny, and threads only add overhead on a busy machine."""
    torch.set_num_threads(1)


def make_losses(
    values: dict[str, float], counts: dict[str, int] | None = None
) -> tuple[TaskLosses, dict[str, torch.Tensor]]:
    """Single-process ``TaskLosses`` from plain values, and the leaves they were made from
    (so that ``d combination.loss / d L_t`` can be read off after a backward)."""
    leaves = {t: torch.tensor(float(v), requires_grad=True) for t, v in values.items()}
    counts = counts or dict.fromkeys(values, 4)
    gathered = TaskLosses.gather(dict(leaves), {t: torch.tensor(counts[t]) for t in values})
    return gathered, leaves


def weights_of(combination_weights: dict[str, torch.Tensor], tasks: list[str]) -> torch.Tensor:
    return torch.stack([combination_weights[t].double() for t in tasks])


def bound(balancer: LossWeighting, tasks: list[str]) -> LossWeighting:
    balancer.bind(tasks)
    return balancer


# ------------------------------------------------------------------ the common contract
@pytest.mark.parametrize("make", [
    lambda: StaticWeighting(weights={"b": 3.0}, default_weight=0.5),
    UncertaintyWeighting,
    DynamicWeightAverage,
    RandomLossWeighting,
    GeometricLossStrategy,
    FastAdaptiveMultitask,
    SmoothTchebycheff,
    ImpartialLossWeighting,
], ids=["static", "uncertainty", "dwa", "rlw", "gls", "famo", "stch", "imtl_l"])
def test_backpropagated_loss_weights_each_task_by_its_reported_weight(make) -> None:
    """What reaches each task's loss in the backward is exactly the logged weight."""
    balancer = bound(make(), ["a", "b", "c"])
    losses, leaves = make_losses({"a": 0.7, "b": 2.0, "c": 5.0})
    combination = balancer.combine(losses, step=3)
    combination.loss.backward()
    for task, leaf in leaves.items():
        assert leaf.grad is not None
        assert float(leaf.grad) == pytest.approx(float(combination.weights[task]), rel=1e-5)
        assert math.isfinite(float(combination.weights[task]))


def test_a_task_labelled_nowhere_is_dropped_but_stays_in_the_graph() -> None:
    balancer = bound(GeometricLossStrategy(), ["a", "b"])
    losses, leaves = make_losses({"a": 2.0, "b": 0.0}, counts={"a": 4, "b": 0})
    assert losses.tasks == ("a",) and set(losses.unlabelled) == {"b"}
    combination = balancer.combine(losses, step=0)
    assert set(combination.weights) == {"a"}
    combination.loss.backward()
    assert float(leaves["b"].grad) == 0.0  # in the graph (DDP sees the head used), weight 0
    assert float(combination.weights["a"]) == pytest.approx(1.0)  # GM of one loss is itself


# ------------------------------------------------------------------------------ static
def test_static_weights_are_the_configured_ones() -> None:
    balancer = bound(StaticWeighting(weights={"b": 3.0}, default_weight=0.5), ["a", "b", "c"])
    losses, _ = make_losses({"a": 1.0, "b": 2.0, "c": 4.0})
    combination = balancer.combine(losses, step=0)
    assert weights_of(combination.weights, ["a", "b", "c"]).tolist() == [0.5, 3.0, 0.5]
    assert float(combination.value) == pytest.approx(0.5 * 1 + 3 * 2 + 0.5 * 4)


# -------------------------------------------------------------------------------- GLS
def test_geometric_loss_strategy_weights_are_gm_over_m_times_loss() -> None:
    balancer = bound(GeometricLossStrategy(), ["a", "b", "c"])
    values = {"a": 1.0, "b": 4.0, "c": 16.0}
    combination = balancer.combine(make_losses(values)[0], step=0)
    gm = (1.0 * 4.0 * 16.0) ** (1 / 3)
    assert float(combination.value) == pytest.approx(gm)
    for task, loss in values.items():
        assert float(combination.weights[task]) == pytest.approx(gm / (3 * loss), rel=1e-5)


# -------------------------------------------------------------------------------- RLW
def test_random_loss_weights_are_a_seeded_draw_on_the_simplex() -> None:
    balancer = bound(RandomLossWeighting(), ["a", "b", "c"])
    tasks = ["a", "b", "c"]

    def draw(step: int, global_seed: int) -> torch.Tensor:
        torch.manual_seed(global_seed)  # the draw must not depend on the global RNG
        losses, _ = make_losses({"a": 1.0, "b": 2.0, "c": 3.0})
        return weights_of(balancer.combine(losses, step).weights, tasks)

    first = draw(step=5, global_seed=0)
    assert (first > 0).all()
    assert float(first.sum()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(draw(step=5, global_seed=123), first)  # same step, same draw
    others = [draw(step=s, global_seed=0) for s in range(6, 12)]
    assert all(not torch.allclose(first, other) for other in others)
    # The draw does not consume the global generator.
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    balancer.combine(make_losses({"a": 1.0, "b": 2.0, "c": 3.0})[0], step=9)
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------------ uncertainty
def test_uncertainty_weights_converge_to_inverse_noise_variances() -> None:
    """Kendall et al.: at the optimum exp(s_t) = L_t -> sigma_t^2, weight 1/2 exp(-s_t)."""
    generator = torch.Generator().manual_seed(0)
    n, d, sigmas = 2000, 8, {"a": 0.5, "b": 2.0}
    x = torch.randn(n, d, generator=generator)
    targets = {
        t: x @ torch.randn(d, generator=generator) + s * torch.randn(n, generator=generator)
        for t, s in sigmas.items()
    }
    shared = nn.Linear(d, d)
    heads = nn.ModuleDict({t: nn.Linear(d, 1) for t in sigmas})
    balancer = bound(UncertaintyWeighting(), list(sigmas))
    parameters = [*shared.parameters(), *heads.parameters(), *balancer.parameters()]
    assert len(list(balancer.parameters())) == 2  # one log-variance per task
    optimizer = torch.optim.Adam(parameters, lr=0.05)
    for step in range(300):
        features = shared(x)
        local = {t: ((heads[t](features).squeeze(1) - y) ** 2).mean() for t, y in targets.items()}
        losses = TaskLosses.gather(local, dict.fromkeys(local, torch.tensor(n)))
        combination = balancer.combine(losses, step)
        optimizer.zero_grad()
        combination.loss.backward()
        optimizer.step()
    for task, sigma in sigmas.items():
        assert float(losses.values[task]) == pytest.approx(sigma**2, rel=0.1)
        log_var = float(balancer.scalarizers[task].log_var.detach())
        assert math.exp(log_var) == pytest.approx(float(losses.values[task]), rel=0.1)
        assert float(combination.weights[task]) == pytest.approx(0.5 / sigma**2, rel=0.2)
    ratio = float(combination.weights["a"] / combination.weights["b"])
    assert ratio == pytest.approx(sigmas["b"] ** 2 / sigmas["a"] ** 2, rel=0.2)


def test_uncertainty_weighting_leaves_an_absent_tasks_log_variance_alone() -> None:
    balancer = bound(UncertaintyWeighting(init_log_variance=0.3), ["a", "b"])
    losses, _ = make_losses({"a": 2.0, "b": 1.0}, counts={"a": 4, "b": 0})
    combination = balancer.combine(losses, step=0)
    assert float(combination.weights["a"]) == pytest.approx(0.5 * math.exp(-0.3))
    combination.loss.backward()
    grad_a = balancer.scalarizers["a"].log_var.grad
    grad_b = balancer.scalarizers["b"].log_var.grad
    # d/ds (1/2 exp(-s) L + s/2) = -1/2 exp(-s) L + 1/2
    assert float(grad_a) == pytest.approx(-0.5 * math.exp(-0.3) * 2.0 + 0.5)
    assert grad_b is None or float(grad_b) == 0.0


# -------------------------------------------------------------------------------- DWA
def _dwa_by_hand(history: list[list[float]], temperature: float) -> list[float]:
    """Liu et al. 2019, Eq. 7, from the last two epoch averages."""
    if len(history) < 2:
        return [1.0] * len(history[0]) if history else []
    rates = [new / old for new, old in zip(history[-1], history[-2])]
    exps = [math.exp(r / temperature) for r in rates]
    return [len(rates) * e / sum(exps) for e in exps]


def test_dwa_follows_its_formula_and_torchjds_dwa() -> None:
    tasks, temperature = ["a", "b", "c"], 2.0
    epochs = [  # per epoch, per batch, the global losses of the three tasks
        [[3.0, 1.0, 2.0], [2.8, 0.9, 2.2]],
        [[2.0, 0.95, 2.1], [1.8, 0.85, 2.3]],
        [[1.0, 0.9, 2.0], [0.9, 0.8, 2.2]],
        [[0.8, 0.6, 1.5], [0.7, 0.5, 1.3]],
    ]
    balancer = bound(DynamicWeightAverage(temperature=temperature), tasks)
    reference = DWA(temperature=temperature)
    history: list[list[float]] = []
    step = 0
    for epoch, batches in enumerate(epochs):
        expected = _dwa_by_hand(history, temperature) if epoch >= 2 else [1.0, 1.0, 1.0]
        for batch in batches:
            combination = balancer.combine(make_losses(dict(zip(tasks, batch)))[0], step)
            values = torch.tensor(batch, dtype=torch.float64, requires_grad=True)
            (torchjd_weights,) = torch.autograd.grad(reference(values), values)
            ours = weights_of(combination.weights, tasks)
            torch.testing.assert_close(ours, torch.tensor(expected, dtype=torch.float64),
                                       rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(ours, torchjd_weights, rtol=1e-6, atol=1e-6)
            step += 1
        balancer.on_train_epoch_end()
        reference.step()
        history.append([sum(b[i] for b in batches) / len(batches) for i in range(3)])
    assert float(weights_of(combination.weights, tasks).sum()) == pytest.approx(3.0)
    # The fastest-falling task (a: 1.95 -> 0.95 -> 0.75) is weighted down at the end.
    assert float(combination.weights["a"]) < 1.0 < float(combination.weights["c"])


def test_dwa_averages_each_task_only_over_the_batches_that_label_it() -> None:
    tasks, temperature = ["a", "b"], 1.0
    balancer = bound(DynamicWeightAverage(temperature=temperature), tasks)
    # None: the task is labelled in no sample of that (global) batch.
    epochs = [
        [(2.0, 4.0), (2.0, None), (2.0, None)],
        [(1.0, None), (1.0, 1.0), (1.0, None)],
    ]
    step = 0
    for batches in epochs:
        for a, b in batches:
            values = {"a": a, "b": b if b is not None else 0.0}
            counts = {"a": 4, "b": 4 if b is not None else 0}
            combination = balancer.combine(make_losses(values, counts)[0], step)
            assert float(combination.weights["a"]) == 1.0  # the first two epochs: weights 1
            step += 1
        balancer.on_train_epoch_end()
    # Epoch averages over labelled batches only: a 2 -> 1, b 4 -> 1 (not 4/3 -> 1/3).
    expected = _dwa_by_hand([[2.0, 4.0], [1.0, 1.0]], temperature)
    combination = balancer.combine(make_losses({"a": 1.0, "b": 1.0})[0], step)
    torch.testing.assert_close(weights_of(combination.weights, tasks),
                               torch.tensor(expected, dtype=torch.float64))
    # b fell faster (ratio 1/4 vs 1/2), so it is weighted down.
    assert float(combination.weights["b"]) < float(combination.weights["a"])


# ------------------------------------------------------------------------------- FAMO
def _famo_weights(reference: FAMO, values: list[float]) -> torch.Tensor:
    tensor = torch.tensor(values, requires_grad=True)
    (grad,) = torch.autograd.grad(reference(tensor), tensor)
    return grad.double()


def test_famo_weights_are_the_gradient_of_torchjds_famo() -> None:
    tasks = ["a", "b"]
    balancer = bound(FastAdaptiveMultitask(update="next_batch"), tasks)
    reference = FAMO(2, lr=0.025, weight_decay=1e-3)
    first = [1.0, 2.0]
    combination = balancer.combine(make_losses(dict(zip(tasks, first)))[0], step=0)
    # Equal logits: w_i = c z_i / l_i with c = 1 / sum_i z_i / l_i -> (2/3, 1/3).
    torch.testing.assert_close(weights_of(combination.weights, tasks),
                               torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))
    torch.testing.assert_close(weights_of(combination.weights, tasks),
                               _famo_weights(reference, first))
    # Next batch: a fell by half, b barely moved. Its logit must rise relative to a's.
    second = [0.5, 1.98]
    combination = balancer.combine(make_losses(dict(zip(tasks, second)))[0], step=1)
    logits = balancer.famo._w.detach()
    assert float(logits[1]) > float(logits[0])
    reference.update(torch.tensor(second))
    torch.testing.assert_close(logits, reference._w.detach())
    torch.testing.assert_close(weights_of(combination.weights, tasks),
                               _famo_weights(reference, second))
    # With the logits moved, b's share c z_b / l_b is above what equal logits would give.
    equal = torch.tensor([1 / 0.5, 1 / 1.98]) / (0.5 / 0.5 + 0.5 / 1.98) * 0.5
    assert float(combination.weights["b"]) > float(equal[1])


def test_famo_same_batch_updates_only_after_the_step() -> None:
    tasks = ["a", "b"]
    balancer = bound(FastAdaptiveMultitask(update="same_batch"), tasks)
    reference = FAMO(2)
    balancer.combine(make_losses({"a": 1.0, "b": 1.0})[0], step=0)
    reference(torch.tensor([1.0, 1.0]))
    # The next combine alone does not move the logits in same_batch mode...
    balancer.combine(make_losses({"a": 1.0, "b": 1.0})[0], step=1)
    assert torch.equal(balancer.famo._w.detach(), torch.zeros(2))
    # ...after_step with the recomputed losses does: b fell least, so its logit rises.
    balancer.after_step(make_losses({"a": 0.9, "b": 1.0})[0])
    reference.update(torch.tensor([0.9, 1.0]))
    logits = balancer.famo._w.detach()
    assert float(logits[1]) > float(logits[0])
    torch.testing.assert_close(logits, reference._w.detach())


def test_famo_state_survives_a_checkpoint() -> None:
    tasks = ["a", "b"]
    balancer = bound(FastAdaptiveMultitask(update="next_batch"), tasks)
    for step, values in enumerate([(1.0, 1.0), (0.6, 0.95), (0.5, 0.9)]):
        balancer.combine(make_losses(dict(zip(tasks, values)))[0], step)
    restored = bound(FastAdaptiveMultitask(update="next_batch"), tasks)
    restored.load_state_dict(balancer.state_dict())
    torch.testing.assert_close(restored.famo._w, balancer.famo._w)
    after = make_losses({"a": 0.45, "b": 0.88})[0]
    ours = balancer.combine(after, 3).weights
    theirs = restored.combine(after, 3).weights
    for task in tasks:
        assert float(ours[task]) == pytest.approx(float(theirs[task]), rel=1e-6)
