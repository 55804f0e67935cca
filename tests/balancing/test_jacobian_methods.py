"""Methods that read the task gradients themselves give the update their papers define.

ExcessMTL and SDMGrad weight the task gradients; ConFIG, GradDrop, DB-MTL and MoCo return a
combined vector that is not a weighted sum of this step's gradients. Each expected update is
computed here by hand from hand-made Jacobians ``J`` (tasks x parameters).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import pytest
import torch

from mtl_lightning.balancing import (
    DBMTL,
    MGDA,
    ConFIG,
    ExcessMTL,
    GradDrop,
    GradientWeighting,
    MoCo,
    SDMGrad,
    TaskLosses,
)
from mtl_lightning.balancing.moco import project_onto_simplex
from mtl_lightning.balancing.task_gradients import TaskGradients

TASKS = ("a", "b", "c")


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


def task_losses(values: list[float]) -> TaskLosses:
    tasks = TASKS[: len(values)]
    local = {t: torch.tensor(v) for t, v in zip(tasks, values)}
    return TaskLosses(local=local, share=dict.fromkeys(tasks, torch.tensor(1.0)),
                      values=dict(local), unlabelled={})


def gradients(jacobian: torch.Tensor, shared: int = 2) -> TaskGradients:
    """``J`` split as the parameters source holds it: trunk columns, then ``shared`` ones."""
    jacobian = jacobian.float()
    tasks = TASKS[: len(jacobian)]
    return TaskGradients(tasks, (jacobian @ jacobian.T).double(), [], jacobian[:, -shared:],
                         jacobian[:, :-shared], {t: [] for t in tasks})


def run(method: GradientWeighting, jacobian: torch.Tensor, values: list[float] | None = None,
        step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, shared update) the method makes from ``J``."""
    grads = gradients(jacobian)
    update = method.update(grads, task_losses(values or [1.0] * len(jacobian)), step)
    combined = update.combined
    if combined is None:
        combined = update.weights.float() @ grads.jacobian()
    return update.weights, combined


J1 = torch.tensor([[1.0, -2.0, 0.5, 3.0, 0.0], [0.5, 1.0, -1.0, 2.0, 1.0],
                   [-1.0, 0.5, 2.0, 0.0, -0.5]])
J2 = torch.tensor([[0.5, -1.0, 1.0, 2.0, 0.5], [1.0, 0.5, -0.5, 1.0, 2.0],
                   [-0.5, 1.0, 1.0, 0.5, -1.0]])


def test_the_jacobian_is_the_trunk_then_the_shared_columns() -> None:
    torch.testing.assert_close(gradients(J1).jacobian(), J1)


@pytest.mark.parametrize("make", [ExcessMTL, DBMTL, MoCo, ConFIG, GradDrop])
def test_methods_that_read_j_refuse_the_representation_source(make) -> None:
    with pytest.raises(ValueError, match="source: parameters"):
        make(source="representation")


# ---------------------------------------------------------------------------- ExcessMTL
def test_excess_mtl_follows_its_excess_risk_estimate() -> None:
    """He et al. 2024: E_t = sum g^2 / sqrt(sum over steps of g^2) (Eqs. 6-7); the first
    step's E is the reference; w <- softmax(log w + eta E / E_first) (Eq. 9), from 1/m."""
    method = ExcessMTL(robust_step_size=0.5)
    weights1, _ = run(method, J1)
    excess1 = (J1 ** 2 / torch.sqrt(J1 ** 2 + 1e-7)).sum(1)
    expected1 = torch.softmax(torch.log(torch.full((3,), 1 / 3)) + 0.5 * excess1, 0)
    torch.testing.assert_close(weights1, expected1)
    weights2, combined = run(method, J2, step=1)
    excess2 = (J2 ** 2 / torch.sqrt(J1 ** 2 + J2 ** 2 + 1e-7)).sum(1) / (excess1 + 1e-7)
    expected2 = torch.softmax(torch.log(expected1) + 0.5 * excess2, 0)
    torch.testing.assert_close(weights2, expected2)
    torch.testing.assert_close(combined, expected2 @ J2)
    with pytest.raises(TypeError, match="update"):
        method.weights(J1 @ J1.T, task_losses([1.0] * 3), 2)


# ------------------------------------------------------------------------------ SDMGrad
def test_sdmgrad_solves_the_min_norm_problem_pulled_to_the_average() -> None:
    """Xiao et al. 2023: w = argmin_simplex ||J^T (w + lambda/m)||^2, update
    J^T (w + lambda/m) / (1 + lambda); by a grid over the 2-task simplex."""
    jacobian = torch.tensor([[1.0, 0.2, 0.0], [-0.4, 1.0, 0.3]], dtype=torch.float64)
    lam = 0.3
    method = SDMGrad(lambda_=lam, n_iter=3000, lr=0.05, momentum=0.0)
    weights, _ = run(method, jacobian)
    grid = torch.linspace(0, 1, 100_001, dtype=torch.float64)
    candidates = torch.stack([grid, 1 - grid], 1) + lam / 2
    best = candidates[(candidates @ jacobian).norm(dim=1).argmin()]
    torch.testing.assert_close(weights.double(), best / (1 + lam), atol=1e-4, rtol=0)


def test_sdmgrad_without_the_pull_is_mgda() -> None:
    jacobian = torch.tensor([[1.0, 0.2, 0.0], [-0.4, 1.0, 0.3]], dtype=torch.float64)
    weights, _ = run(SDMGrad(lambda_=0.0, n_iter=3000, lr=0.05, momentum=0.0), jacobian)
    mgda = MGDA(epsilon=1e-9, max_iters=10_000).weights(jacobian @ jacobian.T,
                                                          task_losses([1.0, 1.0]), 0)
    torch.testing.assert_close(weights.double(), mgda.double(), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------- ConFIG
def test_config_update_has_equal_angles_and_the_summed_projection_as_length() -> None:
    """Liu et al. 2025, Eq. 2: u = normalize(U^+ 1) with U the unit gradients; d = (sum_t
    g_t . u) u: the same cosine with every task gradient."""
    weights, update = run(ConFIG(), J1)
    units = J1 / J1.norm(dim=1, keepdim=True)
    direction = torch.linalg.pinv(units) @ torch.ones(3)
    direction = direction / direction.norm()
    torch.testing.assert_close(update, (J1 @ direction).sum() * direction, rtol=1e-5,
                               atol=1e-6)
    cosines = units @ (update / update.norm())
    torch.testing.assert_close(cosines, cosines[0].expand(3), rtol=1e-5, atol=1e-6)
    assert torch.equal(weights, torch.ones(3))  # each head gets its own gradient


def test_config_preference_tilts_the_angles() -> None:
    _, update = run(ConFIG(pref_vector=[2.0, 1.0, 1.0]), J1)
    cosines = (J1 / J1.norm(dim=1, keepdim=True)) @ (update / update.norm())
    assert cosines[0] == pytest.approx(2 * float(cosines[1]), rel=1e-4)


# ----------------------------------------------------------------------------- GradDrop
def test_graddrop_keeps_one_sign_per_coordinate_drawn_by_its_purity() -> None:
    """Chen et al. 2020: agreeing coordinates are summed; in a mixed one only the positive or
    only the negative components survive, the positive with probability
    P = (1 + sum g / sum |g|) / 2 (here 3 and -1: P = 0.75)."""
    jacobian = torch.tensor([[1.0, 3.0, 2.0], [2.0, -1.0, 1.0]])
    method = GradDrop()
    kept = []
    for step in range(400):
        _, update = run(method, jacobian, step=step)
        assert update[0] == 3.0 and update[2] == 3.0
        assert float(update[1]) in (3.0, -1.0)
        kept.append(float(update[1]) == 3.0)
    assert sum(kept) / len(kept) == pytest.approx(0.75, abs=0.07)
    # The draw comes from the step: the same on every process and after a resume.
    assert torch.equal(run(method, jacobian, step=7)[1], run(GradDrop(), jacobian, step=7)[1])


# ------------------------------------------------------------------------------- DB-MTL
def test_db_mtl_scales_ema_log_gradients_to_the_largest_norm() -> None:
    """Lin et al. 2023, Alg. 1: h_t <- g_t/l_t + beta (h_t - g_t/l_t) from h = 0;
    d = max_s ||h_s|| sum_t h_t / ||h_t||; heads get the log-loss gradient (weight 1/l_t)."""
    beta, values = 0.9, [0.5, 2.0, 4.0]
    method = DBMTL(beta=beta)
    scale = 1 / torch.tensor(values)
    weights, first = run(method, J1, values)
    h = (1 - beta) * J1 * scale[:, None]
    norms = h.norm(dim=1)
    torch.testing.assert_close(first, norms.max() * (h / norms[:, None]).sum(0))
    torch.testing.assert_close(weights, scale)
    _, second = run(method, J2, values, step=1)
    h = J2 * scale[:, None] + beta * (h - J2 * scale[:, None])
    norms = h.norm(dim=1)
    torch.testing.assert_close(second, norms.max() * (h / norms[:, None]).sum(0))


def test_db_mtl_does_not_see_a_tasks_loss_scale() -> None:
    """Multiplying task a's loss by 100 multiplies its gradient by 100: the update is the same."""
    _, plain = run(DBMTL(), J1, [0.5, 2.0, 4.0])
    scaled = J1.clone()
    scaled[0] *= 100
    _, update = run(DBMTL(), scaled, [50.0, 2.0, 4.0])
    torch.testing.assert_close(update, plain)


# --------------------------------------------------------------------------------- MoCo
def test_simplex_projection() -> None:
    torch.testing.assert_close(project_onto_simplex(torch.tensor([0.5, 0.2, -0.1])),
                               torch.tensor([1.9 / 3, 1 / 3, 0.1 / 3]))
    torch.testing.assert_close(project_onto_simplex(torch.tensor([2.0, 0.0])),
                               torch.tensor([1.0, 0.0]))


def test_moco_tracks_gradients_and_steps_the_weights() -> None:
    """Fernando et al. 2023, Alg. 1: y_t <- y_t - beta_k (y_t - l_t g_t/||g_t||) from y = 0;
    lambda <- Proj(lambda - gamma_k Y Y^T lambda) from uniform; d = Y^T lambda;
    beta_k = beta / sqrt(k), gamma_k = gamma / sqrt(k)."""
    values = torch.tensor([0.5, 2.0, 4.0])
    method = MoCo(beta=0.5, gamma=0.1)
    method.bind(list(TASKS))
    normalised = [j / j.norm(dim=1, keepdim=True) * values[:, None] for j in (J1, J2)]
    y = 0.5 * normalised[0]
    lam = project_onto_simplex(torch.full((3,), 1 / 3) - 0.1 * (y @ y.T) @ torch.full((3,), 1 / 3))
    _, first = run(method, J1, values.tolist())
    torch.testing.assert_close(first, lam @ y)
    beta, gamma = 0.5 / math.sqrt(2), 0.1 / math.sqrt(2)
    y = y - beta * (y - normalised[1])
    lam = project_onto_simplex(lam - gamma * (y @ y.T) @ lam)
    weights, second = run(method, J2, values.tolist(), step=1)
    torch.testing.assert_close(second, lam @ y, rtol=1e-5, atol=1e-6)
    assert torch.equal(weights, torch.ones(3))


# ------------------------------------------------------------------ checkpoint state
STATEFUL: dict[str, Callable[[], GradientWeighting]] = {
    "excess_mtl": ExcessMTL, "sdmgrad": SDMGrad, "db_mtl": DBMTL, "moco": MoCo,
}


@pytest.mark.parametrize("name", list(STATEFUL))
def test_stateful_methods_resume_from_a_weights_only_checkpoint(name: str) -> None:
    """State saved by ``get_extra_state`` loads with ``weights_only=True`` and gives the same
    next update as the method that was never interrupted."""
    generator = torch.Generator().manual_seed(4)
    jacobians = [torch.randn(3, 7, generator=generator) for _ in range(4)]
    values = [0.5, 1.0, 2.0]
    method = STATEFUL[name]()
    method.bind(list(TASKS))
    for step, jacobian in enumerate(jacobians[:3]):
        run(method, jacobian, values, step)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = STATEFUL[name]()
    restored.bind(list(TASKS))
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    want = run(method, jacobians[3], values, 3)
    got = run(restored, jacobians[3], values, 3)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
