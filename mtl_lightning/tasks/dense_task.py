"""The part every dense regression task shares: its decoder, and mapping maps back.

A dense task (depth, normals) predicts ``out_channels`` maps per pixel through one of the
dense decoders (:mod:`mtl_lightning.tasks.dense_decoders`: ``fpn`` or ``aspp``), reads the
pyramid levels that decoder needs, has no classes, draws a picture of its own (shown beside
the image) and maps a prediction back to the original image by cropping away the letterbox
padding and resizing bilinearly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from mtl_lightning.models.neck import Features
from mtl_lightning.tasks.base import Task
from mtl_lightning.tasks.dense_decoders import (
    DecoderKind,
    build_dense_decoder,
    decoder_pyramid_levels,
)


class DenseRegressionTask(Task):
    """A per-pixel regression task with a dense decoder.

    Args:
        decoder_channels: width of the decoder (the fused map, or the ASPP branches).
        decoder: ``fpn`` (the pyramid, fused at stride 4) or ``aspp`` (DeepLab-v3 on the
            backbone's last map).
        aspp_rates: the ASPP's atrous rates (``decoder: aspp``).
        dropout: dropout before the prediction conv.
    """

    #: maps predicted per pixel
    out_channels: ClassVar[int]
    has_classes = False
    draws_panel = True
    #: Its targets are per-image dense maps (``data.dense_maps``, see
    #: :mod:`mtl_lightning.data.coco.dense_map_files`), read by :meth:`decode_map`.
    reads_dense_maps = True

    @classmethod
    def target_type(cls) -> type:
        """The tv_tensor of its target (how the joint transforms move it)."""
        raise NotImplementedError

    @classmethod
    def placeholder_target(cls, height: int, width: int) -> torch.Tensor:
        """All invalid: zeros (depth 0, the zero normal vector)."""
        return cls.target_type()(torch.zeros(cls.out_channels, height, width))

    @classmethod
    def decode_map(cls, array: np.ndarray, path: Path, scale: float) -> np.ndarray:
        """A map file's array as ``[out_channels, H, W]`` float32 in the task's unit; a
        wrong channel count is one sentence naming ``path``."""
        raise NotImplementedError

    def target_as_prediction(self, target: torch.Tensor, crowd: bool = False) -> Any:
        return target

    def __init__(self, decoder_channels: int = 64, decoder: DecoderKind = "fpn",
                 aspp_rates: tuple[int, ...] = (12, 24, 36), dropout: float = 0.0,
                 num_classes: int | None = None, class_names: list[str] | None = None) -> None:
        super().__init__(num_classes, class_names)
        if decoder not in ("fpn", "aspp"):
            raise ValueError(f"{self.name}.decoder must be 'fpn' or 'aspp', got {decoder!r}.")
        self.decoder_channels = decoder_channels
        self.decoder_kind = decoder
        self.aspp_rates = tuple(aspp_rates)
        self.dropout = dropout

    @property
    def pyramid_levels(self) -> tuple[int, ...] | None:
        return decoder_pyramid_levels(self.decoder_kind)

    def build_head(
        self, pyramid_channels: int, backbone_channels: list[int], strides: list[int]
    ) -> None:
        self.decoder = build_dense_decoder(
            self.decoder_kind, self.out_channels, pyramid_channels, backbone_channels,
            self.decoder_channels, self.dropout, self.aspp_rates)

    def decode(self, features: Features, image_size: tuple[int, int]) -> torch.Tensor:
        """``[B, out_channels, H, W]`` maps at the input size."""
        return self.decoder(features, image_size)

    def postprocess(self, outputs: torch.Tensor) -> list[torch.Tensor]:
        return list(outputs.detach().float())

    @staticmethod
    def map_back(maps: torch.Tensor, from_size: tuple[int, int],
                 to_size: tuple[int, int]) -> torch.Tensor:
        """``[C, H, W]`` maps: the top-left ``from_size`` region of the input (the rest is
        letterbox padding), resized bilinearly to ``to_size``."""
        maps = maps[..., : from_size[0], : from_size[1]]
        if tuple(maps.shape[-2:]) == tuple(to_size):
            return maps
        return F.interpolate(maps[None].float(), size=to_size, mode="bilinear",
                             align_corners=False)[0]
