"""Monocular depth: a dense regression head, upsampled to the input.

The head is a dense decoder with one output map: the pyramid fused at stride 4 (``fpn``, the
default) or DeepLab-v3's ASPP on the backbone's last map (``aspp``). The loss is
taken on valid pixels only; a target depth of 0 means "no ground truth" (the NYUv2 and
Cityscapes convention):

- ``loss="l1"`` (the default, LibMTL's choice): mean ``|p - t|``;
- ``loss="silog"``: the scale-invariant log loss of Eigen et al. 2014, "Depth Map Prediction
  from a Single Image using a Multi-Scale Deep Network", with ``d = log p - log t`` per pixel:
  ``mean(d^2) - lambda * mean(d)^2`` (``lambda = 0.5`` in the paper's training loss).

Metrics: ``abs_err``, ``rel_err``, ``rmse`` (lower is better) and ``delta1``..``delta3``
(higher is better; see :mod:`mtl_lightning.tasks.dense_metrics`). The headline for
``{stage}/mtl/score`` is ``delta1``, a fraction in [0, 1].

Targets are ``[B, H, W]`` (or ``[B, 1, H, W]``) float maps in the data's depth unit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection

from mtl_lightning.models.neck import Features
from mtl_lightning.shared.dense_maps import DepthMap
from mtl_lightning.shared.errors import DataError
from mtl_lightning.tasks.dense_decoders import DecoderKind
from mtl_lightning.tasks.dense_drawing import colorize
from mtl_lightning.tasks.dense_metrics import DepthAbsError, DepthDelta, DepthRelError, DepthRMSE
from mtl_lightning.tasks.dense_task import DenseRegressionTask

#: The smallest depth a log can be taken of (the silog loss).
MIN_DEPTH = 1e-3
#: Depth units per step of the 16-bit PNG ``predict`` writes (millimetres for metres).
PNG_SCALE = 0.001


def depth_targets(targets: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]`` float depth from ``[B, H, W]`` or ``[B, 1, H, W]`` targets."""
    targets = targets.float()
    return targets[:, 0] if targets.dim() == 4 else targets


class DepthTask(DenseRegressionTask):
    """Per-pixel depth regression.

    Args:
        decoder_channels: width of the decoder (the fused map, or the ASPP branches).
        decoder: ``fpn`` (the pyramid, fused at stride 4) or ``aspp`` (DeepLab-v3 on the
            backbone's last map; see :mod:`mtl_lightning.tasks.dense_decoders`).
        aspp_rates: the ASPP's atrous rates (``decoder: aspp``).
        loss: ``l1`` (LibMTL) or ``silog`` (Eigen et al. 2014).
        silog_lambda: the silog loss's variance weight (0: plain squared log error; 1: fully
            scale invariant).
        dropout: dropout before the prediction conv.
        max_depth: the depth at which pictures saturate (default: each map's own maximum).
    """

    type_name = "depth"
    out_channels = 1
    headline_metric = "delta1"

    @classmethod
    def target_type(cls) -> type:
        return DepthMap

    @classmethod
    def decode_map(cls, array: np.ndarray, path: Path, scale: float) -> np.ndarray:
        """One channel (a 16-bit grey PNG, an ``H x W`` or ``H x W x 1`` array) times
        ``scale``."""
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim != 2:
            raise DataError(f"The depth map '{path}' has shape {array.shape}; a depth map "
                            "has one channel (a 16-bit grey PNG or an H x W array).")
        return (array.astype(np.float32) * scale)[None]

    def target_as_prediction(self, target: torch.Tensor, crowd: bool = False) -> Any:
        return target[0] if target.dim() == 3 else target

    def __init__(
        self,
        decoder_channels: int = 64,
        decoder: DecoderKind = "fpn",
        aspp_rates: tuple[int, ...] = (12, 24, 36),
        loss: Literal["l1", "silog"] = "l1",
        silog_lambda: float = 0.5,
        dropout: float = 0.0,
        max_depth: float | None = None,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__(decoder_channels, decoder, aspp_rates, dropout, num_classes,
                         class_names)
        if loss not in ("l1", "silog"):
            raise ValueError(f"depth.loss must be 'l1' or 'silog', got {loss!r}.")
        self.loss_kind = loss
        self.silog_lambda = silog_lambda
        self.max_depth = max_depth

    def forward(self, features: Features, image_size: tuple[int, int]) -> torch.Tensor:
        return self.decode(features, image_size)[:, 0]

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        if not bool(has.any()):
            return self.unused_loss(outputs)
        prediction, target = outputs[has].float(), depth_targets(targets[has])
        valid = target > 0
        if not bool(valid.any()):
            return self.unused_loss(outputs)
        prediction, target = prediction[valid], target[valid]
        if self.loss_kind == "l1":
            return F.l1_loss(prediction, target)
        d = prediction.clamp(min=MIN_DEPTH).log() - target.log()
        return (d ** 2).mean() - self.silog_lambda * d.mean() ** 2

    def build_metrics(self, stage: str) -> MetricCollection:
        return MetricCollection({
            "abs_err": DepthAbsError(), "rel_err": DepthRelError(), "rmse": DepthRMSE(),
            "delta1": DepthDelta(1), "delta2": DepthDelta(2), "delta3": DepthDelta(3),
        })

    def update_metrics(
        self, metrics: MetricCollection, outputs: torch.Tensor, targets: torch.Tensor,
        has: torch.Tensor,
    ) -> None:
        if bool(has.any()):
            target = depth_targets(targets[has])
            metrics.update(outputs[has].detach().float(), target, target > 0)

    def resize_prediction(
        self, prediction: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]
    ) -> torch.Tensor:
        if prediction.dim() == 3:  # a [1, H, W] target (ground truth drawn in overlays)
            prediction = prediction[0]
        return self.map_back(prediction[None], from_size, to_size)[0]

    def prediction_to_json(self, prediction: torch.Tensor) -> Any:
        """Summary statistics of the predicted depth, and how to read the map ``predict``
        writes (``depth.png``: 16-bit, ``value * png_scale`` in the data's depth unit)."""
        values = prediction.float()
        return {"min": float(values.min()), "max": float(values.max()),
                "mean": float(values.mean()), "png_scale": PNG_SCALE}

    def prediction_files(self, prediction: torch.Tensor) -> dict[str, np.ndarray]:
        """The depth map as a 16-bit PNG (units of ``PNG_SCALE``, clipped to 0..65535)."""
        values = prediction.float().cpu().numpy() / PNG_SCALE
        return {"depth.png": np.clip(np.rint(values), 0, 65535).astype(np.uint16)}

    def draw(self, image: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        """The depth map in colour (near dark, far bright), at the image's size; pixels
        without ground truth (0) are black."""
        depth = depth_targets(prediction[None])[0] if prediction.dim() == 3 else prediction
        depth = self.resize_prediction(depth, tuple(depth.shape[-2:]), tuple(image.shape[-2:]))
        return colorize(depth, depth > 0, low=0.0, high=self.max_depth)
