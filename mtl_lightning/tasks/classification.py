"""Image-level classification: pooled features -> linear layer.

``features="deepest"`` (the default) pools the deepest backbone map, the classic image
classifier. ``features="pyramid"`` pools every FPN level and concatenates them: the pyramid
carries the dense tasks' localised, class-aware features, so an image label that depends on
the objects (Scenes' "class of the largest object") is read from the same features the dense
heads use, which is what hard sharing is meant to exploit.

Single-label (softmax cross-entropy with optional label smoothing, Szegedy et al. 2016) or
multi-label (one sigmoid per class, binary cross-entropy). Targets are class indices [B]
(single-label) or multi-hot vectors [B, C] (multi-label).

Metrics, and which one is the headline (``{stage}/mtl/score``, checkpoint selection):

- single-label: ``accuracy`` (micro) and ``macro_accuracy`` (mean per-class recall). The
  headline is ``accuracy``; on imbalanced classes set ``headline: macro_accuracy``, where
  always answering the majority class scores 1 / num_classes. Validation and test also
  count the ``confusion_matrix`` (torchmetrics' ``MulticlassConfusionMatrix``: rows true,
  columns predicted), updated from the same logits in the same step; it is not a scalar,
  so it is not logged as a metric: the
  :class:`~mtl_lightning.callbacks.confusion_matrix.ConfusionMatrix` callback draws it.
- multi-label: ``map`` (mean average precision over the classes that occur, threshold-free)
  and ``f1`` (macro F1 at ``threshold``), plus the micro and macro ``accuracy`` of every
  (image, class) decision. The headline is ``map``: micro accuracy rewards a model that
  predicts nothing (most classes are absent from most images), F1 depends on the threshold.

A prediction is ``{"labels": [K], "scores": [K]}``, the scores aligned with the labels (one
label for single-label; the classes at or above ``threshold`` for multi-label). Ground truth
is drawn and described in the same form.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MultilabelAccuracy,
)

from mtl_lightning.models.neck import Features
from mtl_lightning.tasks.base import Task
from mtl_lightning.tasks.drawing import draw_text_lines
from mtl_lightning.tasks.multilabel_metrics import (
    OccurringClassesAveragePrecision,
    OccurringClassesF1,
)

SINGLE_LABEL_METRICS = ("accuracy", "macro_accuracy")
MULTILABEL_METRICS = ("map", "f1", "accuracy", "macro_accuracy")
#: The key of the single-label confusion matrix in the validation and test metrics.
CONFUSION_MATRIX = "confusion_matrix"
#: Lines of class names drawn at most (the rest is summarised as "+N more").
MAX_DRAWN_LINES = 5


class ClassificationTask(Task):
    """Classify the whole image.

    Args:
        num_classes: number of image classes (from the data module).
        class_names: their names.
        multilabel: several classes per image (BCE) instead of exactly one (CE).
        label_smoothing: cross-entropy label smoothing (single-label only).
        dropout: dropout before the linear layer.
        threshold: probability at or above which a class is predicted (multi-label only);
            also the decision threshold of the ``f1`` and ``accuracy`` metrics.
        features: ``deepest`` (pool the deepest backbone map) or ``pyramid`` (pool and
            concatenate every FPN level).
        headline: the metric that counts in ``{stage}/mtl/score`` and checkpoint selection
            (default: ``accuracy`` single-label, ``map`` multi-label; see the module docstring).
    """

    type_name = "classification"
    draw_order = 30  # the image label on top of masks and boxes
    headline_metric = "accuracy"  # single-label default; see ``headline``

    def __init__(
        self,
        num_classes: int,
        class_names: list[str] | None = None,
        multilabel: bool = False,
        label_smoothing: float = 0.0,
        dropout: float = 0.0,
        threshold: float = 0.5,
        features: Literal["deepest", "pyramid"] = "deepest",
        headline: str | None = None,
    ) -> None:
        super().__init__(num_classes, class_names)
        self.multilabel = multilabel
        available = MULTILABEL_METRICS if multilabel else SINGLE_LABEL_METRICS
        headline = headline or available[0]
        if headline not in available:
            kind = "multi-label" if multilabel else "single-label"
            raise ValueError(
                f"classification.headline must be one of {list(available)} for {kind} "
                f"classification, got '{headline}'."
            )
        self.headline_metric = headline
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
            results = []
            for probabilities in logits.sigmoid():
                labels = (probabilities >= self.threshold).nonzero().flatten()
                order = probabilities[labels].argsort(descending=True)
                results.append({"labels": labels[order], "scores": probabilities[labels][order]})
            return results
        scores, labels = logits.softmax(-1).max(-1)
        return [{"scores": s[None], "labels": c[None]} for s, c in zip(scores, labels)]

    def build_metrics(self, stage: str) -> MetricCollection:
        if self.multilabel:
            threshold = self.threshold
            return MetricCollection({
                "map": OccurringClassesAveragePrecision(self.num_classes),
                "f1": OccurringClassesF1(self.num_classes, threshold=threshold),
                "accuracy": MultilabelAccuracy(self.num_classes, threshold, average="micro"),
                "macro_accuracy": MultilabelAccuracy(self.num_classes, threshold,
                                                     average="macro"),
            })
        metrics = {
            "accuracy": MulticlassAccuracy(self.num_classes, average="micro"),
            "macro_accuracy": MulticlassAccuracy(self.num_classes, average="macro"),
        }
        if stage != "train":  # one bincount of B labels per batch; summed across processes
            metrics[CONFUSION_MATRIX] = MulticlassConfusionMatrix(self.num_classes)
        return MetricCollection(metrics)

    def update_metrics(
        self, metrics: MetricCollection, outputs: torch.Tensor, targets: torch.Tensor,
        has: torch.Tensor,
    ) -> None:
        if not bool(has.any()):
            return
        logits = outputs[has].float().detach()
        # Probabilities, not logits: the multi-label metrics apply ``threshold`` to them.
        scores = logits.sigmoid() if self.multilabel else logits
        metrics.update(scores, targets[has].long())

    def compute_metrics(self, metrics: MetricCollection) -> dict[str, torch.Tensor]:
        """The scalar metrics; the confusion matrix is read by its callback, never logged
        (a single class's 1 x 1 matrix would otherwise pass for a scalar)."""
        values = super().compute_metrics(metrics)
        values.pop(CONFUSION_MATRIX, None)
        return values

    def prediction_to_json(self, prediction: dict[str, torch.Tensor]) -> Any:
        """Multi-label: a list of ``{class_id, category_id, name, score}`` (empty when no class
        is predicted); single-label: one such dict."""
        entries = [
            {"class_id": int(label), "category_id": self.category_ids[int(label)],
             "name": self.class_names[int(label)], "score": float(score)}
            for label, score in zip(prediction["labels"].tolist(),
                                    prediction["scores"].tolist())
        ]
        if self.multilabel or len(entries) != 1:
            return entries
        return entries[0]

    @classmethod
    def placeholder_target(cls, height: int, width: int) -> torch.Tensor:
        """-1: no class."""
        return torch.tensor(-1)

    @classmethod
    def remap_target(cls, target: torch.Tensor, lookup: torch.Tensor,
                     num_classes: int | None = None) -> torch.Tensor:
        """A class index through ``lookup``; a multi-hot vector grows to ``num_classes``."""
        if target.ndim == 0:
            return lookup[target]
        remapped = target.new_zeros(num_classes or len(target))
        remapped[lookup] = target
        return remapped

    def target_as_prediction(self, target: torch.Tensor, crowd: bool = False) -> Any:
        """A class index or a multi-hot vector -> ``{"labels", "scores"}`` with scores of 1
        and ``"ground_truth": True`` (pictures then leave the scores out)."""
        labels = target.nonzero().flatten() if target.ndim else target.reshape(1)
        return {"labels": labels.long(), "scores": torch.ones(len(labels)), "ground_truth": True}

    def export_outputs(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Probabilities (sigmoid for a multi-label head) and, single-label, the class."""
        if self.multilabel:
            return {"scores": outputs.float().sigmoid()}
        scores = outputs.float().softmax(-1)
        return {"scores": scores, "labels": scores.argmax(-1)}

    def caption(self, prediction: dict[str, torch.Tensor],
                truth: dict[str, torch.Tensor] | None) -> str:
        """``true: <classes> / predicted: <classes>``."""
        names = ", ".join(self.class_names[int(c)] for c in prediction["labels"])
        caption = f"predicted: {names or '(none)'}"
        if truth is not None:
            true_names = ", ".join(self.class_names[int(c)] for c in truth["labels"])
            caption = f"true: {true_names or '(none)'} / {caption}"
        return caption

    def draw(self, image: torch.Tensor, prediction: dict[str, torch.Tensor]) -> torch.Tensor:
        """Write the class name(s) with scores in the top-left corner, one per line (names
        only for a ground truth, marked ``"ground_truth": True``)."""
        entries = self.prediction_to_json(prediction)
        entries = entries if isinstance(entries, list) else [entries]
        entries = sorted(entries, key=lambda e: -e["score"])
        truth = bool(prediction.get("ground_truth", False))  # no scores to show
        lines = [e["name"] if truth else f"{e['name']} {e['score']:.2f}"
                 for e in entries[:MAX_DRAWN_LINES]]
        if len(entries) > MAX_DRAWN_LINES:
            lines.append(f"+{len(entries) - MAX_DRAWN_LINES} more")
        return draw_text_lines(image, lines or ["(none)"])
