"""Segmentation metrics from one confusion matrix, counted with a single bincount per batch.

torchmetrics' ``MulticlassJaccardIndex`` and ``MulticlassAccuracy`` each keep their own
state and each filter the ignored pixels with a boolean index (a copy of the kept pixels,
and on a GPU a host synchronisation to learn how many there are). Here the ignored pixels
are sent to one extra bin instead, so an update is one fused index computation and one
``bincount`` (``scatter_add_`` on an accelerator, where ``bincount`` synchronises to size its
output) on the device the predictions live on, with no data-dependent shape.

Both metrics subclass :class:`ConfusionMatrixMetric` and declare the same state, so a
``MetricCollection`` (whose ``compute_groups`` is on by default) finds after the first update
that their states are equal and updates the matrix once for both. The state is summed
across processes (``dist_reduce_fx="sum"``), like torchmetrics' own confusion matrix.

The reductions are the ones torchmetrics documents: mIoU is the macro mean over the classes
that occur in the targets or the predictions of ``tp / (tp + fp + fn)``; pixel accuracy is
the micro accuracy ``sum(tp) / (labelled pixels)``. Pixels whose target is ``ignore_index``
count nowhere.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


def class_ids(logits: torch.Tensor) -> torch.Tensor:
    """The predicted class of each pixel of ``[B, C, H, W]`` logits, as ``argmax(1)``
    (the first maximum on ties).

    ``max(1).indices`` rather than ``argmax(1)``: on the CPU, PyTorch's ``argmax`` over a
    dimension that is not the innermost takes a slow strided path, several times slower
    than ``max`` over the same dimension, which returns the same indices.
    """
    return logits.max(1).indices


class ConfusionMatrixMetric(Metric):
    """A ``num_classes x num_classes`` confusion matrix (rows: target, columns: prediction)
    of class-id predictions, updated on the device.

    Args:
        num_classes: number of classes; predictions and targets are ids in ``[0, C)``.
        ignore_index: target value of pixels that count nowhere (e.g. 255).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("confmat", default=torch.zeros(num_classes, num_classes,
                                                      dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add the pixels of class-id ``preds`` and ``target`` of the same shape."""
        classes = self.num_classes
        target = target.reshape(-1).long()
        index = target * classes + preds.reshape(-1).long()
        if self.ignore_index is not None:
            dump = classes * classes  # one extra bin collects the ignored pixels
            index = torch.where(target == self.ignore_index, dump, index)
        bins = classes * classes + 1
        if index.device.type == "cpu":
            counts = torch.bincount(index, minlength=bins)
        else:
            counts = torch.zeros(bins, dtype=torch.long, device=index.device)
            counts.scatter_add_(0, index, torch.ones_like(index))
        self.confmat += counts[: classes * classes].view(classes, classes)


class SegmentationIoU(ConfusionMatrixMetric):
    """Mean intersection over union (macro, over the classes present in the targets or the
    predictions), as ``MulticlassJaccardIndex(average="macro")``."""

    def compute(self) -> torch.Tensor:
        confmat = self.confmat.double()
        true_positives = confmat.diagonal()
        union = confmat.sum(0) + confmat.sum(1) - true_positives
        iou = torch.where(union > 0, true_positives / union.clamp(min=1), 0.0)
        present = (union > 0).double()
        return ((present * iou).sum() / present.sum()).float()


class SegmentationPixelAccuracy(ConfusionMatrixMetric):
    """The share of labelled pixels whose predicted class is right, as
    ``MulticlassAccuracy(average="micro")``."""

    def compute(self) -> torch.Tensor:
        total = self.confmat.sum()
        return (self.confmat.diagonal().sum().double() / total.clamp(min=1)).float()
