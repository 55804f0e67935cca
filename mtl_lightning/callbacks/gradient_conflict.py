"""Gradient conflict heatmap: the pairwise cosine similarity of the task gradients.

The balancer computes it every ``statistics_every`` steps (the scalars are logged as
``train/mtl/cosine/<a>__<b>``). The training step returns it in its
:class:`~mtl_lightning.balancing.BalancingRecord`, which Lightning hands to this callback's
``on_train_batch_end`` as ``outputs["balancing"]``. The callback draws the matrix as a heatmap
(red: conflicting, cosine < 0; blue: aligned) and logs it as a W&B image
``train/mtl/gradient_conflict`` on each step that has one; at the end of every epoch it also
writes the epoch's latest one as ``gradient_conflict/epochNNN.png`` in the run directory, so a
user without W&B sees the same picture.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image, ImageDraw

from mtl_lightning.balancing.record import GradientStatistics
from mtl_lightning.callbacks.metrics_report import run_directory

CELL = 96
MARGIN = 120


def cosine_colour(value: float) -> tuple[int, int, int]:
    """Diverging colour: -1 red, 0 white, +1 blue."""
    value = max(-1.0, min(1.0, value))
    fade = int(255 * (1 - abs(value)))
    return (255, fade, fade) if value < 0 else (fade, fade, 255)


def draw_heatmap(tasks: tuple[str, ...], cosine: torch.Tensor, title: str = "") -> np.ndarray:
    """An RGB image (H, W, 3) of the ``len(tasks)`` square cosine matrix, values written in."""
    size = len(tasks)
    width, height = MARGIN + size * CELL + 10, MARGIN + size * CELL + 10
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), title or "cosine of task gradients", fill="black")
    for i, task in enumerate(tasks):
        draw.text((10, MARGIN + i * CELL + CELL // 2), task[:14], fill="black")
        draw.text((MARGIN + i * CELL + 4, MARGIN - 20), task[:14], fill="black")
        for j in range(size):
            value = float(cosine[i, j])
            x, y = MARGIN + j * CELL, MARGIN + i * CELL
            draw.rectangle([x, y, x + CELL - 2, y + CELL - 2], fill=cosine_colour(value))
            ink = "white" if abs(value) > 0.6 else "black"
            draw.text((x + CELL // 3, y + CELL // 2 - 6), f"{value:+.2f}", fill=ink)
    return np.asarray(image)


class GradientConflictHeatmap(Callback):
    """Draw the gradient-conflict matrix for W&B and the run directory.

    Args:
        log_to_wandb: log the heatmap as a W&B image when the trainer has a W&B logger.
        save_png: write the epoch's last heatmap to ``<run dir>/gradient_conflict/``.
    """

    def __init__(self, log_to_wandb: bool = True, save_png: bool = True) -> None:
        self.log_to_wandb = log_to_wandb
        self.save_png = save_png
        self._latest: GradientStatistics | None = None

    @staticmethod
    def statistics_of(outputs: Any) -> GradientStatistics | None:
        """The gradient statistics a training step returned, if it computed any."""
        record = outputs.get("balancing") if isinstance(outputs, Mapping) else None
        return getattr(record, "statistics", None)

    @rank_zero_only
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        statistics = self.statistics_of(outputs)
        if statistics is None:
            return
        self._latest = statistics
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if loggers and self.log_to_wandb:
            picture = draw_heatmap(statistics.tasks, statistics.cosine,
                                   f"step {trainer.global_step}")
            loggers[0].log_image("train/mtl/gradient_conflict", [picture],
                                 step=trainer.global_step)

    @rank_zero_only
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._latest is None or not self.save_png:
            return
        folder = run_directory(trainer) / "gradient_conflict"
        folder.mkdir(parents=True, exist_ok=True)
        picture = draw_heatmap(self._latest.tasks, self._latest.cosine,
                               f"epoch {trainer.current_epoch}")
        Image.fromarray(picture).save(folder / f"epoch{trainer.current_epoch:03d}.png")
