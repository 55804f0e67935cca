"""Image-level labels of a COCO file: where they come from, their classes, and bad values.

``image_labels`` says where the classification label of an image comes from:

- ``field``: ``images[i][image_label_field]``, a class name or an index (into
  ``image_categories`` when the file has them, else 0..max); every value of a file must be of
  one kind, names or indices;
- ``derived``: multi-label, the object categories present in the image (needs 2 or more
  categories: with one, "which are present" says nothing);
- ``auto``: ``field`` when any image has the field, else ``derived`` (``off`` with fewer than
  2 categories);
- ``off``: no classification labels.

The data module, the dataset and ``check-data`` all decide through these functions, so what
``check-data`` reports is what ``fit`` trains.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from mtl_lightning.shared.errors import DataError

ImageLabels = Literal["auto", "field", "derived", "off"]
IMAGE_LABEL_MODES = ("auto", "field", "derived", "off")
MAX_UNDECLARED_INDEX = 99_999
"""Largest index label without ``image_categories`` (indices 0..max become the classes, so
one stray 1e9 would otherwise make a billion classes)."""
_LISTED = 5


def _ids(values: list[Any]) -> str:
    shown = ", ".join(str(v) for v in values[:_LISTED])
    return shown if len(values) <= _LISTED else f"{shown}, ... ({len(values)} in all)"


def label_kind(value: Any, image_categories: list[str] | None) -> str | None:
    """``"name"`` or ``"index"`` for a usable label value, ``None`` for an unusable one.

    A name must be one of ``image_categories`` (when given); an index is a whole number
    >= 0, below ``len(image_categories)`` when given, else at most ``MAX_UNDECLARED_INDEX``.
    """
    if isinstance(value, str):
        ok = bool(value) and (image_categories is None or value in image_categories)
        return "name" if ok else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not (math.isfinite(value) and float(value).is_integer() and value >= 0):
        return None
    limit = MAX_UNDECLARED_INDEX + 1 if image_categories is None else len(image_categories)
    return "index" if value < limit else None


def declared_classes(coco: dict[str, Any]) -> list[str] | None:
    """Names of ``image_categories`` in id order, ``None`` when the file has none."""
    if not coco.get("image_categories"):
        return None
    return [str(c["name"]) for c in sorted(coco["image_categories"], key=lambda c: c["id"])]


def unusable_labels(coco: dict[str, Any], field: str) -> list[tuple[int, Any]]:
    """(image id, value) of every present, non-null label that cannot be used."""
    classes = declared_classes(coco)
    return [(image["id"], image[field]) for image in coco["images"]
            if image.get(field) is not None and label_kind(image[field], classes) is None]


def check_label_kinds(coco: dict[str, Any], field: str, source: str = "") -> None:
    """Raise ``DataError`` when the usable labels mix names and indices."""
    classes = declared_classes(coco)
    by_kind: dict[str, list[int]] = {"name": [], "index": []}
    examples: dict[str, Any] = {}
    for image in coco["images"]:
        kind = label_kind(image.get(field), classes) if image.get(field) is not None else None
        if kind is not None:
            by_kind[kind].append(image["id"])
            examples.setdefault(kind, image[field])
    if by_kind["name"] and by_kind["index"]:
        where = f"{source}: " if source else ""
        raise DataError(
            f"{where}'{field}' mixes class names and numbers: image(s) {_ids(by_kind['name'])} "
            f"have names (e.g. {examples['name']!r}), image(s) {_ids(by_kind['index'])} have "
            f"numbers (e.g. {examples['index']!r}); use one kind, all names or all indices "
            "into image_categories.")


def resolve_image_labels(
    coco: dict[str, Any], mode: ImageLabels, image_label_field: str, source: str = ""
) -> ImageLabels:
    """``auto`` -> ``field`` when any image carries the field, else ``derived`` (``off`` when
    there is a single category: "which categories are present" would then be one class).

    A file with no categories and no image-label field has nothing to train on at all:
    ``DataError`` says so, before a model is built for it (``source`` names the file).
    """
    if mode not in IMAGE_LABEL_MODES:
        raise DataError(
            f"image_labels must be auto, field, derived or off, got '{mode}'."
        )
    if mode == "derived" and len(coco["categories"]) < 2:
        raise DataError(
            "image_labels=derived needs at least 2 categories (it labels which are present); "
            "use image_labels=off or field."
        )
    if mode != "auto":
        return mode
    if any(image_label_field in image for image in coco["images"]):
        return "field"
    if not coco["categories"]:
        where = f"{source}: " if source else ""
        raise DataError(
            f"{where}nothing to train on: the file has no categories (so no object labels) and "
            f"no image has an '{image_label_field}' field; fix the file, or name the field "
            "holding the image labels with data.image_label_field.")
    return "derived" if len(coco["categories"]) > 1 else "off"


def image_class_names(
    coco: dict[str, Any], mode: ImageLabels, image_label_field: str, category_names: list[str],
    source: str = "",
) -> list[str]:
    """Names of the image-level classes: ``image_categories``, the names found in the field,
    or (``derived``) the object categories. Unusable values are left out (validation drops
    them); names mixed with numbers raise ``DataError``."""
    if mode == "derived":
        return list(category_names)
    if mode == "off":
        return []
    check_label_kinds(coco, image_label_field, source)
    declared = declared_classes(coco)
    if declared is not None:
        return declared
    values = [image[image_label_field] for image in coco["images"]
              if image.get(image_label_field) is not None
              and label_kind(image[image_label_field], None) is not None]
    if all(isinstance(v, str) for v in values):
        return sorted(set(values))
    return [str(i) for i in range(int(max(values, default=-1)) + 1)]


__all__ = ["IMAGE_LABEL_MODES", "ImageLabels", "check_label_kinds",
           "declared_classes", "image_class_names", "label_kind", "resolve_image_labels",
           "unusable_labels"]
