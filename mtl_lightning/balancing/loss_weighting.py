"""Loss weighting: ``sum_t w_t L_t`` with weights computed from the loss values.

Each method is written as a *scalarizer* ``f(l_1, ..., l_m)`` of the task losses (torchjd's
scalarizers where torchjd has the method). Back-propagating ``f`` through the network gives
``sum_t (df/dl_t) grad L_t``, so the task weights are ``w_t = df/dl_t``. We evaluate them at the
*global* loss values (the same on every DDP process) and back-propagate
``sum_t w_t * share_t * L_t`` on each process: for a nonlinear ``f`` (GLS, FAMO) this is what
makes two processes with B/2 samples each take the step of one process with B samples, which
back-propagating ``f`` of each process's own losses would not. A method's own parameters
(uncertainty weighting's log-variances) get ``df/dparam`` at the global losses.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch

from mtl_lightning.balancing.base import Balancer, TaskLosses


@dataclass
class Combination:
    """What a loss weighting returns for one step.

    Attributes:
        loss: what to back-propagate on this process.
        value: the method's objective at the global losses (logged as ``train/mtl/loss``).
        weights: the task weights ``df/dl_t`` (detached), logged as ``train/mtl/weight/<task>``.
    """

    loss: torch.Tensor
    value: torch.Tensor
    weights: dict[str, torch.Tensor]


class LossWeighting(Balancer):
    """A balancer whose weights depend on loss values only: one ordinary backward pass."""

    @abstractmethod
    def scalarize(self, values: torch.Tensor, tasks: tuple[str, ...], step: int) -> torch.Tensor:
        """The method's objective for the loss vector ``values`` of ``tasks`` (in that order)."""

    def observe(self, losses: TaskLosses, step: int) -> None:
        """Record this step's global losses (history-based methods); called before weighting."""

    def combine(self, losses: TaskLosses, step: int) -> Combination:
        tasks = losses.tasks
        if not tasks:
            raise ValueError("No task is labelled in this batch on any process.")
        self.observe(losses, step)
        values = losses.value_vector().detach().requires_grad_(True)
        with torch.enable_grad():
            objective = self.scalarize(values, tasks, step)
            (weights,) = torch.autograd.grad(objective, values, retain_graph=True)
        weights = weights.detach()
        loss = sum(
            weights[i].to(losses.local[t].dtype) * losses.share[t] * losses.local[t]
            for i, t in enumerate(tasks)
        ) + sum(0.0 * unused for unused in losses.unlabelled.values())
        own = [p for p in self.parameters() if p.requires_grad]
        if own:
            # The method's own parameters learn from the global losses (adds 0 to the value);
            # the 0 * p terms keep every one of them in the graph when a task is absent, which
            # DDP requires of every parameter.
            loss = loss + (objective - objective.detach()) + sum(0.0 * p.sum() for p in own)
        return Combination(
            loss=loss, value=objective.detach(),
            weights={t: weights[i] for i, t in enumerate(tasks)},
        )
