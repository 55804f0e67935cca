"""COCO-format data: the reader, its validation and repairs, and the data module."""

from mtl_lightning.data.coco.datamodule import CocoDataModule
from mtl_lightning.data.coco.dataset import CocoMultiTaskDataset

__all__ = ["CocoDataModule", "CocoMultiTaskDataset"]
