"""What a run cost: parameters, training images per second, wall time, peak memory.

Written as ``run.json`` in the run directory at the end of ``fit`` (rank 0), next to
``metrics.json``, so that ``mtl-lightning compare`` can put quality and cost side by side.
Training throughput counts only the training batches (from the first batch's start to the
last batch's end of each epoch, validation excluded), without the first epoch, which pays
for warm-up and data generation, unless it is the only one.
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from mtl_lightning.callbacks.metrics_report import run_directory
from mtl_lightning.callbacks.wandb_summaries import parameter_counts
from mtl_lightning.shared.files import write_text_atomically

RUN_FILE = "run.json"


class RunStatistics(Callback):
    """Record the run's cost in ``run.json``.

    Args:
        enabled: write ``run.json`` at the end of ``fit``.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._fit_start = 0.0
        self._epoch_start: float | None = None
        self._epoch_end = 0.0
        self._epoch_images = 0
        self._rates: list[float] = []

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_start = time.perf_counter()
        self._rates = []

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_start, self._epoch_images = None, 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._epoch_start is None:
            self._epoch_start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._epoch_images += len(batch["image"]) * trainer.world_size
        self._epoch_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._epoch_start is not None and self._epoch_end > self._epoch_start:
            self._rates.append(self._epoch_images / (self._epoch_end - self._epoch_start))

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled:
            return
        rates = self._rates[1:] or self._rates
        record = {
            **parameter_counts(pl_module),
            "train/images_per_second": statistics.median(rates) if rates else None,
            "fit/seconds": time.perf_counter() - self._fit_start,
            "fit/epochs": trainer.current_epoch,
            "fit/steps": trainer.global_step,
            "fit/peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "fit/world_size": trainer.world_size,
            # what each task is judged by in this run (a multi-label classification: its
            # mAP, not accuracy); `compare` reads it
            "headline_metrics": {name: task.headline_metric
                                 for name, task in getattr(pl_module, "tasks", {}).items()
                                 if not task.auxiliary},
            # each task's type and the direction of each of its metrics (from the metrics'
            # own higher_is_better): `compare` needs no task registry to read them
            "task_types": {name: task.type_name
                           for name, task in getattr(pl_module, "tasks", {}).items()},
            **({"lower_is_better": pl_module.lower_is_better()}
               if hasattr(pl_module, "lower_is_better") else {}),
        }
        path = run_directory(trainer) / RUN_FILE
        write_text_atomically(path, json.dumps(record, indent=2))
