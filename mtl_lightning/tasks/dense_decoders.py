"""The dense decoders every per-pixel task can choose from (``decoder: fpn | aspp``).

- ``fpn`` (:class:`PyramidDecoder`, the default): each pyramid level goes through a 3x3 conv
  block and is upsampled to the finest level (stride 4 for the usual backbones); the sum goes
  through a 1x1 conv to ``out_channels`` maps. This is the semantic branch of Panoptic FPN
  (Kirillov et al. 2019).
- ``aspp`` (:class:`ASPPDecoder`): DeepLab-v3's atrous spatial pyramid pooling (Chen et al.
  2017, "Rethinking Atrous Convolution for Semantic Image Segmentation") on the backbone's
  last map, then a 3x3 conv block and a 1x1 conv: the head of LibMTL's NYUv2 and Cityscapes
  protocols, fed by a dilated backbone (``backbone_kwargs: {output_stride: 8}``). It reads no
  pyramid, so the neck is not computed for a task that uses it.

Both upsample their maps to the input size in float32. A segmentation task reads class
logits from them, a depth task one regression map, a normals task three.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

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


class ASPPDecoder(nn.Module):
    """The backbone's last map -> ``[B, out_channels, H, W]`` maps at the input size.

    Args:
        in_channels: channels of the backbone's last map.
        out_channels: maps predicted per pixel.
        rates: the atrous rates of the three dilated branches ((12, 24, 36) at output
            stride 8, (6, 12, 18) at 16, as in DeepLab-v3).
        width: channels of the ASPP branches and the conv block after them.
        dropout: 2-D dropout before the 1x1 prediction conv.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 rates: Sequence[int] = (12, 24, 36), width: int = 256,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, list(rates), width)
        self.block = conv_block(width, width)
        self.predict = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(width, out_channels, 1))

    def forward(self, features: Features, image_size: tuple[int, int]) -> torch.Tensor:
        maps = self.predict(self.block(self.aspp(features.backbone[-1])))
        return F.interpolate(maps.float(), size=image_size, mode="bilinear", align_corners=False)


DecoderKind = Literal["fpn", "aspp"]


def build_dense_decoder(kind: str, out_channels: int, pyramid_channels: int,
                        backbone_channels: list[int], decoder_channels: int,
                        dropout: float = 0.0,
                        aspp_rates: Sequence[int] = (12, 24, 36)) -> nn.Module:
    """The decoder ``kind`` names (``fpn`` or ``aspp``), sized from what the neck and
    backbone report."""
    if kind == "fpn":
        return PyramidDecoder(pyramid_channels, len(backbone_channels), decoder_channels,
                              out_channels, dropout)
    if kind == "aspp":
        return ASPPDecoder(backbone_channels[-1], out_channels, aspp_rates, decoder_channels,
                           dropout)
    raise ValueError(f"decoder must be 'fpn' or 'aspp', got {kind!r}.")


def decoder_pyramid_levels(kind: str) -> tuple[int, ...] | None:
    """The pyramid levels a decoder reads (``None``: all; ``()``: none)."""
    return () if kind == "aspp" else None
