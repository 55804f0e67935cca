"""MTI-Net: multi-scale task interaction network (Vandenhende, Georgoulis & Van Gool, ECCV
2020)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import SqueezeExcitation

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
from mtl_lightning.tasks.base import Task
from mtl_lightning.tasks.dense_decoders import conv_block


class FeaturePropagation(nn.Module):
    """MTI-Net's feature propagation module: the coarser scale's task features, upsampled and
    concatenated over tasks, become shared multi-task features ``f([F_1, ..., F_T])``; each
    task takes its own channel-reweighted view of them (a squeeze-and-excitation block per
    task) into the next, finer scale."""

    def __init__(self, tasks: list[str], channels: int) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.shared = conv_block(len(tasks) * channels, channels)
        self.excite = nn.ModuleDict({
            task: SqueezeExcitation(channels, max(channels // 4, 4)) for task in tasks})

    def forward(self, coarser: dict[str, torch.Tensor], size: tuple[int, int]
                ) -> dict[str, torch.Tensor]:
        upsampled = [F.interpolate(coarser[t], size=size, mode="bilinear", align_corners=False)
                     for t in self.tasks]
        shared = self.shared(torch.cat(upsampled, dim=1))
        return {task: self.excite[task](shared) for task in self.tasks}


class InitialFeatures(nn.Module):
    """A task's features at one scale: from the shared map alone (the coarsest scale) or from
    the shared map and the propagated task features (two conv blocks, MTI-Net's initial task
    prediction module without its prediction layer)."""

    def __init__(self, channels: int, propagated: bool) -> None:
        super().__init__()
        width = 2 * channels if propagated else channels
        self.blocks = nn.Sequential(conv_block(width, channels), conv_block(channels, channels))

    def forward(self, shared: torch.Tensor, propagated: torch.Tensor | None) -> torch.Tensor:
        inputs = shared if propagated is None else torch.cat([shared, propagated], dim=1)
        return self.blocks(inputs)


class MTINet(HardSharing):
    """Shared backbone and neck -> per-scale task features, propagated coarse to fine ->
    multi-modal distillation at every scale -> each task's head over the distilled scales.

    Vandenhende et al., "MTI-Net: Multi-Scale Task Interaction Networks for Multi-Task
    Learning", ECCV 2020. Tasks interact differently at different receptive fields, so
    distillation happens per scale. For the dense tasks (see
    :mod:`~mtl_lightning.models.architectures.distillation`), the scales being the neck's
    pyramid levels, coarsest first:

    1. ``F_t^s = initial_t^s([P^s, FPM^s(F^{s+1})])`` (the coarsest scale reads ``P^s`` alone);
    2. deep supervision: a copy of the task's head reads the task's initial features of all
       scales (the paper supervises one initial prediction per scale; reading all scales at
       once lets every task's head serve unchanged);
    3. ``F_t^{s,o} = F_t^s + sum_{u != t} sigmoid(W_g F_u^s) . (W_m F_u^s)`` at every scale a
       task reads;
    4. the task's head fuses its distilled scales (the paper's feature aggregation: the
       heads here upsample every level to the finest and combine them).

    The paper's backbone is an HRNet with four resolution branches; the pyramid of the shared
    FPN neck plays that part here. Classification and detection read the shared neck's
    features unchanged.

    Args:
        deep_supervision_weight: weight of each task's initial prediction loss.
    """

    def __init__(self, tasks: list[str], make_backbone: BackboneFactory,
                 neck_channels: int,
                 pyramid_levels: dict[str, tuple[int, ...] | None] | None = None,
                 deep_supervision_weight: float = 1.0) -> None:
        super().__init__(tasks, make_backbone, neck_channels, pyramid_levels)
        self.deep_supervision_weight = float(deep_supervision_weight)
        self.levels: dict[str, tuple[int, ...]] = {}
        self.initial = nn.ModuleDict()
        self.propagation = nn.ModuleList()
        self.distillation = nn.ModuleList()
        self.initial_heads = nn.ModuleDict()

    def bind_tasks(self, tasks: Mapping[str, Task]) -> None:
        self.levels = distilled_tasks(tasks, len(self.channels))
        if not self.levels:
            return
        names, width, count = list(self.levels), self.pyramid_channels, len(self.channels)
        # Every task has features at every scale: the coarser ones reach its finer ones.
        self.initial = nn.ModuleDict({
            name: nn.ModuleList(InitialFeatures(width, propagated=level < count - 1)
                                for level in range(count))
            for name in names})
        self.propagation = nn.ModuleList(FeaturePropagation(names, width)
                                         for _ in range(count - 1))
        self.distillation = nn.ModuleList(
            MultiModalDistillation([n for n in names if level in self.levels[n]], width)
            for level in range(count))
        self.initial_heads = nn.ModuleDict({n: initial_head(tasks[n]) for n in names})

    def forward(self, image: torch.Tensor) -> ArchitectureOutput:
        output = super().forward(image)
        if not self.levels:
            return output
        features = output.features
        shared = next(iter(features.values()))
        count = len(shared.pyramid)
        own: dict[str, list[torch.Tensor]] = {name: [None] * count for name in self.levels}
        propagated: dict[str, torch.Tensor] | None = None
        for level in reversed(range(count)):
            current = shared.pyramid[level]
            for name in self.levels:
                own[name][level] = self.initial[name][level](
                    current, None if propagated is None else propagated[name])
            if level > 0:
                coarser = {name: own[name][level] for name in self.levels}
                finer = tuple(shared.pyramid[level - 1].shape[-2:])
                propagated = self.propagation[level - 1](coarser, finer)
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
        """Task features and propagation feed every task: shared. A task's initial head and
        the messages it receives: that task's."""
        roles = super().roles()
        roles.shared += list(self.initial.parameters()) + list(self.propagation.parameters())
        roles.per_task = {
            name: list(self.initial_heads[name].parameters())
            + [p for distil in self.distillation if name in distil.tasks
               for p in distil.parameters_of(name)]
            for name in self.levels}
        return roles
