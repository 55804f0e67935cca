"""CocoDataModule on real photographs: counts agree with the COCO API; a few steps train."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from pycocotools.coco import COCO

from mtl_lightning.data import CocoDataModule
from mtl_lightning.data.coco.validation import DataError
from mtl_lightning.module import MultiTaskModule
from tests.realdata.fabricate import board_multilabel, single_category

from ..conftest import FRUITS_NUTS, REPO

needs_fruits = pytest.mark.skipif(
    not FRUITS_NUTS.is_dir(), reason="../shared/data/fruits_nuts (real photographs) is absent"
)


def _module(**options: object) -> CocoDataModule:
    return CocoDataModule(
        annotations=str(FRUITS_NUTS / "annotations.json"), images=str(FRUITS_NUTS / "images"),
        num_workers=0, batch_size=4, image_size=96, **options,
    )


@needs_fruits
def test_boxes_and_mask_pixels_match_the_coco_api() -> None:
    data = _module(val_fraction=0.0, hflip=0.0, scale_jitter=(1.0, 1.0), translate=0.0,
                   color_jitter=0.0)
    data.setup()
    dataset = data.datasets["train"]
    dataset.transforms = None  # original resolution, as the COCO API sees it
    coco = COCO(str(FRUITS_NUTS / "annotations.json"))
    boxes = pixels = 0
    expected_pixels = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        boxes += len(sample["targets"]["detection"]["boxes"])
        pixels += int((sample["targets"]["segmentation"] > 0).sum())
        record = dataset.records[index]
        union = np.zeros((record.height, record.width), dtype=bool)
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=record.image_id)):
            union |= coco.annToMask(annotation).astype(bool)
        expected_pixels += int(union.sum())
    assert boxes == len(coco.getAnnIds()) == 165
    assert pixels == expected_pixels


@needs_fruits
def test_class_info_comes_from_the_file_and_the_split_is_deterministic() -> None:
    data = _module(val_fraction=0.25)
    info = data.task_info
    assert info["detection"]["class_names"] == ["date", "fig", "hazelnut"]
    assert info["detection"]["category_ids"] == [1, 2, 3]
    assert info["segmentation"]["num_classes"] == 4
    assert info["classification"]["multilabel"]  # no image-label field: derived multi-label
    data.setup()
    again = _module(val_fraction=0.25)
    again.setup()
    ids = {s: {r.image_id for r in data.datasets[s].records} for s in ("train", "val")}
    assert ids["train"].isdisjoint(ids["val"]) and len(ids["val"]) == 4
    assert ids["val"] == {r.image_id for r in again.datasets["val"].records}


@needs_fruits
def test_a_few_training_steps_on_real_photographs(tmp_path: Path) -> None:
    data = _module(val_fraction=0.25)
    model = MultiTaskModule(task_info=data.task_info, backbone="resnet18", neck_channels=16)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(
        accelerator="cpu", max_steps=3, limit_val_batches=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 3
    changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert changed > len(before) // 2
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["val/mtl/loss"])
    assert "val/detection/map_50" in metrics and "val/classification/accuracy" in metrics


def test_category_ids_are_mapped_and_written_back(tmp_path: Path) -> None:
    """Non-contiguous ids (7, 3) become contiguous classes; task_info keeps the originals."""
    from PIL import Image

    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (32, 32), (90, 90, 90)).save(root / "a.png")
    document = {
        "images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 10, 10],
                         "area": 100, "iscrowd": 0}],
        "categories": [{"id": 7, "name": "nut"}, {"id": 3, "name": "fruit"}],
    }
    (tmp_path / "a.json").write_text(json.dumps(document))
    data = CocoDataModule(train_annotations=str(tmp_path / "a.json"), train_images=str(root),
                          tasks=("detection",), num_workers=0)
    assert data.task_info["detection"]["class_names"] == ["fruit", "nut"]
    assert data.task_info["detection"]["category_ids"] == [3, 7]
    model = MultiTaskModule(task_info=data.task_info, neck_channels=8)
    prediction = {"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "labels": torch.tensor([1]),
                  "scores": torch.tensor([0.9])}
    written = model.tasks["detection"].prediction_to_json(prediction)
    assert written[0]["category_id"] == 7 and written[0]["name"] == "nut"


def test_bad_split_options_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        CocoDataModule()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CocoDataModule(train_annotations=str(tmp_path / "nope.json"), train_images=str(tmp_path))


def _coco(paths: dict[str, Path], **options: object) -> CocoDataModule:
    return CocoDataModule(**{k: str(v) for k, v in paths.items()}, num_workers=0, batch_size=4,
                          image_size=64, **options)


def test_tasks_follow_what_the_file_labels(tmp_path: Path) -> None:
    one = _coco(single_category(tmp_path / "one"))  # one category: no derived image label
    assert one.tasks == ("segmentation", "detection")
    assert list(one.task_info) == ["segmentation", "detection"]
    board = _coco(board_multilabel(tmp_path / "board"))
    assert board.tasks == ("classification", "segmentation", "detection")
    assert board.task_info["classification"]["multilabel"]
    board_paths = board_multilabel(tmp_path / "board_off")
    assert _coco(board_paths, image_labels="off").tasks == ("segmentation", "detection")
    boxes = single_category(tmp_path / "boxes")
    document = json.loads(boxes["annotations"].read_text())
    for annotation in document["annotations"]:
        del annotation["segmentation"]
    boxes["annotations"].write_text(json.dumps(document))
    assert _coco(boxes).tasks == ("detection",)
    # A task the user names that the file cannot label: one sentence naming it.
    with pytest.raises(DataError, match=r"data.tasks names \['classification'\] but .*"
                       r"annotations.json labels only \['segmentation', 'detection'\]"):
        _coco(single_category(tmp_path / "again"), tasks=("classification", "detection"))
    assert _coco(single_category(tmp_path / "named"), tasks=("detection",)).tasks == (
        "detection",)


def test_the_model_trains_what_the_data_labels_with_the_config_options(
    tmp_path: Path,
) -> None:
    config = yaml.safe_load((REPO / "configs" / "model" / "hard.yaml").read_text())
    data = _coco(single_category(tmp_path / "one"))
    model = MultiTaskModule(**config, task_info=data.task_info)
    assert list(model.tasks) == ["segmentation", "detection"]
    assert model.tasks["segmentation"].decoder_channels == 32
    with pytest.raises(ValueError, match="Task 'classification' is named in model.tasks but "
                       r"the data provides no 'classification' labels \(it labels "
                       "segmentation, detection\\)"):
        MultiTaskModule(**{**config, "tasks": {"classification": None}},
                        task_info=data.task_info)
    with pytest.raises(ValueError, match=r"model\.task_options names unknown task"):
        MultiTaskModule(task_options={"segmentaton": {}}, task_info=data.task_info)


def test_the_default_scenes_model_is_unchanged(tiny_scenes) -> None:
    """configs/model/hard.yaml (tasks null + task_options) on Scenes builds exactly the model
    its former explicit task list built: the same tasks, in order, with the same options."""
    config = yaml.safe_load((REPO / "configs" / "model" / "hard.yaml").read_text())
    assert config["tasks"] is None
    followed = MultiTaskModule(**config, task_info=tiny_scenes.task_info)
    explicit_tasks = {"classification": {"features": "deepest"},
                      "segmentation": {"decoder_channels": 32},
                      "detection": {"head_channels": 32}}
    explicit = MultiTaskModule(**{**config, "tasks": explicit_tasks, "task_options": None},
                               task_info=tiny_scenes.task_info)
    assert list(followed.tasks) == list(explicit.tasks) == list(explicit_tasks)
    shapes = {k: v.shape for k, v in followed.state_dict().items()}
    assert shapes == {k: v.shape for k, v in explicit.state_dict().items()}


def test_every_sample_names_its_source_and_image(tmp_path: Path, tiny_scenes) -> None:
    data = _coco(board_multilabel(tmp_path / "board"))
    data.setup()
    metas = [data.datasets[split][0]["meta"] for split in ("train", "val")]
    assert [(m["source"], m["image_id"]) for m in metas] == [("train", 1), ("val", 100)]
    batch = next(iter(tiny_scenes.val_dataloader()))
    assert {m["source"] for m in batch["meta"]} == {"scenes"}
