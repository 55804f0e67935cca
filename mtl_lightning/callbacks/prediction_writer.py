"""Writes ``predict`` results: per image a JSON, each task's files and an overlay picture.

Every file is keyed by the image's full file name, so ``photo.jpg`` and ``photo.png`` never
overwrite each other: ``photo.jpg.json`` (image class with score, boxes with class names and
scores, mask pixel counts, depth statistics), the files each task writes
(:meth:`~mtl_lightning.tasks.base.Task.prediction_files`: ``photo.jpg.mask.png`` with the class
index of each pixel at the image's original size, ``photo.jpg.depth.png`` as 16-bit
millimetres, ``photo.jpg.normals.png`` in the ``(n + 1) / 2`` encoding) and
``photo.jpg.overlay.png`` (mask, boxes and class drawn over the image, depth and normal maps
beside it; boxes scoring below ``draw_score_threshold`` are left out of the picture, not out
of the JSON).

An image that could not be read is skipped, the others are written: the skipped ones are
listed in ``skipped.json`` (file and reason) and in :attr:`PredictionWriter.skipped`, and the
CLI then ends with an error naming them (exit code 2).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning_utilities.core.apply_func import apply_to_collection
from PIL import Image
from torchvision.io import write_png

from mtl_lightning.callbacks.metrics_report import run_directory
from mtl_lightning.data.images import load_rgb

log = logging.getLogger(__name__)

#: Written next to the predictions when some images could not be read.
SKIPPED_FILE = "skipped.json"


def draw_order(names: Any, tasks: Any) -> list[str]:
    """The task instance ``names`` in drawing order: by each task's ``draw_order`` (masks
    first, then boxes, then the image label on top), ties in the given order. ``tasks``
    maps instance names to Task objects (the module's ``tasks``)."""
    return sorted(names, key=lambda name: tasks[name].draw_order)


class PredictionWriter(BasePredictionWriter):
    """Write predictions as files.

    Args:
        output_dir: where to write; default ``<run directory>/predictions``.
        overlays: also draw the predictions over each image.
        draw_score_threshold: boxes scoring below this are not drawn in the overlay pictures
            (the JSON keeps every box).
    """

    def __init__(self, output_dir: str | None = None, overlays: bool = True,
                 draw_score_threshold: float = 0.3) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.overlays = overlays
        self.draw_score_threshold = draw_score_threshold
        #: ``(image path, reason)`` of the images the last ``predict`` could not read.
        self.skipped: list[tuple[str, str]] = []

    def _directory(self, trainer: Trainer) -> Path:
        directory = (
            Path(self.output_dir) if self.output_dir else run_directory(trainer) / "predictions"
        )
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.skipped = []

    def write_on_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
        batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int,
    ) -> None:
        directory = self._directory(trainer)
        tasks = pl_module.tasks
        for item in prediction:
            meta = item["meta"]
            path = Path(meta["path"])
            if "error" in meta:
                self.skipped.append((str(path), str(meta["error"])))
                continue
            name = meta.get("name", path.name)
            predictions = item["predictions"]
            record = {"image": str(path), "size_hw": list(meta["orig_size"])}
            record.update({
                task: tasks[task].prediction_to_json(pred) for task, pred in predictions.items()
            })
            (directory / f"{name}.json").write_text(json.dumps(record, indent=2))
            for task, pred in predictions.items():
                for suffix, array in tasks[task].prediction_files(to_cpu(pred)).items():
                    Image.fromarray(array).save(directory / f"{name}.{suffix}")
            if self.overlays:
                image = load_rgb(path, max_pixels=2**62)  # already decoded once: no limit
                panels = []
                for task in draw_order(predictions, tasks):
                    drawn = confident(to_cpu(predictions[task]), self.draw_score_threshold)
                    if tasks[task].draws_panel:  # a map of its own, beside the image
                        panels.append(tasks[task].draw(image, drawn))
                    else:
                        image = tasks[task].draw(image, drawn)
                write_png(torch.cat([image, *panels], dim=2),
                          str(directory / f"{name}.overlay.png"))

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.skipped:
            return
        listing = [{"image": path, "reason": reason} for path, reason in self.skipped]
        target = self._directory(trainer) / SKIPPED_FILE
        target.write_text(json.dumps(listing, indent=2))
        log.warning("predict skipped %d unreadable image(s), listed in %s: %s",
                    len(self.skipped), target, ", ".join(path for path, _ in self.skipped))


class SkippedImagesError(ValueError):
    """``predict`` wrote every readable image but had to skip some (one sentence)."""


def skipped_images_error(writers: list[PredictionWriter]) -> SkippedImagesError | None:
    """The error that ends a ``predict`` that skipped images, or None when none was."""
    skipped = [path for writer in writers for path, _ in writer.skipped]
    if not skipped:
        return None
    shown = ", ".join(Path(p).name for p in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
    return SkippedImagesError(
        f"predict skipped {len(skipped)} image(s) it could not read ({shown}; reasons in "
        f"{SKIPPED_FILE} next to the predictions); the other images' predictions are written."
    )


def confident(prediction: Any, threshold: float) -> Any:
    """``prediction`` without the boxes scoring below ``threshold`` (for pictures: the
    metrics and the written JSON keep every box). Predictions without boxes are returned as
    they are."""
    if not isinstance(prediction, dict) or "boxes" not in prediction or threshold <= 0:
        return prediction
    keep = prediction["scores"] >= threshold
    return {key: value[keep] if isinstance(value, torch.Tensor) and value.ndim
            and value.shape[0] == len(keep) else value for key, value in prediction.items()}


def to_cpu(value: Any) -> Any:
    """Tensors (also inside dicts, lists and tuples) moved to the CPU, for drawing and
    serialising."""
    return apply_to_collection(value, torch.Tensor, torch.Tensor.cpu)
