"""``mtl-lightning check-data``: validate COCO annotation files before training on them.

Two ways to name the data::

    mtl-lightning check-data --annotations FILE --images DIR [--max_image_pixels N]
    mtl-lightning check-data --config CONFIG.yaml

With ``--config`` the run config's ``data.init_args`` is read and every
``<split>_annotations`` / ``<split>_images`` pair among train, val and test is checked, and
the single ``annotations`` / ``images`` pair of a file split by fraction (a ``data:`` entry
that is a path to a YAML file is read too, relative to the config first).
A data module without such keys (Scenes, generated) has nothing to check.

It prints the full report of every file (images, annotations per category, the image labels
``fit`` will use, empty categories, crowd regions, the tasks the file has labels for, images
usable per task, box sizes, every problem) and exits 1 when a file has a fatal problem, else
0; the problems training would repair or drop are listed but do not fail the check.

It decides as ``fit`` does: the data module's ``image_labels``, ``image_label_field``,
``allow_outside_images``, ``max_image_pixels`` and ``tasks`` are read from ``--config`` (or
given as options), and a task asked for by name that a file has no labels for is fatal.
Image pixels are decoded, not only their headers, when a file lists at most
``DECODE_AUTO_IMAGES`` images or with ``--decode true``, so a truncated file is reported.
"""

from __future__ import annotations

import sys
from importlib import import_module
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser, Namespace

from mtl_lightning.commands import UsageError, tool_main
from mtl_lightning.data.coco.image_labels import ImageLabels
from mtl_lightning.data.coco.validation import DataError, DataReport, load_coco_json, validate_coco
from mtl_lightning.data.constants import SPLITS
from mtl_lightning.data.images import DEFAULT_MAX_PIXELS

DECODE_AUTO_IMAGES = 1000
"""Files listing at most this many images have every image decoded by default."""
#: data.init_args options check-data reads from a config, with its own option of that name.
DATA_OPTIONS = ("image_labels", "image_label_field", "allow_outside_images", "tasks")


def check_files(
    annotations: str,
    images: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    image_label_field: str | None = "image_label",
    image_labels: ImageLabels = "auto",
    decode: bool | None = None,
    allow_outside_images: bool = False,
    tasks: tuple[str, ...] | None = None,
) -> DataReport:
    """Load and validate one annotation file against its image folder; returns the report.

    ``decode`` ``None`` decodes every image when the file lists at most
    ``DECODE_AUTO_IMAGES``; the other options are those of ``validate_coco``. Raises
    ``DataError`` when the file cannot be read as COCO at all (malformed JSON, missing
    required keys); every other problem is in the report.
    """
    document = load_coco_json(annotations)
    if decode is None:
        decode = len(document["images"]) <= DECODE_AUTO_IMAGES
    _, report = validate_coco(document, images, annotation_file=str(annotations),
                              max_pixels=max_pixels, image_label_field=image_label_field,
                              image_labels=image_labels, decode_images=decode,
                              allow_outside_images=allow_outside_images, tasks=tasks)
    report.pixels_decoded = decode
    return report


def _read_yaml(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DataError(f"{what} '{path}' does not exist; check the path.")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise DataError(f"{path}: malformed YAML{where}; fix the file.") from None


def data_init_args(config: str | Path) -> tuple[str, dict[str, Any]]:
    """``(class_path, init_args)`` of a run config's ``data`` entry (inline or a YAML path).

    A data-group file such as ``configs/data/coco.yaml`` (``class_path`` at the top) works too.
    """
    config = Path(config)
    document = _read_yaml(config, "config file") or {}
    if not isinstance(document, dict):
        return "", {}
    data = document if "class_path" in document and "data" not in document else document.get(
        "data")
    if isinstance(data, str):  # "data: data/coco.yaml", as LightningCLI allows
        path = config.parent / data
        data = _read_yaml(path if path.is_file() else Path(data), f"data config of {config}")
    if not isinstance(data, dict):
        return "", {}
    init_args = data.get("init_args")
    if not isinstance(init_args, dict):  # class_path with its arguments beside it
        init_args = {k: v for k, v in data.items() if k != "class_path"}
    return str(data.get("class_path", "")), init_args


def _pairs_from_config(config: str) -> tuple[str, list[tuple[str, str]], dict[str, Any]]:
    """(class_path, distinct (annotations, images) pairs, init_args) of a run config.

    The pairs are ``annotations``/``images`` (one file split by fraction) and
    ``<split>_annotations``/``<split>_images`` for train, val and test, where present.
    """
    class_path, init_args = data_init_args(config)
    pairs: list[tuple[str, str]] = []
    for prefix in ("", *(f"{split}_" for split in SPLITS)):
        annotations = init_args.get(f"{prefix}annotations")
        if annotations is None:
            continue
        images = init_args.get(f"{prefix}images")
        if images is None:
            raise DataError(f"{config}: data.init_args has {prefix}annotations but no "
                            f"{prefix}images; add the folder its file_name entries are in.")
        if (str(annotations), str(images)) not in pairs:
            pairs.append((str(annotations), str(images)))
    return class_path, pairs, init_args


def check_data_module(config: str, class_path: str, init_args: dict[str, Any]) -> int:
    """A data module that reads no COCO file (a benchmark reader) checks its own files when
    it has a ``check_files()`` method: every bad or missing file is printed, one sentence
    each; returns the exit code."""
    module_name, _, class_name = class_path.rpartition(".")
    try:
        data_class = getattr(import_module(module_name), class_name) if module_name else None
    except (ImportError, AttributeError):
        data_class = None
    if data_class is None or not hasattr(data_class, "check_files"):
        print(f"{config}: the data module ({class_path or 'none given'}) reads no COCO "
              "annotation files; nothing to check.")
        return 0
    try:
        problems = data_class(**init_args).check_files()
    except (DataError, ValueError, FileNotFoundError) as error:
        problems = [str(error)]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    print("check-data: fatal problems found; fix them before training." if problems
          else f"check-data: {class_name} at {init_args.get('root', '?')}: every file read, "
          "no fatal problems.")
    return int(bool(problems))


def parser() -> ArgumentParser:
    """The options of ``mtl-lightning check-data`` (a sub-command of
    :mod:`mtl_lightning.commands`)."""
    parser = ArgumentParser(
        prog="mtl-lightning check-data",
        description="Validate COCO annotation files (and their images) before training: "
        "prints what would be repaired or dropped and exits 1 on fatal problems.",
    )
    parser.add_argument("--annotations", type=str | None, default=None,
                        help="A COCO annotation file.")
    parser.add_argument("--images", type=str | None, default=None,
                        help="The folder its images[].file_name entries are relative to.")
    parser.add_argument("--max_image_pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="Images with more pixels (height * width) are dropped.")
    parser.add_argument("--config", type=str | None, default=None,
                        help="A run config: checks its data.init_args <split>_annotations / "
                        "<split>_images pairs, with its data options.")
    parser.add_argument("--decode", type=bool | None, default=None,
                        help="Decode every image's pixels (true), headers only (false); "
                        f"default: decode when a file lists at most {DECODE_AUTO_IMAGES} "
                        "images.")
    parser.add_argument("--image_labels", type=ImageLabels, default="auto",
                        help="Where image labels come from, as data.image_labels: auto, field, "
                        "derived or off.")
    parser.add_argument("--image_label_field", type=str, default="image_label",
                        help="The images[] field holding the image label (image_labels field).")
    parser.add_argument("--allow_outside_images", type=bool, default=False,
                        help="Keep images whose path resolves outside the images folder.")
    parser.add_argument("--tasks", type=list[str] | None, default=None,
                        help="Tasks the run will train; a file without labels for one is "
                        "fatal. Default: report the tasks each file has labels for.")
    return parser


def run(args: Namespace) -> int:
    """Check the files named by parsed options ``args``; returns the exit code (1 when a file
    has a fatal problem)."""
    if args.config is None and (args.annotations is None or args.images is None):
        raise UsageError("give --annotations FILE and --images DIR, or --config CONFIG.yaml.")
    options: dict[str, Any] = {"max_pixels": args.max_image_pixels, "decode": args.decode,
                               **{key: args[key] for key in DATA_OPTIONS}}
    pairs = [(args.annotations, args.images)]
    if args.config is not None:
        try:
            class_path, pairs, init_args = _pairs_from_config(args.config)
        except DataError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        if not pairs:
            return check_data_module(args.config, class_path, init_args)
        options["max_pixels"] = int(init_args.get("max_image_pixels", args.max_image_pixels))
        options.update({key: init_args[key] for key in DATA_OPTIONS if key in init_args})
    if options["tasks"] is not None:
        options["tasks"] = tuple(options["tasks"])
    failed = False
    for annotation_file, image_root in pairs:
        try:
            report = check_files(annotation_file, image_root, **options)
        except DataError as error:  # the file is not readable COCO: one sentence, no traceback
            print(f"error: {error}", file=sys.stderr)
            failed = True
            continue
        print(report.to_text())
        reason = ("--decode false" if args.decode is False else
                  f"the file lists more than {DECODE_AUTO_IMAGES} images")
        print("pixels: every image decoded" if report.pixels_decoded else
              f"pixels: headers only ({reason}); pass --decode true to decode every image",
              end="\n\n")
        failed |= bool(report.fatal)
    print("check-data: fatal problems found; fix them before training." if failed
          else "check-data: no fatal problems.")
    return int(failed)


def main(argv: list[str] | None = None) -> int:
    """``mtl-lightning check-data`` with ``argv`` (its options); returns the exit code."""
    return tool_main("check-data", argv)


if __name__ == "__main__":
    raise SystemExit(main())
