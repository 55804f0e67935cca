"""Readers of the field's multi-task benchmarks, each in its published on-disk layout."""

from mtl_lightning.data.benchmarks.bdd100k import BDD100KDataModule
from mtl_lightning.data.benchmarks.mtan_layout import (
    CityscapesDataModule,
    MtanLayoutDataset,
    NYUv2DataModule,
)
from mtl_lightning.data.benchmarks.nyud import NYUDDataModule
from mtl_lightning.data.benchmarks.pascal_context import PascalContextDataModule

__all__ = ["BDD100KDataModule", "CityscapesDataModule", "MtanLayoutDataset", "NYUDDataModule",
           "NYUv2DataModule", "PascalContextDataModule"]
