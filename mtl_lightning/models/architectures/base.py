"""The Architecture interface: how the tasks share parameters.

An architecture turns an image batch into the :class:`~mtl_lightning.models.neck.Features`
each task head reads, one ``Features`` per task. Heads, losses, metrics, balancers and
callbacks only see that dict, so every architecture works with all of them.

For the balancers it also names the role of each parameter (see
:mod:`mtl_lightning.balancing.task_gradients`): the *trunk* that produces the
*representation*, *shared* parameters above it, and parameters that belong to one task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mtl_lightning.models.backbone import Backbone
from mtl_lightning.models.neck import Features

BackboneFactory = Callable[[], Backbone]


@dataclass
class ParameterRoles:
    """Which parameters play which role for gradient balancing."""

    trunk: list[nn.Parameter]
    shared: list[nn.Parameter]
    per_task: dict[str, list[nn.Parameter]]


class Architecture(nn.Module, ABC):
    """Image -> ``{task: Features}``.

    Attributes:
        shares_representation: whether every task reads one representation (the backbone maps
            the neck consumes). Gradient balancing at the representation needs it; soft sharing
            and ensembles take task gradients at the parameters instead.
        representation: the tensors of the last training forward pass that the trunk
            produced (what the balancer differentiates through).
        channels, strides: of the backbone maps (every task's backbone is the same model).
        pyramid_channels: width of the feature pyramid the heads read.
        deep_supervision: ``{task: [(weight, outputs), ...]}`` of the last training forward
            pass: extra predictions of a task (a task-interaction decoder's initial ones)
            that the module supervises with that task's own loss, ``weight * task.loss(
            outputs, targets, has)`` added to the task's loss. Empty for most architectures.
    """

    shares_representation: bool = True

    def __init__(self, tasks: list[str], make_backbone: BackboneFactory,
                 neck_channels: int,
                 pyramid_levels: dict[str, tuple[int, ...] | None] | None = None) -> None:
        super().__init__()
        self.task_names = list(tasks)
        levels = pyramid_levels if pyramid_levels is not None else dict.fromkeys(tasks)
        #: task -> pyramid levels its head reads (None: all); tasks absent read no pyramid
        self.pyramid_levels = {t: levels.get(t) for t in tasks if levels.get(t) != ()}
        self.pyramid_tasks = list(self.pyramid_levels)
        self.pyramid_channels = neck_channels
        self.representation: list[torch.Tensor] = []
        self.deep_supervision: dict[str, list[tuple[float, Any]]] = {}

    def bind_tasks(self, tasks: Mapping[str, nn.Module]) -> None:
        """Called once the tasks' heads are built (their output formats known): an
        architecture that makes predictions of its own (PAD-Net, MTI-Net) builds them here."""

    def expose(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The trunk's maps as the layers above it must read them, kept for the balancer.

        In a training step the layers above the trunk read *aliases* (``m.view_as(m)``) of
        the maps, while the trunk's deeper stages read the maps themselves. A task's gradient
        at an alias is then its direct derivative through the layers above, and one backward
        from all aliases into the trunk counts every path once (at the maps themselves, the
        paths through deeper stages would be counted twice).
        """
        if not (self.training and torch.is_grad_enabled()):
            return maps
        aliases = [m.view_as(m) for m in maps]
        self.representation = aliases
        return aliases

    def shared_maps(self, backbone: Backbone, image: torch.Tensor) -> list[torch.Tensor]:
        """``backbone``'s maps for the neck; what it encodes (a CNN's stage maps, a plain
        ViT's token maps before its simple feature pyramid) is the exposed representation."""
        return backbone.adapt(self.expose(backbone.encode(image)))

    def levels_of(self, tasks: list[str]) -> list[int] | None:
        """The pyramid levels a neck shared by ``tasks`` must produce (None: all)."""
        wanted: set[int] = set()
        for task in tasks:
            levels = self.pyramid_levels.get(task, ())
            if levels is None:
                return None
            wanted |= set(levels)
        return sorted(wanted)

    def per_task_features(self, maps: list[list[torch.Tensor]],
                          necks: nn.ModuleDict) -> dict[str, Features]:
        """Each task's own maps (exposed for the balancer) through its own neck, if it has one
        (soft sharing and ensembles: one stream per task)."""
        exposed = self.expose([m for stream in maps for m in stream])
        count = len(self.channels)
        features = {}
        for i, task in enumerate(self.task_names):
            own = exposed[i * count:(i + 1) * count]
            features[task] = necks[task](own) if task in necks else self.without_pyramid(own)
        return features

    def without_pyramid(self, maps: list[torch.Tensor]) -> Features:
        """Features of a task that reads backbone maps only."""
        return Features(backbone=list(maps), pyramid=[], strides=list(self.strides))

    @abstractmethod
    def forward(self, image: torch.Tensor) -> dict[str, Features]:
        """The features each task's head reads."""

    @abstractmethod
    def roles(self) -> ParameterRoles:
        """Trunk, shared and task-specific parameters (see the module docstring)."""
