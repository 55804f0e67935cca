"""Writes ``predict`` results: per image a JSON, a mask PNG and an overlay picture.

For ``photo.jpg`` it writes ``photo.json`` (image class with score, boxes with class names and
scores, mask pixel counts), ``photo_mask.png`` (the class index of each pixel at the image's
original size) and ``photo_overlay.png`` (mask, boxes and class drawn over the image).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torchvision.io import write_png

from mtl_lightning.callbacks.metrics_report import run_directory
from mtl_lightning.data.images import load_rgb

#: Order in which tasks are drawn: masks first, then boxes, then the image label on top.
DRAW_ORDER = ("segmentation", "detection", "classification")


def draw_order(tasks: Any) -> list[str]:
    """Task names in drawing order (unknown tasks last)."""
    return sorted(tasks, key=lambda n: DRAW_ORDER.index(n) if n in DRAW_ORDER else len(DRAW_ORDER))


class PredictionWriter(BasePredictionWriter):
    """Write predictions as files.

    Args:
        output_dir: where to write; default ``<run directory>/predictions``.
        overlays: also draw the predictions over each image.
    """

    def __init__(self, output_dir: str | None = None, overlays: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.overlays = overlays

    def _directory(self, trainer: Trainer) -> Path:
        directory = (
            Path(self.output_dir) if self.output_dir else run_directory(trainer) / "predictions"
        )
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def write_on_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
        batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int,
    ) -> None:
        directory = self._directory(trainer)
        tasks = pl_module.tasks
        for item in prediction:
            path = Path(item["meta"]["path"])
            predictions = item["predictions"]
            record = {"image": str(path), "size_hw": list(item["meta"]["orig_size"])}
            record.update({
                name: tasks[name].prediction_to_json(pred) for name, pred in predictions.items()
            })
            (directory / f"{path.stem}.json").write_text(json.dumps(record, indent=2))
            if "segmentation" in predictions:
                mask = predictions["segmentation"].to(torch.uint8).cpu()[None]
                write_png(mask, str(directory / f"{path.stem}_mask.png"))
            if self.overlays:
                image = load_rgb(path, max_pixels=2**62)  # already decoded once: no limit
                for name in draw_order(predictions):
                    image = tasks[name].draw(image, to_cpu(predictions[name]))
                write_png(image, str(directory / f"{path.stem}_overlay.png"))


def to_cpu(value: Any) -> Any:
    """Tensors (also inside dicts) moved to the CPU, for drawing and serialising."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {key: to_cpu(v) for key, v in value.items()}
    return value
