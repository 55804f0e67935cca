"""Impartial multi-task learning, loss part, IMTL-L (Liu et al., ICLR 2021)."""

from __future__ import annotations

import torch
from torch import nn
from torchjd.scalarization import IMTLL

from mtl_lightning.balancing.loss_weighting import LossWeighting


class ImpartialLossWeighting(LossWeighting):
    """``L = sum_t exp(s_t) L_t - s_t`` with a learned scale ``s_t`` per task.

    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021 (the loss-balance part;
    IMTL-G is :class:`~mtl_lightning.balancing.IMTLG`). Task ``t``'s weight is ``exp(s_t)``;
    at the optimum of ``s_t``, ``exp(s_t) L_t = 1``: every scaled loss is 1, whatever the
    task's scale. The math is torchjd's ``IMTLL`` scalarizer, one per task so that a task
    absent from the batch neither adds a term nor moves its ``s_t``. The scales are model
    parameters: the main optimizer learns them.

    Args:
        init_log_scale: initial ``s_t`` (0: the plain sum, as in the paper).
    """

    def __init__(self, init_log_scale: float = 0.0, statistics_every: int = 50) -> None:
        super().__init__(statistics_every=statistics_every)
        self.init_log_scale = init_log_scale
        self.scalarizers = nn.ModuleDict()

    def bind(self, tasks: list[str]) -> None:
        for task in tasks:
            scalarizer = IMTLL(1)
            with torch.no_grad():
                scalarizer.log_scale.fill_(self.init_log_scale)
            self.scalarizers[task] = scalarizer

    def scalarize(self, values: torch.Tensor, tasks: tuple[str, ...], step: int) -> torch.Tensor:
        return sum(self.scalarizers[t](values[i:i + 1]) for i, t in enumerate(tasks))
