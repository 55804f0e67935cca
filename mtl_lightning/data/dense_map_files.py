"""Per-image dense maps beside a COCO file: depth and surface normals for real photos.

A data set with depth or normal maps names, per task, a folder of one file per image,
named after the image (``images/0001.jpg`` -> ``<dir>/0001.png``)::

    dense_maps:
      depth: {dir: depth, scale: 0.001}   # 16-bit PNG in millimetres -> metres
      normals: {dir: normals}             # 8-bit RGB, (n + 1) / 2 * 255

A relative ``dir`` is relative to the images folder. Each map is a PNG or a ``.npy`` array
(float depth, H x W or H x W x 1; normals H x W x 3 of components in [-1, 1]); depth is
multiplied by ``scale``. A depth of 0 and a zero normal vector (a black PNG pixel) mean no
ground truth. An image whose map is missing is unlabelled for that task (partial labels);
a map of the wrong size, type or channel count, or with NaNs, is one sentence naming the
file. The Scenes benchmark writes its maps this way (``dense: true``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mtl_lightning.data.dense_maps import DepthMap, NormalMap
from mtl_lightning.data.errors import DataError

#: the tasks whose labels are per-image dense maps, and the tv_tensor each becomes
DENSE_MAP_TASKS = {"depth": DepthMap, "normals": NormalMap}
SUFFIXES = (".png", ".npy")


@dataclass(frozen=True)
class DenseMapSpec:
    """Where one task's maps are and how their values become the task's unit."""

    task: str
    folder: Path
    scale: float = 1.0

    def path(self, image_path: str | Path) -> Path | None:
        """The map of ``image_path`` (the first of ``SUFFIXES`` that exists), or None."""
        stem = Path(image_path).stem
        for suffix in SUFFIXES:
            candidate = self.folder / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
        return None


def dense_map_specs(options: dict[str, Any] | None, image_root: str | Path,
                    option: str = "data.dense_maps") -> dict[str, DenseMapSpec]:
    """``{task: spec}`` from the ``dense_maps`` option (or a COCO file's ``dense_maps``)."""
    specs: dict[str, DenseMapSpec] = {}
    for task, entry in (options or {}).items():
        if task not in DENSE_MAP_TASKS:
            raise ValueError(f"{option} names '{task}'; dense maps are read for "
                             f"{sorted(DENSE_MAP_TASKS)}.")
        if not isinstance(entry, dict) or "dir" not in entry:
            raise ValueError(f"{option}.{task} must be {{dir: FOLDER, scale: NUMBER}}, "
                             f"got {entry!r}.")
        folder = Path(entry["dir"])
        folder = folder if folder.is_absolute() else Path(image_root) / folder
        if not folder.is_dir():
            raise FileNotFoundError(f"{option}.{task}.dir '{folder}' is not a folder.")
        specs[task] = DenseMapSpec(task, folder, float(entry.get("scale", 1.0)))
    return specs


def _array(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with Image.open(path) as picture:
            return np.asarray(picture)
    except (OSError, ValueError) as error:
        raise DataError(f"Cannot read the dense map '{path}' ({error}); replace it.") from None


def read_dense_map(spec: DenseMapSpec, path: Path, size: tuple[int, int]) -> torch.Tensor:
    """The map at ``path`` as the task's tv_tensor (``[1, H, W]`` depth in the data's unit,
    ``[3, H, W]`` unit normals), checked against the image's ``size``."""
    array = _array(path)
    if array.dtype.kind not in "fiub":
        raise DataError(f"The dense map '{path}' holds {array.dtype} values; replace it.")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DataError(f"The dense map '{path}' contains NaN or infinite values; mark "
                        "missing pixels with 0 instead.")
    if spec.task == "depth":
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim != 2:
            raise DataError(f"The depth map '{path}' has shape {array.shape}; a depth map "
                            "has one channel (a 16-bit grey PNG or an H x W array).")
        values = array.astype(np.float32) * spec.scale
        maps = values[None]
    else:
        if array.ndim != 3 or array.shape[-1] != 3:
            raise DataError(f"The normal map '{path}' has shape {array.shape}; a normal map "
                            "has 3 channels (an RGB PNG or an H x W x 3 array).")
        if array.dtype == np.uint8:
            valid = array.any(axis=-1, keepdims=True)
            values = (array.astype(np.float32) / 255.0 * 2.0 - 1.0) * valid
        else:
            values = array.astype(np.float32)
        maps = np.moveaxis(values, -1, 0)
    if tuple(maps.shape[-2:]) != tuple(size):
        raise DataError(f"The {spec.task} map '{path}' is {maps.shape[-2]} x {maps.shape[-1]} "
                        f"but its image is {size[0]} x {size[1]}; maps must have the image's "
                        "size.")
    return DENSE_MAP_TASKS[spec.task](torch.from_numpy(np.ascontiguousarray(maps)))


def placeholder(task: str, size: tuple[int, int]) -> torch.Tensor:
    """The target of an image without a map: all invalid (zeros)."""
    channels = 1 if task == "depth" else 3
    return DENSE_MAP_TASKS[task](torch.zeros(channels, *size))


def missing_maps(specs: dict[str, DenseMapSpec], image_paths: list[str]) -> dict[str, list[str]]:
    """``{task: [image file names without a map]}`` (for check-data)."""
    return {task: [p for p in image_paths if spec.path(p) is None]
            for task, spec in specs.items()}
