"""The keys of a COCO document without which nothing else can be checked (always fatal),
and reading the file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mtl_lightning.shared.errors import DataError


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
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
            if is_int(entry.get("id")):
                where += f" (id {entry['id']})"
            for key in required:
                if key not in entry:
                    raise DataError(f"{where} has no '{key}'; every entry of '{section}' needs "
                                    f"{', '.join(repr(k) for k in required)}.")
            for key in integers:
                if not is_int(entry[key]):
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


__all__ = ["check_structure", "is_int", "is_number", "load_coco_json"]
