"""What the task-interaction decoders (PAD-Net, MTI-Net) share.

Both make *initial* per-task predictions from task-specific features, let the tasks' features
exchange information (*multi-modal distillation*), and give each task's own head the distilled
features for its *final* prediction. The initial predictions are supervised with the task's
own loss (deep supervision); the module adds ``weight * task.loss(initial, targets, has)`` to
that task's loss (see :attr:`ArchitectureOutput.deep_supervision`), so balancers see one loss per
task, deep supervision included.

Which tasks take part: the dense per-pixel tasks (segmentation, depth, normals, edges) that
read the feature pyramid. Image-level and box tasks (classification, detection) have no
per-pixel prediction to distil, and dense tasks with a decoder that reads no pyramid
(``decoder: aspp``) none of these features: they read the shared neck's features unchanged.

The initial prediction of a task is made by a copy of the task's own head (fresh weights) on
the task's initial features, so every dense task, built in or added, gets a deep-supervision
output in exactly the format its loss reads.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from mtl_lightning.models.neck import Features
from mtl_lightning.tasks.base import Task
from mtl_lightning.tasks.dense_decoders import conv_block
from mtl_lightning.tasks.dense_task import DenseRegressionTask
from mtl_lightning.tasks.edges import EdgeTask
from mtl_lightning.tasks.segmentation import SegmentationTask

#: Task types with a per-pixel prediction: the ones a task-interaction decoder distils.
DENSE_TASK_TYPES: tuple[type[Task], ...] = (SegmentationTask, DenseRegressionTask, EdgeTask)


def distilled_tasks(tasks: Mapping[str, Task], levels: int) -> dict[str, tuple[int, ...]]:
    """The tasks that take part in distillation, each with the pyramid levels it reads."""
    taking_part = {}
    for name, task in tasks.items():
        if isinstance(task, DENSE_TASK_TYPES) and task.reads_pyramid:
            read = task.pyramid_levels
            taking_part[name] = tuple(range(levels)) if read is None else tuple(read)
    return taking_part


def initial_head(task: Task) -> Task:
    """A copy of ``task``'s built head with fresh weights: it makes the initial prediction."""
    head = copy.deepcopy(task)
    for module in head.modules():
        if module is not head and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return head


def task_features(channels: int) -> nn.Sequential:
    """Task-specific features from shared ones: two 3x3 conv blocks (PAD-Net's and MTI-Net's
    two residual blocks, without the residual)."""
    return nn.Sequential(conv_block(channels, channels), conv_block(channels, channels))


class SpatialAttention(nn.Module):
    """One source task's message to one target task: ``sigmoid(W_g * x) . (W_m * x)`` (3x3
    convolutions of the source task's features ``x``; Xu et al. 2018, Sec. 3.3, the
    attention-guided message passing, with the gate computed from the message's source as in
    Vandenhende et al.'s implementation)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gate = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.message = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate(source)) * self.message(source)


class MultiModalDistillation(nn.Module):
    """``F_t^o = F_t + sum_{s != t} SpatialAttention_{t,s}(F_s)`` for every task ``t``
    (PAD-Net's multi-modal distillation, Xu et al. 2018; MTI-Net applies it at every scale).

    Args:
        tasks: the tasks whose features are exchanged (a task alone receives no message).
        channels: width of every task's features.
    """

    def __init__(self, tasks: list[str], channels: int) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.attention = nn.ModuleDict({
            target: nn.ModuleDict({source: SpatialAttention(channels)
                                   for source in tasks if source != target})
            for target in tasks
        })

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        distilled = {}
        for target in self.tasks:
            out = features[target]
            for source, attention in self.attention[target].items():
                out = out + attention(features[source])
            distilled[target] = out
        return distilled

    def parameters_of(self, target: str) -> list[nn.Parameter]:
        """The parameters that only ``target``'s features depend on."""
        return list(self.attention[target].parameters())


def with_pyramid(shared: Features, pyramid: list[torch.Tensor]) -> Features:
    """``shared`` with a task's own pyramid (the backbone maps stay the shared ones)."""
    return Features(backbone=shared.backbone, pyramid=pyramid, strides=shared.strides)
