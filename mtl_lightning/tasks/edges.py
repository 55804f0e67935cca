"""Edge detection: per-pixel boundary / not boundary.

Two sources of targets (``own_labels``):

- ``false`` (the default; an auxiliary task, task decomposition): no new labels, the
  target is derived on the fly from the segmentation masks a dataset already has (a pixel is
  an edge when a 4-neighbour has another class), so adding ``edges: null`` under
  ``model.tasks`` is the whole change, on any data with segmentation labels. Edges make the
  shared features attend to object outlines, the cue segmentation and detection both need;
  whether that helps them is measured in docs/experiments.md. Auxiliary tasks are
  trained and weighted like any task, but left out of ``{stage}/mtl/score`` and of delta_m
  by default: they are a means, not a goal. ``source`` names the segmentation instance to
  derive from when the data has several.
- ``true``: the data's own edge labels (a uint8 mask per image: 1 edge, 0 not, 255 ignore),
  as NYUD-v2 and PASCAL-Context provide them. Then edges are a task of their own, scored
  like the others. A data module that labels edges says so in its ``task_info``
  (``{"own_labels": true}``), so ``edges: null`` in ``model.tasks`` is still the whole
  change.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex
from torchvision.utils import draw_segmentation_masks

from mtl_lightning.models.neck import Features
from mtl_lightning.shared.constants import IGNORE_INDEX
from mtl_lightning.tasks.base import Task
from mtl_lightning.tasks.drawing import dense_to_size


def mask_edges(masks: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Edge targets ``[B, H, W]`` (uint8: 1 edge, 0 not, 255 ignore) from class masks.

    A pixel is an edge when its right or lower neighbour has another class (both pixels of
    the pair are marked), thickened to ``width`` pixels; pixels next to an ignored (255)
    region are ignored rather than called edges.
    """
    masks = masks.long()
    edge = torch.zeros_like(masks, dtype=torch.bool)
    ignore = masks == IGNORE_INDEX
    for dim in (1, 2):
        a, b = masks.narrow(dim, 0, masks.shape[dim] - 1), masks.narrow(dim, 1,
                                                                       masks.shape[dim] - 1)
        differs = a != b
        near_ignore = (a == IGNORE_INDEX) | (b == IGNORE_INDEX)
        step = differs & ~near_ignore
        edge.narrow(dim, 0, masks.shape[dim] - 1).logical_or_(step)
        edge.narrow(dim, 1, masks.shape[dim] - 1).logical_or_(step)
        ignore.narrow(dim, 0, masks.shape[dim] - 1).logical_or_(near_ignore)
        ignore.narrow(dim, 1, masks.shape[dim] - 1).logical_or_(near_ignore)
    if width > 1:
        edge = F.max_pool2d(edge[:, None].float(), 2 * width - 1, stride=1,
                            padding=width - 1)[:, 0].bool()
    target = edge.to(torch.uint8)
    target[ignore & ~edge] = IGNORE_INDEX
    return target


class EdgeTask(Task):
    """Per-pixel edge / not-edge, from the segmentation labels or the data's own.

    Args:
        num_classes: always 1 (one logit per pixel); present for the common interface.
        class_names: ignored (``["edge"]``).
        head_channels: width of the head's hidden layer.
        width: edge thickness in pixels (edges derived from masks).
        pos_weight: weight of the (rare) edge pixels in the binary cross-entropy.
        own_labels: train on the data's own edge labels (a task of its own, in the score)
            instead of deriving them from segmentation masks (an auxiliary task).
    """

    type_name = "edges"
    headline_metric = "f1"
    auxiliary: ClassVar[bool] = True
    derived_from: ClassVar[str | None] = "segmentation"

    def __init__(self, num_classes: int = 1, class_names: list[str] | None = None,
                 head_channels: int = 32, width: int = 1, pos_weight: float = 4.0,
                 own_labels: bool = False) -> None:
        super().__init__(1, ["edge"])
        self.head_channels, self.width, self.pos_weight = head_channels, width, pos_weight
        # Instance attributes over the class defaults: with its own labels the task reads
        # them like any task (module.task_labels) and counts in the score and delta_m.
        self.own_labels = own_labels
        self.derived_from = None if own_labels else type(self).derived_from
        self.auxiliary = not own_labels

    def derive_targets(self, source: torch.Tensor) -> torch.Tensor:
        return mask_edges(source, self.width)

    @property
    def pyramid_levels(self) -> tuple[int, ...] | None:
        return (0,)

    def build_head(self, pyramid_channels: int, backbone_channels: list[int],
                   strides: list[int]) -> None:
        self.head = nn.Sequential(
            nn.Conv2d(pyramid_channels, self.head_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(self.head_channels), nn.ReLU(inplace=True),
            nn.Conv2d(self.head_channels, 1, 1),
        )

    def forward(self, features: Features, image_size: tuple[int, int]) -> torch.Tensor:
        logits = self.head(features.pyramid[0])
        return F.interpolate(logits, size=image_size, mode="bilinear", align_corners=False)[:, 0]

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        if not bool(has.any()):
            return self.unused_loss(outputs)
        target = targets[has]
        valid = target != IGNORE_INDEX
        if not bool(valid.any()):
            return self.unused_loss(outputs)
        logits = outputs[has].float()[valid]
        weight = torch.tensor(self.pos_weight, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits, target[valid].float(),
                                                  pos_weight=weight)

    def postprocess(self, outputs: torch.Tensor) -> list[torch.Tensor]:
        return list((outputs > 0).to(torch.uint8))

    def build_metrics(self, stage: str) -> MetricCollection:
        return MetricCollection({
            "f1": BinaryF1Score(ignore_index=IGNORE_INDEX, validate_args=False),
            "iou": BinaryJaccardIndex(ignore_index=IGNORE_INDEX, validate_args=False),
        })

    def update_metrics(self, metrics: MetricCollection, outputs: torch.Tensor,
                       targets: torch.Tensor, has: torch.Tensor) -> None:
        if bool(has.any()):
            metrics.update((outputs[has].detach() > 0).long(), targets[has].long())

    def resize_prediction(self, prediction: torch.Tensor, from_size: tuple[int, int],
                          to_size: tuple[int, int]) -> torch.Tensor:
        return dense_to_size(prediction, from_size, to_size)

    def prediction_to_json(self, prediction: torch.Tensor) -> Any:
        """Edge pixels; ground truth may also hold ignored (255) pixels, counted apart."""
        ignored = prediction == IGNORE_INDEX
        record = {"edge_pixels": int((prediction == 1).sum())}
        if bool(ignored.any()):
            record["ignored_pixels"] = int(ignored.sum())
        return record

    def draw(self, image: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        """Edges in white (ignored pixels of a ground truth are not drawn)."""
        return draw_segmentation_masks(image, (prediction == 1).cpu()[None], alpha=0.8,
                                       colors=[(255, 255, 255)])
