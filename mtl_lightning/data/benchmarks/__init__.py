"""Readers of the field's multi-task benchmarks, each in its published on-disk layout."""

from mtl_lightning.data.benchmarks.mtan_layout import (
    CityscapesDataModule,
    MtanLayoutDataset,
    NYUv2DataModule,
)

__all__ = ["CityscapesDataModule", "MtanLayoutDataset", "NYUv2DataModule"]
