"""Aggregators that are not a weighted sum of the current task gradients.

ConFIG and GradDrop combine the rows of ``J`` coordinate by coordinate or by a pseudo-inverse;
DB-MTL and MoCo combine running averages of past gradients. Their update of the shared
parameters is a vector ``d`` over the columns of ``J`` (the ``parameters`` source: the trunk's
and the shared parameters' gradients, global under DDP), which
:func:`~mtl_lightning.balancing.task_gradients.write_combined_gradients` writes in place of
``w^T J``; each task's head still gets ``w_t g_t`` with the weights the method returns
(1 unless it says otherwise). ``J`` is the same on every process, so ``d`` is, and the update
stays exact under DDP; it is unscaled, and written times the 16-mixed loss scale like every
other update.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Iterator

import torch

from mtl_lightning.balancing.base import TaskLosses
from mtl_lightning.balancing.gradient_weighting import GradientSource, GradientWeighting, Update
from mtl_lightning.balancing.task_gradients import TaskGradients


class JacobianAggregation(GradientWeighting):
    """A gradient method whose shared update is a function of ``J`` itself (source
    ``parameters``, the only one where ``J`` is global).

    Args:
        source: only ``parameters`` (the default) is accepted.
        statistics_every: see :class:`~mtl_lightning.balancing.base.Balancer`.
    """

    default_source: GradientSource = "parameters"

    def __init__(self, source: GradientSource | None = None, statistics_every: int = 50) -> None:
        super().__init__(source=source, statistics_every=statistics_every)
        if self.source != "parameters":
            raise ValueError(f"{type(self).__name__} combines the task gradients at the "
                             f"parameters: give source: parameters, not {self.source!r}.")

    @abstractmethod
    def aggregate(self, jacobian: torch.Tensor, losses: TaskLosses, step: int) -> Update:
        """The update from ``J`` (tasks ``losses.tasks`` x shared parameters, unscaled)."""

    def weights(self, gramian: torch.Tensor, losses: TaskLosses, step: int) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} is not a weighting of the Gramian: call "
                        "update() with the task gradients.")

    def update(self, gradients: TaskGradients, losses: TaskLosses, step: int) -> Update:
        return self.aggregate(gradients.jacobian(), losses, step)

    @staticmethod
    @contextlib.contextmanager
    def seeded_on(device: torch.device, step: int, salt: int = 0) -> Iterator[None]:
        """Like :meth:`Balancer.seeded`, for random draws made on ``device`` (GradDrop's), with
        that device's generator restored afterwards."""
        if device.type == "cpu":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(1_000_003 * step + salt)
                yield
            return
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type=device.type):
            torch.manual_seed(1_000_003 * step + salt)
            yield
