"""The Task interface: everything one task owns, in one place.

A task owns its head (the layers after the shared neck), its loss, how raw outputs become
predictions, its metrics, and how to serialise and draw a prediction. The LightningModule
only loops over tasks, so adding a task (say depth) is one new file in ``tasks/`` plus a
registry entry; nothing else changes.

Partial labels: every loss and metric update receives ``has``, a bool[B] mask of the samples
that carry this task's labels. Unlabelled samples contribute nothing; a batch with no labelled
sample returns a zero loss that is still connected to the head (so DDP sees every parameter
used).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torchmetrics import MetricCollection

from mtl_lightning.models.neck import Features


class Task(nn.Module, ABC):
    """One task of a multi-task model.

    Args:
        num_classes: number of classes, normally filled in from the data module; ``None``
            for a regression task (depth, normals), which has none.
        class_names: one name per class, normally filled in from the data module.
    """

    name: ClassVar[str]
    #: The metric that summarises this task (higher is better), used for ``{stage}/mtl/score``.
    headline_metric: ClassVar[str]
    #: Metric names where lower is better (none of the built-in headline ones).
    lower_is_better: ClassVar[frozenset[str]] = frozenset()
    #: An auxiliary task is trained like any other but left out of ``{stage}/mtl/score`` and
    #: of delta_m by default.
    auxiliary: ClassVar[bool] = False
    #: The task whose labels this task's targets are derived from (``None``: its own labels).
    derived_from: ClassVar[str | None] = None
    #: Whether the task predicts classes (and so needs the data's class count); regression
    #: tasks such as depth and normals do not.
    has_classes: ClassVar[bool] = True
    #: Whether ``draw`` makes a picture of its own (a depth or normal map) to be shown beside
    #: the image, rather than drawing over the image (masks, boxes, class names).
    draws_panel: ClassVar[bool] = False

    def derive_targets(self, source: Any) -> Any:
        """This task's targets from the batch targets of ``derived_from``."""
        raise NotImplementedError(f"Task '{self.name}' has labels of its own.")

    def __init__(self, num_classes: int | None, class_names: list[str] | None = None) -> None:
        super().__init__()
        if num_classes is None:  # a regression task (depth, normals): no classes
            if class_names:
                raise ValueError(f"Task '{self.name}' has no classes; remove its class_names.")
            self.num_classes: int | None = None
            self.class_names: list[str] = []
            self.category_ids: list[int | None] = []
            return
        if num_classes < 1:
            raise ValueError(f"Task '{self.name}' needs num_classes >= 1, got {num_classes}.")
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names else [
            str(i) for i in range(self.num_classes)
        ]
        #: The dataset's original id of each class (e.g. COCO category ids), when known.
        self.category_ids = [None] * self.num_classes
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"Task '{self.name}' has {self.num_classes} classes but "
                f"{len(self.class_names)} class names."
            )

    @property
    def pyramid_levels(self) -> tuple[int, ...] | None:
        """The pyramid levels the head reads (``None``: all; ``()``: none, backbone maps
        only). A neck built for this task alone computes only these levels' outputs, so no
        parameter goes unused (DDP requires that)."""
        return None

    @property
    def reads_pyramid(self) -> bool:
        return self.pyramid_levels != ()

    @abstractmethod
    def build_head(
        self, pyramid_channels: int, backbone_channels: list[int], strides: list[int]
    ) -> None:
        """Create the head's layers, sized from what the neck and backbone report."""

    @abstractmethod
    def forward(self, features: Features, image_size: tuple[int, int]) -> Any:
        """Raw head outputs (logits, maps) for a batch."""

    @abstractmethod
    def loss(self, outputs: Any, targets: Any, has: torch.Tensor) -> torch.Tensor:
        """Scalar loss averaged over the labelled samples (``has``)."""

    @abstractmethod
    def postprocess(self, outputs: Any) -> Any:
        """Predictions per sample (class ids and scores, masks, boxes)."""

    @abstractmethod
    def build_metrics(self, stage: str) -> MetricCollection:
        """A fresh metric collection for ``stage`` (train, val or test)."""

    @abstractmethod
    def update_metrics(
        self, metrics: MetricCollection, outputs: Any, targets: Any, has: torch.Tensor
    ) -> None:
        """Update ``metrics`` with the labelled samples of a batch."""

    def compute_metrics(self, metrics: MetricCollection) -> dict[str, torch.Tensor]:
        """Final values of ``metrics``: only scalar entries (they are what gets logged)."""
        values = metrics.compute()
        return {
            key: value for key, value in values.items()
            if isinstance(value, torch.Tensor) and value.numel() == 1
        }

    def resize_prediction(
        self, prediction: Any, from_size: tuple[int, int], to_size: tuple[int, int]
    ) -> Any:
        """Map one sample's prediction onto an image of ``to_size`` (the original image, or an
        overlay picture). The image occupies the top-left ``from_size`` region of the model
        input (the rest is letterbox padding, see :mod:`mtl_lightning.data.transforms`):
        dense maps are cropped to it and resized, boxes scaled and clipped to ``to_size``."""
        return prediction

    @abstractmethod
    def prediction_to_json(self, prediction: Any) -> Any:
        """One sample's prediction as JSON-serialisable data (class names included)."""

    def prediction_files(self, prediction: Any) -> dict[str, np.ndarray]:
        """Files ``predict`` writes for one image besides its JSON: ``{suffix: array}``, each
        array an image PIL can save (uint8 or uint16, ``H x W`` or ``H x W x 3``), e.g.
        ``{"mask.png": ...}``. None by default."""
        return {}

    @abstractmethod
    def draw(self, image: torch.Tensor, prediction: Any) -> torch.Tensor:
        """Draw one sample's prediction over a uint8 [3, H, W] image."""

    @staticmethod
    def unused_loss(outputs: Any) -> torch.Tensor:
        """A zero loss connected to every output tensor (no labelled sample in the batch)."""
        tensors = outputs.values() if isinstance(outputs, dict) else [outputs]
        return sum(t.sum() * 0.0 for t in tensors if isinstance(t, torch.Tensor))
