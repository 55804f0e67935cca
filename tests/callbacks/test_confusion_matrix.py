"""The confusion-matrix callback: it publishes the classification task's own
``confusion_matrix`` metric (counts match the model's own predictions), a PNG per epoch, and
costs no forward pass of its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from mtl_lightning.callbacks.confusion_matrix import (
    CELL,
    MARGIN,
    ConfusionMatrix,
    draw_confusion_matrix,
    expand_counts,
)
from mtl_lightning.module import MultiTaskModule
from mtl_lightning.tasks import build_task
from tests.conftest import count_forward_calls


def test_picture_shades_cells_by_row_fraction() -> None:
    counts = torch.tensor([[5, 0], [1, 1]])
    picture = draw_confusion_matrix(counts, ["a", "b"])
    assert picture.shape == (MARGIN + 2 * CELL + 30, MARGIN + 2 * CELL + 10, 3)
    full = picture[MARGIN + 2, MARGIN + 2]  # row a, column a: all of a's samples
    empty = picture[MARGIN + 2, MARGIN + CELL + 2]  # row a, column b: none
    half = picture[MARGIN + CELL + 2, MARGIN + 2]  # row b, column a: half
    assert tuple(full) == (0, 0, 255) and tuple(empty) == (255, 255, 255)
    assert 100 < half[0] < 160 and half[2] == 255


def test_expanded_counts_rebuild_the_matrix() -> None:
    counts = torch.tensor([[2, 1], [0, 3]])
    truth, predicted = expand_counts(counts)
    rebuilt = np.zeros((2, 2), dtype=int)
    np.add.at(rebuilt, (truth, predicted), 1)
    assert rebuilt.tolist() == counts.tolist()


@pytest.mark.slow
def test_validation_counts_equal_the_models_predictions(tiny_scenes, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MultiTaskModule(task_info=tiny_scenes.task_info, neck_channels=16,
                            tasks={"classification": None, "segmentation": None})
    callback = ConfusionMatrix()
    trainer = Trainer(
        accelerator="cpu", logger=CSVLogger(tmp_path, name="", version=""),
        callbacks=[callback], enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=tmp_path,
    )
    calls = count_forward_calls(model)
    trainer.validate(model, datamodule=tiny_scenes)
    assert len(calls) == len(tiny_scenes.val_dataloader())  # the validation steps' only
    del model.forward  # the class's forward again
    counts = callback.counts
    # The same matrix, computed independently from a plain forward pass.
    expected = torch.zeros_like(counts)
    model.eval()
    with torch.no_grad():
        for batch in tiny_scenes.val_dataloader():
            has = batch["has"]["classification"]
            predicted = model(batch["image"])["classification"].argmax(-1)[has]
            for t, p in zip(batch["targets"]["classification"][has], predicted):
                expected[t, p] += 1
    assert int(counts.sum()) == len(tiny_scenes.datasets["val"])
    assert counts.tolist() == expected.tolist()
    picture = Image.open(tmp_path / "confusion_matrix" / "epoch000.png")
    classes = tiny_scenes.task_info["classification"]["num_classes"]
    assert picture.size == (MARGIN + classes * CELL + 10, MARGIN + classes * CELL + 30)
    # The matrix is a metric of the task, reset with the others, never logged as a value.
    assert not model.metrics["val_classification"]["confusion_matrix"].update_called
    assert not any("confusion" in key for key in trainer.callback_metrics)


def test_the_matrix_is_a_validation_metric_of_single_label_classification() -> None:
    task = build_task("classification", None, {"num_classes": 3})
    assert "confusion_matrix" in task.build_metrics("val")
    assert "confusion_matrix" not in task.build_metrics("train")
    multilabel = build_task("classification", {"multilabel": True}, {"num_classes": 3})
    assert "confusion_matrix" not in multilabel.build_metrics("val")
    metrics = task.build_metrics("val")
    task.update_metrics(metrics, torch.tensor([[2.0, 0, 0], [0, 0, 1], [0, 3, 0]]),
                        torch.tensor([0, 2, 0]), torch.tensor([True, True, False]))
    assert metrics["confusion_matrix"].compute().tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]
    assert set(task.compute_metrics(metrics)) == {"accuracy", "macro_accuracy"}


def test_without_the_task_nothing_is_counted(tiny_scenes, tmp_path: Path) -> None:
    model = MultiTaskModule(task_info=tiny_scenes.task_info, tasks={"segmentation": None},
                            neck_channels=16)
    callback = ConfusionMatrix()
    trainer = Trainer(accelerator="cpu", logger=False, callbacks=[callback],
                      enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, limit_val_batches=1)
    trainer.validate(model, datamodule=tiny_scenes)
    assert callback.counts is None
    assert not (tmp_path / "confusion_matrix").exists()
