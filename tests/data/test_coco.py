"""The COCO dataset: masks and boxes agree with pycocotools; odd images are handled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from mtl_lightning.data.coco.dataset import CocoMultiTaskDataset, segmentation_category_ids
from mtl_lightning.data.collate import collate_multitask
from mtl_lightning.data.constants import IGNORE_INDEX
from mtl_lightning.data.transforms import eval_transforms, train_transforms

from ..conftest import FRUITS_NUTS


def test_scenes_split_matches_the_coco_api(tiny_scenes) -> None:
    dataset: CocoMultiTaskDataset = tiny_scenes.datasets["val"]
    coco = COCO(str(dataset.annotation_file))
    for record in dataset.records[:8]:
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=record.image_id))
        assert len(record.boxes) == len(annotations)
        mask = dataset.semantic_mask(record)
        for annotation in annotations:
            instance = coco.annToMask(annotation).astype(bool)
            category = dataset.category_ids.index(annotation["category_id"]) + 1
            assert np.all(mask[instance] == category)
        assert int((mask > 0).sum()) == sum(int(a["area"]) for a in annotations)


def test_sample_layout_and_collation(tiny_scenes) -> None:
    dataset = tiny_scenes.datasets["train"]
    batch = collate_multitask([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["targets"]["segmentation"].shape == (2, 64, 64)
    assert batch["targets"]["classification"].shape == (2,)
    assert isinstance(batch["targets"]["detection"], list)
    assert set(batch["has"]) == {"classification", "segmentation", "detection"}
    assert type(batch["image"]) is torch.Tensor  # tv_tensors unwrapped


def _write_coco(tmp_path: Path, images: list[tuple[str, Image.Image]], annotations: list) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    entries = []
    for i, (name, picture) in enumerate(images, start=1):
        picture.save(root / name)
        entries.append({"id": i, "file_name": name, "width": picture.width,
                        "height": picture.height})
    document = {"images": entries, "annotations": annotations,
                "categories": [{"id": 7, "name": "nut"}, {"id": 3, "name": "fruit"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(document))
    return path


def test_grayscale_rgba_palette_sizes_empty_images_and_crowds(tmp_path: Path) -> None:
    images = [
        ("gray.png", Image.new("L", (40, 30), 100)),
        ("rgba.png", Image.new("RGBA", (50, 20), (1, 2, 3, 4))),
        ("palette.png", Image.new("P", (32, 32), 5)),
    ]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 8], "iscrowd": 0,
         "area": 80, "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [20, 5, 10, 10], "iscrowd": 1,
         "area": 100, "segmentation": [[20, 5, 30, 5, 30, 15, 20, 15]]},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 0,
         "area": 25, "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]]},
    ]
    dataset = CocoMultiTaskDataset(
        _write_coco(tmp_path, images, annotations), tmp_path / "images",
        tasks=("segmentation", "detection"), transforms=eval_transforms(32, ("segmentation",
                                                                            "detection")),
    )
    # Non-contiguous category ids map to contiguous indices in id order: 3 -> 0, 7 -> 1.
    assert dataset.category_names == ["fruit", "nut"]
    samples = [dataset[i] for i in range(3)]
    for sample in samples:
        assert sample["image"].shape == (3, 32, 32)
    gray = samples[0]
    detection = gray["targets"]["detection"]
    # The crowd region rides along for evaluation only (iscrowd), never as a training target.
    assert detection["iscrowd"].tolist() == [False, True]
    assert detection["labels"][~detection["iscrowd"]].tolist() == [1]
    mask = gray["targets"]["segmentation"]
    assert (mask == IGNORE_INDEX).any() and (mask == 2).any()  # crowd ignored, nut painted
    empty = samples[2]  # no annotations: a valid negative with empty boxes
    assert empty["targets"]["detection"]["boxes"].shape == (0, 4)
    assert empty["has"]["detection"] and not (empty["targets"]["segmentation"] > 0).any()
    batch = collate_multitask(samples)
    assert batch["image"].shape == (3, 3, 32, 32)


def test_train_transforms_move_boxes_and_masks_together(tiny_scenes) -> None:
    """After flips/affine jitter every box still encloses exactly its mask pixels' class."""
    dataset = tiny_scenes.datasets["val"]
    transform = train_transforms(64, ("segmentation", "detection"), hflip=1.0,
                                 scale=(0.9, 1.1), translate=0.1, color_jitter=0.0)
    torch.manual_seed(0)
    original, dataset.transforms = dataset.transforms, None
    try:
        for index in range(6):
            sample = transform(dataset[index])
            mask = sample["targets"]["segmentation"]
            for box, label in zip(sample["targets"]["detection"]["boxes"],
                                  sample["targets"]["detection"]["labels"]):
                x0, y0, x1, y1 = box.round().long().tolist()
                inside = mask[max(y0, 0):y1, max(x0, 0):x1]
                assert (inside == label + 1).any()
    finally:
        dataset.transforms = original  # the session's data module is shared


@pytest.mark.skipif(not FRUITS_NUTS.is_dir(), reason="../shared/data/fruits_nuts is absent")
def test_real_photographs_match_the_coco_api() -> None:
    annotations = FRUITS_NUTS / "annotations.json"
    dataset = CocoMultiTaskDataset(
        annotations, FRUITS_NUTS / "images", tasks=("segmentation", "detection")
    )
    coco = COCO(str(annotations))
    assert len(dataset) == len(coco.getImgIds())
    total_boxes = sum(len(dataset[i]["targets"]["detection"]["boxes"]) for i in range(len(dataset)))
    assert total_boxes == len([a for a in coco.loadAnns(coco.getAnnIds()) if not a["iscrowd"]])
    sample = dataset[0]
    record = dataset.records[0]
    union = np.zeros((record.height, record.width), dtype=bool)
    for annotation in coco.loadAnns(coco.getAnnIds(imgIds=record.image_id)):
        union |= coco.annToMask(annotation).astype(bool)
    assert int((sample["targets"]["segmentation"] > 0).sum()) == int(union.sum())
    assert sample["image"].shape[-2:] == (record.height, record.width)


def test_background_never_shares_a_category_id() -> None:
    assert segmentation_category_ids([1, 2, 5]) == [0, 1, 2, 5]  # unchanged for 1-based ids
    assert segmentation_category_ids([0, 1, 2]) == [None, 0, 1, 2]  # 0 is a real category
