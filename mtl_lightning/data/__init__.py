"""Data: COCO-format reading, the Scenes benchmark, joint transforms and data modules."""

from mtl_lightning.data.base import MultiTaskDataModule
from mtl_lightning.data.coco import CocoDataModule, CocoMultiTaskDataset
from mtl_lightning.data.scenes import ScenesConfig, ScenesDataModule, ensure_scenes
from mtl_lightning.data.sources import MultiSourceDataModule

__all__ = [
    "CocoDataModule",
    "CocoMultiTaskDataset",
    "MultiSourceDataModule",
    "MultiTaskDataModule",
    "ScenesConfig",
    "ScenesDataModule",
    "ensure_scenes",
]
