"""The procedural Scenes benchmark: the generator, its dense (depth and normals) rendering,
and the data module."""

from mtl_lightning.data.scenes.datamodule import ScenesDataModule
from mtl_lightning.data.scenes.generator import ScenesConfig, ensure_scenes

__all__ = ["ScenesConfig", "ScenesDataModule", "ensure_scenes"]
