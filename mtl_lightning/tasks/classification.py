"""Image-level classification: pooled features -> linear layer.

``features="deepest"`` (the default) pools the deepest backbone map, the classic image
classifier. ``features="pyramid"`` pools every FPN level and concatenates them: the pyramid
carries the dense tasks' localised, class-aware features, so an image label that depends on
the objects (Scenes' "class of the largest object") is read from the same features the dense
heads use, which is what hard sharing is meant to exploit.

Single-label (softmax cross-entropy with optional label smoothing, Szegedy et al. 2016) or
multi-label (one sigmoid per class, binary cross-entropy). Targets are class indices [B]
(single-label) or multi-hot vectors [B, C] (multi-label).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MultilabelAccuracy,
    MultilabelF1Score,
)
from torchvision.utils import draw_bounding_boxes

from mtl_lightning.models.neck import Features
from mtl_lightning.tasks.base import Task


class ClassificationTask(Task):
    """Classify the whole image.

    Args:
        num_classes: number of image classes (from the data module).
        class_names: their names.
        multilabel: several classes per image (BCE) instead of exactly one (CE).
        label_smoothing: cross-entropy label smoothing (single-label only).
        dropout: dropout before the linear layer.
        threshold: probability above which a class is predicted (multi-label only).
        features: ``deepest`` (pool the deepest backbone map) or ``pyramid`` (pool and
            concatenate every FPN level).
    """

    name = "classification"
    headline_metric = "accuracy"

    def __init__(
        self,
        num_classes: int,
        class_names: list[str] | None = None,
        multilabel: bool = False,
        label_smoothing: float = 0.0,
        dropout: float = 0.0,
        threshold: float = 0.5,
        features: Literal["deepest", "pyramid"] = "deepest",
    ) -> None:
        super().__init__(num_classes, class_names)
        self.multilabel = multilabel
        self.label_smoothing = label_smoothing
        self.dropout = dropout
        self.threshold = threshold
        if features not in ("deepest", "pyramid"):
            raise ValueError(
                f"classification.features must be 'deepest' or 'pyramid', got '{features}'."
            )
        self.features = features

    @property
    def pyramid_levels(self) -> tuple[int, ...] | None:
        return None if self.features == "pyramid" else ()

    def build_head(
        self, pyramid_channels: int, backbone_channels: list[int], strides: list[int]
    ) -> None:
        width = (
            backbone_channels[-1] if self.features == "deepest"
            else pyramid_channels * len(strides)
        )
        self.head = nn.Sequential(nn.Dropout(self.dropout), nn.Linear(width, self.num_classes))

    def forward(self, features: Features, image_size: tuple[int, int]) -> torch.Tensor:
        maps = [features.backbone[-1]] if self.features == "deepest" else features.pyramid
        pooled = torch.cat([m.mean(dim=(-2, -1)) for m in maps], dim=1)
        return self.head(pooled)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        if not bool(has.any()):
            return self.unused_loss(outputs)
        logits = outputs[has].float()
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, targets[has].float())
        return F.cross_entropy(logits, targets[has], label_smoothing=self.label_smoothing)

    def postprocess(self, outputs: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        logits = outputs.float()
        if self.multilabel:
            scores = logits.sigmoid()
            return [
                {"scores": s, "labels": (s >= self.threshold).nonzero().flatten()} for s in scores
            ]
        scores, labels = logits.softmax(-1).max(-1)
        return [{"scores": s[None], "labels": c[None]} for s, c in zip(scores, labels)]

    def build_metrics(self, stage: str) -> MetricCollection:
        if self.multilabel:
            return MetricCollection({
                "accuracy": MultilabelAccuracy(self.num_classes, average="micro"),
                "macro_accuracy": MultilabelAccuracy(self.num_classes, average="macro"),
                "f1": MultilabelF1Score(self.num_classes, average="macro"),
            })
        return MetricCollection({
            "accuracy": MulticlassAccuracy(self.num_classes, average="micro"),
            "macro_accuracy": MulticlassAccuracy(self.num_classes, average="macro"),
        })

    def update_metrics(
        self, metrics: MetricCollection, outputs: torch.Tensor, targets: torch.Tensor,
        has: torch.Tensor,
    ) -> None:
        if bool(has.any()):
            metrics.update(outputs[has].float().detach(), targets[has].long())

    def prediction_to_json(self, prediction: dict[str, torch.Tensor]) -> Any:
        if self.multilabel:
            return [
                {"class_id": int(i), "category_id": self.category_ids[int(i)],
                 "name": self.class_names[int(i)], "score": float(prediction["scores"][i])}
                for i in prediction["labels"]
            ]
        label = int(prediction["labels"][0])
        return {"class_id": label, "category_id": self.category_ids[label],
                "name": self.class_names[label], "score": float(prediction["scores"][0])}

    def draw(self, image: torch.Tensor, prediction: dict[str, torch.Tensor]) -> torch.Tensor:
        """Write the predicted class name(s) in the top-left corner."""
        entries = self.prediction_to_json(prediction)
        entries = entries if isinstance(entries, list) else [entries]
        text = ", ".join(f"{e['name']} {e['score']:.2f}" for e in entries) or "(none)"
        height, width = image.shape[-2:]
        corner = torch.tensor([[0, 0, width - 1, min(12, height - 1)]], dtype=torch.float)
        return draw_bounding_boxes(image, corner, labels=[text], colors="white", fill=False)
