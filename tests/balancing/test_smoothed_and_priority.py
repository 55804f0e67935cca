"""CR-MOGM smooths another method's weights over steps; PCD follows a primary task's gradient
under progress constraints for the others. Expected updates computed by hand."""

from __future__ import annotations

import io

import pytest
import torch
from torchjd import aggregation as jd

from mtl_lightning.balancing import CRMOGM, PCD

from .test_gradient_weighting import rotated, task_losses, update


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


def test_cr_mogm_is_an_exponential_average_of_mgda_weights() -> None:
    """Zhou et al. 2022: w_k = alpha w_(k-1) + (1 - alpha) w^_k, w_1 = w^_1 (MGDA's)."""
    generator = torch.Generator().manual_seed(5)
    jacobians = [torch.randn(3, 6, generator=generator, dtype=torch.float64) for _ in range(3)]
    method = CRMOGM(alpha=0.8)
    losses = task_losses([1.0] * 3)
    expected = None
    for step, jacobian in enumerate(jacobians):
        gramian = jacobian @ jacobian.T
        raw = jd.MGDAWeighting()(gramian)
        expected = raw if expected is None else 0.8 * expected + 0.2 * raw
        torch.testing.assert_close(method.weights(gramian, losses, step), expected)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = CRMOGM(alpha=0.8)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    gramian = jacobians[0] @ jacobians[0].T
    torch.testing.assert_close(restored.weights(gramian, losses, 3),
                               method.weights(gramian, losses, 3))
    with pytest.raises(ValueError, match="CR-MOGM method"):
        CRMOGM(method="nash")  # type: ignore[arg-type]


def _pcd_by_hand(primary: torch.Tensor, secondary: torch.Tensor, tau: float) -> torch.Tensor:
    """Varam et al.: at the first step the normalised gradients are the unit ones; the
    closest d to u_p with u_s . d >= tau is u_p, or u_p moved along u_s onto the constraint;
    rescaled to ||g_p||."""
    u_p, u_s = primary / primary.norm(), secondary / secondary.norm()
    d = u_p if u_p @ u_s >= tau else u_p + (tau - u_p @ u_s) * u_s
    return d * primary.norm() / d.norm()


@pytest.mark.parametrize("angle_deg", [60.0, 120.0])
def test_pcd_follows_the_primary_gradient_under_the_progress_constraint(angle_deg) -> None:
    angle = torch.tensor(angle_deg, dtype=torch.float64).deg2rad()
    # Task a secondary, b primary (the primary is found by name, not position).
    jacobian = rotated([[3.0 * float(torch.cos(angle)), 3.0 * float(torch.sin(angle))],
                        [2.0, 0.0]])
    method = PCD(primary="b", tau=0.3, beta=0.9)
    got = update(method, jacobian)
    torch.testing.assert_close(got, _pcd_by_hand(jacobian[1], jacobian[0], 0.3), rtol=1e-6,
                               atol=1e-8)
    if angle_deg == 60.0:  # no conflict: the primary gradient itself
        torch.testing.assert_close(got, jacobian[1])


def test_pcd_without_the_primary_task_sums_the_others_and_needs_it_in_the_model() -> None:
    method = PCD(primary="c")
    gramian = torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(method.weights(gramian, task_losses([1.0, 1.0]), 0),
                               torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="primary task 'depth'"):
        PCD(primary="depth").bind(["a", "b"])
