"""The Architecture interface: how the tasks share parameters.

An architecture turns an image batch into an :class:`ArchitectureOutput`: the
:class:`~mtl_lightning.models.neck.Features` each task head reads (one ``Features`` per task),
together with what the training step needs from the same pass: the *representation* a
gradient balancer differentiates through and any deep-supervision predictions. Heads, losses,
metrics, balancers and callbacks only see those, so every architecture works with all of them.
Nothing of one pass is kept on the architecture: a step gets it all from the return value.

For the balancers it also names the role of each parameter (see
:mod:`mtl_lightning.balancing.task_gradients`): the *trunk* that produces the
*representation*, *shared* parameters above it, and parameters that belong to one task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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


@dataclass
class ArchitectureOutput:
    """What one forward pass of an architecture returns.

    Attributes:
        features: ``{task: Features}``, what each task's head reads.
        representation: the tensors the trunk produced, as the layers above it read them
            (see :meth:`Architecture.expose`): what a gradient balancer differentiates
            through. In a training pass with gradients they are aliases of the trunk's maps;
            otherwise the maps themselves (nothing balances then).
        deep_supervision: ``{task: [(weight, outputs), ...]}``: extra predictions of a task
            (a task-interaction decoder's initial ones, training passes only) that the
            module supervises with that task's own loss, ``weight * task.loss(outputs,
            targets, has)`` added to the task's loss. Empty for most architectures.
    """

    features: dict[str, Features]
    representation: list[torch.Tensor] = field(default_factory=list)
    deep_supervision: dict[str, list[tuple[float, Any]]] = field(default_factory=dict)


class Architecture(nn.Module, ABC):
    """Image -> :class:`ArchitectureOutput` (``{task: Features}`` and the representation).

    Attributes:
        shares_representation: whether every task reads one representation (the backbone maps
            the neck consumes). Gradient balancing at the representation needs it; soft sharing
            and ensembles take task gradients at the parameters instead.
        channels, strides: of the backbone maps (every task's backbone is the same model).
        pyramid_channels: width of the feature pyramid the heads read.
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

    def bind_tasks(self, tasks: Mapping[str, nn.Module]) -> None:
        """Called once the tasks' heads are built (their output formats known): an
        architecture that makes predictions of its own (PAD-Net, MTI-Net) builds them here."""

    def expose(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The trunk's maps as the layers above it must read them: the representation.

        In a training step the layers above the trunk read *aliases* (``m.view_as(m)``) of
        the maps, while the trunk's deeper stages read the maps themselves. A task's gradient
        at an alias is then its direct derivative through the layers above, and one backward
        from all aliases into the trunk counts every path once (at the maps themselves, the
        paths through deeper stages would be counted twice). The caller returns what this
        gives as :attr:`ArchitectureOutput.representation`.
        """
        if not (self.training and torch.is_grad_enabled()):
            return maps
        return [m.view_as(m) for m in maps]

    def shared_maps(self, backbone: Backbone, image: torch.Tensor
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The representation (what ``backbone`` encodes: a CNN's stage maps, a plain ViT's
        token maps before its simple feature pyramid, exposed) and the maps the neck reads."""
        representation = self.expose(backbone.encode(image))
        return representation, backbone.adapt(representation)

    def levels_of(self, tasks: list[str]) -> list[int] | None:
        """The pyramid levels a neck shared by ``tasks`` must produce (None: all)."""
        wanted: set[int] = set()
        for task in tasks:
            levels = self.pyramid_levels.get(task, ())
            if levels is None:
                return None
            wanted |= set(levels)
        return sorted(wanted)

    def per_task_output(self, maps: list[list[torch.Tensor]],
                        necks: nn.ModuleDict) -> ArchitectureOutput:
        """Each task's own maps (exposed: all streams' maps are the representation) through
        its own neck, if it has one (soft sharing and ensembles: one stream per task)."""
        exposed = self.expose([m for stream in maps for m in stream])
        count = len(self.channels)
        features = {}
        for i, task in enumerate(self.task_names):
            own = exposed[i * count:(i + 1) * count]
            features[task] = necks[task](own) if task in necks else self.without_pyramid(own)
        return ArchitectureOutput(features, representation=exposed)

    def without_pyramid(self, maps: list[torch.Tensor]) -> Features:
        """Features of a task that reads backbone maps only."""
        return Features(backbone=list(maps), pyramid=[], strides=list(self.strides))

    @abstractmethod
    def forward(self, image: torch.Tensor) -> ArchitectureOutput:
        """The features each task's head reads, with the representation they were computed
        from (and deep-supervision predictions, if the architecture makes any)."""

    @abstractmethod
    def roles(self) -> ParameterRoles:
        """Trunk, shared and task-specific parameters (see the module docstring)."""
