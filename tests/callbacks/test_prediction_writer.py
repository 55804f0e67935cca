"""``predict`` is per image: outputs keyed by the full file name, unreadable images skipped
and listed (the others written, the CLI's exit code non-zero), ``max_image_pixels`` applied."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from mtl_lightning.callbacks.prediction_writer import PredictionWriter
from mtl_lightning.cli import USER_ERRORS, MultiTaskCLI
from mtl_lightning.data import CocoDataModule
from mtl_lightning.data.base import MultiTaskDataModule
from mtl_lightning.module import MultiTaskModule

INFO = {"classification": {"num_classes": 2, "class_names": ["day", "night"]},
        "segmentation": {"num_classes": 3, "class_names": ["background", "nut", "date"]},
        "detection": {"num_classes": 2, "class_names": ["nut", "date"]}}


class FolderOnly(MultiTaskDataModule):
    """A data module that only predicts (no training data to set up)."""

    @property
    def task_info(self) -> dict[str, dict[str, Any]]:
        return INFO

    def setup(self, stage: str | None = None) -> None:
        pass


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (90, 60), (200, 30, 30)).save(images / "a.jpg")
    Image.new("RGB", (40, 70), (30, 200, 30)).save(images / "a.png")  # same stem
    (images / "broken.jpg").write_text("<html>not an image</html>")
    Image.new("RGB", (300, 300), (0, 0, 200)).save(images / "huge.png")  # over the limit
    good = images / "truncated.jpg"
    Image.new("RGB", (64, 64), (9, 9, 9)).save(good)
    good.write_bytes(good.read_bytes()[:300])
    return images


def _predict(folder: Path, out: Path, **data_options: Any) -> PredictionWriter:
    data = FolderOnly(predict_images=str(folder), image_size=64, batch_size=2, num_workers=0,
                      resize="letterbox", **data_options)
    data.max_image_pixels = 200 * 200
    writer = PredictionWriter(output_dir=str(out))
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[writer])
    torch.manual_seed(0)
    model = MultiTaskModule(task_info=INFO, backbone="test_resnet", neck_channels=8)
    trainer.predict(model, datamodule=data)
    return writer


def test_every_readable_image_is_written_under_its_full_name(folder: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "predictions"
    writer = _predict(folder, out)
    for name, size in [("a.jpg", (60, 90)), ("a.png", (70, 40))]:
        record = json.loads((out / f"{name}.json").read_text())
        assert record["image"] == str(folder / name) and record["size_hw"] == list(size)
        assert Image.open(out / f"{name}.mask.png").size == (size[1], size[0])
        assert Image.open(out / f"{name}.overlay.png").size == (size[1], size[0])
        for box in record["detection"]:  # boxes stay inside the original image
            x1, y1, x2, y2 = box["box_xyxy"]
            assert 0 <= x1 <= x2 <= size[1] and 0 <= y1 <= y2 <= size[0]
    skipped = json.loads((out / "skipped.json").read_text())
    assert sorted(Path(s["image"]).name for s in skipped) == [
        "broken.jpg", "huge.png", "truncated.jpg"]
    assert all(s["reason"].startswith("The image") for s in skipped)
    assert "90000 pixels" in next(s["reason"] for s in skipped if "huge" in s["image"])
    assert not list(out.glob("broken*")) and len(writer.skipped) == 3


def test_a_predict_that_skipped_images_ends_with_one_sentence_and_an_error_code(
    folder: Path, tmp_path: Path
) -> None:
    from mtl_lightning.callbacks.prediction_writer import SkippedImagesError, skipped_images_error

    writer = _predict(folder, tmp_path / "predictions")
    error = skipped_images_error([writer])
    assert isinstance(error, SkippedImagesError) and isinstance(error, USER_ERRORS)
    assert "skipped 3 image(s)" in str(error) and "broken.jpg" in str(error)
    cli = SimpleNamespace(trainer=SimpleNamespace(callbacks=[writer]),
                          _print_run_dir=lambda: None)
    with pytest.raises(SkippedImagesError):  # main() turns it into exit code 2
        MultiTaskCLI.after_predict(cli)
    writer.skipped = []
    MultiTaskCLI.after_predict(cli)  # nothing skipped: no error
    assert skipped_images_error([writer]) is None


def test_coco_max_image_pixels_applies_to_predict(tmp_path: Path, folder: Path) -> None:
    images = tmp_path / "train"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "x.png")
    annotations = tmp_path / "train.json"
    annotations.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "x.png", "height": 8, "width": 8}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4],
                         "area": 16, "iscrowd": 0,
                         "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]}],
        "categories": [{"id": 1, "name": "x"}],
    }))
    data = CocoDataModule(train_annotations=str(annotations), train_images=str(images),
                          predict_images=str(folder), max_image_pixels=4_000_000_000,
                          num_workers=0)
    assert data.predict_dataloader().dataset.max_pixels == 4_000_000_000
