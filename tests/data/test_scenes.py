"""Tests of the procedural Scenes benchmark (mtl_lightning.data.scenes.generator)."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from mtl_lightning.data.scenes.generator import (
    SHAPE_NAMES,
    SPLITS,
    TASK_NAMES,
    TEXTURE_NAMES,
    ScenesConfig,
    ensure_scenes,
    fingerprint,
    generate_scene,
    generate_split,
)

TINY = ScenesConfig(image_size=64, num_train=20, num_val=5, num_test=5, seed=3)


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _decode(annotation: dict[str, Any]) -> np.ndarray:
    rle = dict(annotation["segmentation"])
    rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool)


def _image(dataset: Path, split: str, record: dict[str, Any]) -> np.ndarray:
    with Image.open(dataset / split / record["file_name"]) as image:
        assert image.mode == "RGB"
        return np.asarray(image)


def _annotations_by_image(doc: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    grouped: dict[int, list[dict[str, Any]]] = {image["id"]: [] for image in doc["images"]}
    for annotation in doc["annotations"]:
        grouped[annotation["image_id"]].append(annotation)
    return grouped


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_scenes(TINY, tmp_path_factory.mktemp("scenes"))


# ----------------------------------------------------------------------------- layout


def test_coco_layout(tiny_dataset: Path) -> None:
    assert tiny_dataset.name == f"scenes-{fingerprint(TINY)}"
    assert (tiny_dataset / "COMPLETE").is_file()
    for split in SPLITS:
        doc = _load(tiny_dataset / f"{split}.json")
        assert set(doc) == {"info", "images", "annotations", "categories", "image_categories"}
        assert doc["info"]["split"] == split
        assert doc["info"]["fingerprint"] == fingerprint(TINY)
        assert ScenesConfig.from_dict(doc["info"]["config"]) == TINY
        assert [c["name"] for c in doc["categories"]] == list(SHAPE_NAMES[:5])
        assert [c["id"] for c in doc["categories"]] == [1, 2, 3, 4, 5]
        assert [c["id"] for c in doc["image_categories"]] == [0, 1, 2, 3, 4]
        assert len(doc["images"]) == TINY.split_size(split)
        assert [a["id"] for a in doc["annotations"]] == list(range(1, len(doc["annotations"]) + 1))
        for index, record in enumerate(doc["images"]):
            assert record["id"] == index + 1
            assert record["file_name"] == f"images/{index:06d}.png"
            assert record["texture"] in TEXTURE_NAMES
            assert record["labelled_tasks"] == list(TASK_NAMES)
            assert _image(tiny_dataset, split, record).shape == (64, 64, 3)


# ----------------------------------------------------------------------------- determinism


def test_same_config_is_byte_identical(tmp_path: Path, tiny_dataset: Path) -> None:
    again = ensure_scenes(TINY, tmp_path)
    assert _tree_bytes(again) == _tree_bytes(tiny_dataset)


def test_parallel_generation_matches_serial(tmp_path: Path, tiny_dataset: Path) -> None:
    parallel = ensure_scenes(TINY, tmp_path, num_workers=2)
    assert _tree_bytes(parallel) == _tree_bytes(tiny_dataset)


def test_different_seed_gives_different_images() -> None:
    other = replace(TINY, seed=4)
    for index in range(3):
        a = generate_scene(TINY, "train", index).image
        b = generate_scene(other, "train", index).image
        assert not np.array_equal(a, b)


def test_images_do_not_depend_on_split_size() -> None:
    bigger = replace(TINY, num_train=50)
    assert np.array_equal(
        generate_scene(TINY, "train", 7).image, generate_scene(bigger, "train", 7).image
    )
    assert not np.array_equal(
        generate_scene(TINY, "train", 0).image, generate_scene(TINY, "val", 0).image
    )


# ----------------------------------------------------------------------------- labels


def test_annotations_match_masks(tiny_dataset: Path) -> None:
    for split in SPLITS:
        doc = _load(tiny_dataset / f"{split}.json")
        for record in doc["images"]:
            annotations = _annotations_by_image(doc)[record["id"]]
            assert TINY.min_objects <= len(annotations) <= TINY.max_objects
            union = np.zeros((64, 64), dtype=np.int64)
            for annotation in annotations:
                mask = _decode(annotation)
                rows, cols = np.nonzero(mask)
                x, y, w, h = annotation["bbox"]
                assert [x, y, x + w, y + h] == [
                    cols.min(),
                    rows.min(),
                    cols.max() + 1,
                    rows.max() + 1,
                ]
                assert annotation["area"] == mask.sum() >= TINY.min_visible_pixels
                assert 1 <= annotation["category_id"] <= TINY.num_classes
                assert annotation["iscrowd"] == 0
                union += mask
            assert union.max() <= 1, "visible masks of one image must be disjoint"
            largest = max(annotations, key=lambda a: a["area"])  # first among ties
            assert record["image_label"] == largest["category_id"] - 1


def test_unrelated_target_is_the_texture(tmp_path: Path) -> None:
    config = replace(TINY, classification_target="unrelated", num_val=0, num_test=0)
    doc = _load(generate_split(config, "train", tmp_path))
    assert [c["name"] for c in doc["image_categories"]] == list(TEXTURE_NAMES)
    for record in doc["images"]:
        assert TEXTURE_NAMES[record["image_label"]] == record["texture"]


def _ring(mask: np.ndarray, width: int = 2) -> np.ndarray:
    grown = mask.copy()
    for _ in range(width):
        padded = np.pad(grown, 1)
        grown = (
            padded[1:-1, 1:-1]
            | padded[:-2, 1:-1]
            | padded[2:, 1:-1]
            | padded[1:-1, :-2]
            | padded[1:-1, 2:]
        )
    return grown & ~mask


def test_objects_are_visible_in_the_pixels(tiny_dataset: Path) -> None:
    doc = _load(tiny_dataset / "train.json")
    grouped = _annotations_by_image(doc)
    distances = []
    for record in doc["images"]:
        image = _image(tiny_dataset, "train", record).astype(np.float64)
        for annotation in grouped[record["id"]]:
            mask = _decode(annotation)
            ring = _ring(mask)
            if ring.sum() < 8:
                continue
            inside = image[mask].mean(axis=0)
            distances.append(np.median(np.linalg.norm(image[ring] - inside, axis=1)))
    assert len(distances) > 20
    assert np.min(distances) > 50.0
    assert np.median(distances) > 100.0


# ----------------------------------------------------------------------------- caching


def test_fingerprint_changes_with_every_knob() -> None:
    changed = {
        "image_size": 96,
        "num_train": 21,
        "num_val": 6,
        "num_test": 6,
        "num_classes": 6,
        "min_objects": 2,
        "max_objects": 7,
        "min_object_size": 9,
        "max_object_size": 20,
        "min_visible_pixels": 17,
        "classification_target": "unrelated",
        "label_noise": 0.1,
        "label_fraction": (("detection", 0.5),),
        "seed": 4,
        "dense": True,
    }
    assert set(changed) == {f.name for f in fields(ScenesConfig)}
    prints = {fingerprint(TINY)} | {
        fingerprint(replace(TINY, **{k: v})) for k, v in changed.items()
    }
    assert len(prints) == len(changed) + 1
    assert all(len(p) == 12 and int(p, 16) >= 0 for p in prints)
    assert fingerprint(replace(TINY, max_object_size=32)) == fingerprint(TINY)  # None -> 32
    dict_form = replace(TINY, label_fraction={"segmentation": 0.5, "detection": 1.0})
    pair_form = replace(TINY, label_fraction=(("segmentation", 0.5),))
    assert fingerprint(dict_form) == fingerprint(pair_form)
    assert hash(dict_form) is not None


def test_ensure_scenes_reuses_complete_dataset(tmp_path: Path) -> None:
    first = ensure_scenes(TINY, tmp_path)
    stamp = (first / "train.json").stat().st_mtime_ns
    assert ensure_scenes(TINY, tmp_path) == first
    assert (first / "train.json").stat().st_mtime_ns == stamp
    other = ensure_scenes(replace(TINY, seed=9), tmp_path)
    assert other != first
    assert (other / "COMPLETE").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])


def test_incomplete_or_temporary_folders_are_not_reused(tmp_path: Path) -> None:
    target = tmp_path / f"scenes-{fingerprint(TINY)}"
    (target / "train").mkdir(parents=True)
    (target / "train.json").write_text("half written", encoding="utf-8")
    leftover = tmp_path / f".{target.name}.tmp-1-deadbeef"
    leftover.mkdir()
    (leftover / "COMPLETE").write_text("stale\n", encoding="utf-8")
    assert ensure_scenes(TINY, tmp_path) == target
    assert (target / "COMPLETE").is_file()
    assert len(_load(target / "train.json")["images"]) == TINY.num_train
    assert leftover.is_dir()  # ignored, not reused nor deleted
    assert not [p for p in tmp_path.iterdir() if p not in (target, leftover)]


# ----------------------------------------------------------------------------- noise, fractions


def test_label_noise_only_on_train(tmp_path: Path) -> None:
    clean = ensure_scenes(TINY, tmp_path)
    noisy = ensure_scenes(replace(TINY, label_noise=0.5), tmp_path)
    clean_train, noisy_train = _load(clean / "train.json"), _load(noisy / "train.json")
    changed = [
        a["category_id"] != b["category_id"]
        for a, b in zip(clean_train["annotations"], noisy_train["annotations"], strict=True)
    ]
    assert 0.2 < np.mean(changed) < 0.8
    labels = [
        a["image_label"] != b["image_label"]
        for a, b in zip(clean_train["images"], noisy_train["images"], strict=True)
    ]
    assert any(labels)
    for a, b in zip(clean_train["annotations"], noisy_train["annotations"], strict=True):
        assert a["bbox"] == b["bbox"] and a["segmentation"] == b["segmentation"]
    assert (clean / "train" / "images").is_dir()
    assert _tree_bytes(clean / "train" / "images") == _tree_bytes(noisy / "train" / "images")
    for split in ("val", "test"):
        assert (
            _load(clean / f"{split}.json")["annotations"]
            == _load(noisy / f"{split}.json")["annotations"]
        )
        assert _load(clean / f"{split}.json")["images"] == _load(noisy / f"{split}.json")["images"]


def test_label_fraction_only_on_train(tmp_path: Path) -> None:
    config = replace(TINY, num_train=60, label_fraction={"segmentation": 0.5})
    train = _load(generate_split(config, "train", tmp_path))
    without = [r for r in train["images"] if "segmentation" not in r["labelled_tasks"]]
    assert 15 <= len(without) <= 45
    for record in train["images"]:
        assert {"classification", "detection"} <= set(record["labelled_tasks"])
        assert record["labelled_tasks"] == sorted(record["labelled_tasks"])
    val = _load(generate_split(config, "val", tmp_path))
    assert all(r["labelled_tasks"] == list(TASK_NAMES) for r in val["images"])


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("image_size", 8),
        ("image_size", 64.0),
        ("num_train", -1),
        ("num_val", 1.5),
        ("num_test", -2),
        ("num_classes", 1),
        ("num_classes", len(SHAPE_NAMES) + 1),
        ("min_objects", 0),
        ("max_objects", 0),
        ("max_objects", 1000),
        ("min_object_size", 2),
        ("min_object_size", 100),
        ("max_object_size", 4),
        ("max_object_size", 65),
        ("min_visible_pixels", 0),
        ("min_visible_pixels", 10_000),
        ("classification_target", "texture"),
        ("label_noise", -0.1),
        ("label_noise", 1.5),
        ("label_noise", "0.1"),
        ("label_fraction", {"depth": 0.5}),
        ("label_fraction", {"segmentation": 2.0}),
        ("label_fraction", (("segmentation", 0.5), ("segmentation", 0.4))),
        ("seed", -1),
        ("seed", True),
    ],
)
def test_invalid_knobs_raise(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        replace(TINY, **{option: value})


def test_invalid_split_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        generate_split(TINY, "training", tmp_path)


# ----------------------------------------------------------------------------- statistics


def test_default_config_statistics(tmp_path: Path) -> None:
    config = ScenesConfig(num_train=50, num_val=0, num_test=0)
    doc = _load(generate_split(config, "train", tmp_path))
    assert len(doc["images"]) == 50
    sides = [max(a["bbox"][2:]) for a in doc["annotations"]]
    assert min(sides) < 16 and max(sides) > 48
    assert len({a["category_id"] for a in doc["annotations"]}) >= 4
    assert len({r["texture"] for r in doc["images"]}) == len(TEXTURE_NAMES)
    overlapping_images = 0
    for image_annotations in _annotations_by_image(doc).values():
        boxes = [(x, y, x + w, y + h) for x, y, w, h in (a["bbox"] for a in image_annotations)]
        if any(
            a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
            for i, a in enumerate(boxes)
            for b in boxes[i + 1 :]
        ):
            overlapping_images += 1
    assert overlapping_images >= 5
    with Image.open(tmp_path / "train" / doc["images"][0]["file_name"]) as image:
        assert image.size == (128, 128) and image.mode == "RGB"
    # every generated object is drawn: the number of objects per image spans the range
    counts = [len(a) for a in _annotations_by_image(doc).values()]
    assert min(counts) <= 2 and max(counts) >= 7
