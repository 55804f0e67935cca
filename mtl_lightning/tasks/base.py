"""The Task interface: everything one task owns, in one place.

A task owns its head (the layers after the shared neck), its loss, how raw outputs become
predictions, its metrics, how to serialise and draw a prediction, and its data side: the
placeholder target of a sample it does not label, how a target is drawn as ground truth, what
W&B shows of it and its post-processing inside an exported graph. The LightningModule, the
data modules, the callbacks and ``export`` ask the task instead of switching on task names, so
adding a task type is one new file (in ``tasks/`` plus a registry entry, or anywhere, given by
its import path as ``class_path``).

Tasks are named instances of task types: ``type_name`` is the class's registry key
(``segmentation``), ``name`` the instance's name in ``model.tasks`` (``drivable``, ``lanes``),
set by :func:`mtl_lightning.tasks.build_task`; the metric keys, targets and ``has`` flags use
the instance name.

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

    #: The task type: the registry key (``segmentation``); a class that does not declare
    #: one (a task from outside the package) has its import path, its ``class_path``.
    type_name: ClassVar[str]
    #: The instance name (``model.tasks`` key); the type name until ``build_task`` sets it.
    name: str
    #: The metric that summarises this task (higher is better), used for ``{stage}/mtl/score``.
    headline_metric: ClassVar[str]
    #: Whether training batches update metrics too (``model.train_metrics``); off for a task
    #: whose metric is too costly to run every step (detection mAP).
    metrics_on_train: ClassVar[bool] = True
    #: Drawing order over one image (lower first): masks, then boxes, then image labels.
    draw_order: ClassVar[int] = 50
    #: An auxiliary task is trained like any other but left out of ``{stage}/mtl/score`` and
    #: of delta_m by default.
    auxiliary: ClassVar[bool] = False
    #: The task whose labels this task's targets are derived from (``None``: its own labels).
    derived_from: ClassVar[str | None] = None
    #: Whether the task predicts classes (and so needs the data's class count); regression
    #: tasks such as depth and normals do not.
    has_classes: ClassVar[bool] = True
    #: Whether its targets are per-image dense maps read by ``decode_map`` (depth, normals).
    reads_dense_maps: ClassVar[bool] = False
    #: Whether ``draw`` makes a picture of its own (a depth or normal map) to be shown beside
    #: the image, rather than drawing over the image (masks, boxes, class names).
    draws_panel: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "type_name" not in cls.__dict__:  # not a registered type: its import path
            cls.type_name = f"{cls.__module__}.{cls.__qualname__}"
        cls.name = cls.type_name  # until build_task names the instance

    def derive_targets(self, source: Any) -> Any:
        """This task's targets from the batch targets of its source task (``self.source``,
        an instance of type ``derived_from``)."""
        raise NotImplementedError(f"Task '{self.name}' has labels of its own.")

    #: The instance whose targets ``derive_targets`` reads (set by ``build_task``).
    source: str | None = None

    # -------------------------------------------------------------- data side
    @classmethod
    def placeholder_target(cls, height: int, width: int) -> Any:
        """The target of a sample that is not labelled for this task (``has`` False),
        shaped like a real one so that the joint transforms move it and collation stacks it
        with labelled samples."""
        raise NotImplementedError(
            f"Task type '{cls.type_name}' has no placeholder target; a data source that "
            "leaves it unlabelled needs one (define placeholder_target)."
        )

    #: Whether class 0 is a background class, matched by position (whatever its name) when
    #: sources' class lists are reconciled (segmentation).
    background_class: ClassVar[bool] = False

    @classmethod
    def class_lookup(cls, names: list[str], reference: list[str],
                     background: bool = False) -> torch.Tensor:
        """``lookup[source_label] == module_label``: a source's class indices (``names``)
        in the module's order (``reference``), matched by name, for :meth:`remap_target`."""
        index = {name: i for i, name in enumerate(reference)}
        return torch.tensor([index[name] for name in names], dtype=torch.int64)

    @classmethod
    def remap_target(cls, target: Any, lookup: torch.Tensor,
                     num_classes: int | None = None) -> Any:
        """A labelled target with its class indices mapped through ``lookup`` (from
        :meth:`class_lookup`); ``num_classes`` is the module's class count."""
        raise NotImplementedError(
            f"Task type '{cls.type_name}' cannot remap classes between data sources."
        )

    def target_as_prediction(self, target: Any, crowd: bool = False) -> Any:
        """One sample's target in the form ``draw`` and ``prediction_to_json`` take, so the
        ground truth is drawn like a prediction. ``crowd``: keep regions that no metric
        counts, flagged (pictures), instead of leaving them out."""
        return target

    def export_outputs(self, outputs: Any) -> Any:
        """Tensor-only post-processing of the head's raw outputs inside an exported graph
        (``export --postprocess true``): fixed shapes, no Python control flow on values.
        Default: the raw outputs."""
        return outputs

    def wandb_masks(self, prediction: Any, truth: Any | None) -> dict[str, Any]:
        """W&B image masks (``{"prediction": {"mask_data", "class_labels"}, ...}``) of one
        picture; none by default."""
        return {}

    def wandb_boxes(self, prediction: Any, truth: Any | None) -> dict[str, Any]:
        """W&B image boxes (``{"predictions": {"box_data", "class_labels"}, ...}``) of one
        picture; none by default."""
        return {}

    def caption(self, prediction: Any, truth: Any | None) -> str | None:
        """A line of the W&B image caption (image-level labels); none by default."""
        return None

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
    def labelled_rows(value: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        """The rows of ``value`` (batch first) whose sample is labelled: ``value[has]``, or
        ``value`` itself, without a copy, when every sample is (the common case: a boolean
        index copies the whole tensor, e.g. 25 MB of segmentation logits per batch, and its
        backward scatters the gradient back)."""
        return value if bool(has.all()) else value[has]

    @staticmethod
    def unused_loss(outputs: Any) -> torch.Tensor:
        """A zero loss connected to every output tensor (no labelled sample in the batch)."""
        tensors = outputs.values() if isinstance(outputs, dict) else [outputs]
        return sum(t.sum() * 0.0 for t in tensors if isinstance(t, torch.Tensor))
