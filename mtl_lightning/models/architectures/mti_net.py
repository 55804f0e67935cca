"""MTI-Net: multi-scale task interaction network (Vandenhende, Georgoulis & Van Gool, ECCV
2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import SqueezeExcitation

from mtl_lightning.models.architectures.task_interaction import TaskInteractionDecoder
from mtl_lightning.models.neck import Features
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


class MTINet(TaskInteractionDecoder):
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

    def build_task_features(self, width: int, count: int) -> None:
        """Every task gets features at every scale (the coarser ones reach its finer ones),
        and a propagation module joins each scale to the next finer one."""
        self.initial = nn.ModuleDict({
            name: nn.ModuleList(InitialFeatures(width, propagated=level < count - 1)
                                for level in range(count))
            for name in self.levels})
        self.propagation = nn.ModuleList(FeaturePropagation(list(self.levels), width)
                                         for _ in range(count - 1))

    def initial_features(self, shared: Features) -> dict[str, list[torch.Tensor]]:
        """``F_t^s`` at every scale, coarsest first, each finer one reading the propagated
        coarser features."""
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
        return own

    def task_feature_parameters(self) -> list[nn.Parameter]:
        return list(self.initial.parameters()) + list(self.propagation.parameters())
