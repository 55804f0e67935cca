"""Fixtures the reliability tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtl_lightning.data import ScenesDataModule


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Scenes data set (32 px, 16/8/8 images), generated once per test module."""
    root = tmp_path_factory.mktemp("scenes")
    ScenesDataModule(root=str(root), image_size=32, num_train=16, num_val=8, num_test=8,
                     num_classes=4, generator_workers=0).prepare_data()
    return root
