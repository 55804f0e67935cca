"""PAD-Net: prediction-and-distillation network (Xu, Ouyang, Wang & Sebe, CVPR 2018)."""

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
    task_features,
    with_pyramid,
)
from mtl_lightning.models.architectures.hard import HardSharing
from mtl_lightning.tasks.base import Task


class PADNet(HardSharing):
    """Shared backbone and neck -> per-task features and initial predictions -> multi-modal
    distillation -> each task's head (the final prediction).

    Xu et al., "PAD-Net: Multi-Tasks Guided Prediction-and-Distillation Network for
    Simultaneous Depth Estimation and Scene Parsing", CVPR 2018. For every dense task ``t``
    (see :mod:`~mtl_lightning.models.architectures.distillation`):

    1. ``F_t = B_t(P)``: task features from the shared pyramid ``P``, per level (two conv
       blocks per task and level);
    2. the initial prediction ``head'_t(F_t)`` (a copy of the task's head), supervised with
       the task's loss times ``deep_supervision_weight``;
    3. ``F_t^o = F_t + sum_{s != t} sigmoid(W_g F_s) . (W_m F_s)``, level by level;
    4. the task's own head reads ``F_t^o`` (the final prediction).

    PAD-Net distils one scale of a dilated backbone; here each pyramid level is distilled on
    its own, so the task heads keep reading a pyramid. Classification and detection read the
    shared neck's features unchanged.

    Args:
        deep_supervision_weight: weight of each initial prediction's loss (1: the paper's
            choice of equal weights for the intermediate and final losses).
    """

    def __init__(self, tasks: list[str], make_backbone: BackboneFactory,
                 neck_channels: int,
                 pyramid_levels: dict[str, tuple[int, ...] | None] | None = None,
                 deep_supervision_weight: float = 1.0) -> None:
        super().__init__(tasks, make_backbone, neck_channels, pyramid_levels)
        self.deep_supervision_weight = float(deep_supervision_weight)
        self.levels: dict[str, tuple[int, ...]] = {}
        self.branches = nn.ModuleDict()
        self.initial_heads = nn.ModuleDict()
        self.distillation = nn.ModuleList()

    def bind_tasks(self, tasks: Mapping[str, Task]) -> None:
        self.levels = distilled_tasks(tasks, len(self.channels))
        width = self.pyramid_channels
        for name, levels in self.levels.items():
            self.branches[name] = nn.ModuleDict({str(j): task_features(width) for j in levels})
            self.initial_heads[name] = initial_head(tasks[name])
        for level in range(len(self.channels)):
            self.distillation.append(MultiModalDistillation(self._reading(level), width))

    def _reading(self, level: int) -> list[str]:
        return [name for name, levels in self.levels.items() if level in levels]

    def forward(self, image: torch.Tensor) -> ArchitectureOutput:
        output = super().forward(image)
        if not self.levels:
            return output
        features = output.features
        shared = next(iter(features.values()))
        own = {name: list(shared.pyramid) for name in self.levels}
        for name, branches in self.branches.items():
            for level, branch in branches.items():
                own[name][int(level)] = branch(shared.pyramid[int(level)])
        size = (image.shape[-2], image.shape[-1])
        if self.training:
            output.deep_supervision = {
                name: [(self.deep_supervision_weight,
                        head(with_pyramid(shared, own[name]), size))]
                for name, head in self.initial_heads.items()}
        final = {name: list(pyramid) for name, pyramid in own.items()}
        for level, distil in enumerate(self.distillation):
            reading = self._reading(level)
            if reading:
                out = distil({name: own[name][level] for name in reading})
                for name in reading:
                    final[name][level] = out[name]
        for name, pyramid in final.items():
            features[name] = with_pyramid(shared, pyramid)
        return output

    def roles(self) -> ParameterRoles:
        """The task branches feed every task (through distillation): shared. A task's
        initial head and the messages it receives: that task's."""
        roles = super().roles()
        roles.shared += list(self.branches.parameters())
        roles.per_task = {
            name: list(self.initial_heads[name].parameters())
            + [p for distil in self.distillation if name in distil.tasks
               for p in distil.parameters_of(name)]
            for name in self.levels}
        return roles
