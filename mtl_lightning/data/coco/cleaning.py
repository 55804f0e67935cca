"""Cleaning a COCO document: one pass over images (one header read each), one pass over
annotations; every repair or drop is reported as a :class:`Problem`."""

from __future__ import annotations

import copy
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from mtl_lightning.data.coco import masks
from mtl_lightning.data.coco.dense_map_files import dense_map_types
from mtl_lightning.data.coco.report import Problem, listing
from mtl_lightning.data.coco.structure import is_number
from mtl_lightning.data.constants import COCO_TASK_NAMES
from mtl_lightning.data.images import (
    ImageDecodeError,
    ImageOutsideFolderError,
    image_path,
    load_rgb,
    read_image_size,
)

CLIP_TOLERANCE = 0.01  # pixels a box may overshoot the image by before it is reported


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
    if all(is_number(v) and v > 0 and float(v).is_integer() for v in (height, width)):
        return int(height), int(width)
    return None


def _known_tasks() -> tuple[str, ...]:
    """The tasks a COCO file can label: its own three and the dense-map tasks."""
    return (*COCO_TASK_NAMES, *dense_map_types())


class Cleaner:
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
                     f"duplicate category ids {listing(duplicate_ids)}; give every category a "
                     "unique id.")
        if duplicate_names:
            self.add("duplicate_category", "fatal",
                     f"duplicate category names {listing(repr(n) for n in duplicate_names)}; "
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
                     f"duplicate image ids {listing(duplicates)}; give every image a unique "
                     "id (annotations refer to images by id).", image_id=duplicates[0])
        for task, image_ids in unknown_tasks.items():
            self.add("unknown_task", "fatal",
                     f"images {listing(image_ids)} list the unknown task '{task}' in "
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


__all__ = ["Cleaner"]
