"""Multi-objective gradient correction, MoCo (Fernando et al., ICLR 2023)."""

from __future__ import annotations

from typing import Any

import torch

from mtl_lightning.balancing.base import TaskLosses
from mtl_lightning.balancing.gradient_weighting import GradientSource, Update
from mtl_lightning.balancing.jacobian_aggregation import JacobianAggregation


def project_onto_simplex(vector: torch.Tensor) -> torch.Tensor:
    """The Euclidean projection of ``vector`` onto the probability simplex (Duchi et al.
    2008): ``max(v - theta, 0)`` with ``theta`` such that the result sums to 1."""
    ordered, _ = torch.sort(vector, descending=True)
    cumulative = ordered.cumsum(0) - 1.0
    index = torch.arange(1, len(vector) + 1, dtype=vector.dtype, device=vector.device)
    support = ordered - cumulative / index > 0
    count = int(support.nonzero().max()) + 1
    theta = cumulative[count - 1] / count
    return (vector - theta).clamp(min=0)


class MoCo(JacobianAggregation):
    """MoCo: MGDA on bias-corrected running estimates of the task gradients.

    Fernando et al., "Mitigating Gradient Bias in Multi-objective Learning: A Provably
    Convergent Approach", ICLR 2023 (Algorithm 1). The stochastic gradients make MGDA's
    weights biased; MoCo tracks each gradient, ``y_t <- y_t - beta_k (y_t - g_t)``, and takes
    one projected step on MGDA's min-norm problem for the weights,
    ``lambda <- Proj_simplex(lambda - gamma_k (Y Y^T + rho I) lambda)``; the update is
    ``d = Y^T lambda``, with ``beta_k = beta / k^beta_sigma`` and ``gamma_k = gamma /
    k^gamma_sigma`` at step ``k``. As in LibMTL, each ``g_t`` is first rescaled to the norm of
    its loss (``normalize``), and ``y`` starts at 0, ``lambda`` uniform. Each head gets its own
    gradient. ``Y`` and ``lambda`` are saved in checkpoints; a task absent from a batch keeps
    its ``y_t`` and weight, and the present tasks' weights are projected within their mass.

    Args:
        beta, beta_sigma: tracking rate and its decay exponent (LibMTL: 0.5, 0.5).
        gamma, gamma_sigma: weight step and its decay exponent (LibMTL: 0.1, 0.5).
        rho: regularisation of the weights' problem (LibMTL: 0).
        normalize: rescale ``g_t`` to ``l_t g_t / ||g_t||`` before tracking it.
    """

    def __init__(self, beta: float = 0.5, beta_sigma: float = 0.5, gamma: float = 0.1,
                 gamma_sigma: float = 0.5, rho: float = 0.0, normalize: bool = True,
                 source: GradientSource | None = None, statistics_every: int = 50) -> None:
        super().__init__(source=source, statistics_every=statistics_every)
        self.beta, self.beta_sigma = beta, beta_sigma
        self.gamma, self.gamma_sigma, self.rho = gamma, gamma_sigma, rho
        self.normalize = normalize
        self.tracked: dict[str, torch.Tensor] = {}
        self.lambdas: dict[str, float] = {}
        self.count = 0

    def bind(self, tasks: list[str]) -> None:
        self.lambdas = {t: 1.0 / len(tasks) for t in tasks}

    def aggregate(self, jacobian: torch.Tensor, losses: TaskLosses, step: int) -> Update:
        tasks = losses.tasks
        gradients = jacobian
        if self.normalize:
            values = losses.value_vector().to(jacobian)
            gradients = jacobian / (jacobian.norm(dim=1, keepdim=True) + 1e-8) * values[:, None]
        self.count += 1
        beta = self.beta / self.count ** self.beta_sigma
        gamma = self.gamma / self.count ** self.gamma_sigma
        rows = []
        for i, task in enumerate(tasks):
            previous = self.tracked.get(task)
            if previous is None or previous.shape != gradients[i].shape:
                previous = torch.zeros_like(gradients[i])
            rows.append(previous.to(jacobian) - beta * (previous.to(jacobian) - gradients[i]))
            self.tracked[task] = rows[-1]
        tracked = torch.stack(rows)
        weights = torch.tensor([self.lambdas.get(t, 1.0 / len(tasks)) for t in tasks],
                               dtype=torch.float64, device=jacobian.device)
        mass = float(weights.sum())
        weights = weights / mass
        gram = (tracked @ tracked.T).double()
        gram = gram + self.rho * torch.eye(len(tasks), dtype=gram.dtype, device=gram.device)
        weights = project_onto_simplex(weights - gamma * gram @ weights)
        for i, task in enumerate(tasks):
            self.lambdas[task] = float(weights[i]) * mass
        return Update(torch.ones(len(tasks)), weights.to(tracked) @ tracked)

    # -------------------------------------------------------------- checkpoint state
    def get_extra_state(self) -> dict[str, Any]:
        return {"tracked": {t: y.detach().cpu().clone() for t, y in self.tracked.items()},
                "lambdas": dict(self.lambdas), "count": self.count}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        state = state or {}
        self.tracked = dict(state.get("tracked", {}))
        self.lambdas = dict(state.get("lambdas", {}))
        self.count = int(state.get("count", 0))
