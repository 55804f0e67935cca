"""Gradient weightings give the update their papers define, on hand-made task gradients.

Each method maps the Gramian ``G = J J^T`` of the task gradients (rows of ``J``) to weights
``w``; the update is ``w @ J``. The expected updates are computed here by hand from ``J``.
"""

from __future__ import annotations

import io
import itertools

import pytest
import torch
from torchjd import aggregation as jd

from mtl_lightning.balancing import (
    IMTLG,
    MGDA,
    AlignedMTL,
    CAGrad,
    DualProj,
    FairGrad,
    GradientWeighting,
    GradNorm,
    GradVac,
    NashMTL,
    PCGrad,
    TaskLosses,
    UPGrad,
)
from mtl_lightning.balancing.gradient_weighting import gramian_square_root

TASKS = ("a", "b", "c")


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    """One thread: the matrices are tiny."""
    torch.set_num_threads(1)


def task_losses(values: list[float]) -> TaskLosses:
    """Single-process losses for the first ``len(values)`` of :data:`TASKS`."""
    tasks = TASKS[: len(values)]
    local = {t: torch.tensor(v) for t, v in zip(tasks, values)}
    return TaskLosses(local=local, share=dict.fromkeys(tasks, torch.tensor(1.0)),
                      values=dict(local), unlabelled={})


def update(method: GradientWeighting, jacobian: torch.Tensor, step: int = 0,
           values: list[float] | None = None) -> torch.Tensor:
    """The combined update ``w @ J`` the method makes from ``J``'s Gramian."""
    values = values or [1.0] * len(jacobian)
    weights = method.weights(jacobian @ jacobian.T, task_losses(values), step)
    return weights.to(jacobian) @ jacobian


def rotated(rows: list[list[float]], dim: int = 6) -> torch.Tensor:
    """Hand-made low-dimensional gradients, embedded in ``dim`` dimensions by a fixed
    rotation (so the test does not lean on axis-aligned vectors)."""
    matrix = torch.zeros(len(rows), dim, dtype=torch.float64)
    matrix[:, : len(rows[0])] = torch.tensor(rows, dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    return matrix @ q


# ------------------------------------------------------------------------------ PCGrad
def _project(g: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Yu et al. 2020, Alg. 1: remove ``g``'s component along ``other`` if they conflict."""
    dot = g @ other
    return g - dot / (other @ other) * other if dot < 0 else g


def _pcgrad_by_hand(jacobian: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """Sum over tasks ``i`` of ``g_i`` projected against the others in ``orders[i]``."""
    total = torch.zeros_like(jacobian[0])
    for i, order in enumerate(orders):
        g = jacobian[i]
        for j in order:
            g = _project(g, jacobian[j])
        total = total + g
    return total


def test_pcgrad_two_tasks_removes_exactly_the_conflicting_components() -> None:
    jacobian = rotated([[1.0, 0.0], [-1.0, 2.0]])  # g1 . g2 = -1 < 0
    g1, g2 = jacobian
    expected = (g1 - (g1 @ g2) / (g2 @ g2) * g2) + (g2 - (g2 @ g1) / (g1 @ g1) * g1)
    torch.testing.assert_close(update(PCGrad(), jacobian), expected)
    # Each projected gradient no longer conflicts with the other task: the update has
    # non-negative inner product with both.
    assert (jacobian @ expected >= -1e-12).all()


def test_pcgrad_leaves_non_conflicting_gradients_unchanged() -> None:
    jacobian = rotated([[1.0, 0.0, 0.5], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    assert ((jacobian @ jacobian.T) >= 0).all()
    for step in range(3):
        torch.testing.assert_close(update(PCGrad(), jacobian, step), jacobian.sum(0))


def test_pcgrad_three_tasks_with_a_conflicting_and_a_non_conflicting_pair() -> None:
    # g1 . g2 < 0 (conflict), g1 . g3 > 0, g2 . g3 = 0: the result does not depend on the
    # random order, so it is known exactly.
    jacobian = rotated([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    g1, g2, g3 = jacobian
    g1_pc = g1 - (g1 @ g2) / (g2 @ g2) * g2
    g2_pc = g2 - (g2 @ g1) / (g1 @ g1) * g1
    expected = g1_pc + g2_pc + g3
    torch.testing.assert_close(expected, rotated([[1.5, 2.5, 1.0]])[0])  # worked by hand
    for step in range(4):
        torch.testing.assert_close(update(PCGrad(), jacobian, step), expected)


def test_pcgrad_with_general_conflicts_is_one_of_the_random_orders() -> None:
    generator = torch.Generator().manual_seed(1)
    jacobian = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    jacobian[2] = -0.8 * jacobian[0] + 0.6 * jacobian[2]
    assert ((jacobian @ jacobian.T) < 0).any()
    others = [[j for j in range(3) if j != i] for i in range(3)]
    candidates = [
        _pcgrad_by_hand(jacobian, [list(order) for order in orders])
        for orders in itertools.product(*[itertools.permutations(o) for o in others])
    ]
    method = PCGrad()
    for step in range(5):
        result = update(method, jacobian, step)
        assert any(torch.allclose(result, c, atol=1e-10) for c in candidates)
        # Seeded by the step: the same step gives the same order on every process.
        torch.testing.assert_close(update(PCGrad(), jacobian, step), result)


# -------------------------------------------------------------------------------- MGDA
def _simplex_min_norm(jacobian: torch.Tensor, resolution: int = 400) -> float:
    """Brute force: the smallest ``||w @ J||`` over a fine grid on the 3-task simplex."""
    ticks = torch.arange(resolution + 1, dtype=torch.float64) / resolution
    w1, w2 = torch.meshgrid(ticks, ticks, indexing="ij")
    keep = (w1 + w2) <= 1 + 1e-12
    grid = torch.stack([w1[keep], w2[keep], (1 - w1[keep] - w2[keep]).clamp(min=0)], 1)
    return float((grid @ jacobian).norm(dim=1).min())


@pytest.mark.parametrize("rows", [
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],  # interior: (1/3, 1/3, 1/3)
    [[2.0, 0.0, 0.0], [-1.0, 1.5, 0.0], [0.5, -1.0, 0.8]],  # conflicting
    [[1.0, 0.2, 0.0], [1.0, -0.2, 0.0], [3.0, 0.0, 0.0]],  # on an edge: g3 is dominated
    [[1.0, 0.0, 0.0], [-0.5, 1.0, 0.0], [-0.5, -1.0, 0.0]],  # 0 in the hull: stationary
], ids=["orthogonal", "conflicting", "edge", "pareto-stationary"])
def test_mgda_finds_the_min_norm_point_of_the_convex_hull(rows) -> None:
    jacobian = rotated(rows)
    weights = MGDA(epsilon=1e-6, max_iters=1000).weights(
        jacobian @ jacobian.T, task_losses([1.0, 1.0, 1.0]), step=0
    ).double()
    assert (weights >= -1e-9).all()
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)
    direction = weights @ jacobian
    best = _simplex_min_norm(jacobian)
    # The grid's own error is below 2e-3 for these gradients (norms <= 2, step 1/400).
    assert float(direction.norm()) <= best + 2e-3
    # The min-norm point d satisfies g_t . d >= ||d||^2 for every task: no task gets worse.
    assert (jacobian @ direction >= float(direction @ direction) - 1e-3).all()


def test_mgda_default_settings_are_close_to_the_min_norm_point() -> None:
    jacobian = rotated([[2.0, 0.0, 0.0], [-1.0, 1.5, 0.0], [0.5, -1.0, 0.8]])
    direction = update(MGDA(), jacobian)
    assert float(direction.norm()) <= _simplex_min_norm(jacobian) * 1.05


# ------------------------------------------------------------- other Gramian methods
def test_upgrad_and_dualproj_updates_conflict_with_no_task() -> None:
    jacobian = rotated([[2.0, 0.0, 0.0], [-1.0, 1.5, 0.0], [0.5, -1.0, 0.8]])
    for method in (UPGrad(), DualProj()):
        direction = update(method, jacobian)
        # torchjd regularises the Gramian slightly (reg_eps), hence the small tolerance.
        assert (jacobian @ direction >= -1e-2 * float(direction.norm())).all(), method
    torch.testing.assert_close(update(UPGrad(), jacobian), jd.UPGrad()(jacobian))


def test_imtlg_update_projects_equally_on_every_unit_gradient() -> None:
    jacobian = rotated([[2.0, 0.0, 0.0], [-1.0, 1.5, 0.0], [0.5, -1.0, 0.8]])
    direction = update(IMTLG(), jacobian)
    projections = (jacobian / jacobian.norm(dim=1, keepdim=True)) @ direction
    torch.testing.assert_close(projections, projections.mean().expand(3), rtol=1e-6, atol=1e-9)
    assert float(projections[0]) > 0


def test_nash_mtl_from_the_gramian_equals_torchjds_nash_mtl_on_the_matrix() -> None:
    jacobian = rotated([[2.0, 0.0, 0.0], [-1.0, 1.5, 0.0], [0.5, -1.0, 0.8]])
    ours = NashMTL().weights(jacobian @ jacobian.T, task_losses([1.0] * 3), step=0)
    theirs = jd.NashMTL(n_tasks=3, max_norm=1.0).weighting(jacobian)
    torch.testing.assert_close(ours.double(), theirs.double(), rtol=1e-3, atol=1e-4)
    assert (ours > 0).all()


def test_fairgrad_weights_solve_gw_equals_w_to_the_minus_one_over_alpha() -> None:
    jacobian = rotated([[2.0, 0.0, 0.0], [-1.0, 1.5, 0.0], [0.5, -1.0, 0.8]])
    gramian = jacobian @ jacobian.T
    weights = FairGrad(alpha=2.0).weights(gramian, task_losses([1.0] * 3), step=0).double()
    torch.testing.assert_close(gramian @ weights, weights ** (-1 / 2.0), rtol=1e-3, atol=1e-3)


def test_cagrad_with_zero_radius_is_the_average_gradient() -> None:
    jacobian = rotated([[2.0, 0.0, 0.0], [-1.0, 1.5, 0.0], [0.5, -1.0, 0.8]])
    weights = CAGrad(c=0.0).weights(jacobian @ jacobian.T, task_losses([1.0] * 3), step=0)
    torch.testing.assert_close(weights.double(), torch.full((3,), 1 / 3, dtype=torch.float64))


def test_gramian_square_root_reproduces_the_gramian() -> None:
    jacobian = rotated([[2.0, 0.0, 0.0], [-1.0, 1.5, 0.0], [1.0, 1.5, 0.0]])  # rank 2
    gramian = jacobian @ jacobian.T
    root = gramian_square_root(gramian)
    torch.testing.assert_close(root @ root.T, gramian, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("make", [
    lambda: NashMTL(), lambda: GradVac(), lambda: AlignedMTL(), lambda: PCGrad(),
], ids=["nash_mtl", "gradvac", "aligned_mtl", "pcgrad"])
def test_stateful_weightings_resume_from_a_weights_only_checkpoint(make) -> None:
    """The state saved by ``get_extra_state`` loads with ``weights_only=True`` and gives the
    same next weights as the method that was never interrupted."""
    generator = torch.Generator().manual_seed(2)
    gramians = []
    for _ in range(4):
        j = torch.randn(3, 8, generator=generator, dtype=torch.float64)
        gramians.append(j @ j.T)
    losses = task_losses([1.0] * 3)
    method = make()
    for step, gramian in enumerate(gramians[:3]):
        method.weights(gramian, losses, step)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = make()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(restored.weights(gramians[3], losses, 3),
                               method.weights(gramians[3], losses, 3))


# ----------------------------------------------------------------------------- GradNorm
def test_gradnorm_moves_weights_to_equalise_weighted_gradient_norms() -> None:
    """Chen et al. 2018: with equal training rates the target is the mean of w_t ||g_t||,
    so the task with the larger gradient is weighted down until the two match."""
    method = GradNorm(alpha=1.5, lr=0.025)
    method.bind(["a", "b"])
    norms = torch.tensor([10.0, 1.0], dtype=torch.float64)
    gramian = torch.diag(norms**2)
    losses = task_losses([2.0, 2.0])  # equal losses: equal training rates
    gaps = []
    for step in range(30):
        weights = method.weights(gramian, losses, step)
        assert (weights > 0).all()
        assert float(weights.sum()) == pytest.approx(2.0)
        scaled = weights * norms
        gaps.append(float(scaled.max() / scaled.min()))
    assert gaps[0] == pytest.approx(10.0)  # the first step uses the initial weights 1
    # Strictly closer every step until they match (w near (2/11, 20/11)); then the sign step
    # of the L1 objective makes it oscillate around the match, but it stays there.
    reached = next(i for i, gap in enumerate(gaps) if gap < 1.3)
    assert all(b < a for a, b in itertools.pairwise(gaps[: reached + 1]))
    assert all(gap < 1.3 for gap in gaps[reached:])
    assert float(weights[0]) < 1.0 < float(weights[1])


def test_gradnorm_favours_the_task_that_trains_slowest() -> None:
    """Equal gradient norms, but task b's loss has fallen less: b's weight rises."""
    method = GradNorm(alpha=1.5, lr=0.025)
    method.bind(["a", "b"])
    gramian = torch.eye(2, dtype=torch.float64)
    method.weights(gramian, task_losses([1.0, 1.0]), 0)  # records the initial losses
    for step in range(1, 6):
        weights = method.weights(gramian, task_losses([0.2, 0.9]), step)
    assert float(weights[1]) > 1.0 > float(weights[0])
    assert float(weights.sum()) == pytest.approx(2.0)
