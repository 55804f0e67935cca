"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018)."""

from __future__ import annotations

import torch
from torch import nn
from torchjd.scalarization import UW

from mtl_lightning.balancing.loss_weighting import LossWeighting


class UncertaintyWeighting(LossWeighting):
    """``L = sum_t 1/2 exp(-s_t) L_t + 1/2 s_t`` with a learned log-variance ``s_t`` per task.

    Kendall et al., "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry
    and Semantics", CVPR 2018. The weight of task ``t`` is ``1/2 exp(-s_t)``; at the optimum of
    ``s_t``, ``exp(s_t) = L_t``, so a task's weight tends to the inverse of its loss (its noise
    variance for a Gaussian likelihood). The math is torchjd's ``UW`` scalarizer, one per task
    so that a task absent from the batch neither adds a term nor moves its ``s_t``.
    The log-variances are model parameters: the main optimizer learns them (no weight decay).

    Args:
        init_log_variance: initial ``s_t`` (0 gives weights 1/2, as in the paper).
    """

    def __init__(self, init_log_variance: float = 0.0, statistics_every: int = 50) -> None:
        super().__init__(statistics_every=statistics_every)
        self.init_log_variance = init_log_variance
        self.scalarizers = nn.ModuleDict()

    def bind(self, tasks: list[str]) -> None:
        for task in tasks:
            scalarizer = UW(1)
            with torch.no_grad():
                scalarizer.log_var.fill_(self.init_log_variance)
            self.scalarizers[task] = scalarizer

    def scalarize(self, values: torch.Tensor, tasks: tuple[str, ...], step: int) -> torch.Tensor:
        return sum(self.scalarizers[t](values[i:i + 1]) for i, t in enumerate(tasks))
