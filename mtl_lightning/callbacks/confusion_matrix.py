"""The classification confusion matrix of every validation epoch, as a PNG and in W&B.

The matrix is one of the classification task's own validation metrics (``confusion_matrix``,
torchmetrics' ``MulticlassConfusionMatrix``, see :mod:`mtl_lightning.tasks.classification`):
it is updated in ``validation_step`` from the logits of the one forward pass, and summed over
DDP processes when it is computed. This callback only reads it at the end of the epoch
(before the module's own ``on_validation_epoch_end`` resets the metrics) and publishes it:

- written as ``<run dir>/confusion_matrix/epochNNN.png`` (rows: true class, columns:
  predicted class, counts written in, shaded by the fraction of the row), and
- logged to W&B as an interactive ``wandb.plot.confusion_matrix`` under
  ``val/<task>/confusion_matrix`` and as the same picture under
  ``val/<task>/confusion_matrix_image``.

Single-label classification only: a multi-label task has no single predicted class per
image, so the callback skips it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image, ImageDraw

from mtl_lightning.callbacks.metrics_report import run_directory
from mtl_lightning.tasks.classification import CONFUSION_MATRIX, ClassificationTask

CELL = 56
MARGIN = 110


def draw_confusion_matrix(
    counts: torch.Tensor, class_names: list[str], title: str = ""
) -> np.ndarray:
    """An RGB image (H, W, 3): one cell per (true, predicted) pair with its count, shaded
    from white to blue by the fraction of the true class's samples it holds."""
    size = len(class_names)
    rows = counts.double().sum(1, keepdim=True).clamp(min=1)
    fraction = (counts.double() / rows).tolist()
    width, height = MARGIN + size * CELL + 10, MARGIN + size * CELL + 30
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), title or "confusion matrix", fill="black")
    draw.text((MARGIN, MARGIN - 36), "predicted", fill="black")
    draw.text((10, MARGIN - 36), "true", fill="black")
    for i, name in enumerate(class_names):
        draw.text((10, MARGIN + i * CELL + CELL // 2 - 6), name[:14], fill="black")
        draw.text((MARGIN + i * CELL + 2, MARGIN - 18), name[:8], fill="black")
        for j in range(size):
            share = fraction[i][j]
            fade = int(255 * (1 - share))
            x, y = MARGIN + j * CELL, MARGIN + i * CELL
            draw.rectangle([x, y, x + CELL - 2, y + CELL - 2], fill=(fade, fade, 255))
            ink = "white" if share > 0.6 else "black"
            draw.text((x + 6, y + CELL // 2 - 6), str(int(counts[i, j])), fill=ink)
    return np.asarray(image)


def expand_counts(counts: torch.Tensor) -> tuple[list[int], list[int]]:
    """(true labels, predicted labels), one pair per sample counted in ``counts``: the form
    ``wandb.plot.confusion_matrix`` takes."""
    truth: list[int] = []
    predicted: list[int] = []
    for (i, j), n in np.ndenumerate(counts.cpu().numpy()):
        truth += [int(i)] * int(n)
        predicted += [int(j)] * int(n)
    return truth, predicted


class ConfusionMatrix(Callback):
    """Confusion matrix of a single-label classification task on the validation data.

    Args:
        task: instance name of the classification task; ``None``: the model's first
            single-label classification task.
        every_n_epochs: compute it at every n-th validation epoch.
        save_png: write ``<run dir>/confusion_matrix/epochNNN.png``.
        log_to_wandb: log the W&B confusion-matrix chart and picture when a W&B logger is
            present.
    """

    def __init__(
        self, task: str | None = None, every_n_epochs: int = 1, save_png: bool = True,
        log_to_wandb: bool = True,
    ) -> None:
        self.task = task
        self.every_n_epochs = max(1, every_n_epochs)
        self.save_png = save_png
        self.log_to_wandb = log_to_wandb
        #: the counts of the last published epoch (rows: true class, columns: predicted)
        self.counts: torch.Tensor | None = None

    def _wanted_task(self, trainer: Trainer, pl_module: LightningModule) -> Any:
        tasks = dict(getattr(pl_module, "tasks", {}).items())
        if self.task is None:  # the first single-label classification task, if any
            self.task = next((name for name, candidate in tasks.items()
                              if isinstance(candidate, ClassificationTask)
                              and not candidate.multilabel), "")
        task = tasks.get(self.task)
        if task is None or getattr(task, "multilabel", False) or trainer.sanity_checking:
            return None
        if not (self.save_png or self.log_to_wandb):
            return None
        return task if trainer.current_epoch % self.every_n_epochs == 0 else None

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        task = self._wanted_task(trainer, pl_module)
        if task is None:
            return
        counts = pl_module.computed_metric("val", self.task, CONFUSION_MATRIX)
        if counts is None:  # no process saw a labelled sample of the task
            return
        self.counts = counts.cpu()
        self._publish(trainer, task.class_names, self.counts)

    @rank_zero_only
    def _publish(self, trainer: Trainer, class_names: list[str], counts: torch.Tensor) -> None:
        epoch = trainer.current_epoch
        picture = draw_confusion_matrix(counts, class_names, f"{self.task}, epoch {epoch}")
        if self.save_png:
            folder = run_directory(trainer) / "confusion_matrix"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(folder / f"epoch{epoch:03d}.png", compress_level=1)
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if self.log_to_wandb and loggers and int(counts.sum()) > 0:
            import wandb

            truth, predicted = expand_counts(counts)
            chart = wandb.plot.confusion_matrix(
                y_true=truth, preds=predicted, class_names=list(class_names),
                title=f"{self.task} confusion matrix (epoch {epoch})",
            )
            loggers[0].log_metrics({
                f"val/{self.task}/confusion_matrix": chart,
                f"val/{self.task}/confusion_matrix_image": wandb.Image(picture),
            }, step=trainer.global_step)
