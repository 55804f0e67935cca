"""What balancing one training step produced: the task weights and gradient statistics.

The module's training step returns a :class:`BalancingRecord` with its loss (Lightning hands
it to ``on_train_batch_end`` hooks as ``outputs["balancing"]``). The module logs its scalars
(``train/mtl/weight/<task>``, ``train/mtl/grad_norm/<task>``, ``train/mtl/cosine/<a>__<b>``);
callbacks such as :class:`~mtl_lightning.callbacks.gradient_conflict.GradientConflictHeatmap`
read its :class:`GradientStatistics` from there, without looking inside the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from mtl_lightning.balancing.task_gradients import TaskGradients


@dataclass
class GradientStatistics:
    """Per-task gradient norms and the pairwise cosine similarity of the task gradients
    (from their Gramian; float32, on the CPU).

    Attributes:
        tasks: the tasks, in the order of the rows.
        norms: ``m`` gradient norms.
        cosine: ``m x m`` cosine similarities (1 on the diagonal; < 0: the tasks conflict).
    """

    tasks: tuple[str, ...]
    norms: torch.Tensor
    cosine: torch.Tensor

    @classmethod
    def of(cls, gradients: TaskGradients) -> GradientStatistics:
        norms, cosine = gradients.statistics()
        return cls(gradients.tasks, norms.float().cpu(), cosine.float().cpu())

    def scalars(self) -> dict[str, torch.Tensor]:
        """``grad_norm/<task>`` and ``cosine/<a>__<b>`` (each pair once)."""
        values = {}
        for i, task in enumerate(self.tasks):
            values[f"grad_norm/{task}"] = self.norms[i]
            for j in range(i + 1, len(self.tasks)):
                values[f"cosine/{task}__{self.tasks[j]}"] = self.cosine[i, j]
        return values


@dataclass
class BalancingRecord:
    """One step's balancing: the task weights, and gradient statistics on the steps that
    compute them (``Balancer.statistics_every``; ``None`` on the others).

    A loss weighting's step fills it in ``training_step``; a gradient weighting's weights are
    known only after its backward, which fills in the record the step returned.
    """

    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    statistics: GradientStatistics | None = None

    def scalars(self) -> dict[str, torch.Tensor]:
        """Everything to log, keyed below ``train/mtl/``."""
        values = {f"weight/{task}": weight for task, weight in self.weights.items()}
        if self.statistics is not None:
            values.update(self.statistics.scalars())
        return values
