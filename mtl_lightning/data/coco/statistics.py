"""Statistics of a cleaned COCO document: images per task, image labels, box sizes."""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import numpy as np

from mtl_lightning.data.coco.cleaning import Cleaner
from mtl_lightning.data.coco.image_labels import (
    MAX_UNDECLARED_INDEX,
    declared_classes,
    image_class_names,
    resolve_image_labels,
    unusable_labels,
)
from mtl_lightning.data.coco.report import listing
from mtl_lightning.data.constants import COCO_TASK_NAMES
from mtl_lightning.shared.errors import DataError

SMALL_AREA = 32**2  # COCO's small/medium/large thresholds, in box area (pixels^2)
LARGE_AREA = 96**2


def task_coverage(images: dict[int, dict], annotations: list[dict],
                   labels: ImageLabelInfo) -> dict[str, int]:
    """Images usable per task (see ``DataReport.task_coverage``); the dense-map tasks' maps
    are files beside the annotations, not part of this count."""
    tasks = COCO_TASK_NAMES
    without_mask = {a["image_id"] for a in annotations if not a.get("iscrowd")
                    and "segmentation" not in a and not a.get("mask_missing")}
    coverage = dict.fromkeys(tasks, 0)
    listed: Counter = Counter()
    for image_id, image in images.items():
        labelled = image.get("labelled_tasks")
        if labelled is not None:
            labelled = labelled if isinstance(labelled, list) else [labelled]
            listed.update(labelled)
        labelled_for = set(tasks if labelled is None else labelled)
        if "detection" in labelled_for:
            coverage["detection"] += 1
        if "segmentation" in labelled_for and image_id not in without_mask:
            coverage["segmentation"] += 1
        if "classification" in labelled_for and labels.labels(image):
            coverage["classification"] += 1
    if listed:
        coverage.update({f"labelled_tasks:{task}": listed[task] for task in tasks})
    return coverage


class ImageLabelInfo(NamedTuple):
    """The image labels ``fit`` will use: the resolved mode, the field and the classes."""

    mode: str  # "field" | "derived" | "off"
    field: str | None
    classes: list[str]

    def labels(self, image: dict) -> bool:
        """Whether ``image`` (cleaned) gets a classification label in this mode."""
        if self.mode == "derived":
            return True  # "none of the categories present" is a label too
        return self.mode == "field" and image.get(self.field) is not None

    def describe(self) -> str:
        """'derived: multi-label over ...' / 'field 'x': 3 classes (...)' / 'off (...)'."""
        shown = listing(self.classes)
        if self.mode == "derived":
            return (f"derived (multi-label: which of the {len(self.classes)} categories are "
                    "present in the image)")
        if self.mode == "field":
            return f"field '{self.field}', {len(self.classes)} classes ({shown})"
        return "off (no image-label field, and fewer than 2 categories to derive them from)"


def image_label_info(document: dict, images: dict[int, dict], mode: str,
                  field: str | None, cleaner: Cleaner) -> ImageLabelInfo:
    """Resolve ``mode`` as the data module does, drop unusable label values (from the
    cleaned ``images``) and report mixed names and numbers as fatal."""
    if field is None:
        return ImageLabelInfo("off", None, [])
    try:
        resolved = resolve_image_labels(document, mode, field)  # type: ignore[arg-type]
    except DataError as error:
        if document["categories"]:  # without any, 'no_labels' says it with the counts
            cleaner.add("image_labels", "fatal", f"{error}")
        return ImageLabelInfo("off", field, [])
    names = [str(c["name"]) for c in sorted(document["categories"], key=lambda c: c["id"])]
    if resolved != "field":
        return ImageLabelInfo(resolved, field, names if resolved == "derived" else [])
    declared = declared_classes(document)
    allowed = (f"a name or index of image_categories ({listing(declared)})"
               if declared is not None else
               f"a class name or a whole number in 0..{MAX_UNDECLARED_INDEX} (declare "
               "image_categories for more classes)")
    for image_id, value in unusable_labels(document, field):
        if image_id in images:
            images[image_id].pop(field, None)
            cleaner.add("bad_image_label", "dropped",
                        f"image {image_id} has {field} = {value!r}, which is not {allowed}; "
                        "dropped the label (the image is unlabelled for classification).",
                        image_id=image_id, value=value)
    try:
        classes = image_class_names(document, "field", field, names)
    except DataError as error:
        cleaner.add("mixed_image_labels", "fatal", f"{error}")
        return ImageLabelInfo("field", field, [])
    return ImageLabelInfo("field", field, classes)


def tasks_with_labels(annotations: list[dict], labels: ImageLabelInfo,
                       coverage: dict[str, int]) -> dict[str, str | None]:
    """Task -> ``None`` when the file has labels for it, else why it has none."""
    objects = [a for a in annotations if not a.get("iscrowd")]
    why: dict[str, str | None] = {
        "detection": None if objects else "no object annotation is left",
        "segmentation": None if any("segmentation" in a for a in objects) else
        "no object annotation with a usable mask is left",
    }
    if labels.mode == "off":
        why["classification"] = "image labels are off"
    elif labels.mode == "derived":
        why["classification"] = (None if objects else
                                 "no object annotation is left to derive image labels from")
    else:
        why["classification"] = (None if coverage.get("classification") else
                                 f"no image has a usable '{labels.field}'")
    return why


def box_sides(annotations: list[dict]) -> dict[str, float]:
    areas = np.array([a["bbox"][2] * a["bbox"][3] for a in annotations if not a.get("iscrowd")],
                     dtype=np.float64)
    sides: dict[str, float] = {}
    if areas.size:
        side = np.sqrt(areas)
        p10, median, p90 = np.percentile(side, [10, 50, 90])
        sides.update(min=float(side.min()), p10=float(p10), median=float(median),
                     p90=float(p90), max=float(side.max()))
    sides["small"] = float((areas < SMALL_AREA).sum())
    sides["medium"] = float(((areas >= SMALL_AREA) & (areas <= LARGE_AREA)).sum())
    sides["large"] = float((areas > LARGE_AREA).sum())
    return sides


__all__ = ["ImageLabelInfo", "box_sides", "image_label_info", "task_coverage", "tasks_with_labels"]
