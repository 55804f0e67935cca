"""Surface normals: a 3-channel dense head, L2-normalised per pixel.

The head is a dense decoder (``fpn`` or ``aspp``, as for depth) with three output maps; each
pixel's vector is normalised
to unit length. A zero target vector means "no ground truth" (the NYUv2 convention). Losses
on valid pixels:

- ``loss="cosine"`` (the default, LibMTL's): mean ``1 - cos(p, t)``;
- ``loss="l1"``: mean ``|p - t|`` over the three components of the unit vectors.

Metrics: ``mean_angle`` and ``median_angle`` in degrees (lower is better), ``within_11_25``,
``within_22_5`` and ``within_30`` as fractions (higher is better); see
:mod:`mtl_lightning.tasks.dense_metrics`. The headline for ``{stage}/mtl/score`` is
``within_11_25``.

Targets are ``[B, 3, H, W]`` float maps of (x, y, z) components (their length is ignored:
they are normalised before the loss). A horizontal flip of the image negates x: the data's
joint transforms do that, not this task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection

from mtl_lightning.models.neck import Features
from mtl_lightning.shared.dense_maps import NormalMap
from mtl_lightning.shared.errors import DataError
from mtl_lightning.tasks.dense_decoders import DecoderKind
from mtl_lightning.tasks.dense_drawing import normals_to_rgb
from mtl_lightning.tasks.dense_metrics import AngleMean, AngleMedian, AngleWithin, normal_angles
from mtl_lightning.tasks.dense_task import DenseRegressionTask


def valid_normals(targets: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]``: pixels whose target vector is not zero (and finite)."""
    return (targets.abs().sum(1) > 0) & torch.isfinite(targets).all(1)


class NormalsTask(DenseRegressionTask):
    """Per-pixel surface normal regression.

    Args:
        decoder_channels: width of the decoder (the fused map, or the ASPP branches).
        decoder: ``fpn`` (the pyramid, fused at stride 4) or ``aspp`` (DeepLab-v3 on the
            backbone's last map; see :mod:`mtl_lightning.tasks.dense_decoders`).
        aspp_rates: the ASPP's atrous rates (``decoder: aspp``).
        loss: ``cosine`` (``1 - cos``, LibMTL) or ``l1`` (on the unit vectors).
        dropout: dropout before the prediction conv.
    """

    type_name = "normals"
    out_channels = 3
    headline_metric = "within_11_25"

    @classmethod
    def target_type(cls) -> type:
        return NormalMap

    @classmethod
    def decode_map(cls, array: np.ndarray, path: Path, scale: float) -> np.ndarray:
        """Three channels: an 8-bit RGB PNG in the ``(n + 1) / 2 * 255`` encoding (black:
        no ground truth) or an ``H x W x 3`` float array of components."""
        if array.ndim != 3 or array.shape[-1] != 3:
            raise DataError(f"The normal map '{path}' has shape {array.shape}; a normal map "
                            "has 3 channels (an RGB PNG or an H x W x 3 array).")
        if array.dtype == np.uint8:
            valid = array.any(axis=-1, keepdims=True)
            values = (array.astype(np.float32) / 255.0 * 2.0 - 1.0) * valid
        else:
            values = array.astype(np.float32)
        return np.moveaxis(values, -1, 0)

    def __init__(
        self,
        decoder_channels: int = 64,
        decoder: DecoderKind = "fpn",
        aspp_rates: tuple[int, ...] = (12, 24, 36),
        loss: Literal["cosine", "l1"] = "cosine",
        dropout: float = 0.0,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__(decoder_channels, decoder, aspp_rates, dropout, num_classes,
                         class_names)
        if loss not in ("cosine", "l1"):
            raise ValueError(f"normals.loss must be 'cosine' or 'l1', got {loss!r}.")
        self.loss_kind = loss

    def forward(self, features: Features, image_size: tuple[int, int]) -> torch.Tensor:
        return F.normalize(self.decode(features, image_size), dim=1)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        if not bool(has.any()):
            return self.unused_loss(outputs)
        target = targets[has].float()
        valid = valid_normals(target)
        if not bool(valid.any()):
            return self.unused_loss(outputs)
        prediction = outputs[has].float().permute(0, 2, 3, 1)[valid]
        target = F.normalize(target.permute(0, 2, 3, 1)[valid], dim=-1)
        if self.loss_kind == "cosine":
            return (1 - (prediction * target).sum(-1)).mean()
        return F.l1_loss(prediction, target)

    def build_metrics(self, stage: str) -> MetricCollection:
        return MetricCollection({
            "mean_angle": AngleMean(), "median_angle": AngleMedian(),
            "within_11_25": AngleWithin(11.25), "within_22_5": AngleWithin(22.5),
            "within_30": AngleWithin(30.0),
        })

    def update_metrics(
        self, metrics: MetricCollection, outputs: torch.Tensor, targets: torch.Tensor,
        has: torch.Tensor,
    ) -> None:
        if bool(has.any()):
            target = targets[has].float()
            angles = normal_angles(outputs[has].detach(), target)
            metrics.update(angles, angles, valid_normals(target))

    def resize_prediction(
        self, prediction: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]
    ) -> torch.Tensor:
        return F.normalize(self.map_back(prediction, from_size, to_size), dim=0)

    def prediction_to_json(self, prediction: torch.Tensor) -> Any:
        """The mean predicted normal (the map itself is written as a file)."""
        mean = F.normalize(prediction.float().mean(dim=(1, 2)), dim=0)
        return {"mean_normal": [float(v) for v in mean]}

    def prediction_files(self, prediction: torch.Tensor) -> dict[str, np.ndarray]:
        """The normal map as an RGB PNG in the usual ``(n + 1) / 2 * 255`` encoding."""
        rgb = normals_to_rgb(prediction).permute(1, 2, 0)
        return {"normals.png": rgb.numpy()}

    def draw(self, image: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        """The normal map in the ``(n + 1) / 2`` RGB encoding, at the image's size."""
        normals = self.resize_prediction(prediction, tuple(prediction.shape[-2:]),
                                         tuple(image.shape[-2:]))
        return normals_to_rgb(normals)
