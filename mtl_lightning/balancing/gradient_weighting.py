"""Gradient weighting: weights computed from the task gradients' Gramian ``G = J J^T``.

Every method here (MGDA, PCGrad, UPGrad, ..., GradNorm) maps the ``m x m`` Gramian of the task
gradients to ``m`` weights, and the update is ``sum_t w_t g_t``. So the model never needs the
combined gradient vector: :mod:`~mtl_lightning.balancing.task_gradients` forms ``G``, asks the
method for ``w``, and writes ``sum_t w_t g_t`` into ``.grad`` (one trunk backward with the
representation source). torchjd provides the weightings (``MGDAWeighting``, ...).

:meth:`GradientWeighting.backward` is that whole backward pass of one step; the module's
``backward`` hook calls it in place of ``loss.backward()``.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torchjd.aggregation import Weighting

from mtl_lightning.balancing.base import Balancer, TaskLosses
from mtl_lightning.balancing.record import BalancingRecord, GradientStatistics
from mtl_lightning.balancing.task_gradients import compute_task_gradients, write_combined_gradients

if TYPE_CHECKING:
    from mtl_lightning.balancing.task_gradients import SharedStructure, TaskGradients

GradientSource = Literal["representation", "parameters"]


@dataclass
class Update:
    """What a gradient method returns for one step.

    Attributes:
        weights: one per task: each head receives ``w_t g_t``; for a weighted sum the shared
            parameters receive ``sum_t w_t g_t`` too (logged as ``train/mtl/weight/<task>``).
        combined: for an aggregator that is not a weighted sum, the update of the shared
            parameters, over the columns of ``TaskGradients.jacobian()``; ``None`` otherwise.
    """

    weights: torch.Tensor
    combined: torch.Tensor | None = None


class GradientWeighting(Balancer):
    """A balancer whose weights are a function of the task gradients (their Gramian).

    Args:
        source: where the task gradients are taken. ``"representation"``: at the backbone
            maps the neck consumes plus the neck's parameters (one backward through the
            backbone per step; the MGDA-UB approximation). ``"parameters"``: at every shared
            parameter (exact; one batched backward through the backbone for all tasks).
            ``None`` takes the method's default.
        statistics_every: see :class:`~mtl_lightning.balancing.base.Balancer`.
    """

    needs_task_gradients = True
    default_source: GradientSource = "representation"

    def __init__(self, source: GradientSource | None = None, statistics_every: int = 50) -> None:
        super().__init__(statistics_every=statistics_every)
        source = source or self.default_source
        if source not in ("representation", "parameters"):
            raise ValueError(
                f"balancer source must be 'representation' or 'parameters', got {source!r}."
            )
        self.source: GradientSource = source

    @abstractmethod
    def weights(self, gramian: torch.Tensor, losses: TaskLosses, step: int) -> torch.Tensor:
        """``m`` weights for the tasks ``losses.tasks`` from their ``m x m`` Gramian."""

    def update(self, gradients: TaskGradients, losses: TaskLosses, step: int) -> Update:
        """This step's update from the task gradients: by default the weighted sum with
        :meth:`weights` of their Gramian. Methods that need ``J`` itself override it."""
        return Update(self.weights(gradients.gramian, losses, step))

    def backward(self, losses: TaskLosses, structure: SharedStructure, scale: float,
                 step: int) -> BalancingRecord:
        """One step's backward pass: the task gradients, this method's update from them, and
        the combined gradient added to every parameter's ``.grad``.

        Args:
            losses: the step's task losses (with their graph).
            structure: which tensors are the representation, trunk, shared and task parts.
            scale: the factor Lightning applies to a loss before its backward (the 16-mixed
                loss scale divided by the gradient-accumulation factor): the task gradients are
                unscaled by it and the written gradient carries it, so unscaling, clipping and
                accumulation work as for ``loss.backward()``.
            step: the optimizer step (seeds and schedules of the method).

        Returns:
            The task weights and, on statistics steps, the gradient statistics.
        """
        gradients = compute_task_gradients(losses, structure, self.source, scale)
        if torch.isfinite(gradients.gramian).all():
            update = self.update(gradients, losses, step)
            weights, combined = update.weights, update.combined
        else:  # overflow under 16-mixed: the scaler will skip this step and lower the scale
            weights, combined = torch.ones(len(losses.tasks)), None
        write_combined_gradients(gradients, weights, structure, scale, combined)
        return BalancingRecord(
            weights={t: w.detach().float().cpu() for t, w in zip(losses.tasks, weights)},
            statistics=GradientStatistics.of(gradients) if self.wants_statistics(step) else None,
        )


def gramian_square_root(gramian: torch.Tensor) -> torch.Tensor:
    """A square ``M`` with ``M M^T = G``: for methods torchjd defines on the matrix ``J``
    whose result depends on ``J`` only through ``J J^T`` (Nash-MTL)."""
    values, vectors = torch.linalg.eigh(gramian)
    return vectors * values.clamp(min=0).sqrt()


class TorchjdWeighting(GradientWeighting):
    """A torchjd ``Weighting`` behind the balancer interface.

    One weighting per set of present tasks (partial labels change ``m`` from batch to batch;
    a stateful method keeps one state per task set). Weightings are kept out of the module
    tree; stateful ones list their state in ``state_attributes``, which ``get_extra_state``
    saves in checkpoints. Random parts run from a seed derived from the step, so every DDP
    process computes the same weights.
    """

    takes_matrix: bool = False  # torchjd defines it on J rather than on G
    #: the weights depend on ``J`` itself, not only on ``J J^T`` (ExcessMTL's per-coordinate
    #: statistics): given the global ``J`` of the parameters source.
    takes_jacobian: bool = False
    state_attributes: tuple[str, ...] = ()

    def __init__(self, source: GradientSource | None = None, statistics_every: int = 50) -> None:
        super().__init__(source=source, statistics_every=statistics_every)
        if self.takes_jacobian and self.source != "parameters":
            raise ValueError(f"{type(self).__name__} needs the task gradients at the "
                             f"parameters: give source: parameters, not {self.source!r}.")
        self._weightings: dict[tuple[str, ...], Weighting] = {}

    @abstractmethod
    def make_weighting(self, num_tasks: int) -> Weighting:
        """A fresh torchjd weighting for ``num_tasks`` tasks."""

    def weighting_for(self, tasks: tuple[str, ...]) -> Weighting:
        if tasks not in self._weightings:
            self._weightings[tasks] = self.make_weighting(len(tasks))
        return self._weightings[tasks]

    def weights(self, gramian: torch.Tensor, losses: TaskLosses, step: int) -> torch.Tensor:
        if self.takes_jacobian:
            raise TypeError(f"{type(self).__name__} weights J itself, not its Gramian: call "
                            "update() with the task gradients.")
        weighting = self.weighting_for(losses.tasks)
        stat = gramian_square_root(gramian) if self.takes_matrix else gramian
        with self.seeded(step):
            return weighting(stat)

    def update(self, gradients: TaskGradients, losses: TaskLosses, step: int) -> Update:
        if not self.takes_jacobian:
            return super().update(gradients, losses, step)
        with self.seeded(step):
            return Update(self.weighting_for(losses.tasks)(gradients.jacobian()))

    # -------------------------------------------------------------- checkpoint state
    def get_extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if not self.state_attributes:
            return state
        for tasks, weighting in self._weightings.items():
            state["|".join(tasks)] = {
                name: _to_saveable(getattr(weighting, name)) for name in self.state_attributes
            }
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        for key, attributes in (state or {}).items():
            weighting = self.weighting_for(tuple(key.split("|")))
            for name, value in attributes.items():
                setattr(weighting, name, _from_saveable(value))
            self.restored(weighting)

    def restored(self, weighting: Weighting) -> None:
        """Hook after a weighting's state is restored from a checkpoint."""


def _to_saveable(value: Any) -> Any:
    """Checkpoint-safe (``weights_only=True``) form of a state attribute."""
    if isinstance(value, np.ndarray):
        return {"numpy": torch.from_numpy(np.array(value))}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, tuple):
        return {"tuple": [str(v) if isinstance(v, torch.dtype) else v for v in value]}
    return value


def _from_saveable(value: Any) -> Any:
    if isinstance(value, dict) and "numpy" in value:
        return value["numpy"].numpy()
    if isinstance(value, dict) and "tuple" in value:
        return tuple(getattr(torch, v.split(".")[-1]) if isinstance(v, str) and
                     v.startswith("torch.") else v for v in value["tuple"])
    return value
