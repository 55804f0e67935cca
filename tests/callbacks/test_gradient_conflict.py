"""The gradient-conflict heatmap: colours follow the cosine's sign, PNGs land in the run dir."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

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


def test_epoch_end_writes_the_latest_heatmap(tmp_path: Path, monkeypatch) -> None:
    import mtl_lightning.callbacks.gradient_conflict as module

    monkeypatch.setattr(module, "run_directory", lambda trainer: tmp_path)
    callback = GradientConflictHeatmap()
    trainer = SimpleNamespace(current_epoch=3, loggers=[], global_step=10)
    pl_module = SimpleNamespace(gradient_conflict=(("a", "b", "c"), torch.eye(3)))
    callback.on_train_epoch_end(trainer, pl_module)
    written = tmp_path / "gradient_conflict" / "epoch003.png"
    assert written.exists()
    assert np.asarray(Image.open(written)).shape[:2] == (MARGIN + 3 * CELL + 10,) * 2
    # Nothing to draw when no balancer statistics exist yet.
    callback.on_train_epoch_end(SimpleNamespace(current_epoch=4), SimpleNamespace())
    assert not (tmp_path / "gradient_conflict" / "epoch004.png").exists()
