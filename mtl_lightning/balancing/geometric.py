"""Geometric loss strategy, GLS (Chennupati et al., CVPR Workshops 2019)."""

from __future__ import annotations

import torch
from torchjd.scalarization import GeometricMean

from mtl_lightning.balancing.loss_weighting import LossWeighting


class GeometricLossStrategy(LossWeighting):
    """``L = (prod_t L_t)^(1/m)``: the geometric mean of the ``m`` task losses.

    Chennupati et al., "MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss Strategy
    for Multi-Task Learning", CVPR Workshops 2019. Its gradient weights task ``t`` by
    ``L / (m L_t)``, so a task whose loss is small is weighted up: scale-free across tasks.
    The math is torchjd's ``GeometricMean``; the weights are evaluated at the global losses
    (see :mod:`~mtl_lightning.balancing.loss_weighting`), which keeps it exact under DDP.
    """

    def __init__(self, statistics_every: int = 50) -> None:
        super().__init__(statistics_every=statistics_every)
        self.mean = GeometricMean()

    def scalarize(self, values: torch.Tensor, tasks: tuple[str, ...], step: int) -> torch.Tensor:
        return self.mean(values)
