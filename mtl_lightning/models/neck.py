"""The shared neck: a feature pyramid over the backbone's maps (torchvision's FPN).

Every head reads the pyramid (and, for classification, the deepest backbone map), so the
representation shared by all tasks is the set of backbone maps the neck consumes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork


@dataclass
class Features:
    """What the heads see.

    Attributes:
        backbone: the backbone's maps, fine to coarse.
        pyramid: the FPN's maps (all ``channels`` wide), fine to coarse.
        strides: the stride of each map, in input pixels.
    """

    backbone: list[torch.Tensor]
    pyramid: list[torch.Tensor]
    strides: list[int]


class FeaturePyramid(nn.Module):
    """Top-down feature pyramid (Lin et al. 2017, "Feature Pyramid Networks") over all maps.

    Args:
        in_channels: channels of each backbone map, as reported by timm's ``feature_info``.
        strides: the stride of each backbone map.
        channels: width of every pyramid level.
        levels: the levels whose output anyone reads (``None``: all). The 3x3 output conv of
            every other level is dropped (that level then carries its un-smoothed top-down
            sum, which no head reads): a neck built for one task has no unused parameters.
    """

    def __init__(self, in_channels: list[int], strides: list[int], channels: int = 96,
                 levels: list[int] | None = None) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.strides = list(strides)
        self.channels = channels
        self.fpn = FeaturePyramidNetwork(self.in_channels, channels)
        if levels is not None:
            for i in range(len(self.in_channels)):
                if i not in levels:
                    self.fpn.layer_blocks[i] = nn.Identity()

    def forward(self, maps: list[torch.Tensor]) -> Features:
        named = OrderedDict((str(i), m) for i, m in enumerate(maps))
        pyramid = list(self.fpn(named).values())
        return Features(backbone=list(maps), pyramid=pyramid, strides=self.strides)
