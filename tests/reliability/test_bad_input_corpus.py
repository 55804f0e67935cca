"""A corpus of bad input: each case is a tiny COCO set with one fault, and its verdict.

Every row of issue 15's table about data (reads outside the images folder, polygons far
outside the image, corrupt RLE masks, truncated images, nothing left to train on, category id
0, mixed image-label types) and issue 20's check-data rows is a :class:`Case`: a function that
writes the set under ``tmp_path`` (real images, written with PIL), the ``check-data``
arguments, the exit code and sentences ``check-data`` must print, and, where training would go
wrong, a check of what training gets (through the dataset or the data module, as ``fit``
builds them).

To add a case: write a ``build`` function returning a :class:`Dataset`, and append a
``Case`` to ``CASES``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from mtl_lightning.check_data import main as check_data
from mtl_lightning.data import CocoDataModule, CocoMultiTaskDataset
from mtl_lightning.data.coco.validation import DataError
from mtl_lightning.tasks import build_task

# The repairs and drops are the point here; their one-line summary warning is expected.
pytestmark = pytest.mark.filterwarnings("ignore::mtl_lightning.data.coco.validation.DataWarning")

WIDTH, HEIGHT = 40, 30
BOX = [5.0, 5.0, 10.0, 10.0]
SQUARE = [5.0, 5.0, 15.0, 5.0, 15.0, 15.0, 5.0, 15.0]


@dataclass
class Dataset:
    """A written set: its annotation file, its images folder, and anything a check needs."""

    annotations: Path
    images: Path
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """One bad input and what it must get.

    Attributes:
        name: the test id.
        build: writes the set under the given folder.
        exit_code: ``check-data``'s exit code.
        says: regular expressions ``check-data``'s output must match.
        options: extra ``check-data`` arguments.
        training: ``(dataset) -> None`` asserting what training gets, or ``None``.
    """

    name: str
    build: Callable[[Path], Dataset]
    exit_code: int
    says: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    training: Callable[[Dataset], None] | None = None


# ---------------------------------------------------------------------------------------------
# Writing sets.
# ---------------------------------------------------------------------------------------------


def _image(path: Path, width: int = WIDTH, height: int = HEIGHT, **save: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **save)


def _write(folder: Path, images: list[dict], annotations: list[dict],
           categories: list[dict] | None = None, **top: Any) -> Dataset:
    """``folder/instances.json`` over ``folder/images``; images default to 40x30."""
    for image in images:
        image.setdefault("width", WIDTH)
        image.setdefault("height", HEIGHT)
    document = {"images": images, "annotations": annotations, **top,
                "categories": [{"id": 1, "name": "nut"}, {"id": 2, "name": "fig"}]
                if categories is None else categories}
    path = folder / "instances.json"
    path.write_text(json.dumps(document))
    return Dataset(path, folder / "images")


def _good(folder: Path, image_id: int = 1, name: str = "good.png") -> dict:
    """A real image inside ``folder/images``; returns its images[] entry."""
    _image(folder / "images" / name)
    return {"id": image_id, "file_name": name}


def _object(annotation_id: int, image_id: int, category_id: int = 1,
            segmentation: Any = None, **more: Any) -> dict:
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id,
            "bbox": list(BOX), "segmentation": [list(SQUARE)] if segmentation is None
            else segmentation, "iscrowd": 0, **more}


def _outside_image(folder: Path) -> Path:
    """A real image outside the images folder (the file a crafted entry reaches for)."""
    secret = folder / "outside" / "secret.png"
    _image(secret)
    return secret


def _outside_absolute(folder: Path) -> Dataset:
    secret = _outside_image(folder)
    return _write(folder, [_good(folder), {"id": 2, "file_name": str(secret)}],
                  [_object(1, 1), _object(2, 2)])


def _outside_dotdot(folder: Path) -> Dataset:
    _outside_image(folder)
    return _write(folder, [_good(folder), {"id": 2, "file_name": "../outside/secret.png"}],
                  [_object(1, 1), _object(2, 2)])


def _outside_symlink(folder: Path) -> Dataset:
    secret = _outside_image(folder)
    images = [_good(folder), {"id": 2, "file_name": "link.png"}]
    (folder / "images" / "link.png").symlink_to(secret)
    return _write(folder, images, [_object(1, 1), _object(2, 2)])


def _far_polygon(folder: Path) -> Dataset:
    far = [5.0, 5.0, 4e8, 5.0, 4e8, 15.0, 5.0, 15.0]
    return _write(folder, [_good(folder)], [_object(7, 1, segmentation=[far])])


def _rle(counts: Any) -> dict:
    return {"size": [HEIGHT, WIDTH], "counts": counts}


def _compressed(mask_rows: slice = slice(5, 15)) -> str:
    binary = np.zeros((HEIGHT, WIDTH), dtype=np.uint8, order="F")
    binary[mask_rows, 5:15] = 1
    return mask_utils.encode(binary)["counts"].decode("ascii")


def _bad_rle(counts: Any) -> Callable[[Path], Dataset]:
    def build(folder: Path) -> Dataset:
        return _write(folder, [_good(folder)],
                      [_object(7, 1, segmentation=_rle(counts)), _object(8, 1, 2)])
    return build


def _truncated_jpeg(folder: Path) -> Dataset:
    _image(folder / "images" / "whole.jpg", quality=90)
    data = (folder / "images" / "whole.jpg").read_bytes()
    (folder / "images" / "cut.jpg").write_bytes(data[: len(data) // 2])  # header intact
    return _write(folder, [{"id": 1, "file_name": "whole.jpg"}, {"id": 2, "file_name": "cut.jpg"}],
                  [_object(1, 1), _object(2, 2)])


def _no_categories(folder: Path) -> Dataset:
    return _write(folder, [_good(folder)], [_object(1, 1), _object(2, 1, 2)], categories=[])


def _category_zero(folder: Path) -> Dataset:
    categories = [{"id": 0, "name": "date"}, {"id": 1, "name": "fig"}, {"id": 2, "name": "nut"}]
    images = [_good(folder), _good(folder, 2, "b.png")]
    return _write(folder, images, [_object(1, 1, 0), _object(2, 2, 1)], categories=categories)


def _mixed_labels(folder: Path) -> Dataset:
    images = [{**_good(folder), "image_label": "fruit"},
              {**_good(folder, 2, "b.png"), "image_label": 7}]
    return _write(folder, images, [_object(1, 1), _object(2, 2)])


def _derived_labels_with_crowd(folder: Path) -> Dataset:
    """Four used categories, three empty ones, a crowd RLE: images of 1, 2 and 4 classes."""
    categories = [{"id": i, "name": f"class{i}"} for i in range(1, 8)]
    images = [_good(folder, i, f"{i}.png") for i in (1, 2, 3)]
    annotations = [_object(1, 1, 1), _object(2, 2, 1), _object(3, 2, 2),
                   *(_object(10 + c, 3, c) for c in (1, 2, 3, 4)),
                   _object(20, 3, 1, segmentation=_rle(_compressed()), iscrowd=1)]
    return _write(folder, images, annotations, categories=categories)


def _single_category_with_field(folder: Path) -> Dataset:
    images = [{**_good(folder, i, f"{i}.png"), "crowded": i % 2} for i in (1, 2)]
    data = _write(folder, images, [_object(1, 1), _object(2, 2, 1)],
                  categories=[{"id": 1, "name": "person"}])
    data.extra["image_label_field"] = "crowded"
    return data


def _boxes_only(folder: Path) -> Dataset:
    return _write(folder, [_good(folder)], [_object(1, 1, segmentation=[])])


# ---------------------------------------------------------------------------------------------
# What training gets.
# ---------------------------------------------------------------------------------------------


def _reads_only_the_images_folder(data: Dataset) -> None:
    dataset = CocoMultiTaskDataset(data.annotations, data.images)
    assert [r.image_id for r in dataset.records] == [1]
    for index in range(len(dataset)):
        assert Path(dataset[index]["meta"]["path"]).resolve().is_relative_to(
            data.images.resolve())


def _reads_outside_when_allowed(data: Dataset) -> None:
    dataset = CocoMultiTaskDataset(data.annotations, data.images, allow_outside_images=True)
    assert [r.image_id for r in dataset.records] == [1, 2]
    assert dataset[1]["image"].shape == (3, HEIGHT, WIDTH)


def _object_box_is_ignored(annotation_id: int) -> Callable[[Dataset], None]:
    """The bad mask is gone: its object's box is ignore (255) in the semantic mask, every
    decode gives the same mask, and the detection target keeps the box."""
    def check(data: Dataset) -> None:
        dataset = CocoMultiTaskDataset(data.annotations, data.images)
        first = dataset[0]["targets"]["segmentation"]
        assert torch.equal(first, dataset[0]["targets"]["segmentation"])
        x, y, w, h = (int(v) for v in BOX)
        assert bool((first[y:y + h, x:x + w] == 255).all())
        assert int((first == 255).sum()) == w * h
        boxes = dataset[0]["targets"]["detection"]["boxes"]
        assert len(boxes) == len(json.loads(data.annotations.read_text())["annotations"])
        assert annotation_id in {a["id"] for a in json.loads(
            data.annotations.read_text())["annotations"]}
    return check


def _training_refuses(*sentences: str) -> Callable[[Dataset], None]:
    def check(data: Dataset) -> None:
        with pytest.raises(DataError) as error:
            CocoMultiTaskDataset(data.annotations, data.images)
        assert all(re.search(s, str(error.value)) for s in sentences), str(error.value)
        assert "\n" not in str(error.value)
    return check


def _background_id_is_its_own(data: Dataset) -> None:
    module = CocoDataModule(annotations=str(data.annotations), images=str(data.images),
                            val_fraction=0.5, num_workers=0, image_size=32)
    info = module.task_info["segmentation"]
    ids = info["category_ids"]
    assert len(set(ids)) == len(ids), ids  # no class shares the background's id
    task = build_task("segmentation", None, dict(info))
    prediction = torch.tensor([[0, 1], [2, 3]])  # background, date (id 0), fig, nut
    written = {entry["name"]: entry["category_id"] for entry in task.prediction_to_json(prediction)}
    assert written["date"] == 0 and written["background"] != 0
    dataset = CocoMultiTaskDataset(data.annotations, data.images)
    mask = dataset[0]["targets"]["segmentation"]  # image 1: its object has category id 0
    assert set(mask.unique().tolist()) == {0, 1}  # background 0, class "date" painted 1


def _fit_refuses(*sentences: str) -> Callable[[Dataset], None]:
    """The data module ``fit`` builds (before any model) stops with one sentence."""
    def check(data: Dataset) -> None:
        with pytest.raises(DataError) as error:
            CocoDataModule(annotations=str(data.annotations), images=str(data.images))
        assert all(re.search(s, str(error.value)) for s in sentences), str(error.value)
        assert "\n" not in str(error.value)
    return check


def _fit_uses_what_check_data_said(mode: str, classes: int) -> Callable[[Dataset], None]:
    def check(data: Dataset) -> None:
        module = CocoDataModule(annotations=str(data.annotations), images=str(data.images),
                                val_fraction=0.34, num_workers=0, image_size=32,
                                **data.extra)
        assert module.image_labels == mode
        assert module.task_info["classification"]["num_classes"] == classes
    return check


# ---------------------------------------------------------------------------------------------
# The corpus.
# ---------------------------------------------------------------------------------------------

OUTSIDE = r"\[dropped\] image_outside_folder: .*image 2 .* outside the images folder"
RLE_DROPPED = r"\[dropped\] bad_rle: .*annotation 7 \(image 1\) has an RLE mask .*"

CASES = [
    Case("file_name_absolute_outside", _outside_absolute, 0, (OUTSIDE,),
         training=_reads_only_the_images_folder),
    Case("file_name_dotdot_outside", _outside_dotdot, 0, (OUTSIDE,),
         training=_reads_only_the_images_folder),
    Case("symlink_in_images_pointing_outside", _outside_symlink, 0, (OUTSIDE,),
         training=_reads_only_the_images_folder),
    Case("outside_allowed_by_option", _outside_absolute, 0, (r"problems: none",),
         options=("--allow_outside_images", "true"), training=_reads_outside_when_allowed),
    Case("polygon_coordinates_4e8", _far_polygon, 0,
         (r"\[dropped\] polygon_far_outside: .*annotation 7 \(image 1\) .*coordinate 4e\+08",),
         training=_object_box_is_ignored(7)),
    Case("compressed_rle_sums_short", _bad_rle(_compressed()[:6]), 0,
         (RLE_DROPPED + r"whose counts sum to \d+, not height\*width = 1200",),
         training=_object_box_is_ignored(7)),
    Case("compressed_rle_overflows", _bad_rle(_compressed() + "k45"), 0,
         (RLE_DROPPED + r"whose compressed 'counts' do not decode",),
         training=_object_box_is_ignored(7)),
    Case("compressed_rle_garbage", _bad_rle("not an RLE!"), 0,
         (RLE_DROPPED + r"outside COCO's RLE alphabet",),
         training=_object_box_is_ignored(7)),
    Case("uncompressed_rle_negative_run", _bad_rle([1300, -100]), 0,
         (RLE_DROPPED + r"negative run lengths",), training=_object_box_is_ignored(7)),
    Case("truncated_jpeg_with_intact_header", _truncated_jpeg, 0,
         (r"\[dropped\] undecodable_image: .*image 2 \('cut.jpg'\) .*truncated",
          r"pixels: every image decoded")),
    Case("every_annotation_dropped_no_categories", _no_categories, 1,
         (r"\[fatal\] no_labels: .*nothing to train on: every one of its 2 annotations was "
          r"dropped .*, it has no categories, and no image has an image label",),
         training=_training_refuses(r"nothing to train on", r"instances\.json")),
    Case("no_categories_fit", _no_categories, 1, (r"nothing to train on",),
         training=_fit_refuses(r"instances\.json: nothing to train on: the file has no "
                               r"categories")),
    Case("category_id_0", _category_zero, 0, (r"date +1",),
         training=_background_id_is_its_own),
    Case("image_labels_of_mixed_types", _mixed_labels, 1,
         (r"\[fatal\] mixed_image_labels: .*image\(s\) 1 have names \(e\.g\. 'fruit'\), "
          r"image\(s\) 2 have numbers \(e\.g\. 7\)",),
         training=_fit_refuses(r"mixes class names and numbers: image\(s\) 1 .*"
                               r"image\(s\) 2 ")),
    Case("derived_labels_crowd_and_empty_categories", _derived_labels_with_crowd, 0,
         (r"image labels: derived \(multi-label",
          r"classification +3 / 3",
          r"categories with no annotation: 3 \(class5, class6, class7\)",
          r"crowd regions .*: 1",
          r"tasks with labels .*: detection, segmentation, classification"),
         training=_fit_uses_what_check_data_said("derived", 7)),
    Case("image_label_field_option", _single_category_with_field, 0,
         (r"image labels: field 'crowded', 2 classes \(0, 1\)", r"classification +2 / 2"),
         options=("--image_label_field", "crowded"),
         training=_fit_uses_what_check_data_said("field", 2)),
    Case("named_task_without_labels", _boxes_only, 1,
         (r"\[fatal\] task_without_labels: .*no labels for the 'segmentation' task",),
         options=("--tasks", "[detection, segmentation]")),
]


def _run_check_data(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    try:
        code = check_data(args)
    except SystemExit as stop:  # a usage error (an option check-data does not know)
        code = int(stop.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_gets_its_verdict(case: Case, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    data = case.build(tmp_path)
    code, output = _run_check_data(["--annotations", str(data.annotations),
                                    "--images", str(data.images), *case.options], capsys)
    assert code == case.exit_code, output
    for sentence in case.says:
        assert re.search(sentence, output), f"{sentence!r} not in:\n{output}"
    assert "Traceback" not in output
    if case.training is not None:
        case.training(data)


def test_a_symlink_swapped_after_validation_is_refused_when_read(tmp_path: Path) -> None:
    """The path is checked again when training reads it, not only when the file is validated."""
    data = _write(tmp_path, [{"id": 1, "file_name": "late.png"}], [_object(1, 1)])
    _image(tmp_path / "images" / "real.png")
    (tmp_path / "images" / "late.png").symlink_to(tmp_path / "images" / "real.png")
    dataset = CocoMultiTaskDataset(data.annotations, data.images)
    (tmp_path / "images" / "late.png").unlink()
    (tmp_path / "images" / "late.png").symlink_to(_outside_image(tmp_path))
    with pytest.raises(ValueError, match=r"outside the images folder .*allow_outside_images"):
        dataset[0]


def test_check_data_reads_the_data_options_of_a_config(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """With --config, check-data uses the data module's image-label options, as fit does."""
    data = _single_category_with_field(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"data": {
        "class_path": "mtl_lightning.data.CocoDataModule",
        "init_args": {"annotations": str(data.annotations), "images": str(data.images),
                      "image_labels": "field", "image_label_field": "crowded"}}}))
    code, output = _run_check_data(["--config", str(config)], capsys)
    assert code == 0, output
    assert "image labels: field 'crowded', 2 classes" in output
