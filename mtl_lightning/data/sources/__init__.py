"""Data sets assembled from several sources: the single-task folder readers and the data
module that trains on all of them at once."""

from mtl_lightning.data.sources.multisource import MultiSourceDataModule

__all__ = ["MultiSourceDataModule"]
