"""A COCO-format dataset that yields samples for every task at once.

One annotation file gives all three tasks: boxes (detection), polygon/RLE masks painted into
a semantic mask (segmentation), and an image-level label (classification). The file is
validated and cleaned once (``validation.load_and_validate``: repairs are counted in one
warning, fatal problems stop with one sentence) and indexed once in ``__init__``;
``__getitem__`` only decodes one image and builds its targets.

Conventions:
- category ids are mapped to contiguous indices in sorted-id order; detection labels are
  0-based, semantic-mask values are 1-based (0 is background, 255 is ignore); the original
  ids travel as ``category_ids`` in ``task_info`` (and so in checkpoints and predictions);
- boxes are absolute xyxy pixels (converted from COCO's xywh here, at the edge);
- masks are decoded with pycocotools. Overlapping instances: painted in annotation order, so
  a later annotation wins where two overlap. ``iscrowd`` regions are painted 255 (ignored);
  their boxes are not training targets but are handed to the mAP metric as crowd regions,
  which is how COCO evaluation treats them (a detection there is neither a hit nor a false
  positive). An object whose mask was unusable (``mask_missing``) has its box painted 255;
  an image with an object that has no mask at all is not labelled for segmentation;
- image-level labels (``image_labels``): ``field`` reads ``images[i][image_label_field]``
  (an index into ``image_categories``, or a class name); ``derived`` makes classification
  multi-label over the categories present in the image; ``auto`` is ``field`` when any image
  has the field and ``derived`` otherwise; ``off`` yields no classification labels;
- ``images[i]["labelled_tasks"]`` (optional) lists the tasks that image is labelled for;
  absent means all tasks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.ops import box_convert

from mtl_lightning.data.coco import masks
from mtl_lightning.data.coco.dense_map_files import dense_map_specs, placeholder, read_dense_map
from mtl_lightning.data.coco.image_labels import (
    ImageLabels,
    image_class_names,
    resolve_image_labels,
)
from mtl_lightning.data.coco.validation import DataError, load_and_validate
from mtl_lightning.data.constants import COCO_TASK_NAMES, IGNORE_INDEX
from mtl_lightning.data.containers import copy_containers, tensor_bytes
from mtl_lightning.data.images import DEFAULT_MAX_PIXELS, ensure_inside, load_rgb

#: The task instances a COCO file labels by itself, named after their registered types
#: (image labels: classification, masks: segmentation, boxes: detection); any other task of
#: ``tasks`` is a dense-map task (``dense_maps``). With :func:`coco_task_info` and
#: :meth:`CocoMultiTaskDataset.decoded_sample` this is where the COCO reader says which task
#: types its format supplies.
TASK_NAMES = COCO_TASK_NAMES


def coco_task_info(image_class_names: list[str], category_names: list[str],
                   category_ids: list[int], multilabel: bool | None = None,
                   ) -> dict[str, dict[str, Any]]:
    """``task_info`` of the tasks a COCO file labels (:data:`TASK_NAMES`): the image classes,
    the categories with a background first (segmentation), the categories (detection), with
    the original category ids. ``multilabel`` (image labels derived from the categories, see
    the module docstring) is recorded when given."""
    classification: dict[str, Any] = {"num_classes": len(image_class_names),
                                      "class_names": list(image_class_names)}
    if multilabel is not None:
        classification["multilabel"] = multilabel
        if multilabel:
            classification["category_ids"] = list(category_ids)
    return {
        "classification": classification,
        "segmentation": {"num_classes": len(category_names) + 1,
                         "class_names": ["background", *category_names],
                         "category_ids": segmentation_category_ids(list(category_ids))},
        "detection": {"num_classes": len(category_names), "class_names": list(category_names),
                      "category_ids": list(category_ids)},
    }

__all__ = ["TASK_NAMES", "CocoMultiTaskDataset", "ImageRecord", "coco_task_info",
           "segmentation_category_ids"]


def segmentation_category_ids(category_ids: list[int]) -> list[int | None]:
    """The original id of each segmentation class: background first, then the categories.

    Background is written as category id 0 unless a real category has id 0 (as in 0-based
    files), in which case it is ``None`` (``null`` in predict's JSON): a class must never share
    the background's id.
    """
    return [None if 0 in category_ids else 0, *category_ids]


@dataclass
class ImageRecord:
    """What the index keeps of one image (no pixels)."""

    image_id: int
    path: Path
    height: int
    width: int
    # Boxes stay COCO's [x, y, width, height] here; a sample converts them to xyxy.
    boxes: np.ndarray  # [N, 4] xywh, float32, non-crowd objects only
    labels: np.ndarray  # [N] contiguous 0-based category indices
    crowd_boxes: np.ndarray  # [K, 4] xywh of iscrowd regions (for evaluation only)
    segmentations: list[tuple[Any, int]] = field(default_factory=list)  # (segm, value)
    ignore_boxes: list[list[float]] = field(default_factory=list)  # xywh, objects without a mask
    image_label: int | list[int] | None = None
    labelled_tasks: frozenset[str] = frozenset(TASK_NAMES)


class CocoMultiTaskDataset(Dataset):
    """Samples ``{"image", "targets": {task: ...}, "has": {task: bool}, "meta"}`` from COCO.

    Args:
        annotation_file: COCO instances JSON.
        image_root: folder the ``file_name`` entries are relative to.
        tasks: tasks to produce targets for.
        image_labels: where image-level labels come from (see the module docstring).
        image_label_field: the ``images[]`` field of ``field`` mode.
        transforms: a joint transform over the whole sample (torchvision.transforms.v2).
        image_ids: keep only these images (deterministic splits of one file).
        max_image_pixels: refuse images larger than this (checked before decoding).
        check_images: check every image file up front (exists, decodable header, size).
        document: an already validated and cleaned document of ``annotation_file`` (several
            splits of one file share a single validation).
        allow_outside_images: read images whose path resolves outside ``image_root`` (by
            default such entries are dropped by validation, and refused when read).
        dense_maps: per-task folders of per-image depth or normal maps (see
            :mod:`mtl_lightning.data.coco.dense_map_files`); default: the COCO file's own
            ``dense_maps`` entry, if any (the Scenes benchmark writes one).
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_root: str | Path,
        tasks: tuple[str, ...] = TASK_NAMES,
        image_labels: ImageLabels = "auto",
        image_label_field: str = "image_label",
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        image_ids: set[int] | None = None,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        check_images: bool = True,
        document: dict[str, Any] | None = None,
        allow_outside_images: bool = False,
        dense_maps: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_root = Path(image_root)
        self.tasks = tuple(tasks)
        self.transforms = transforms
        self.max_image_pixels = max_image_pixels
        self.allow_outside_images = allow_outside_images
        self._cache: list[dict[str, Any]] | None = None  # see cache_in_memory
        coco = document if document is not None else load_and_validate(
            self.annotation_file, self.image_root, check_images=check_images,
            max_pixels=max_image_pixels, image_label_field=image_label_field,
            image_labels=image_labels, allow_outside_images=allow_outside_images,
        )
        wanted = set(self.tasks) - set(TASK_NAMES)
        self.dense_maps = {
            task: spec for task, spec in dense_map_specs(
                dense_maps if dense_maps is not None else coco.get("dense_maps"),
                self.image_root).items()
            if task in wanted
        }
        unread = wanted - set(self.dense_maps)
        if unread:
            raise DataError(
                f"{self.annotation_file} has no {sorted(unread)} maps: give "
                f"data.dense_maps {{{sorted(unread)[0]}: {{dir: FOLDER}}}} or remove the task."
            )
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        self.category_ids = [int(c["id"]) for c in categories]
        self.category_names = [str(c["name"]) for c in categories]
        index_of = {cid: i for i, cid in enumerate(self.category_ids)}
        self.image_labels = resolve_image_labels(coco, image_labels, image_label_field,
                                                 str(self.annotation_file))
        self.image_class_names = image_class_names(coco, self.image_labels, image_label_field,
                                                   self.category_names,
                                                   str(self.annotation_file))
        by_image: dict[int, list[dict[str, Any]]] = {}
        for annotation in coco.get("annotations", []):
            by_image.setdefault(int(annotation["image_id"]), []).append(annotation)
        name_to_label = {name: i for i, name in enumerate(self.image_class_names)}
        self.records = [
            self._record(image, by_image.get(int(image["id"]), []), index_of,
                         image_label_field, name_to_label)
            for image in coco["images"]
            if image_ids is None or int(image["id"]) in image_ids
        ]
        if not self.records:
            raise DataError(
                f"{self.annotation_file} has no images in this split; check the split options."
            )

    @property
    def multilabel(self) -> bool:
        """Whether classification is multi-label (labels derived from the categories)."""
        return self.image_labels == "derived"

    def _record(
        self, image: dict[str, Any], annotations: list[dict[str, Any]],
        index_of: dict[int, int], image_label_field: str, name_to_label: dict[str, int],
    ) -> ImageRecord:
        boxes, labels, crowd, segmentations, ignore = [], [], [], [], []
        unsegmented = 0  # objects with no mask at all: the image has no segmentation label
        for annotation in annotations:
            label = index_of[int(annotation["category_id"])]
            is_crowd = bool(annotation.get("iscrowd", 0))
            box = [float(v) for v in annotation["bbox"]]
            if annotation.get("segmentation"):
                value = IGNORE_INDEX if is_crowd else label + 1
                segmentations.append((annotation["segmentation"], value))
            elif annotation.get("mask_missing") or is_crowd:
                ignore.append(box)
            else:
                unsegmented += 1
            if is_crowd:
                crowd.append(box)
            else:
                boxes.append(box)
                labels.append(label)
        labelled = set(image.get("labelled_tasks", self.tasks))
        if unsegmented:
            labelled.discard("segmentation")
        return ImageRecord(
            image_id=int(image["id"]),
            path=self.image_root / image["file_name"],
            height=int(image["height"]),
            width=int(image["width"]),
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64),
            crowd_boxes=np.asarray(crowd, dtype=np.float32).reshape(-1, 4),
            segmentations=segmentations,
            ignore_boxes=ignore,
            image_label=self._image_label(image, labels, image_label_field, name_to_label),
            labelled_tasks=frozenset(labelled),
        )

    def _image_label(
        self, image: dict[str, Any], labels: list[int], image_label_field: str,
        name_to_label: dict[str, int],
    ) -> int | list[int] | None:
        if self.image_labels == "derived":
            return sorted(set(labels))
        if self.image_labels == "field":
            value = image.get(image_label_field)
            if value is None:
                return None
            if isinstance(value, str):
                return name_to_label[value]
            return int(value)
        return None

    def __len__(self) -> int:
        return len(self.records)

    def semantic_mask(self, record: ImageRecord) -> np.ndarray:
        """uint8 [H, W]: 0 background, k+1 for category index k, 255 for crowds and objects
        without a usable mask."""
        mask = np.zeros((record.height, record.width), dtype=np.uint8)
        for segmentation, value in record.segmentations:
            mask[masks.decode(segmentation, record.height, record.width)] = value
        if record.ignore_boxes:
            corners = box_convert(torch.tensor(record.ignore_boxes, dtype=torch.float64), "xywh",
                                  "xyxy")
            for x0, y0, x1, y1 in corners.tolist():
                mask[int(y0):math.ceil(y1), int(x0):math.ceil(x1)] = IGNORE_INDEX
        return mask

    def load_image(self, record: ImageRecord) -> torch.Tensor:
        """uint8 RGB [3, H, W], EXIF orientation applied; any format, depth or mode.

        The path is checked again here, when it is read: a symlink changed after validation
        still cannot lead outside the images folder."""
        if not self.allow_outside_images:
            ensure_inside(self.image_root, record.path)
        return load_rgb(record.path, self.max_image_pixels,
                        context=f"image id {record.image_id}")

    def _classification_target(self, record: ImageRecord) -> torch.Tensor:
        if self.multilabel:
            target = torch.zeros(len(self.image_class_names))
            target[list(record.image_label or [])] = 1.0
            return target
        return torch.tensor(record.image_label if record.image_label is not None else -1)

    def cache_in_memory(self) -> float:
        """Decode every sample now and keep it (before the transforms): later reads skip
        the file, the image decoding and the mask rasterising, most of a small sample's
        loading time. Called in the main process before the loader's workers start, so the
        forked workers share the decoded tensors instead of each decoding their own. Costs
        the decoded image, mask and boxes of every sample in memory (docs/performance.md
        has both figures). Returns the megabytes held."""
        self._cache = [self.decoded_sample(i) for i in range(len(self.records))]
        return sum(tensor_bytes(sample) for sample in self._cache) / 2**20

    def __getitem__(self, index: int) -> dict[str, Any]:
        # From the cache, a fresh structure each time: a consumer must not change the cached one
        sample = (self.decoded_sample(index) if self._cache is None
                  else copy_containers(self._cache[index]))
        return self.transforms(sample) if self.transforms is not None else sample

    def decoded_sample(self, index: int) -> dict[str, Any]:
        """The sample of ``index`` as read from disk, before the transforms."""
        record = self.records[index]
        image = self.load_image(record)
        height, width = image.shape[-2:]
        targets: dict[str, Any] = {}
        has = {task: task in record.labelled_tasks for task in self.tasks}
        if "classification" in self.tasks:
            has["classification"] &= record.image_label is not None and self.image_labels != "off"
            targets["classification"] = self._classification_target(record)
        if "segmentation" in self.tasks:
            mask = self.semantic_mask(record) if has["segmentation"] else np.full(
                (height, width), IGNORE_INDEX, dtype=np.uint8
            )
            # uint8 until the loss: 8x less to pass from loader workers to the training process.
            targets["segmentation"] = tv_tensors.Mask(torch.from_numpy(mask))
        if "detection" in self.tasks:
            boxes = np.concatenate([record.boxes, record.crowd_boxes])
            targets["detection"] = {
                "boxes": tv_tensors.BoundingBoxes(
                    box_convert(torch.from_numpy(boxes), "xywh", "xyxy"), format="XYXY",
                    canvas_size=(height, width),
                ),
                "labels": torch.from_numpy(
                    np.concatenate([record.labels, np.zeros(len(record.crowd_boxes), np.int64)])
                ),
                "iscrowd": torch.cat([torch.zeros(len(record.boxes), dtype=torch.bool),
                                      torch.ones(len(record.crowd_boxes), dtype=torch.bool)]),
            }
        for task, spec in self.dense_maps.items():
            path = spec.path(record.path)
            has[task] = has.get(task, True) and path is not None
            targets[task] = (read_dense_map(spec, path, (height, width)) if path is not None
                             else placeholder(spec, (height, width)))
        sample = {
            "image": tv_tensors.Image(image),
            "targets": targets,
            "has": has,
            "meta": {"image_id": record.image_id, "path": str(record.path),
                     "orig_size": (int(height), int(width))},
        }
        return sample
