"""Images with masks and boxes publish their class labels into the W&B run config once, not
once per image (mtl_lightning/wandb_singletons.py, applied by AutoWandbLogger)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wandb

from mtl_lightning.loggers import AutoWandbLogger
from mtl_lightning.wandb_singletons import publish_singletons_once

LABELS = {0: "background", 1: "car", 2: "road"}


def image(labels: dict[int, str]) -> wandb.Image:
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:5, 2:5] = 1
    boxes = [{"position": {"minX": 1, "maxX": 4, "minY": 1, "maxY": 4}, "class_id": 1,
              "domain": "pixel"}]
    return wandb.Image(np.zeros((8, 8, 3), dtype=np.uint8),
                       masks={"prediction": {"mask_data": mask, "class_labels": labels}},
                       boxes={"prediction": {"box_data": boxes, "class_labels": labels}})


@pytest.fixture
def logger(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = AutoWandbLogger(mode="offline", save_dir=str(tmp_path), project="singletons")
    yield logger
    logger.experiment.finish()


def count_persists(run, monkeypatch) -> list[int]:
    """Counts the run config's publications (``Config.persist``: the whole config to the
    W&B service)."""
    calls: list[int] = []
    persist = type(run._config).persist
    monkeypatch.setattr(type(run._config), "persist",
                        lambda config: calls.append(1) or persist(config))
    return calls


def test_class_labels_are_published_once_for_many_images(logger, monkeypatch) -> None:
    run = logger.experiment
    calls = count_persists(run, monkeypatch)
    for step in range(6):
        logger.log_metrics({"val/overlays": [image(LABELS), image(LABELS)]}, step=step)
    assert len(calls) == 2  # the mask's and the boxes' labels, each stored once
    (stored,) = run._config["_wandb"]["mask/class_labels"].values()
    assert stored["value"] == LABELS


def test_changed_labels_are_published_again(logger, monkeypatch) -> None:
    run = logger.experiment
    calls = count_persists(run, monkeypatch)
    logger.log_metrics({"val/overlays": [image(LABELS)]}, step=0)
    logger.log_metrics({"val/overlays": [image({**LABELS, 3: "tree"})]}, step=1)
    assert len(calls) == 4


def test_a_run_without_the_private_method_is_left_alone() -> None:
    class Dummy:
        pass

    assert publish_singletons_once(Dummy()) is False


def test_wrapping_is_applied_once(logger) -> None:
    assert publish_singletons_once(logger.experiment) is False  # already wrapped at start
