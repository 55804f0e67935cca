"""Data: COCO-format reading, the Scenes benchmark, joint transforms and data modules."""

from mtl_lightning.data.coco import CocoMultiTaskDataset
from mtl_lightning.data.datamodules import CocoDataModule, MultiTaskDataModule, ScenesDataModule
from mtl_lightning.data.multisource import MultiSourceDataModule
from mtl_lightning.data.scenes import ScenesConfig, ensure_scenes

__all__ = [
    "CocoDataModule",
    "CocoMultiTaskDataset",
    "MultiSourceDataModule",
    "MultiTaskDataModule",
    "ScenesConfig",
    "ScenesDataModule",
    "ensure_scenes",
]
