"""Hard parameter sharing: one backbone and one neck, read by every head (the default)."""

from __future__ import annotations

import torch
from torch import nn

from mtl_lightning.models.architectures.base import (
    Architecture,
    ArchitectureOutput,
    BackboneFactory,
    ParameterRoles,
)
from mtl_lightning.models.neck import FeaturePyramid


class HardSharing(Architecture):
    """backbone -> FPN neck -> every head (Caruana 1997's hard sharing).

    The cheapest way to share: one trunk computed once for all tasks; the tasks compete for
    its capacity. The representation is the set of maps the backbone encodes (a plain ViT's
    token maps, the input of its simple feature pyramid, which is shared like the neck).
    Works with every backbone :class:`~mtl_lightning.models.backbone.Backbone` builds.
    """

    def __init__(self, tasks: list[str], make_backbone: BackboneFactory,
                 neck_channels: int,
                 pyramid_levels: dict[str, tuple[int, ...] | None] | None = None) -> None:
        super().__init__(tasks, make_backbone, neck_channels, pyramid_levels)
        self.backbone = make_backbone()
        self.channels, self.strides = self.backbone.channels, self.backbone.reductions
        # No task reads the pyramid (e.g. every head is an ASPP on the last map): no neck, so
        # that no parameter goes unused (DDP requires that).
        self.neck = (FeaturePyramid(self.channels, self.strides, neck_channels,
                                    levels=self.levels_of(self.pyramid_tasks))
                     if self.pyramid_tasks else nn.Identity())

    def forward(self, image: torch.Tensor) -> ArchitectureOutput:
        representation, maps = self.shared_maps(self.backbone, image)
        features = self.without_pyramid(maps) if not self.pyramid_tasks else self.neck(maps)
        return ArchitectureOutput(dict.fromkeys(self.task_names, features), representation)

    def roles(self) -> ParameterRoles:
        return ParameterRoles(list(self.backbone.body.parameters()),
                              self.backbone.adapter_parameters() + list(self.neck.parameters()),
                              {})
