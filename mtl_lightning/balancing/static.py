"""Static loss weights: ``L = sum_t w_t L_t`` with fixed, configured ``w_t``."""

from __future__ import annotations

import torch
from torchjd.scalarization import Constant

from mtl_lightning.balancing.loss_weighting import LossWeighting


class StaticWeighting(LossWeighting):
    """Fixed weight per task; tasks not listed get ``default_weight`` (equal weighting).

    The default balancer. The weighted sum is torchjd's ``Constant`` scalarizer.

    Args:
        weights: task name -> weight, e.g. ``{"detection": 2.0}``.
        default_weight: weight of every task not in ``weights``.
    """

    def __init__(
        self,
        weights: dict[str, float] | None = None,
        default_weight: float = 1.0,
        statistics_every: int = 50,
    ) -> None:
        super().__init__(statistics_every=statistics_every)
        self.weights = dict(weights or {})
        self.default_weight = default_weight

    def scalarize(self, values: torch.Tensor, tasks: tuple[str, ...], step: int) -> torch.Tensor:
        weights = torch.tensor(
            [float(self.weights.get(t, self.default_weight)) for t in tasks],
            dtype=values.dtype, device=values.device,
        )
        return Constant(weights)(values)
