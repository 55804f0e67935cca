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
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn

from mtl_lightning.data.coco import masks
from mtl_lightning.data.coco.dense_map_files import dense_map_types
from mtl_lightning.data.coco.image_labels import (
    MAX_UNDECLARED_INDEX,
    ImageLabels,
    declared_classes,
    image_class_names,
    resolve_image_labels,
    unusable_labels,
)
from mtl_lightning.data.constants import COCO_TASK_NAMES
from mtl_lightning.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    ImageOutsideFolderError,
    image_path,
    load_rgb,
    read_image_size,
)
from mtl_lightning.shared.errors import DataError

SMALL_AREA = 32**2  # COCO's small/medium/large thresholds, in box area (pixels^2)
LARGE_AREA = 96**2
CLIP_TOLERANCE = 0.01  # pixels a box may overshoot the image by before it is reported
LISTED_IDS = 5  # how many ids a summary or an aggregated message lists


class DataWarning(UserWarning):
    """Repaired or dropped entries of an annotation file (one summary warning per file)."""


@dataclass
class Problem:
    """One thing found in an annotation file and what was done about it.

    ``value`` is the offending value summaries group by (for example the unknown category id);
    ``None`` when the image or annotation id says it all.
    """

    kind: str
    action: str  # "repaired" | "dropped" | "fatal"
    message: str
    image_id: int | None = None
    annotation_id: int | None = None
    value: Any = None


class _Kind(NamedTuple):
    """How ``DataReport.summary`` counts a kind of problem: nouns and which ids it lists."""

    singular: str
    plural: str
    listed: str  # "annotation", "image", "value" or "" (nothing listed)
    label: str = ""  # what the listed ids are called


KINDS: dict[str, _Kind] = {
    "missing_image": _Kind("image whose file is missing", "images whose files are missing",
                           "image"),
    "not_an_image": _Kind("file that is not an image", "files that are not images", "image"),
    "image_too_large": _Kind("image over the pixel limit", "images over the pixel limit",
                             "image"),
    "size_rotated": _Kind("image whose width/height are swapped (EXIF rotation)",
                          "images whose width/height are swapped (EXIF rotation)", "image"),
    "size_mismatch": _Kind("image whose width/height differ from the file",
                           "images whose width/height differ from the file", "image"),
    "size_filled": _Kind("image size read from the file", "image sizes read from the file",
                         "image"),
    "unknown_image": _Kind("annotation whose image_id is not in images",
                           "annotations whose image_id is not in images", "value",
                           "image ids"),
    "unknown_category": _Kind("annotation with an unknown category id",
                              "annotations with unknown category ids", "value", "ids"),
    "duplicate_annotation_id": _Kind("duplicate annotation id (renumbered)",
                                     "duplicate annotation ids (renumbered)", "value", "ids"),
    "bad_bbox": _Kind("annotation with a malformed bbox", "annotations with a malformed bbox",
                      "annotation"),
    "missing_bbox": _Kind("annotation without a usable bbox or mask",
                          "annotations without a usable bbox or mask", "annotation"),
    "bbox_from_mask": _Kind("missing box computed from the mask",
                            "missing boxes computed from the mask", "annotation"),
    "degenerate_box": _Kind("box of zero or negative size", "boxes of zero or negative size",
                            "annotation"),
    "empty_mask": _Kind("annotation with an empty mask and no box",
                        "annotations with an empty mask and no box", "annotation"),
    "box_partly_outside": _Kind("box partly outside the image",
                                "boxes partly outside the image", "annotation"),
    "box_outside_image": _Kind("annotation with its box wholly outside the image",
                               "annotations with boxes wholly outside the image", "annotation"),
    "bad_polygon": _Kind("annotation with polygons of fewer than 3 points",
                         "annotations with polygons of fewer than 3 points", "annotation"),
    "no_valid_polygon": _Kind("mask with no valid polygon (box kept, mask ignored)",
                              "masks with no valid polygon (box kept, mask ignored)",
                              "annotation"),
    "rle_size_mismatch": _Kind("RLE mask of the wrong size (box kept, mask ignored)",
                               "RLE masks of the wrong size (box kept, mask ignored)",
                               "annotation"),
    "bad_segmentation": _Kind("malformed mask (box kept, mask ignored)",
                              "malformed masks (box kept, mask ignored)", "annotation"),
    "bad_rle": _Kind("RLE mask whose counts do not decode to the image (box kept as ignore)",
                     "RLE masks whose counts do not decode to the image (boxes kept as ignore)",
                     "annotation"),
    "polygon_far_outside": _Kind("mask with polygons far outside the image",
                                 "masks with polygons far outside the image", "annotation"),
    "image_outside_folder": _Kind("image outside the images folder",
                                  "images outside the images folder", "image"),
    "undecodable_image": _Kind("image whose pixels do not decode (truncated or corrupt)",
                               "images whose pixels do not decode (truncated or corrupt)",
                               "image"),
    "bad_image_label": _Kind("unusable image label (image kept, unlabelled for classification)",
                             "unusable image labels (images kept, unlabelled for "
                             "classification)", "image"),
    "mixed_image_labels": _Kind("image labels mixing names and numbers",
                                "image labels mixing names and numbers", ""),
    "image_labels": _Kind("unusable image_labels setting", "unusable image_labels setting", ""),
    "no_labels": _Kind("nothing to train on", "nothing to train on", ""),
    "task_without_labels": _Kind("task without labels", "tasks without labels", ""),
    "duplicate_image_id": _Kind("duplicate image ids", "duplicate image ids", ""),
    "duplicate_category": _Kind("duplicate category ids or names",
                                "duplicate category ids or names", ""),
    "unknown_task": _Kind("unknown task names in labelled_tasks",
                          "unknown task names in labelled_tasks", ""),
    "no_images": _Kind("no trainable images", "no trainable images", ""),
}


def _listing(values: Iterable[Any]) -> str:
    """'1, 2, 3' or '1, 2, 3, 4, 5, ... (9 in all)' for messages that name many ids."""
    unique = list(dict.fromkeys(values))
    shown = ", ".join(str(v) for v in unique[:LISTED_IDS])
    return shown if len(unique) <= LISTED_IDS else f"{shown}, ... ({len(unique)} in all)"


@dataclass
class DataReport:
    """What an annotation file holds after cleaning, and every problem found in it.

    Attributes:
        annotation_file: the file (as given) the report is about.
        num_images, num_annotations: counts after cleaning.
        annotations_per_category: category name -> annotations (after cleaning), id order.
        task_coverage: images usable per task: ``detection`` (every image labelled for it;
            an image without objects is a negative), ``segmentation`` (images whose objects
            all have masks; an unusable mask, marked ``mask_missing``, is painted ignore and
            keeps the image usable, a non-crowd object with no mask at all does not),
            ``classification`` (images that get an image label: a usable value of the
            field, or every image when labels are derived from the categories), and,
            when images carry ``labelled_tasks``, ``labelled_tasks:<task>`` (images listing it).
        box_sides: ``min``/``p10``/``median``/``p90``/``max`` of sqrt(w*h) over non-crowd
            boxes (absent without boxes) and COCO's ``small`` (< 32^2 px area) / ``medium`` /
            ``large`` (> 96^2) counts.
        problems: every problem, in the order found.
        annotations_of_dropped_images: annotations removed because their image was dropped.
        image_labels: the image labels ``fit`` uses, in words (mode, field, classes).
        crowd_regions: ``iscrowd`` annotations kept (ignored in the semantic mask, crowd
            regions for mAP).
        empty_categories: names of the categories no kept annotation uses.
        tasks_with_labels: the tasks this file has labels for (what ``fit`` can train).
        pixels_decoded: whether every image was decoded (else only headers were read).
    """

    annotation_file: str
    num_images: int
    num_annotations: int
    annotations_per_category: dict[str, int]
    task_coverage: dict[str, int]
    box_sides: dict[str, float]
    problems: list[Problem] = field(default_factory=list)
    annotations_of_dropped_images: int = 0
    image_labels: str = ""
    crowd_regions: int = 0
    empty_categories: list[str] = field(default_factory=list)
    tasks_with_labels: list[str] = field(default_factory=list)
    pixels_decoded: bool = False

    @property
    def fatal(self) -> list[Problem]:
        """The problems that make the file unusable."""
        return [p for p in self.problems if p.action == "fatal"]

    def raise_if_fatal(self) -> None:
        """Raise ``DataError`` with the first fatal problem's sentence (and how many more)."""
        fatal = self.fatal
        if not fatal:
            return
        message = fatal[0].message
        if len(fatal) > 1:
            message = (f"{message.rstrip('.')} ({len(fatal) - 1} more fatal problem(s): run "
                       f"`mtl-lightning check-data` to list them all).")
        raise DataError(message)

    def summary(self) -> str:
        """One line: what was repaired, dropped or fatal, counted per kind with first ids."""
        groups: dict[tuple[str, str], list[Problem]] = defaultdict(list)
        for problem in self.problems:
            groups[(problem.action, problem.kind)].append(problem)
        parts = []
        for (action, kind), problems in groups.items():
            parts.append(self._summary_part(action, kind, problems))
        if self.annotations_of_dropped_images:
            parts.append(f"dropped {self.annotations_of_dropped_images} annotation(s) "
                         "with their images")
        if not parts:
            return (f"{self.annotation_file}: no problems ({self.num_images} images, "
                    f"{self.num_annotations} annotations).")
        return f"{self.annotation_file}: " + "; ".join(parts) + "."

    @staticmethod
    def _summary_part(action: str, kind: str, problems: list[Problem]) -> str:
        described = KINDS.get(kind, _Kind(kind, kind, "annotation"))
        if action == "fatal":
            return f"FATAL {described.plural}"
        noun = described.singular if len(problems) == 1 else described.plural
        ids: list[Any] = []
        label = described.label
        if described.listed == "value":
            ids = [p.value for p in problems]
        elif described.listed == "annotation":
            ids, label = [p.annotation_id for p in problems], "annotation ids"
        elif described.listed == "image":
            ids, label = [p.image_id for p in problems], "image ids"
        if len(set(ids)) == 1:
            label = label.removesuffix("s")  # "image id 3", "ids" -> "id"
        listed = f" ({label} {_listing(ids)})" if ids else ""
        return f"{action} {len(problems)} {noun}{listed}"

    def to_text(self) -> str:
        """The full human report: counts, labels per category and task, box sizes, problems."""
        lines = [f"== {self.annotation_file} ==",
                 f"images: {self.num_images}    annotations: {self.num_annotations}",
                 "annotations per category:"]
        width = max((len(name) for name in self.annotations_per_category), default=0)
        lines += [f"  {name:<{width}}  {count}"
                  for name, count in self.annotations_per_category.items()]
        if self.image_labels:
            lines.append(f"image labels: {self.image_labels}")
        if self.empty_categories:
            lines.append(f"categories with no annotation: {len(self.empty_categories)} "
                         f"({_listing(self.empty_categories)})")
        lines.append(f"crowd regions (iscrowd=1, ignored in masks, crowd for mAP): "
                     f"{self.crowd_regions}")
        lines.append("tasks with labels (what fit can train from this file): "
                     + (", ".join(self.tasks_with_labels) or "none"))
        lines.append("images usable per task:")
        lines += [f"  {task:<{max(map(len, self.task_coverage))}}  {count} / {self.num_images}"
                  for task, count in self.task_coverage.items()]
        sides = self.box_sides
        if "median" in sides:
            lines.append("box side sqrt(w*h) in pixels: " + "  ".join(
                f"{key} {sides[key]:.1f}" for key in ("min", "p10", "median", "p90", "max")))
        lines.append("boxes by COCO size: " + "  ".join(
            f"{key} {int(sides.get(key, 0))}" for key in ("small", "medium", "large")))
        if self.annotations_of_dropped_images:
            lines.append(f"annotations dropped with their images: "
                         f"{self.annotations_of_dropped_images}")
        lines.append(f"problems: {len(self.problems) or 'none'}"
                     + (f" ({len(self.fatal)} fatal)" if self.fatal else ""))
        lines += [f"  [{p.action}] {p.kind}: {p.message}" for p in self.problems]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Structure: the keys without which nothing else can be checked (always fatal).
# ---------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def check_structure(document: Any, name: str) -> None:
    """Raise ``DataError`` naming the key and entry when a required key is missing or wrong.

    Required: ``images`` and ``categories`` lists; per image ``id`` (integer) and
    ``file_name``; per category ``id`` (integer) and ``name``; per annotation ``id``,
    ``image_id``, ``category_id`` (integers) and ``bbox`` or ``segmentation``. ``annotations``
    may be absent (an image-label-only file).
    """
    if not isinstance(document, dict):
        raise DataError(f"{name}: the top level is not a JSON object; a COCO file is an object "
                        "with 'images', 'categories' and 'annotations' lists.")
    for key in ("images", "categories"):
        if not isinstance(document.get(key), list):
            state = "is missing" if key not in document else "is not a list"
            raise DataError(f"{name}: the '{key}' key {state}; a COCO file needs 'images' and "
                            "'categories' lists.")
    if not isinstance(document.get("annotations", []), list):
        raise DataError(f"{name}: 'annotations' is not a list; make it a list of objects.")
    sections = (("images", ("id", "file_name"), ("id",)),
                ("categories", ("id", "name"), ("id",)),
                ("annotations", ("id", "image_id", "category_id"),
                 ("id", "image_id", "category_id")))
    for section, required, integers in sections:
        for index, entry in enumerate(document.get(section, [])):
            where = f"{name}: {section}[{index}]"
            if not isinstance(entry, dict):
                raise DataError(f"{where} is not a JSON object; every entry of '{section}' "
                                "must be one.")
            if _is_int(entry.get("id")):
                where += f" (id {entry['id']})"
            for key in required:
                if key not in entry:
                    raise DataError(f"{where} has no '{key}'; every entry of '{section}' needs "
                                    f"{', '.join(repr(k) for k in required)}.")
            for key in integers:
                if not _is_int(entry[key]):
                    raise DataError(f"{where} has '{key}' = {entry[key]!r}, which is not an "
                                    "integer; COCO ids must be integers.")
            if section == "annotations" and "bbox" not in entry and "segmentation" not in entry:
                raise DataError(f"{where} has neither 'bbox' nor 'segmentation'; give it a box "
                                "or a mask, or delete it.")


def load_coco_json(path: str | Path) -> dict:
    """Read a COCO JSON file; malformed JSON or missing required keys raise ``DataError``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file '{path}' does not exist; check the path.")
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: malformed JSON at line {error.lineno}, column {error.colno} "
                        f"({error.msg}); fix the file (python -m json.tool shows where).") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save the annotation file as UTF-8 "
                        "JSON.") from None
    check_structure(document, str(path))
    return document


# ---------------------------------------------------------------------------------------------
# Cleaning: one pass over images (one header read each), one pass over annotations.
# ---------------------------------------------------------------------------------------------


def _copy_entry(entry: dict, skip: tuple[str, ...] = ()) -> dict:
    """A deep copy of a JSON object, without the keys in ``skip`` (rebuilt by the caller)."""
    return {key: value if isinstance(value, (str, int, float, type(None)))
            else copy.deepcopy(value) for key, value in entry.items() if key not in skip}


def _all_numbers(values: list) -> bool:
    """Every value a finite int/float (not bool); C-speed, as polygons hold most of a file."""
    return set(map(type, values)) <= {int, float} and math.isfinite(math.fsum(values))


def _no_mask(segmentation: Any) -> bool:
    """Whether an annotation gives no mask at all (a box-only annotation, not a problem)."""
    return segmentation is None or (isinstance(segmentation, (list, dict)) and not segmentation)


def _declared_size(image: dict) -> tuple[int, int] | None:
    """(height, width) from ``images[]`` when both are positive whole numbers."""
    height, width = image.get("height"), image.get("width")
    if all(_is_number(v) and v > 0 and float(v).is_integer() for v in (height, width)):
        return int(height), int(width)
    return None


def _known_tasks() -> tuple[str, ...]:
    """The tasks a COCO file can label: its own three and the dense-map tasks."""
    return (*COCO_TASK_NAMES, *dense_map_types())


class _Cleaner:
    """Holds the options and the growing problem list while one document is cleaned."""

    def __init__(self, name: str, image_root: Path, check_images: bool, max_pixels: int,
                 decode_images: bool = False, allow_outside_images: bool = False) -> None:
        self.name = name
        self.image_root = image_root
        self.check_images = check_images
        self.max_pixels = max_pixels
        self.decode_images = decode_images
        self.allow_outside_images = allow_outside_images
        self.problems: list[Problem] = []

    def add(self, kind: str, action: str, message: str, image_id: int | None = None,
            annotation_id: int | None = None, value: Any = None) -> None:
        self.problems.append(Problem(kind, action, f"{self.name}: {message}", image_id,
                                     annotation_id, value))

    # -- categories ---------------------------------------------------------------------------

    def categories(self, categories: list[dict]) -> dict[int, str]:
        """Category id -> name; duplicate ids or names are fatal."""
        ids = Counter(c["id"] for c in categories)
        names = Counter(str(c["name"]) for c in categories)
        duplicate_ids = [i for i, n in ids.items() if n > 1]
        duplicate_names = [n for n, k in names.items() if k > 1]
        if duplicate_ids:
            self.add("duplicate_category", "fatal",
                     f"duplicate category ids {_listing(duplicate_ids)}; give every category a "
                     "unique id.")
        if duplicate_names:
            self.add("duplicate_category", "fatal",
                     f"duplicate category names {_listing(repr(n) for n in duplicate_names)}; "
                     "merge them into one category or rename them.")
        return {c["id"]: str(c["name"]) for c in sorted(categories, key=lambda c: c["id"])}

    # -- images -------------------------------------------------------------------------------

    def images(self, images: list[dict], annotation_count: Counter) -> dict[int, dict]:
        """Image id -> cleaned image entry, in file order; drops images whose file is bad."""
        kept: dict[int, dict] = {}
        seen: set[int] = set()
        duplicates: list[int] = []
        unknown_tasks: dict[str, list[int]] = defaultdict(list)
        known = set(_known_tasks())
        for image in images:
            image_id = image["id"]
            if image_id in seen:
                duplicates.append(image_id)
                continue
            seen.add(image_id)
            tasks = image.get("labelled_tasks")
            if tasks is not None:
                names = tasks if isinstance(tasks, list) else [tasks]
                for task in names:
                    if task not in known:
                        unknown_tasks[str(task)].append(image_id)
            entry = self._image(image, annotation_count[image_id])
            if entry is not None:
                kept[image_id] = entry
        if duplicates:
            self.add("duplicate_image_id", "fatal",
                     f"duplicate image ids {_listing(duplicates)}; give every image a unique "
                     "id (annotations refer to images by id).", image_id=duplicates[0])
        for task, image_ids in unknown_tasks.items():
            self.add("unknown_task", "fatal",
                     f"images {_listing(image_ids)} list the unknown task '{task}' in "
                     f"labelled_tasks; use only {', '.join(sorted(known))}.",
                     image_id=image_ids[0], value=task)
        return kept

    def _image(self, image: dict, num_annotations: int) -> dict | None:
        """The cleaned image entry, or ``None`` (with a problem) when it must be dropped."""
        image_id, file_name = image["id"], str(image["file_name"])
        what = f"image {image_id} ('{file_name}')"
        with_annotations = f" and its {num_annotations} annotation(s)" if num_annotations else ""

        def drop(kind: str, text: str) -> None:
            self.add(kind, "dropped", f"{what} {text}; dropped it{with_annotations}.",
                     image_id=image_id)

        try:  # always, even without check_images: reads must stay in the images folder
            path = image_path(self.image_root, file_name, self.allow_outside_images)
        except ImageOutsideFolderError:
            drop("image_outside_folder",
                 f"resolves to '{Path(self.image_root, file_name).resolve()}', outside the "
                 f"images folder '{self.image_root.resolve()}' (set allow_outside_images true "
                 "if reading it there is intended)")
            return None
        declared = _declared_size(image)
        real: tuple[int, int] | None = None
        if self.check_images or self.decode_images or declared is None:
            if not path.is_file():
                drop("missing_image", f"has no file at '{path}'")
                return None
            try:  # the one header read; failing it is what images.looks_like_image tests
                real = read_image_size(path)
            except (OSError, ValueError):
                drop("not_an_image", f"is not an image file PIL can read ('{path}': wrong "
                     "extension, corrupt header or not an image)")
                return None
        entry = _copy_entry(image)
        if declared is None:
            assert real is not None
            entry["height"], entry["width"] = real
            self.add("size_filled", "repaired",
                     f"{what} has no valid width/height; set them from the file to "
                     f"{real[1]}x{real[0]} (width x height).", image_id=image_id)
        elif real is not None and real != declared:
            size = f"{real[1]}x{real[0]}"
            listed = f"{declared[1]}x{declared[0]}"
            if real == declared[::-1]:
                drop("size_rotated",
                     f"is {size} (width x height) as displayed, after its EXIF rotation, but "
                     f"images[] says {listed}; annotations must match the image as displayed, "
                     "so fix width/height (and the annotations) or save the image upright")
            else:
                drop("size_mismatch",
                     f"is {size} (width x height) but images[] says {listed}; annotations "
                     "must match the image as displayed, so fix width/height or the image")
            return None
        height, width = entry["height"], entry["width"]
        if height * width > self.max_pixels:
            drop("image_too_large",
                 f"has {height * width} pixels, over the limit of {self.max_pixels}; resize it "
                 "or raise max_image_pixels")
            return None
        if self.decode_images:  # every pixel, as training will: a truncated body shows here
            try:
                load_rgb(path, self.max_pixels)
            except ImageDecodeError as error:
                cause = str(error.__cause__ or error).strip().splitlines() or [""]
                drop("undecodable_image", f"has a readable header but its pixels do not decode "
                     f"({cause[-1].rstrip('.')[:160]}): the file '{path}' is truncated or "
                     "corrupt, replace it")
                return None
        return entry

    # -- annotations --------------------------------------------------------------------------

    def annotations(self, annotations: list[dict], images: dict[int, dict],
                    categories: dict[int, str], all_image_ids: set[int]) -> list[dict]:
        """The kept, cleaned annotations (renumbered where ids repeat)."""
        kept: list[dict] = []
        used_ids: set[int] = set()
        next_id = max((a["id"] for a in annotations), default=0) + 1
        for annotation in annotations:
            annotation_id, image_id = annotation["id"], annotation["image_id"]
            image = images.get(image_id)
            if image is None:
                if image_id not in all_image_ids:
                    self.add("unknown_image", "dropped",
                             f"annotation {annotation_id} refers to image {image_id}, which is "
                             "not in images; dropped it.", image_id=image_id,
                             annotation_id=annotation_id, value=image_id)
                continue  # otherwise its image was dropped, and counted there
            if annotation["category_id"] not in categories:
                self.add("unknown_category", "dropped",
                         f"annotation {annotation_id} (image {image_id}) has category_id "
                         f"{annotation['category_id']}, which is not in categories; dropped it.",
                         image_id=image_id, annotation_id=annotation_id,
                         value=annotation["category_id"])
                continue
            cleaned = self._annotation(annotation, image["height"], image["width"])
            if cleaned is None:
                continue
            if annotation_id in used_ids:
                cleaned["id"] = next_id
                self.add("duplicate_annotation_id", "repaired",
                         f"annotation id {annotation_id} (image {image_id}) is used more than "
                         f"once; renumbered this one to {next_id}.", image_id=image_id,
                         annotation_id=annotation_id, value=annotation_id)
                next_id += 1
            used_ids.add(cleaned["id"])
            kept.append(cleaned)
        return kept

    def _annotation(self, annotation: dict, height: int, width: int) -> dict | None:
        """One annotation with its mask and box cleaned, or ``None`` when it is dropped."""
        annotation_id, image_id = annotation["id"], annotation["image_id"]
        what = f"annotation {annotation_id} (image {image_id})"

        def report(kind: str, action: str, text: str) -> None:
            self.add(kind, action, f"{what} {text}.", image_id=image_id,
                     annotation_id=annotation_id)

        cleaned = _copy_entry(annotation, skip=("segmentation", "bbox", "mask_missing"))
        cleaned.setdefault("iscrowd", 0)
        given = annotation.get("segmentation")
        segmentation = self._segmentation(given, height, width, report)
        if segmentation is not None:
            cleaned["segmentation"] = segmentation
        elif not _no_mask(given):  # a mask was given but is unusable: its box becomes ignore
            cleaned["mask_missing"] = True

        box = annotation.get("bbox")
        if box is None or box == []:
            if segmentation is None:
                report("missing_bbox", "dropped", "has no bbox and no usable mask; dropped it")
                return None
            box = self._box_from_mask(segmentation, height, width)
            if box is None:
                report("empty_mask", "dropped", "has no bbox and an empty mask; dropped it")
                return None
            report("bbox_from_mask", "repaired", "has no bbox; computed it from the mask")
        elif not (isinstance(box, list) and len(box) == 4 and _all_numbers(box)):
            report("bad_bbox", "dropped",
                   f"has bbox {box!r}, not four numbers [x, y, width, height]; dropped it")
            return None
        elif box[2] <= 0 or box[3] <= 0:
            from_mask = (self._box_from_mask(segmentation, height, width)
                         if segmentation is not None else None)
            if from_mask is None:
                report("degenerate_box", "dropped",
                       f"has bbox {box} with zero or negative width/height and no usable mask; "
                       "dropped it")
                return None
            report("degenerate_box", "repaired",
                   f"has bbox {box} with zero or negative width/height; recomputed it from the "
                   "mask")
            box = from_mask
        clipped = self._clip(box, height, width)
        if clipped is None:
            report("box_outside_image", "dropped",
                   f"has bbox {box} wholly outside the {width}x{height} image; dropped it")
            return None
        x, y, w, h = box
        if (x < -CLIP_TOLERANCE or y < -CLIP_TOLERANCE or x + w > width + CLIP_TOLERANCE
                or y + h > height + CLIP_TOLERANCE):
            report("box_partly_outside", "repaired",
                   f"has bbox {box} partly outside the {width}x{height} image; clipped it to "
                   f"{[round(v, 2) for v in clipped]}")
        cleaned["bbox"] = clipped
        return cleaned

    def _segmentation(self, segmentation: Any, height: int, width: int, report: Any) -> Any:
        """A cleaned copy of the mask, or ``None`` when there is none or it is unusable."""
        if _no_mask(segmentation):
            return None  # box-only annotation: not a problem
        if isinstance(segmentation, list):
            return self._polygons(segmentation, height, width, report)
        if isinstance(segmentation, dict):
            problem = masks.rle_problem(segmentation, height, width)
            if problem is None:
                return copy.deepcopy(segmentation)
            if problem.kind == "malformed":
                report("bad_segmentation", "repaired",
                       f"has a malformed RLE mask {problem.reason} (needs 'size' [height, "
                       "width] and 'counts'); removed it (its box is ignored in the semantic "
                       "mask)")
            elif problem.kind == "size":
                report("rle_size_mismatch", "repaired",
                       f"has an RLE mask {problem.reason}; removed the mask (its box is ignored "
                       "in the semantic mask)")
            else:
                report("bad_rle", "dropped",
                       f"has an RLE mask {problem.reason}; dropped the mask (its box is "
                       "ignored in the semantic mask)")
            return None
        report("bad_segmentation", "repaired",
               f"has a segmentation of type {type(segmentation).__name__}, neither polygons nor "
               "RLE; removed it (its box is ignored in the semantic mask)")
        return None

    @staticmethod
    def _polygons(segmentation: list, height: int, width: int, report: Any) -> list | None:
        """The usable polygons of a mask (see ``masks``), ``None`` when none is left."""
        usable = [p for p in segmentation if masks.polygon_points_ok(p)]
        malformed = len(segmentation) - len(usable)
        polygons, far = [], []  # far: the farthest coordinate of each far-outside polygon
        for polygon in usable:
            reach = masks.polygon_reach(polygon, height, width)
            if reach is None:
                polygons.append(list(polygon))
            else:
                far.append(reach)
        if far:
            report("polygon_far_outside", "dropped",
                   f"has {len(far)} polygon(s) reaching coordinate {max(far, key=abs):g}, more "
                   f"than {masks.POLYGON_MARGIN} image sizes outside the {width}x{height} "
                   "image (the COCO API would rasterise it for minutes or crash); dropped "
                   + ("them" if polygons else "its mask (its box is ignored in the semantic "
                      "mask)"))
        if not polygons:
            if not far:
                report("no_valid_polygon", "repaired",
                       "has no polygon of 3 or more points; removed its mask (its box is "
                       "ignored in the semantic mask)")
            return None
        if malformed:
            report("bad_polygon", "repaired",
                   f"has {malformed} polygon(s) of fewer than 3 points or with an odd or "
                   "non-numeric coordinate list; removed them")
        return polygons

    @staticmethod
    def _box_from_mask(segmentation: Any, height: int, width: int) -> list[float] | None:
        """The mask's [x, y, w, h] (pycocotools ``toBbox``), ``None`` for an empty mask."""
        return masks.mask_box(segmentation, height, width)

    @staticmethod
    def _clip(box: list[float], height: int, width: int) -> list[float] | None:
        """The box clipped to the image, ``None`` when nothing of it is inside."""
        x, y, w, h = (float(v) for v in box)
        x1, y1 = max(x, 0.0), max(y, 0.0)
        x2, y2 = min(x + w, float(width)), min(y + h, float(height))
        if x2 <= x1 or y2 <= y1:
            return None
        return [x1, y1, x2 - x1, y2 - y1]


# ---------------------------------------------------------------------------------------------
# Statistics of the cleaned document.
# ---------------------------------------------------------------------------------------------


def _task_coverage(images: dict[int, dict], annotations: list[dict],
                   labels: _ImageLabelInfo) -> dict[str, int]:
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


class _ImageLabelInfo(NamedTuple):
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
        shown = _listing(self.classes)
        if self.mode == "derived":
            return (f"derived (multi-label: which of the {len(self.classes)} categories are "
                    "present in the image)")
        if self.mode == "field":
            return f"field '{self.field}', {len(self.classes)} classes ({shown})"
        return "off (no image-label field, and fewer than 2 categories to derive them from)"


def _image_labels(document: dict, images: dict[int, dict], mode: str,
                  field: str | None, cleaner: _Cleaner) -> _ImageLabelInfo:
    """Resolve ``mode`` as the data module does, drop unusable label values (from the
    cleaned ``images``) and report mixed names and numbers as fatal."""
    if field is None:
        return _ImageLabelInfo("off", None, [])
    try:
        resolved = resolve_image_labels(document, mode, field)  # type: ignore[arg-type]
    except DataError as error:
        if document["categories"]:  # without any, 'no_labels' says it with the counts
            cleaner.add("image_labels", "fatal", f"{error}")
        return _ImageLabelInfo("off", field, [])
    names = [str(c["name"]) for c in sorted(document["categories"], key=lambda c: c["id"])]
    if resolved != "field":
        return _ImageLabelInfo(resolved, field, names if resolved == "derived" else [])
    declared = declared_classes(document)
    allowed = (f"a name or index of image_categories ({_listing(declared)})"
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
        return _ImageLabelInfo("field", field, [])
    return _ImageLabelInfo("field", field, classes)


def _tasks_with_labels(annotations: list[dict], labels: _ImageLabelInfo,
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


def _box_sides(annotations: list[dict]) -> dict[str, float]:
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


# ---------------------------------------------------------------------------------------------
# Entry points.
# ---------------------------------------------------------------------------------------------


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
    cleaner = _Cleaner(name, Path(image_root), check_images, max_pixels, decode_images,
                       allow_outside_images)
    categories = cleaner.categories(document["categories"])
    annotations_in = document.get("annotations", [])
    annotation_count = Counter(a["image_id"] for a in annotations_in)
    images = cleaner.images(document["images"], annotation_count)
    all_image_ids = {image["id"] for image in document["images"]}
    annotations = cleaner.annotations(annotations_in, images, categories, all_image_ids)
    labels = _image_labels(document, images, image_labels, image_label_field, cleaner)
    if not images:
        why = Counter(p.kind for p in cleaner.problems if p.action == "dropped"
                      and KINDS.get(p.kind, _Kind("", "", "")).listed == "image")
        reasons = ", ".join(f"{n} {KINDS[k].singular if n == 1 else KINDS[k].plural}"
                            for k, n in why.most_common()) or "see the problems"
        hint = (" (set allow_outside_images true if the images are meant to be read there)"
                if "image_outside_folder" in why else "")
        cleaner.add("no_images", "fatal",
                    f"no trainable images in {name}: "
                    + ("it lists no images" if not document["images"] else
                       f"all {len(document['images'])} images were dropped ({reasons}){hint}")
                    + "; fix the image paths or the file.")
    coverage = _task_coverage(images, annotations, labels)
    why_not = _tasks_with_labels(annotations, labels, coverage)
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
        box_sides=_box_sides(annotations),
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


def _fatal_without_labels(cleaner: _Cleaner, name: str, images: dict[int, dict],
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


__all__ = ["DataError", "DataReport", "DataWarning", "Problem", "check_structure",
           "load_and_validate", "load_coco_json", "validate_coco"]
