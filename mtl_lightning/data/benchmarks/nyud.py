"""NYUD-v2 in the layout of ATRC (Bruggemann et al. 2021), which MTI-Net's later releases,
InvPT (Ye & Xu 2022) and TaskPrompter (Ye & Xu 2023) train on::

    <root>/images/<id>.png (or .jpg)     the RGB image, 425 x 560
    <root>/segmentation/<id>.png         class ids 1..40, 0 = unlabelled        (segmentation)
    <root>/depth/<id>.npy                H x W (or H x W x 1) float metres, 0 = no ground truth
    <root>/normals/<id>.png              RGB, component = 2 * v / 255 - 1             (normals)
    <root>/edge/<id>.png                 boundaries, non-zero = edge                    (edges)
    <root>/gt_sets/{train,val}.txt       sample ids, 795 train / 654 val

The 40 classes are Gupta et al.'s (2013); their ids are shifted down by one so that 0
(unlabelled) becomes the ignore index 255, as every paper does. A normal whose decoded
vector is shorter than 0.5 (a grey, unlabelled pixel of the PNG) is stored as the zero
vector (no ground truth); the others are normalised to unit length. Edges are the data's own
boundary labels (Silberman et al.'s instance boundaries), a real task here: ``EdgeTask``
reads them instead of deriving boundaries from the masks (``task_info`` says so).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from mtl_lightning.data.benchmarks.listed_files import (
    FileIn,
    ListedFilesDataModule,
    TargetReader,
    check_size,
    class_mask,
    read_npy,
    read_png,
    read_split_ids,
)
from mtl_lightning.data.constants import IGNORE_INDEX
from mtl_lightning.shared.dense_maps import DepthMap, NormalMap
from mtl_lightning.shared.errors import DataError

#: Gupta et al.'s 40 NYUD-v2 classes, in the order of the label ids 1..40.
NYUD_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "bookshelf", "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser",
    "pillow", "mirror", "floor mat", "clothes", "ceiling", "books", "refrigerator",
    "television", "paper", "towel", "shower curtain", "box", "whiteboard", "person",
    "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop")


def read_shifted_classes(path: Path, size: tuple[int, int],
                         num_classes: int = len(NYUD_CLASSES)) -> tuple[tv_tensors.Mask, bool]:
    """Label ids 1..num_classes -> 0..num_classes-1; 0 (unlabelled) -> ignore."""
    labels = check_size(read_png(path), path, size).astype(np.int64) - 1
    labels[labels < 0] = IGNORE_INDEX
    return class_mask(labels, path, num_classes), True


def read_depth(path: Path, size: tuple[int, int]) -> tuple[DepthMap, bool]:
    """A float depth map (0 = no ground truth) as ``[1, H, W]``."""
    depth = read_npy(path)
    if depth.ndim == 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise DataError(f"'{path}' has shape {depth.shape}; a depth map is H x W.")
    check_size(depth, path, size)
    if (depth < 0).any():
        raise DataError(f"'{path}' has negative depths; depth is in metres, 0 = invalid.")
    return DepthMap(torch.from_numpy(depth.astype(np.float32))[None]), True


def read_png_normals(path: Path, size: tuple[int, int]) -> tuple[NormalMap, bool]:
    """An RGB normals PNG (2 * v / 255 - 1 per component) as unit vectors ``[3, H, W]``;
    vectors shorter than 0.5 (grey, unlabelled pixels) become zero (no ground truth)."""
    rgb = check_size(read_png(path, channels=3), path, size).astype(np.float32)
    normals = torch.from_numpy(2.0 * rgb / 255.0 - 1.0).permute(2, 0, 1).contiguous()
    length = normals.norm(dim=0, keepdim=True)
    valid = length >= 0.5
    normals = torch.where(valid, normals / length.clamp_min(1e-6), torch.zeros(()))
    return NormalMap(normals), True


def read_edge_png(path: Path, size: tuple[int, int]) -> tuple[tv_tensors.Mask, bool]:
    """A boundary map (non-zero = edge) as a uint8 mask of 1 (edge) and 0."""
    edges = check_size(read_png(path), path, size)
    return tv_tensors.Mask(torch.from_numpy((edges > 0).astype(np.uint8))), True


class NYUDDataModule(ListedFilesDataModule):
    """NYUD-v2 in the ATRC layout: segmentation (40 classes), depth, normals and edges.

    Args:
        root: the folder holding ``images/``, ``segmentation/``, ``depth/``, ``normals/``,
            ``edge/`` and ``gt_sets/``.
        tasks: any of ``segmentation``, ``depth``, ``normals``, ``edges`` (null: all four).
        image_size: int or ``[height, width]``; the images are 425 x 560 (the protocol
            letterboxes them into 448 x 576, see ``configs/experiment/nyud_hrnet18.yaml``).
        **kwargs: loader and transform options of ``MultiTaskDataModule``.
    """

    source = "nyud"
    default_tasks = ("segmentation", "depth", "normals", "edges")

    def __init__(self, root: str = "data/NYUDv2", tasks: tuple[str, ...] | None = None,
                 image_size: int | tuple[int, int] = (448, 576), **kwargs: Any) -> None:
        super().__init__(root, tasks, image_size=image_size, **kwargs)

    @property
    def task_info(self) -> dict[str, dict[str, Any]]:
        info: dict[str, dict[str, Any]] = {
            "segmentation": {"num_classes": len(NYUD_CLASSES), "class_names": list(NYUD_CLASSES)},
            "depth": {}, "normals": {},
            "edges": {"own_labels": True},  # the data's own boundary labels
        }
        return {task: info[task] for task in self.tasks}

    def split_ids(self, split: str) -> list[str]:
        return read_split_ids(self.root / "gt_sets" / f"{split}.txt")

    def image_path(self, split: str) -> Callable[[str], Path]:
        return FileIn(self.root / "images", (".png", ".jpg"))

    def files(self, split: str) -> dict[str, tuple[Callable[[str], Path], TargetReader]]:
        layout: dict[str, tuple[str, str, TargetReader]] = {
            "segmentation": ("segmentation", ".png", read_shifted_classes),
            "depth": ("depth", ".npy", read_depth),
            "normals": ("normals", ".png", read_png_normals),
            "edges": ("edge", ".png", read_edge_png),
        }
        files = {}
        for task in self.tasks:
            folder, suffix, reader = layout[task]
            files[task] = (FileIn(self.root / folder, (suffix,)), reader)
        return files
