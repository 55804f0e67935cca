"""Readers of the field's multi-task benchmarks, each in its published on-disk layout."""

from mtl_lightning.data.benchmarks.mtan_layout import (
    CityscapesDataModule,
    MtanLayoutDataset,
    NYUv2DataModule,
)
from mtl_lightning.data.benchmarks.nyud import NYUDDataModule

__all__ = ["CityscapesDataModule", "MtanLayoutDataset", "NYUDDataModule", "NYUv2DataModule"]
