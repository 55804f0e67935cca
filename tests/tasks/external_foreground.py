"""A task from outside the package: per-pixel foreground / background.

It lives here, in the tests, to prove that a task needs no edit to ``mtl_lightning``: a
config names it by import path (``model.tasks: {fg: {class_path:
tests.tasks.external_foreground.ForegroundTask}}``) and the CLI trains, validates, draws,
predicts and exports it. Its targets are derived from the semantic-segmentation masks the
data already has: every object class is foreground, the background class is background, and
ignored pixels (255) stay ignored.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryJaccardIndex
from torchvision.utils import draw_segmentation_masks

from mtl_lightning.models.neck import Features
from mtl_lightning.tasks import Task

IGNORE = 255


class ForegroundTask(Task):
    """Foreground (any object) against background, one logit per pixel.

    Args:
        head_channels: width of the head's hidden layer.
        pos_weight: weight of foreground pixels in the binary cross-entropy.
    """

    headline_metric = "iou"
    derived_from: ClassVar[str | None] = "segmentation"
    draw_order = 15

    def __init__(self, head_channels: int = 16, pos_weight: float = 1.0) -> None:
        super().__init__(2, ["background", "foreground"])
        self.head_channels, self.pos_weight = head_channels, pos_weight

    def derive_targets(self, source: torch.Tensor) -> torch.Tensor:
        """0 background, 1 any object class, 255 ignored (from a semantic mask)."""
        target = (source > 0).to(torch.uint8)
        return torch.where(source == IGNORE, torch.full_like(target, IGNORE), target)

    @property
    def pyramid_levels(self) -> tuple[int, ...] | None:
        return (0,)

    def build_head(self, pyramid_channels: int, backbone_channels: list[int],
                   strides: list[int]) -> None:
        self.head = nn.Sequential(
            nn.Conv2d(pyramid_channels, self.head_channels, 3, padding=1),
            nn.ReLU(inplace=True), nn.Conv2d(self.head_channels, 1, 1))

    def forward(self, features: Features, image_size: tuple[int, int]) -> torch.Tensor:
        logits = self.head(features.pyramid[0])
        return F.interpolate(logits, size=image_size, mode="bilinear", align_corners=False)[:, 0]

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        valid = (targets != IGNORE) & has[:, None, None]
        if not bool(valid.any()):
            return self.unused_loss(outputs)
        return F.binary_cross_entropy_with_logits(
            outputs.float()[valid], targets[valid].float(),
            pos_weight=torch.tensor(self.pos_weight, device=outputs.device))

    def postprocess(self, outputs: torch.Tensor) -> list[torch.Tensor]:
        return list((outputs > 0).to(torch.uint8))

    def build_metrics(self, stage: str) -> MetricCollection:
        return MetricCollection({
            "iou": BinaryJaccardIndex(ignore_index=IGNORE),
            "accuracy": BinaryAccuracy(ignore_index=IGNORE),
        })

    def update_metrics(self, metrics: MetricCollection, outputs: torch.Tensor,
                       targets: torch.Tensor, has: torch.Tensor) -> None:
        if bool(has.any()):
            metrics.update((outputs[has].detach() > 0).long(), targets[has].long())

    def resize_prediction(self, prediction: torch.Tensor, from_size: tuple[int, int],
                          to_size: tuple[int, int]) -> torch.Tensor:
        cropped = prediction[: from_size[0], : from_size[1]]
        return F.interpolate(cropped[None, None].float(), size=to_size,
                             mode="nearest")[0, 0].to(prediction.dtype)

    def export_outputs(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"labels": (outputs > 0).to(torch.uint8)}

    def prediction_to_json(self, prediction: torch.Tensor) -> Any:
        return {"foreground_pixels": int((prediction == 1).sum()),
                "pixels": int(prediction.numel())}

    def prediction_files(self, prediction: torch.Tensor) -> dict[str, np.ndarray]:
        return {"foreground.png": ((prediction == 1).to(torch.uint8) * 255).cpu().numpy()}

    def draw(self, image: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        return draw_segmentation_masks(image, (prediction == 1).cpu()[None], alpha=0.5,
                                       colors=[(255, 0, 255)])
