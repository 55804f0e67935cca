"""Static loss weights: ``L = sum_t w_t L_t`` with fixed, configured ``w_t``."""

from __future__ import annotations

import torch

from mtl_lightning.balancing.base import Balancer


class StaticWeighting(Balancer):
    """Fixed weight per task; tasks not listed get ``default_weight`` (equal weighting).

    Args:
        weights: task name -> weight, e.g. ``{"detection": 2.0}``.
        default_weight: weight of every task not in ``weights``.
    """

    def __init__(self, weights: dict[str, float] | None = None, default_weight: float = 1.0):
        super().__init__()
        self.weights = dict(weights or {})
        self.default_weight = default_weight

    def forward(
        self, losses: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        weights = {name: self.weights.get(name, self.default_weight) for name in losses}
        total = sum(weights[name] * loss for name, loss in losses.items())
        return total, {name: torch.tensor(float(w)) for name, w in weights.items()}
