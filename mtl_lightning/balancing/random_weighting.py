"""Random loss weighting, RLW (Lin et al., TMLR 2022)."""

from __future__ import annotations

import torch
from torchjd.scalarization import Random

from mtl_lightning.balancing.loss_weighting import LossWeighting


class RandomLossWeighting(LossWeighting):
    """``L = sum_t w_t L_t`` with ``w = softmax(z)``, ``z ~ N(0, I)`` drawn afresh every step.

    Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task
    Learning", TMLR 2022 (Algorithm 2). The weights sum to 1 (equal weighting's sum to the
    number of tasks), as in the paper. The draw is torchjd's ``Random`` scalarizer, seeded
    from the step: every DDP process draws the same weights, and a resumed run the same again.
    """

    def __init__(self, statistics_every: int = 50) -> None:
        super().__init__(statistics_every=statistics_every)
        self.random = Random()

    def scalarize(self, values: torch.Tensor, tasks: tuple[str, ...], step: int) -> torch.Tensor:
        with self.seeded(step, salt=17):
            return self.random(values.cpu()).to(values.device)  # CPU: the seeded generator
