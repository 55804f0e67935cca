"""The dense decoder every per-pixel task can share: fuse the pyramid at its finest level.

Each pyramid level goes through a 3x3 conv block and is upsampled to the finest level
(stride 4 for the usual backbones); the sum goes through a 1x1 conv to ``out_channels`` maps,
which are upsampled to the input size in float32. This is the semantic branch of Panoptic
FPN (Kirillov et al. 2019); a segmentation task reads class logits from it, a depth task one
regression map, a normals task three.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mtl_lightning.models.neck import Features


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv, batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class PyramidDecoder(nn.Module):
    """Pyramid -> ``[B, out_channels, H, W]`` maps at the input size.

    Args:
        pyramid_channels: width of every pyramid level.
        levels: how many pyramid levels are read (all of them, finest first).
        decoder_channels: width of the fused map.
        out_channels: maps predicted per pixel.
        dropout: 2-D dropout before the 1x1 prediction conv.
    """

    def __init__(self, pyramid_channels: int, levels: int, decoder_channels: int,
                 out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(
            conv_block(pyramid_channels, decoder_channels) for _ in range(levels)
        )
        self.predict = nn.Sequential(nn.Dropout2d(dropout),
                                     nn.Conv2d(decoder_channels, out_channels, 1))

    def forward(self, features: Features, image_size: tuple[int, int]) -> torch.Tensor:
        finest = features.pyramid[0].shape[-2:]
        fused = self.lateral[0](features.pyramid[0])
        for block, level in zip(self.lateral[1:], features.pyramid[1:]):
            fused = fused + F.interpolate(block(level), size=finest, mode="bilinear",
                                          align_corners=False)
        maps = self.predict(fused)
        return F.interpolate(maps.float(), size=image_size, mode="bilinear", align_corners=False)
