"""ViTDet's simple feature pyramid: strides 4 to 32 from the single-stride maps of a plain ViT.

Li, Mao, Girshick & He, "Exploring Plain Vision Transformer Backbones for Object Detection",
ECCV 2022 (ViTDet). A plain ViT keeps one resolution (its patch size) in every block; ViTDet
builds a pyramid from the last block's map alone, with scale factors 4, 2, 1 and 1/2 for a
patch-16 model: two stride-2 transposed convolutions (LayerNorm and GELU between them), one,
none, and a 2x2 max-pool. Here the factors follow from the patch size (patch 8 gives 2, 1,
1/2, 1/4) so the levels always sit at strides 4, 8, 16 and 32, like a CNN's, and the neck and
every head read them unchanged. ViTDet's per-level 1x1 and 3x3 projections are the neck's own
lateral and output convolutions (:class:`~mtl_lightning.models.neck.FeaturePyramid`).

Given one map per level instead (four blocks, fine to coarse), each level is built from its
own block, as BEiT and DPT read a ViT at several depths.
"""

from __future__ import annotations

import math

import torch
from timm.layers import LayerNorm2d
from torch import nn

#: The strides of the levels the pyramid produces, fine to coarse.
PYRAMID_STRIDES = (4, 8, 16, 32)


def _upsample(channels: int, steps: int) -> tuple[nn.Module, int]:
    """``steps`` stride-2 transposed convolutions, halving the channels at each (ViTDet)."""
    layers: list[nn.Module] = []
    for step in range(steps):
        if step:
            layers += [LayerNorm2d(channels), nn.GELU()]
        layers.append(nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2))
        channels //= 2
    return nn.Sequential(*layers), channels


class SimpleFeaturePyramid(nn.Module):
    """Maps at one stride ``patch_stride`` -> maps at :data:`PYRAMID_STRIDES`.

    Args:
        channels: width of the ViT's token maps (its embedding dimension).
        patch_stride: the stride of the token maps (the patch size), a power of two from 4
            to 32.
    """

    def __init__(self, channels: int, patch_stride: int) -> None:
        super().__init__()
        if patch_stride not in PYRAMID_STRIDES:
            raise ValueError(
                f"a simple feature pyramid needs token maps at stride 4, 8, 16 or 32, not "
                f"{patch_stride}")
        self.levels = nn.ModuleList()
        self.channels: list[int] = []
        for stride in PYRAMID_STRIDES:
            factor = patch_stride / stride
            if factor > 1:
                level, width = _upsample(channels, int(math.log2(factor)))
            elif factor == 1:
                level, width = nn.Identity(), channels
            else:
                pool = int(1 / factor)
                level, width = nn.MaxPool2d(kernel_size=pool, stride=pool), channels
            self.levels.append(level)
            self.channels.append(width)
        self.strides = list(PYRAMID_STRIDES)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """One map (every level from it) or one map per level, fine to coarse."""
        if len(maps) == 1:
            maps = maps * len(self.levels)
        return [level(x) for level, x in zip(self.levels, maps, strict=True)]
