"""COCO validation and repair: each rule on a hand-written document with tiny real images."""

from __future__ import annotations

import copy
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from mtl_lightning.data.coco.validation import (
    DataError,
    DataWarning,
    load_and_validate,
    load_coco_json,
    validate_coco,
)

WIDTH, HEIGHT = 40, 30
SQUARE = [5.0, 5.0, 15.0, 5.0, 15.0, 15.0, 5.0, 15.0]  # pycocotools box: [5, 5, 10, 10]


def _write_image(path: Path, width: int = WIDTH, height: int = HEIGHT, **save: object) -> None:
    Image.new("RGB", (width, height), (90, 120, 30)).save(path, **save)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Three 40x30 PNGs: a.png (id 1), b.png (id 2), c.png (id 3)."""
    for name in ("a", "b", "c"):
        _write_image(tmp_path / f"{name}.png")
    return tmp_path


def _document() -> dict:
    """A clean document: 3 images, 2 categories, 3 annotations with boxes and polygons."""
    return {
        "images": [{"id": i, "file_name": f"{n}.png", "width": WIDTH, "height": HEIGHT}
                   for i, n in ((1, "a"), (2, "b"), (3, "c"))],
        "categories": [{"id": 1, "name": "date"}, {"id": 2, "name": "fig"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [5.0, 5.0, 10.0, 10.0],
             "segmentation": [list(SQUARE)], "iscrowd": 0, "area": 100.0},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [20.0, 10.0, 10.0, 8.0],
             "segmentation": [[20, 10, 30, 10, 30, 18, 20, 18]], "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 2, "bbox": [0.0, 0.0, 40.0, 30.0],
             "segmentation": [[0, 0, 40, 0, 40, 30, 0, 30]], "iscrowd": 0},
        ],
    }


def _annotation(document: dict, annotation_id: int) -> dict:
    return next(a for a in document["annotations"] if a["id"] == annotation_id)


def _kinds(report) -> list[tuple[str, str]]:
    return [(p.kind, p.action) for p in report.problems]


def test_clean_document_has_no_problems_and_is_not_mutated(root: Path) -> None:
    document = _document()
    original = copy.deepcopy(document)
    cleaned, report = validate_coco(document, root, "tiny.json")
    assert report.problems == []
    assert (report.num_images, report.num_annotations) == (3, 3)
    assert report.annotations_per_category == {"date": 1, "fig": 2}
    assert document == original
    assert cleaned["annotations"][0]["bbox"] == [5.0, 5.0, 10.0, 10.0]
    cleaned["annotations"][0]["segmentation"][0][0] = -1.0  # a deep copy: input untouched
    assert document["annotations"][0]["segmentation"][0][0] == 5.0
    assert "no problems" in report.summary()


def test_box_partly_outside_is_clipped(root: Path) -> None:
    document = _document()
    _annotation(document, 11)["bbox"] = [30.0, 20.0, 20.0, 20.0]  # to x=50, y=40
    cleaned, report = validate_coco(document, root, "tiny.json")
    assert _kinds(report) == [("box_partly_outside", "repaired")]
    assert _annotation(cleaned, 11)["bbox"] == [30.0, 20.0, 10.0, 10.0]
    assert report.summary().startswith(
        "tiny.json: repaired 1 box partly outside the image (annotation id 11)")


def test_box_wholly_outside_is_dropped(root: Path) -> None:
    document = _document()
    _annotation(document, 11)["bbox"] = [45.0, 5.0, 10.0, 10.0]
    cleaned, report = validate_coco(document, root, "tiny.json")
    assert _kinds(report) == [("box_outside_image", "dropped")]
    assert [a["id"] for a in cleaned["annotations"]] == [10, 12]


def test_degenerate_box_recomputed_from_mask_or_dropped(root: Path) -> None:
    document = _document()
    _annotation(document, 10)["bbox"] = [5.0, 5.0, 0.0, 10.0]  # has a polygon
    _annotation(document, 11)["bbox"] = [5.0, 5.0, 10.0, -3.0]
    del _annotation(document, 11)["segmentation"]  # no mask to recover from
    cleaned, report = validate_coco(document, root, "tiny.json")
    assert _kinds(report) == [("degenerate_box", "repaired"), ("degenerate_box", "dropped")]
    assert _annotation(cleaned, 10)["bbox"] == [5.0, 5.0, 10.0, 10.0]  # pycocotools toBbox
    assert 11 not in {a["id"] for a in cleaned["annotations"]}


@pytest.mark.parametrize("bbox", [["a", 1, 2, 3], [1, 2, 3], "1,2,3,4", [1, 2, float("nan"), 3],
                                  [True, 1, 2, 3]])
def test_malformed_bbox_is_dropped(root: Path, bbox: object) -> None:
    document = _document()
    _annotation(document, 11)["bbox"] = bbox
    _, report = validate_coco(document, root, "tiny.json")
    assert _kinds(report) == [("bad_bbox", "dropped")]
    assert report.num_annotations == 2


def test_missing_bbox_comes_from_polygon_or_rle(root: Path) -> None:
    binary = np.zeros((HEIGHT, WIDTH), dtype=np.uint8, order="F")
    binary[4:10, 2:8] = 1
    rle = mask_utils.encode(binary)
    rle["counts"] = rle["counts"].decode("ascii")  # as JSON stores it
    document = _document()
    del _annotation(document, 10)["bbox"]
    _annotation(document, 11)["bbox"] = None
    _annotation(document, 11)["segmentation"] = rle
    cleaned, report = validate_coco(document, root, "tiny.json")
    assert _kinds(report) == [("bbox_from_mask", "repaired")] * 2
    assert _annotation(cleaned, 10)["bbox"] == [5.0, 5.0, 10.0, 10.0]
    assert _annotation(cleaned, 11)["bbox"] == [2.0, 4.0, 6.0, 6.0]


def test_unknown_category_is_dropped_and_listed(root: Path) -> None:
    document = _document()
    _annotation(document, 10)["category_id"] = 17
    _annotation(document, 11)["category_id"] = 18
    cleaned, report = validate_coco(document, root, "tiny.json")
    assert _kinds(report) == [("unknown_category", "dropped")] * 2
    assert [a["id"] for a in cleaned["annotations"]] == [12]
    assert "dropped 2 annotations with unknown category ids (ids 17, 18)" in report.summary()
    assert "category_id 17" in report.problems[0].message
    assert report.problems[0].annotation_id == 10


def test_duplicate_categories_and_images_are_fatal(root: Path) -> None:
    document = _document()
    document["categories"].append({"id": 1, "name": "date"})
    document["images"].append(dict(document["images"][1]))  # id 2 again
    _, report = validate_coco(document, root, "tiny.json")
    fatal = report.fatal
    assert [p.kind for p in fatal] == ["duplicate_category", "duplicate_category",
                                      "duplicate_image_id"]
    assert "duplicate category ids 1" in fatal[0].message
    assert "duplicate image ids 2;" in fatal[2].message
    assert all(p.message.startswith("tiny.json: ") for p in fatal)


def test_duplicate_annotation_ids_are_renumbered(root: Path) -> None:
    document = _document()
    for annotation in document["annotations"]:
        annotation["id"] = 10
    cleaned, report = validate_coco(document, root, "tiny.json")
    assert _kinds(report) == [("duplicate_annotation_id", "repaired")] * 2
    ids = [a["id"] for a in cleaned["annotations"]]
    assert ids[0] == 10 and len(set(ids)) == 3


def test_annotation_of_unknown_image_is_dropped(root: Path) -> None:
    document = _document()
    _annotation(document, 12)["image_id"] = 99
    _, report = validate_coco(document, root, "tiny.json")
    assert _kinds(report) == [("unknown_image", "dropped")]
    assert "image 99" in report.problems[0].message
    assert report.num_annotations == 2


def test_short_polygons_are_removed_and_mask_marked_missing(root: Path) -> None:
    document = _document()
    _annotation(document, 10)["segmentation"] = [list(SQUARE), [1, 2, 3, 4], [1, 2, 3, 4, 5]]
    _annotation(document, 11)["segmentation"] = [[20, 10, 30, 10], [1, 2, 3, 4, 5, 6, 7]]
    cleaned, report = validate_coco(document, root, "tiny.json")
    assert _kinds(report) == [("bad_polygon", "repaired"), ("no_valid_polygon", "repaired")]
    assert _annotation(cleaned, 10)["segmentation"] == [SQUARE]
    assert "mask_missing" not in _annotation(cleaned, 10)
    kept = _annotation(cleaned, 11)
    assert "segmentation" not in kept and kept["mask_missing"] is True
    assert kept["bbox"] == [20.0, 10.0, 10.0, 8.0]  # the box stays a detection target
    assert report.task_coverage["segmentation"] == 3  # painted ignore: image 1 stays usable


def test_rle_of_wrong_size_is_treated_as_missing_mask(root: Path) -> None:
    rle = mask_utils.encode(np.ones((HEIGHT, WIDTH + 1), dtype=np.uint8, order="F"))
    rle["counts"] = rle["counts"].decode("ascii")
    document = _document()
    _annotation(document, 12)["segmentation"] = rle
    cleaned, report = validate_coco(document, root, "tiny.json")
    assert _kinds(report) == [("rle_size_mismatch", "repaired")]
    assert _annotation(cleaned, 12)["mask_missing"] is True
    assert "segmentation" not in _annotation(cleaned, 12)


def test_bad_image_files_drop_the_image_and_its_annotations(root: Path) -> None:
    (root / "a.png").unlink()  # image 1: missing (2 annotations)
    (root / "b.png").write_text("<html>not found</html>")  # image 2: not an image
    document = _document()
    document["images"].append({"id": 4, "file_name": "big.png", "width": 80, "height": 60})
    _write_image(root / "big.png", 80, 60)
    cleaned, report = validate_coco(document, root, "tiny.json", max_pixels=WIDTH * HEIGHT)
    assert _kinds(report) == [("missing_image", "dropped"), ("not_an_image", "dropped"),
                              ("image_too_large", "dropped")]
    assert [i["id"] for i in cleaned["images"]] == [3]
    assert cleaned["annotations"] == []
    assert report.annotations_of_dropped_images == 3
    assert "and its 2 annotation(s)" in report.problems[0].message
    assert "dropped 3 annotation(s) with their images" in report.summary()


def test_check_images_false_skips_file_checks(root: Path) -> None:
    (root / "a.png").unlink()
    _, report = validate_coco(_document(), root, "tiny.json", check_images=False)
    assert report.problems == [] and report.num_images == 3


def test_exif_rotated_and_wrong_sizes_drop_the_image(root: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40x30, displayed 30x40 (rotate 90 degrees)
    _write_image(root / "a.jpg", exif=exif.tobytes())
    document = _document()
    document["images"][0]["file_name"] = "a.jpg"
    document["images"][1]["width"] = 41
    cleaned, report = validate_coco(document, root, "tiny.json")
    assert _kinds(report) == [("size_rotated", "dropped"), ("size_mismatch", "dropped")]
    assert "30x40 (width x height) as displayed" in report.problems[0].message
    assert "images[] says 40x30" in report.problems[0].message
    assert "must match the image as displayed" in report.problems[1].message
    assert [i["id"] for i in cleaned["images"]] == [3]


def test_missing_size_is_filled_from_the_file(root: Path) -> None:
    document = _document()
    del document["images"][0]["width"], document["images"][0]["height"]
    cleaned, report = validate_coco(document, root, "tiny.json", check_images=False)
    assert _kinds(report) == [("size_filled", "repaired")]
    assert (cleaned["images"][0]["height"], cleaned["images"][0]["width"]) == (HEIGHT, WIDTH)


def test_iscrowd_defaults_to_zero_silently(root: Path) -> None:
    document = _document()
    del _annotation(document, 10)["iscrowd"]
    cleaned, report = validate_coco(document, root, "tiny.json")
    assert report.problems == []
    assert _annotation(cleaned, 10)["iscrowd"] == 0


def test_unknown_labelled_task_is_fatal(root: Path) -> None:
    document = _document()
    document["images"][0]["labelled_tasks"] = ["detection", "keypoints"]
    _, report = validate_coco(document, root, "tiny.json")
    assert [p.kind for p in report.fatal] == ["unknown_task"]
    assert "'keypoints'" in report.fatal[0].message


def test_no_images_left_is_fatal(root: Path) -> None:
    for name in ("a", "b", "c"):
        (root / f"{name}.png").unlink()
    _, report = validate_coco(_document(), root, "tiny.json")
    assert report.fatal[-1].kind == "no_images"
    assert "no trainable images in tiny.json" in report.fatal[-1].message


def test_statistics_of_the_cleaned_document(root: Path) -> None:
    document = _document()
    document["images"][0]["image_label"] = 1
    document["images"][1]["labelled_tasks"] = ["detection"]
    del _annotation(document, 11)["segmentation"]  # box-only: image 1 not segmentation-usable
    cleaned, report = validate_coco(document, root, "tiny.json")
    assert report.problems == []
    assert "mask_missing" not in _annotation(cleaned, 11)  # no mask is not an unusable mask
    assert report.task_coverage == {
        "classification": 1, "segmentation": 1, "detection": 3,
        "labelled_tasks:classification": 0, "labelled_tasks:segmentation": 0,
        "labelled_tasks:detection": 1,
    }
    sides = report.box_sides  # sqrt(area): 10, sqrt(80) ~ 8.94, sqrt(1200) ~ 34.64
    assert sides["min"] == pytest.approx(80**0.5) and sides["median"] == pytest.approx(10.0)
    assert (sides["small"], sides["medium"], sides["large"]) == (2, 1, 0)
    text = report.to_text()
    assert "date  1" in text and "problems: none" in text
    assert re.search(r"\n  detection +3 / 3\n", text)


def test_to_text_lists_every_problem(root: Path) -> None:
    document = _document()
    _annotation(document, 10)["category_id"] = 17
    _annotation(document, 11)["bbox"] = [30.0, 20.0, 20.0, 20.0]
    _, report = validate_coco(document, root, "tiny.json")
    text = report.to_text()
    assert "problems: 2" in text
    assert all(problem.message in text for problem in report.problems)


def test_load_coco_json_reports_malformed_json_and_missing_keys(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "images": [],\n  "categories": [,]\n}')
    with pytest.raises(DataError, match=r"broken.json: malformed JSON at line 3, column"):
        load_coco_json(broken)
    no_file_name = tmp_path / "no_file_name.json"
    no_file_name.write_text(json.dumps({"images": [{"id": 7}], "categories": []}))
    with pytest.raises(DataError, match=r"images\[0\] \(id 7\) has no 'file_name'"):
        load_coco_json(no_file_name)
    no_images = tmp_path / "no_images.json"
    no_images.write_text(json.dumps({"categories": []}))
    with pytest.raises(DataError, match="'images' key is missing"):
        load_coco_json(no_images)
    shapeless = _document()
    del shapeless["annotations"][2]["bbox"], shapeless["annotations"][2]["segmentation"]
    (tmp_path / "shapeless.json").write_text(json.dumps(shapeless))
    with pytest.raises(DataError, match=r"annotations\[2\] \(id 12\) has neither 'bbox'"):
        load_coco_json(tmp_path / "shapeless.json")


def test_load_and_validate_raises_fatal_and_warns_once(root: Path) -> None:
    document = _document()
    _annotation(document, 11)["bbox"] = [30.0, 20.0, 20.0, 20.0]
    (root / "tiny.json").write_text(json.dumps(document))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cleaned = load_and_validate(root / "tiny.json", root)
    data_warnings = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(data_warnings) == 1 and "repaired 1 box" in str(data_warnings[0].message)
    assert len(cleaned["annotations"]) == 3
    document["images"].append(dict(document["images"][0]))
    (root / "tiny.json").write_text(json.dumps(document))
    with pytest.raises(DataError, match="duplicate image ids 1;"):
        load_and_validate(root / "tiny.json", root)


@pytest.mark.parametrize("value", [True, -1, 2.5, [1], {"name": "x"}, "", 10**9])
def test_unusable_image_labels_are_dropped_and_named(root: Path, value: object) -> None:
    document = _document()
    for image, label in zip(document["images"], ("date", "fig", value)):
        image["image_label"] = label
    cleaned, report = validate_coco(document, root, "tiny.json")
    assert _kinds(report) == [("bad_image_label", "dropped")]
    assert report.problems[0].image_id == 3
    assert f"image 3 has image_label = {value!r}, which is not a class name" in \
        report.problems[0].message
    assert "dropped 1 unusable image label" in report.summary()
    assert "image_label" not in cleaned["images"][2] and report.num_images == 3
    assert report.task_coverage["classification"] == 2
    assert "field 'image_label', 2 classes (date, fig)" in report.to_text()


def test_image_label_names_must_be_declared_image_categories(root: Path) -> None:
    document = _document()
    document["image_categories"] = [{"id": 1, "name": "indoor"}, {"id": 2, "name": "outdoor"}]
    for image, label in zip(document["images"], ("indoor", 1, "beach")):
        image["image_label"] = label
    _, report = validate_coco(document, root, "tiny.json")
    assert ("mixed_image_labels", "fatal") in _kinds(report)  # names and numbers
    assert ("bad_image_label", "dropped") in _kinds(report)  # 'beach' is not declared


def test_outside_paths_are_dropped_even_without_image_checks(root: Path) -> None:
    document = _document()
    document["images"][1]["file_name"] = "sub/../b.png"  # a '..' that stays inside is fine
    document["images"][2]["file_name"] = "../elsewhere/c.png"
    cleaned, report = validate_coco(document, root, "tiny.json", check_images=False)
    assert _kinds(report) == [("image_outside_folder", "dropped")]
    assert [image["id"] for image in cleaned["images"]] == [1, 2]
    _, allowed = validate_coco(document, root, "tiny.json", check_images=False,
                               allow_outside_images=True)
    assert allowed.problems == []
    for image in document["images"]:  # every image elsewhere (a store of symlinks, say)
        image["file_name"] = f"../elsewhere/{image['file_name']}"
    _, report = validate_coco(document, root, "tiny.json", check_images=False)
    assert "all 3 images were dropped (3 images outside the images folder) (set " \
           "allow_outside_images true" in report.fatal[0].message


def test_decoding_finds_a_truncated_body_that_the_header_hides(root: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "c.jpg", quality=95)  # a body much longer than its header
    data = (root / "c.jpg").read_bytes()
    (root / "c.jpg").write_bytes(data[: len(data) // 2])
    document = _document()
    document["images"][2]["file_name"] = "c.jpg"
    _, headers_only = validate_coco(document, root, "tiny.json")
    assert headers_only.problems == []
    _, decoded = validate_coco(document, root, "tiny.json", decode_images=True)
    assert _kinds(decoded) == [("undecodable_image", "dropped")]
    assert "image 3 ('c.jpg') has a readable header but its pixels do not decode" in \
        decoded.problems[0].message


def test_a_named_task_without_labels_is_fatal(root: Path) -> None:
    document = _document()
    for annotation in document["annotations"]:
        del annotation["segmentation"]  # boxes only
    _, report = validate_coco(document, root, "tiny.json")
    assert report.fatal == [] and report.tasks_with_labels == ["detection", "classification"]
    _, report = validate_coco(document, root, "tiny.json", tasks=("detection", "segmentation"))
    assert [p.kind for p in report.fatal] == ["task_without_labels"]
    assert "no labels for the 'segmentation' task (no object annotation with a usable mask" in \
        report.fatal[0].message


def test_report_describes_labels_crowds_and_empty_categories(root: Path) -> None:
    document = _document()
    document["categories"].append({"id": 3, "name": "walnut"})
    _annotation(document, 12)["iscrowd"] = 1
    _, report = validate_coco(document, root, "tiny.json")
    assert report.empty_categories == ["walnut"] and report.crowd_regions == 1
    assert report.image_labels.startswith("derived (multi-label")
    assert report.task_coverage["classification"] == 3
    _, report = validate_coco(document, root, "tiny.json", image_labels="off")
    assert report.image_labels.startswith("off") and "classification" not in \
        report.tasks_with_labels
