"""Dual-balancing multi-task learning, DB-MTL (Lin et al. 2023)."""

from __future__ import annotations

from typing import Any

import torch

from mtl_lightning.balancing.base import TaskLosses
from mtl_lightning.balancing.gradient_weighting import GradientSource, Update
from mtl_lightning.balancing.jacobian_aggregation import JacobianAggregation


class DBMTL(JacobianAggregation):
    """DB-MTL: balance the loss scales with a log, then the gradient magnitudes.

    Lin et al., "Dual-Balancing for Multi-Task Learning", arXiv:2308.12029, 2023
    (Algorithm 1). Each task is trained on ``log(l_t + eps)``, whose gradient
    ``g_t / (l_t + eps)`` does not depend on the loss's scale. Its exponential moving average
    ``h_t <- g_t + beta_k (h_t - g_t)`` (from ``h_t = 0``; ``beta_k = beta / k^sigma`` at the
    ``k``-th step that labels the task, LibMTL's schedule; ``sigma = 0``: a constant ``beta``)
    is normalised and every task is scaled to the largest one:
    ``d = max_s ||h_s|| sum_t h_t / ||h_t||``. Each head gets its own log-loss gradient
    (weight ``1 / (l_t + eps)``, the logged weight). The averages (tasks x shared parameters)
    are saved in checkpoints; a task absent from a batch keeps its average.

    Args:
        beta: EMA rate (the paper: 0.9).
        beta_sigma: decay exponent of the EMA rate over steps (LibMTL's default 0).
        eps: floor inside the log and of the norms.
    """

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0, eps: float = 1e-8,
                 source: GradientSource | None = None, statistics_every: int = 50) -> None:
        super().__init__(source=source, statistics_every=statistics_every)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"DB-MTL beta must be in [0, 1), got {beta}.")
        self.beta, self.beta_sigma, self.eps = beta, beta_sigma, eps
        self.averages: dict[str, torch.Tensor] = {}
        self.steps: dict[str, int] = {}

    def aggregate(self, jacobian: torch.Tensor, losses: TaskLosses, step: int) -> Update:
        scale = 1.0 / (losses.value_vector().to(jacobian) + self.eps)
        log_gradients = jacobian * scale[:, None]
        averages = []
        for i, task in enumerate(losses.tasks):
            previous = self.averages.get(task)
            if previous is None or previous.shape != log_gradients[i].shape:
                previous = torch.zeros_like(log_gradients[i])  # first step (or new parameters)
                self.steps[task] = 0
            self.steps[task] += 1
            rate = self.beta / self.steps[task] ** self.beta_sigma
            average = log_gradients[i] + rate * (previous.to(jacobian) - log_gradients[i])
            self.averages[task] = average
            averages.append(average)
        stacked = torch.stack(averages)
        norms = stacked.norm(dim=1)
        combined = (norms.max() * stacked / (norms[:, None] + self.eps)).sum(0)
        return Update(scale.detach().cpu(), combined)

    # -------------------------------------------------------------- checkpoint state
    def get_extra_state(self) -> dict[str, Any]:
        return {"averages": {t: a.detach().cpu().clone() for t, a in self.averages.items()},
                "steps": dict(self.steps)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.averages = dict((state or {}).get("averages", {}))
        self.steps = dict((state or {}).get("steps", {}))
