"""Per-image dense maps beside a COCO file: depth and surface normals for real photos.

A data set with depth or normal maps names, per task, a folder of one file per image,
named after the image (``images/0001.jpg`` -> ``<dir>/0001.png``)::

    dense_maps:
      depth: {dir: depth, scale: 0.001}   # 16-bit PNG in millimetres -> metres
      normals: {dir: normals}             # 8-bit RGB, (n + 1) / 2 * 255

The key is the task's instance name; its type is the entry's ``type`` (default: the key), a
task type whose targets are dense maps (``reads_dense_maps``: depth, normals, or a task from
outside the package), which decodes the file (``decode_map``) and makes the placeholder of an
image without one. A relative ``dir`` is relative to the images folder. Each map is a PNG or a
``.npy`` array (float depth, H x W or H x W x 1; normals H x W x 3 of components in [-1, 1]);
depth is multiplied by ``scale``. A depth of 0 and a zero normal vector (a black PNG pixel)
mean no ground truth. An image whose map is missing is unlabelled for that task (partial
labels); a map of the wrong size, type or channel count, or with NaNs, is one sentence naming
the file. The Scenes benchmark writes its maps this way (``dense: true``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mtl_lightning.shared.errors import DataError
from mtl_lightning.tasks import TASKS, Task, task_class

SUFFIXES = (".png", ".npy")


def dense_map_types() -> tuple[str, ...]:
    """The registered task types whose labels are per-image dense maps."""
    return tuple(name for name, cls in TASKS.items() if cls.reads_dense_maps)


@dataclass(frozen=True)
class DenseMapSpec:
    """Where one task's maps are and how their values become the task's unit."""

    task: str
    folder: Path
    scale: float = 1.0
    type: str = ""  # the task type (default: ``task``)

    @property
    def task_class(self) -> type[Task]:
        return task_class(self.type or self.task)

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
        if not isinstance(entry, dict) or "dir" not in entry:
            raise ValueError(f"{option}.{task} must be {{dir: FOLDER, scale: NUMBER}}, "
                             f"got {entry!r}.")
        kind = str(entry.get("type", task))
        if (kind not in TASKS and "." not in kind) or not task_class(kind).reads_dense_maps:
            raise ValueError(f"{option} names '{task}' (type {kind}); dense maps are read for "
                             f"the types {list(dense_map_types())} (give type: TYPE for "
                             "another name).")
        folder = Path(entry["dir"])
        folder = folder if folder.is_absolute() else Path(image_root) / folder
        if not folder.is_dir():
            raise FileNotFoundError(f"{option}.{task}.dir '{folder}' is not a folder.")
        specs[task] = DenseMapSpec(task, folder, float(entry.get("scale", 1.0)), kind)
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
    maps = spec.task_class.decode_map(array, path, spec.scale)
    if tuple(maps.shape[-2:]) != tuple(size):
        raise DataError(f"The {spec.task} map '{path}' is {maps.shape[-2]} x {maps.shape[-1]} "
                        f"but its image is {size[0]} x {size[1]}; maps must have the image's "
                        "size.")
    return spec.task_class.target_type()(torch.from_numpy(np.ascontiguousarray(maps)))


def placeholder(spec: DenseMapSpec, size: tuple[int, int]) -> torch.Tensor:
    """The target of an image without a map: the task type's placeholder (all invalid)."""
    return spec.task_class.placeholder_target(*size)


def missing_maps(specs: dict[str, DenseMapSpec], image_paths: list[str]) -> dict[str, list[str]]:
    """``{task: [image file names without a map]}`` (for check-data)."""
    return {task: [p for p in image_paths if spec.path(p) is None]
            for task, spec in specs.items()}
