"""The gradient-conflict heatmap: colours follow the cosine's sign, PNGs land in the run dir."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from mtl_lightning.balancing import BalancingRecord, GradientStatistics
from mtl_lightning.callbacks.gradient_conflict import (
    CELL,
    MARGIN,
    GradientConflictHeatmap,
    cosine_colour,
    draw_heatmap,
)


def test_colours_are_red_for_conflict_and_blue_for_alignment() -> None:
    assert cosine_colour(-1.0) == (255, 0, 0)
    assert cosine_colour(1.0) == (0, 0, 255)
    assert cosine_colour(0.0) == (255, 255, 255)


def test_heatmap_cells_carry_the_matrix() -> None:
    cosine = torch.tensor([[1.0, -0.8], [-0.8, 1.0]])
    picture = draw_heatmap(("a", "b"), cosine)
    assert picture.shape == (MARGIN + 2 * CELL + 10, MARGIN + 2 * CELL + 10, 3)
    corner = picture[MARGIN + 3, MARGIN + CELL + 3]  # row a, column b: conflicting
    assert corner[0] == 255 and corner[2] < 100
    diagonal = picture[MARGIN + 3, MARGIN + 3]
    assert diagonal[2] == 255 and diagonal[0] == 0


def _outputs(tasks: tuple[str, ...], cosine: torch.Tensor | None) -> dict:
    """What a training step returns: its loss and its balancing record."""
    statistics = (None if cosine is None else
                  GradientStatistics(tasks, torch.ones(len(tasks)), cosine))
    return {"loss": torch.tensor(1.0), "balancing": BalancingRecord(statistics=statistics)}


def test_epoch_end_writes_the_latest_heatmap(tmp_path: Path, monkeypatch) -> None:
    import mtl_lightning.callbacks.gradient_conflict as module

    monkeypatch.setattr(module, "run_directory", lambda trainer: tmp_path)
    callback = GradientConflictHeatmap()
    trainer = SimpleNamespace(current_epoch=3, loggers=[], global_step=10)
    # Nothing to draw when no step has returned statistics yet.
    callback.on_train_epoch_end(trainer, SimpleNamespace())
    assert not (tmp_path / "gradient_conflict" / "epoch003.png").exists()
    callback.on_train_batch_end(trainer, SimpleNamespace(), _outputs(("a", "b", "c"),
                                                                     torch.eye(3)), None, 0)
    # a step without statistics (or a skipped one) keeps the latest matrix
    callback.on_train_batch_end(trainer, SimpleNamespace(), _outputs(("a", "b"), None), None, 1)
    callback.on_train_batch_end(trainer, SimpleNamespace(), {}, None, 2)
    callback.on_train_epoch_end(trainer, SimpleNamespace())
    written = tmp_path / "gradient_conflict" / "epoch003.png"
    assert written.exists()
    assert np.asarray(Image.open(written)).shape[:2] == (MARGIN + 3 * CELL + 10,) * 2


def test_each_step_with_statistics_logs_a_wandb_image(monkeypatch) -> None:
    import mtl_lightning.callbacks.gradient_conflict as module

    class FakeWandb:
        def __init__(self) -> None:
            self.images: list[tuple[str, int, tuple]] = []

        def log_image(self, key: str, images: list, step: int) -> None:
            self.images.append((key, step, images[0].shape))

    monkeypatch.setattr(module, "WandbLogger", FakeWandb)
    logger = FakeWandb()
    callback = GradientConflictHeatmap()
    trainer = SimpleNamespace(current_epoch=0, loggers=[logger], global_step=5)
    callback.on_train_batch_end(trainer, SimpleNamespace(), _outputs(("a", "b"), torch.eye(2)),
                                None, 0)
    callback.on_train_batch_end(trainer, SimpleNamespace(), _outputs(("a", "b"), None), None, 1)
    side = MARGIN + 2 * CELL + 10
    assert logger.images == [("train/mtl/gradient_conflict", 5, (side, side, 3))]
