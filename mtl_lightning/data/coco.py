"""A COCO-format dataset that yields samples for every task at once.

One annotation file gives all three tasks: boxes (detection), polygon/RLE masks painted into
a semantic mask (segmentation), and an image-level label read from a field of ``images[]``
(classification). The index is parsed once in ``__init__``; ``__getitem__`` only decodes one
image and builds its targets.

Conventions:
- category ids are mapped to contiguous indices in sorted-id order; detection labels are
  0-based, semantic-mask values are 1-based (0 is background, 255 is ignore);
- boxes are absolute xyxy pixels (converted from COCO's xywh here, at the edge);
- masks are decoded with pycocotools; overlapping instances are painted in annotation order,
  so a later annotation wins; ``iscrowd`` regions are painted 255 (ignored) and are not
  detection targets;
- ``images[i]["labelled_tasks"]`` (optional) lists the tasks that image is labelled for;
  absent means all tasks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image, read_file

TASK_NAMES = ("classification", "segmentation", "detection")
IGNORE_INDEX = 255


@dataclass
class ImageRecord:
    """What the index keeps of one image (no pixels)."""

    image_id: int
    path: Path
    height: int
    width: int
    boxes: np.ndarray  # [N, 4] xyxy, float32, non-crowd objects only
    labels: np.ndarray  # [N] contiguous 0-based category indices
    segmentations: list[tuple[Any, int]] = field(default_factory=list)  # (segm, value)
    image_label: int | None = None
    labelled_tasks: frozenset[str] = frozenset(TASK_NAMES)


def _decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Polygon list, uncompressed RLE or compressed RLE -> bool [H, W] (pycocotools)."""
    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


class CocoMultiTaskDataset(Dataset):
    """Samples ``{"image", "targets": {task: ...}, "has": {task: bool}, "meta"}`` from COCO.

    Args:
        annotation_file: COCO instances JSON.
        image_root: folder the ``file_name`` entries are relative to.
        tasks: tasks to produce targets for.
        image_label_field: field of ``images[]`` holding the image-level class (0-based index
            into ``image_categories``); images without it are unlabelled for classification.
        transforms: a joint transform over the whole sample (torchvision.transforms.v2).
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_root: str | Path,
        tasks: tuple[str, ...] = TASK_NAMES,
        image_label_field: str = "image_label",
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_root = Path(image_root)
        self.tasks = tuple(tasks)
        self.transforms = transforms
        with open(self.annotation_file) as handle:
            coco = json.load(handle)
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        self.category_ids = [int(c["id"]) for c in categories]
        self.category_names = [str(c["name"]) for c in categories]
        self.image_class_names = [
            str(c["name"]) for c in sorted(coco.get("image_categories", []), key=lambda c: c["id"])
        ]
        index_of = {cid: i for i, cid in enumerate(self.category_ids)}
        by_image: dict[int, list[dict[str, Any]]] = {}
        for annotation in coco.get("annotations", []):
            by_image.setdefault(int(annotation["image_id"]), []).append(annotation)
        self.records = [
            self._record(image, by_image.get(int(image["id"]), []), index_of, image_label_field)
            for image in coco["images"]
        ]

    def _record(
        self, image: dict[str, Any], annotations: list[dict[str, Any]],
        index_of: dict[int, int], image_label_field: str,
    ) -> ImageRecord:
        boxes, labels, segmentations = [], [], []
        for annotation in annotations:
            label = index_of[int(annotation["category_id"])]
            crowd = bool(annotation.get("iscrowd", 0))
            if annotation.get("segmentation"):
                value = IGNORE_INDEX if crowd else label + 1
                segmentations.append((annotation["segmentation"], value))
            if not crowd:
                x, y, w, h = (float(v) for v in annotation["bbox"])
                boxes.append([x, y, x + w, y + h])
                labels.append(label)
        label_value = image.get(image_label_field)
        return ImageRecord(
            image_id=int(image["id"]),
            path=self.image_root / image["file_name"],
            height=int(image["height"]),
            width=int(image["width"]),
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64),
            segmentations=segmentations,
            image_label=None if label_value is None else int(label_value),
            labelled_tasks=frozenset(image.get("labelled_tasks", TASK_NAMES)),
        )

    def __len__(self) -> int:
        return len(self.records)

    def semantic_mask(self, record: ImageRecord) -> np.ndarray:
        """uint8 [H, W]: 0 background, k+1 for category index k, 255 for crowd regions."""
        mask = np.zeros((record.height, record.width), dtype=np.uint8)
        for segmentation, value in record.segmentations:
            mask[_decode_segmentation(segmentation, record.height, record.width)] = value
        return mask

    def load_image(self, record: ImageRecord) -> torch.Tensor:
        """uint8 RGB [3, H, W]; grayscale, RGBA and palette images are converted to RGB."""
        return decode_image(read_file(str(record.path)), mode=ImageReadMode.RGB)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = self.load_image(record)
        height, width = image.shape[-2:]
        targets: dict[str, Any] = {}
        has: dict[str, bool] = {}
        for task in self.tasks:
            has[task] = task in record.labelled_tasks
        if "classification" in self.tasks:
            has["classification"] &= record.image_label is not None
            targets["classification"] = torch.tensor(
                record.image_label if record.image_label is not None else -1
            )
        if "segmentation" in self.tasks:
            mask = self.semantic_mask(record) if has["segmentation"] else np.full(
                (height, width), IGNORE_INDEX, dtype=np.uint8
            )
            # uint8 until the loss: 8x less to pass from loader workers to the training process.
            targets["segmentation"] = tv_tensors.Mask(torch.from_numpy(mask))
        if "detection" in self.tasks:
            targets["detection"] = {
                "boxes": tv_tensors.BoundingBoxes(
                    torch.from_numpy(record.boxes), format="XYXY", canvas_size=(height, width)
                ),
                "labels": torch.from_numpy(record.labels),
            }
        sample = {
            "image": tv_tensors.Image(image),
            "targets": targets,
            "has": has,
            "meta": {"image_id": record.image_id, "path": str(record.path),
                     "orig_size": (int(height), int(width))},
        }
        return self.transforms(sample) if self.transforms is not None else sample
