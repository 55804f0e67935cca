"""Validate and repair a COCO annotation file once, before any training.

Real annotation files have problems: boxes that leave the image, polygons of two points or
with coordinates far outside the image, RLE masks whose counts do not decode, annotations
pointing at categories or images that do not exist, images whose files are missing, truncated,
rotated by EXIF, or outside the images folder (an absolute or ``../`` ``file_name``, or a
symlink leading out), image labels of mixed kinds. Each problem gets one of three actions:

- ``repaired``: the entry is fixed and kept (box clipped, box recomputed from its mask,
  duplicate annotation id renumbered, missing image size read from the file, unusable mask
  removed and the annotation marked ``"mask_missing": True``: the dataset paints its box as
  ignore (255) in the semantic mask, so the object is neither background nor lost);
- ``dropped``: the entry is removed (an image with its annotations, an annotation, or an
  annotation's corrupt mask, whose box is then ignore as above, or an unusable image label);
- ``fatal``: the file cannot be trusted at all (duplicate image or category ids, unknown task
  names, no image left, nothing left to train on, image labels mixing names and numbers, a
  task asked for by name that the file has no labels for); training must stop with the
  one-sentence message.

``validate_coco`` never mutates its input: it returns a cleaned copy and a ``DataReport``
that counts what was done, describes the data (images per task, boxes per category, box sizes)
and renders as one summary line (a warning) or a full report (``mtl-lightning check-data``).
``load_and_validate`` is what a dataset calls: it raises ``DataError`` for a fatal problem
and warns the summary once.

Annotations without any mask (box-only files) are not a problem and are not marked: the
dataset treats their images as unlabelled for segmentation (``task_coverage`` counts the same).

Masks are checked by ``masks`` before pycocotools rasterises them; image labels are resolved
by ``image_labels``, exactly as the data module resolves them, so the report describes what
``fit`` trains. The file I/O is one image-header read per image (a full decode with
``decode_images``, which ``check-data`` uses to find truncated files).
"""


from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn

from mtl_lightning.data.coco.cleaning import Cleaner
from mtl_lightning.data.coco.image_labels import (
    ImageLabels,
)
from mtl_lightning.data.coco.report import KINDS, DataReport, DataWarning, Kind, Problem
from mtl_lightning.data.coco.statistics import (
    box_sides,
    image_label_info,
    task_coverage,
    tasks_with_labels,
)
from mtl_lightning.data.coco.structure import check_structure, load_coco_json
from mtl_lightning.data.images import (
    DEFAULT_MAX_PIXELS,
)
from mtl_lightning.shared.errors import DataError


def validate_coco(
    document: dict,
    image_root: str | Path,
    annotation_file: str = "",
    check_images: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    image_label_field: str | None = "image_label",
    image_labels: ImageLabels = "auto",
    decode_images: bool = False,
    allow_outside_images: bool = False,
    tasks: tuple[str, ...] | None = None,
) -> tuple[dict, DataReport]:
    """Return a cleaned deep copy of a COCO document and the report of what was found.

    Args:
        document: the parsed COCO JSON (not mutated).
        image_root: folder the ``file_name`` entries are relative to.
        annotation_file: the file's name, used in every message.
        check_images: check each image file's header (exists, is an image, under
            ``max_pixels``, has the declared size); when off only images without
            width/height are read. Whether a path stays inside ``image_root`` is always
            checked.
        max_pixels: largest image (height * width) kept.
        image_label_field: the ``images[]`` field holding the image-level label (``None``:
            no classification labels).
        image_labels: ``auto`` | ``field`` | ``derived`` | ``off``, resolved as the data
            module does (``image_labels.resolve_image_labels``).
        decode_images: decode every image's pixels (not only its header), so a truncated
            file is found now; ``check-data`` does this for small data sets or on request.
        allow_outside_images: keep images whose path resolves outside ``image_root``.
        tasks: tasks the user asked for; one the file has no labels for is fatal. ``None``:
            only a file with nothing to learn from at all is fatal.

    Fatal problems are reported (``report.fatal``), not raised: see ``DataReport.raise_if_fatal``.
    """
    name = annotation_file or "the annotation document"
    check_structure(document, name)
    cleaner = Cleaner(name, Path(image_root), check_images, max_pixels, decode_images,
                       allow_outside_images)
    categories = cleaner.categories(document["categories"])
    annotations_in = document.get("annotations", [])
    annotation_count = Counter(a["image_id"] for a in annotations_in)
    images = cleaner.images(document["images"], annotation_count)
    all_image_ids = {image["id"] for image in document["images"]}
    annotations = cleaner.annotations(annotations_in, images, categories, all_image_ids)
    labels = image_label_info(document, images, image_labels, image_label_field, cleaner)
    if not images:
        why = Counter(p.kind for p in cleaner.problems if p.action == "dropped"
                      and KINDS.get(p.kind, Kind("", "", "")).listed == "image")
        reasons = ", ".join(f"{n} {KINDS[k].singular if n == 1 else KINDS[k].plural}"
                            for k, n in why.most_common()) or "see the problems"
        hint = (" (set allow_outside_images true if the images are meant to be read there)"
                if "image_outside_folder" in why else "")
        cleaner.add("no_images", "fatal",
                    f"no trainable images in {name}: "
                    + ("it lists no images" if not document["images"] else
                       f"all {len(document['images'])} images were dropped ({reasons}){hint}")
                    + "; fix the image paths or the file.")
    coverage = task_coverage(images, annotations, labels)
    why_not = tasks_with_labels(annotations, labels, coverage)
    _fatal_without_labels(cleaner, name, images, annotations_in, categories, why_not, tasks)
    cleaned = {key: copy.deepcopy(value) for key, value in document.items()
               if key not in ("images", "annotations")}
    cleaned["images"] = list(images.values())
    cleaned["annotations"] = annotations
    per_category = Counter(a["category_id"] for a in annotations)
    report = DataReport(
        annotation_file=name,
        num_images=len(images),
        num_annotations=len(annotations),
        annotations_per_category={n: per_category[i] for i, n in categories.items()},
        task_coverage=coverage,
        box_sides=box_sides(annotations),
        problems=cleaner.problems,
        annotations_of_dropped_images=sum(
            n for image_id, n in annotation_count.items()
            if image_id in all_image_ids and image_id not in images),
        image_labels=labels.describe(),
        crowd_regions=sum(1 for a in annotations if a.get("iscrowd")),
        empty_categories=[n for i, n in categories.items() if not per_category[i]],
        tasks_with_labels=[t for t, reason in why_not.items() if reason is None],
    )
    return cleaned, report


def _fatal_without_labels(cleaner: Cleaner, name: str, images: dict[int, dict],
                          annotations_in: list[dict], categories: dict[int, str],
                          why_not: dict[str, str | None], tasks: tuple[str, ...] | None) -> None:
    """Nothing to learn from (no task has labels) is fatal; so is a requested task without."""
    if not images:
        return  # already fatal, for a clearer reason
    # Annotations of the kept images (those of dropped images are counted with the image).
    kept_images_had = sum(1 for a in annotations_in if a["image_id"] in images)
    if all(reason is not None for reason in why_not.values()) and (
            kept_images_had or not categories):
        given = (f"every one of its {kept_images_had} annotations was dropped (see the "
                 "problems)" if kept_images_had else "it has no annotations")
        classes = ", it has no categories," if not categories else ""
        cleaner.add("no_labels", "fatal",
                    f"nothing to train on: {given}{classes} and no image has an image label; "
                    "fix the file (category ids, masks, boxes) or use another.")
        return
    for task in tasks or ():
        reason = why_not.get(task)
        if reason is not None:
            cleaner.add("task_without_labels", "fatal",
                        f"{name} has no labels for the '{task}' task ({reason}); label it, or "
                        f"leave '{task}' out of data.tasks and model.tasks.", value=task)


def load_and_validate(
    annotation_file: str | Path,
    image_root: str | Path,
    check_images: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    image_label_field: str | None = "image_label",
    image_labels: ImageLabels = "auto",
    allow_outside_images: bool = False,
    tasks: tuple[str, ...] | None = None,
) -> dict:
    """Load, validate and clean a COCO file for a dataset: fatal -> ``DataError``, else warn once.

    The one summary line (``DataReport.summary``) is warned as a ``DataWarning`` on rank 0 when
    anything was repaired or dropped; ``mtl-lightning check-data`` prints the full report.
    The options are those of :func:`validate_coco`.
    """
    document = load_coco_json(annotation_file)
    cleaned, report = validate_coco(
        document, image_root, str(annotation_file), check_images, max_pixels,
        image_label_field, image_labels=image_labels,
        allow_outside_images=allow_outside_images, tasks=tasks)
    report.raise_if_fatal()
    if report.problems:
        rank_zero_warn(report.summary() + " Run `mtl-lightning check-data` for details.",
                       category=DataWarning)
    return cleaned


# DataError, DataReport, DataWarning, Problem, check_structure and load_coco_json are
# re-exported: the validation's public face is this module.
__all__ = ["DataError", "DataReport", "DataWarning", "Problem", "check_structure",
           "load_and_validate", "load_coco_json", "validate_coco"]
