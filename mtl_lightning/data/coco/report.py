"""What validating an annotation file found: each problem, its kind and action, and the
report that counts them, describes the data and renders a summary or the full text."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from mtl_lightning.shared.errors import DataError

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


class Kind(NamedTuple):
    """How ``DataReport.summary`` counts a kind of problem: nouns and which ids it lists."""

    singular: str
    plural: str
    listed: str  # "annotation", "image", "value" or "" (nothing listed)
    label: str = ""  # what the listed ids are called


KINDS: dict[str, Kind] = {
    "missing_image": Kind("image whose file is missing", "images whose files are missing",
                           "image"),
    "not_an_image": Kind("file that is not an image", "files that are not images", "image"),
    "image_too_large": Kind("image over the pixel limit", "images over the pixel limit",
                             "image"),
    "size_rotated": Kind("image whose width/height are swapped (EXIF rotation)",
                          "images whose width/height are swapped (EXIF rotation)", "image"),
    "size_mismatch": Kind("image whose width/height differ from the file",
                           "images whose width/height differ from the file", "image"),
    "size_filled": Kind("image size read from the file", "image sizes read from the file",
                         "image"),
    "unknown_image": Kind("annotation whose image_id is not in images",
                           "annotations whose image_id is not in images", "value",
                           "image ids"),
    "unknown_category": Kind("annotation with an unknown category id",
                              "annotations with unknown category ids", "value", "ids"),
    "duplicate_annotation_id": Kind("duplicate annotation id (renumbered)",
                                     "duplicate annotation ids (renumbered)", "value", "ids"),
    "bad_bbox": Kind("annotation with a malformed bbox", "annotations with a malformed bbox",
                      "annotation"),
    "missing_bbox": Kind("annotation without a usable bbox or mask",
                          "annotations without a usable bbox or mask", "annotation"),
    "bbox_from_mask": Kind("missing box computed from the mask",
                            "missing boxes computed from the mask", "annotation"),
    "degenerate_box": Kind("box of zero or negative size", "boxes of zero or negative size",
                            "annotation"),
    "empty_mask": Kind("annotation with an empty mask and no box",
                        "annotations with an empty mask and no box", "annotation"),
    "box_partly_outside": Kind("box partly outside the image",
                                "boxes partly outside the image", "annotation"),
    "box_outside_image": Kind("annotation with its box wholly outside the image",
                               "annotations with boxes wholly outside the image", "annotation"),
    "bad_polygon": Kind("annotation with polygons of fewer than 3 points",
                         "annotations with polygons of fewer than 3 points", "annotation"),
    "no_valid_polygon": Kind("mask with no valid polygon (box kept, mask ignored)",
                              "masks with no valid polygon (box kept, mask ignored)",
                              "annotation"),
    "rle_size_mismatch": Kind("RLE mask of the wrong size (box kept, mask ignored)",
                               "RLE masks of the wrong size (box kept, mask ignored)",
                               "annotation"),
    "bad_segmentation": Kind("malformed mask (box kept, mask ignored)",
                              "malformed masks (box kept, mask ignored)", "annotation"),
    "bad_rle": Kind("RLE mask whose counts do not decode to the image (box kept as ignore)",
                     "RLE masks whose counts do not decode to the image (boxes kept as ignore)",
                     "annotation"),
    "polygon_far_outside": Kind("mask with polygons far outside the image",
                                 "masks with polygons far outside the image", "annotation"),
    "image_outside_folder": Kind("image outside the images folder",
                                  "images outside the images folder", "image"),
    "undecodable_image": Kind("image whose pixels do not decode (truncated or corrupt)",
                               "images whose pixels do not decode (truncated or corrupt)",
                               "image"),
    "bad_image_label": Kind("unusable image label (image kept, unlabelled for classification)",
                             "unusable image labels (images kept, unlabelled for "
                             "classification)", "image"),
    "mixed_image_labels": Kind("image labels mixing names and numbers",
                                "image labels mixing names and numbers", ""),
    "image_labels": Kind("unusable image_labels setting", "unusable image_labels setting", ""),
    "no_labels": Kind("nothing to train on", "nothing to train on", ""),
    "task_without_labels": Kind("task without labels", "tasks without labels", ""),
    "duplicate_image_id": Kind("duplicate image ids", "duplicate image ids", ""),
    "duplicate_category": Kind("duplicate category ids or names",
                                "duplicate category ids or names", ""),
    "unknown_task": Kind("unknown task names in labelled_tasks",
                          "unknown task names in labelled_tasks", ""),
    "no_images": Kind("no trainable images", "no trainable images", ""),
}


def listing(values: Iterable[Any]) -> str:
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
        described = KINDS.get(kind, Kind(kind, kind, "annotation"))
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
        listed = f" ({label} {listing(ids)})" if ids else ""
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
                         f"({listing(self.empty_categories)})")
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


__all__ = ["KINDS", "DataReport", "DataWarning", "Kind", "Problem", "listing"]
