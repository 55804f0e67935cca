"""Macro multi-label metrics over the classes that occur, so absent classes neither help nor hurt.

torchmetrics' macro averages count every class. On a validation set that lacks some class (a
common case for small real data sets) that class gets AP 0 and, unless ``zero_division=1``,
F1 0, so the average is capped below 1 for a perfect model; with ``zero_division=1`` a model
that predicts nothing earns the absent classes' 1s. Here the mean runs over the classes where
the question has an answer:

- F1: classes with ``tp + fp + fn > 0`` (labelled somewhere, or predicted somewhere). A model
  that predicts nothing scores 0; a false alarm on an absent class still counts as F1 0.
- Average precision: classes with at least one positive target (as COCO's mAP skips
  categories without ground truth). Threshold-free: it judges the ranking of the scores.

Both return NaN when no class qualifies. They keep torchmetrics' state and distributed sync;
only the final average differs.
"""

from __future__ import annotations

import warnings

import torch
from torchmetrics.classification import MultilabelAveragePrecision, MultilabelF1Score
from torchmetrics.utilities import dim_zero_cat


class OccurringClassesF1(MultilabelF1Score):
    """Macro F1 over the classes with a true positive, false positive or false negative."""

    def __init__(self, num_labels: int, threshold: float = 0.5) -> None:
        super().__init__(num_labels, threshold=threshold, average="none")

    def compute(self) -> torch.Tensor:
        per_class = super().compute()
        occurring = (self.tp + self.fp + self.fn) > 0
        if not bool(occurring.any()):
            return per_class.new_tensor(float("nan"))
        return per_class[occurring].mean()


class OccurringClassesAveragePrecision(MultilabelAveragePrecision):
    """Mean average precision over the classes with at least one positive target."""

    def __init__(self, num_labels: int) -> None:
        super().__init__(num_labels, average="none", thresholds=None)

    def compute(self) -> torch.Tensor:
        target = dim_zero_cat(self.target)
        occurring = (target == 1).any(0)
        if not bool(occurring.any()):
            return torch.tensor(float("nan"), device=target.device)
        with warnings.catch_warnings():  # "no positive samples": those classes are left out
            warnings.simplefilter("ignore", UserWarning)
            per_class = super().compute()
        return per_class[occurring].mean()
