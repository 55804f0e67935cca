"""BDD100K (Yu et al. 2020) in the layout of YOLOP (Wu et al. 2022, "YOLOP: You Only Look Once
for Panoptic Driving Perception"), which HybridNets and YOLOPv2 train on too::

    <root>/images/{train,val}/<name>.jpg               1280 x 720 frames, 70k train / 10k val
    <root>/det_annotations/{train,val}/<name>.json     frames[0].objects[]: category, box2d
                                                       {x1, y1, x2, y2} (objects without box2d,
                                                       the lane and area polygons, are skipped)
    <root>/da_seg_annotations/{train,val}/<name>.png   drivable area
    <root>/ll_seg_annotations/{train,val}/<name>.png   lane lines

Tasks (instance names; see INTERFACE.md's named task instances):

- ``detection``: YOLOP's single class, ``vehicle`` = car, bus, truck and train
  (``detection_classes`` maps other groupings of BDD's categories to classes).
- ``drivable`` (segmentation, 2 classes) and ``lanes`` (segmentation, 2 classes): a pixel
  whose grey level is above 1 is foreground, YOLOP's threshold.

The sample ids are the image names of ``images/<split>``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import tv_tensors

from mtl_lightning.data.benchmarks.listed_files import (
    FileIn,
    ListedFilesDataModule,
    TargetReader,
    check_size,
)
from mtl_lightning.shared.errors import DataError

#: YOLOP's detection class: BDD's four vehicle categories as one.
YOLOP_CLASSES = {"vehicle": ("car", "bus", "truck", "train")}


def read_grey_mask(path: Path, size: tuple[int, int]) -> tuple[tv_tensors.Mask, bool]:
    """A mask PNG (grey or colour, read as grey levels): 1 above level 1, else 0."""
    try:
        with Image.open(path) as image:
            grey = np.asarray(image.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataError(f"Cannot read '{path}' as an image ({error}); replace the file.") from None
    check_size(grey, path, size)
    return tv_tensors.Mask(torch.from_numpy((grey > 1).astype(np.uint8))), True


class BoxReader:
    """A ``det_annotations`` JSON file -> ``{"boxes", "labels"}`` of the kept categories
    (boxes clipped to the image); a picklable reader."""

    def __init__(self, classes: dict[str, tuple[str, ...]]) -> None:
        self.label_of = {category: index for index, members in enumerate(classes.values())
                         for category in members}

    def __call__(self, path: Path, size: tuple[int, int]) -> tuple[dict[str, Any], bool]:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            objects = document["frames"][0].get("objects") or []
        except (OSError, ValueError) as error:
            raise DataError(f"Cannot read '{path}' as JSON ({error}); replace the file.") \
                from None
        except (KeyError, IndexError, TypeError, AttributeError):
            raise DataError(f"'{path}' has no frames[0].objects; is it a BDD100K label file "
                            "(YOLOP's det_annotations)?") from None
        boxes, labels = [], []
        for number, obj in enumerate(objects):
            if not isinstance(obj, dict) or "box2d" not in obj:
                continue  # lanes and drivable areas are polygons, not boxes
            if obj.get("category") not in self.label_of:
                continue
            try:
                box = [float(obj["box2d"][key]) for key in ("x1", "y1", "x2", "y2")]
            except (KeyError, TypeError, ValueError):
                raise DataError(f"'{path}' object {number} has a box2d without numeric x1, y1, "
                                "x2, y2; fix or remove it.") from None
            if not all(np.isfinite(box)) or box[2] < box[0] or box[3] < box[1]:
                raise DataError(f"'{path}' object {number} has box2d {box}; it needs "
                                "x1 <= x2 and y1 <= y2.")
            boxes.append(box)
            labels.append(self.label_of[obj["category"]])
        tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        tensor[:, 0::2] = tensor[:, 0::2].clamp(0, size[1])
        tensor[:, 1::2] = tensor[:, 1::2].clamp(0, size[0])
        return {"boxes": tv_tensors.BoundingBoxes(tensor, format="XYXY", canvas_size=size),
                "labels": torch.tensor(labels, dtype=torch.int64)}, True


class BDD100KDataModule(ListedFilesDataModule):
    """BDD100K in the YOLOP layout: detection, drivable area and lane lines.

    Args:
        root: the folder holding ``images/``, ``det_annotations/``, ``da_seg_annotations/``
            and ``ll_seg_annotations/``, each with ``train/`` and ``val/``.
        tasks: any of ``detection``, ``drivable``, ``lanes`` (null: all three).
        detection_classes: class name -> the BDD categories it groups (default YOLOP's
            ``{vehicle: [car, bus, truck, train]}``); objects of other categories are left out.
        image_size: int or ``[height, width]``; YOLOP letterboxes 1280 x 720 into 640 x 384
            (``[384, 640]``).
        **kwargs: loader and transform options of ``MultiTaskDataModule``.
    """

    source = "bdd100k"
    default_tasks = ("detection", "drivable", "lanes")

    def __init__(self, root: str = "data/bdd100k", tasks: tuple[str, ...] | None = None,
                 detection_classes: dict[str, list[str]] | None = None,
                 image_size: int | tuple[int, int] = (384, 640), **kwargs: Any) -> None:
        kwargs.setdefault("resize", "letterbox")
        super().__init__(root, tasks, image_size=image_size, **kwargs)
        classes = detection_classes if detection_classes is not None else YOLOP_CLASSES
        self.detection_classes = {name: tuple(members) for name, members in classes.items()}
        if not self.detection_classes:
            raise ValueError("data.detection_classes is empty; name at least one class.")

    @property
    def task_info(self) -> dict[str, dict[str, Any]]:
        names = list(self.detection_classes)
        info: dict[str, dict[str, Any]] = {
            "detection": {"num_classes": len(names), "class_names": names},
            "drivable": {"type": "segmentation", "num_classes": 2,
                         "class_names": ["background", "drivable"]},
            "lanes": {"type": "segmentation", "num_classes": 2,
                      "class_names": ["background", "lane"]},
        }
        return {task: info[task] for task in self.tasks}

    def split_ids(self, split: str) -> list[str]:
        folder = self.root / "images" / split
        if not folder.is_dir():
            raise DataError(f"'{folder}' is not a folder: data.root must hold images/{split}/ "
                            "(YOLOP's BDD100K layout; see docs 'Reproduce a published table').")
        ids = sorted(p.stem for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))
        if not ids:
            raise DataError(f"No .jpg or .png images in '{folder}'.")
        return ids

    def image_path(self, split: str) -> Callable[[str], Path]:
        return FileIn(self.root / "images" / split, (".jpg", ".png"))

    def files(self, split: str) -> dict[str, tuple[Callable[[str], Path], TargetReader]]:
        layout: dict[str, tuple[Callable[[str], Path], TargetReader]] = {
            "detection": (FileIn(self.root / "det_annotations" / split, (".json",)),
                          BoxReader(self.detection_classes)),
            "drivable": (FileIn(self.root / "da_seg_annotations" / split, (".png",)),
                         read_grey_mask),
            "lanes": (FileIn(self.root / "ll_seg_annotations" / split, (".png",)),
                      read_grey_mask),
        }
        return {task: layout[task] for task in self.tasks}
