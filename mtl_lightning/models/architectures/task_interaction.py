"""The base class of the task-interaction decoders (PAD-Net, MTI-Net).

Both decoders build the same parts around the shared trunk and differ only in how each dense
task's *initial* features come from the shared pyramid: PAD-Net computes them level by level
(Xu et al., CVPR 2018), MTI-Net propagates them coarse to fine (Vandenhende et al., ECCV 2020).
What they share (see :mod:`~mtl_lightning.models.architectures.distillation`):

- which tasks take part, and the pyramid levels each reads (``levels``);
- a copy of each task's head making the initial prediction, supervised with the task's loss
  times ``deep_supervision_weight`` (``deep_supervision``);
- multi-modal distillation at every level, among the tasks reading that level;
- each task's own head reading its distilled pyramid;
- the parameter roles: the task features are shared (every task's loss reaches them through
  distillation); a task's initial head and the messages it receives are that task's.

A subclass builds its task-feature modules in :meth:`build_task_features`, computes them in
:meth:`initial_features` and lists their parameters in :meth:`task_feature_parameters`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mtl_lightning.models.architectures.base import (
    ArchitectureOutput,
    BackboneFactory,
    ParameterRoles,
)
from mtl_lightning.models.architectures.distillation import (
    MultiModalDistillation,
    distilled_tasks,
    initial_head,
    with_pyramid,
)
from mtl_lightning.models.architectures.hard import HardSharing
from mtl_lightning.models.neck import Features
from mtl_lightning.tasks.base import Task


class TaskInteractionDecoder(HardSharing):
    """Shared backbone and neck -> per-task initial features (the subclass's) and initial
    predictions -> multi-modal distillation per level -> each task's head.

    Classification, detection and dense tasks that read no pyramid keep the shared neck's
    features unchanged.

    Args:
        deep_supervision_weight: weight of each initial prediction's loss (1: PAD-Net's
            choice of equal weights for the intermediate and final losses).
    """

    def __init__(self, tasks: list[str], make_backbone: BackboneFactory,
                 neck_channels: int,
                 pyramid_levels: dict[str, tuple[int, ...] | None] | None = None,
                 deep_supervision_weight: float = 1.0) -> None:
        super().__init__(tasks, make_backbone, neck_channels, pyramid_levels)
        self.deep_supervision_weight = float(deep_supervision_weight)
        self.levels: dict[str, tuple[int, ...]] = {}
        self.initial_heads = nn.ModuleDict()
        self.distillation = nn.ModuleList()

    def bind_tasks(self, tasks: Mapping[str, Task]) -> None:
        self.levels = distilled_tasks(tasks, len(self.channels))
        if not self.levels:
            return
        width, count = self.pyramid_channels, len(self.channels)
        self.build_task_features(width, count)
        self.initial_heads = nn.ModuleDict({n: initial_head(tasks[n]) for n in self.levels})
        self.distillation = nn.ModuleList(
            MultiModalDistillation([n for n in self.levels if level in self.levels[n]], width)
            for level in range(count))

    def build_task_features(self, width: int, count: int) -> None:
        """Make the modules of the tasks' initial features (``self.levels`` is set)."""
        raise NotImplementedError

    def initial_features(self, shared: Features) -> dict[str, list[torch.Tensor]]:
        """Each distilled task's pyramid of initial features (the levels it does not read
        may hold the shared maps)."""
        raise NotImplementedError

    def task_feature_parameters(self) -> list[nn.Parameter]:
        """The parameters of the task-feature modules (shared: distillation mixes them);
        called only when some task takes part."""
        raise NotImplementedError

    def forward(self, image: torch.Tensor) -> ArchitectureOutput:
        output = super().forward(image)
        if not self.levels:
            return output
        features = output.features
        shared = next(iter(features.values()))
        own = self.initial_features(shared)
        size = (image.shape[-2], image.shape[-1])
        if self.training:
            output.deep_supervision = {
                name: [(self.deep_supervision_weight,
                        head(with_pyramid(shared, own[name]), size))]
                for name, head in self.initial_heads.items()}
        final = {name: list(pyramid) for name, pyramid in own.items()}
        for level, distil in enumerate(self.distillation):
            if distil.tasks:
                out = distil({name: own[name][level] for name in distil.tasks})
                for name in distil.tasks:
                    final[name][level] = out[name]
        for name, pyramid in final.items():
            features[name] = with_pyramid(shared, pyramid)
        return output

    def roles(self) -> ParameterRoles:
        """Task features feed every task (through distillation): shared. A task's initial
        head and the messages it receives: that task's."""
        roles = super().roles()
        if self.levels:
            roles.shared += self.task_feature_parameters()
        roles.per_task = {
            name: list(self.initial_heads[name].parameters())
            + [p for distil in self.distillation if name in distil.tasks
               for p in distil.parameters_of(name)]
            for name in self.levels}
        return roles
