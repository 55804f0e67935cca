"""Multi-task attention network, MTAN (Liu, Johns & Davison, CVPR 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mtl_lightning.models.architectures.base import (
    ArchitectureOutput,
    BackboneFactory,
    ParameterRoles,
)
from mtl_lightning.models.architectures.hard import HardSharing


class AttentionUnit(nn.Module):
    """One task's soft attention mask over one shared map.

    ``a_j = sigmoid(g([p_j, pool(a_{j-1})])) * p_j``: the mask is computed from the shared map
    and the task's attended map of the previous (finer) level, as in MTAN's attention modules
    (1x1 conv-BN-ReLU, 1x1 conv-BN-sigmoid).
    """

    def __init__(self, channels: int, previous_channels: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.Conv2d(channels + previous_channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.Sigmoid(),
        )

    def forward(self, shared: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        inputs = shared
        if previous is not None:
            previous = F.adaptive_avg_pool2d(previous, shared.shape[-2:])
            inputs = torch.cat([shared, previous], dim=1)
        return self.gate(inputs) * shared


class MultiTaskAttention(HardSharing):
    """A shared backbone; each task attends to its own subset of every backbone map.

    Liu et al., "End-to-End Multi-Task Learning with Attention", CVPR 2019. The shared
    network learns general features; a small attention module per task and level selects
    task-specific features from them. Here the attended maps of each task then pass through
    the shared FPN neck (one pass per task) to that task's head. The representation is the
    shared backbone maps, as for hard sharing. Works with every backbone (a plain ViT's
    attention units sit on its simple feature pyramid's levels).
    """

    def __init__(self, tasks: list[str], make_backbone: BackboneFactory,
                 neck_channels: int,
                 pyramid_levels: dict[str, tuple[int, ...] | None] | None = None) -> None:
        super().__init__(tasks, make_backbone, neck_channels, pyramid_levels)  # backbone, neck
        self.attention = nn.ModuleDict({
            task: nn.ModuleList(
                AttentionUnit(c, self.channels[j - 1] if j else 0)
                for j, c in enumerate(self.channels)
            )
            for task in tasks
        })

    def forward(self, image: torch.Tensor) -> ArchitectureOutput:
        representation, maps = self.shared_maps(self.backbone, image)
        features = {}
        for task in self.task_names:
            attended, previous = [], None
            for unit, shared in zip(self.attention[task], maps):
                previous = unit(shared, previous)
                attended.append(previous)
            features[task] = (self.neck(attended) if task in self.pyramid_tasks
                              else self.without_pyramid(attended))
        return ArchitectureOutput(features, representation)

    def roles(self) -> ParameterRoles:
        roles = super().roles()
        roles.per_task = {task: list(units.parameters()) for task, units in self.attention.items()}
        return roles
