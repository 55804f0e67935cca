"""Overlay pictures of real-photo-like samples: multi-label ground truth, ignore and void
pixels, crowd boxes, empty and unlabelled images, two sources with the same image ids, and
images that are not square. Nothing crashes, names are unique, the aspect ratio is kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import wandb
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import WandbLogger
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.io import read_image

from mtl_lightning.callbacks.prediction_overlays import (
    PredictionOverlays,
    _wandb_table,
    overlay_view,
    per_image_scores,
    side_by_side,
)
from mtl_lightning.data.collate import collate_multitask
from mtl_lightning.data.transforms import eval_transforms
from mtl_lightning.module import MultiTaskModule
from tests.conftest import count_forward_calls

TASKS = ("classification", "segmentation", "detection")
SIZE = 64
NAMES = ["nut", "date", "fig"]


def _info(classification: str) -> dict:
    info = {"segmentation": {"num_classes": 4, "class_names": ["background", *NAMES]},
            "detection": {"num_classes": 3, "class_names": NAMES}}
    if classification == "multi":
        info["classification"] = {"num_classes": 3, "class_names": NAMES, "multilabel": True}
    elif classification == "single":
        info["classification"] = {"num_classes": 3, "class_names": NAMES}
    return info


def _sample(height: int, width: int, image_id: int, source: str | None, classification: str,
            objects: int = 2) -> dict:
    """A photo-like sample: a mask with ignore (255: void, crowd) pixels, boxes (the last one
    a crowd region), image labels of the given mode, run through the letterbox transforms."""
    mask = torch.zeros(height, width, dtype=torch.uint8)
    mask[: height // 4] = 255
    boxes, labels = [], []
    for k in range(objects):
        box = [4.0 + 6 * k, height / 3, width / 2 + 3 * k, height - 4.0]
        mask[int(box[1]):int(box[3]), int(box[0]):int(box[2])] = k % 3 + 1
        boxes.append(box)
        labels.append(k % 3)
    tasks = [t for t in TASKS if t != "classification" or classification != "none"]
    targets: dict = {
        "segmentation": tv_tensors.Mask(mask),
        "detection": {"boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes).reshape(-1, 4),
                                                        format="XYXY",
                                                        canvas_size=(height, width)),
                      "labels": torch.tensor(labels, dtype=torch.long),
                      "iscrowd": torch.arange(objects) == objects - 1},
    }
    if classification == "multi":
        targets["classification"] = torch.zeros(3, dtype=torch.long)
        targets["classification"][torch.tensor(labels[:-1], dtype=torch.long)] = 1
    elif classification == "single":
        targets["classification"] = torch.tensor(image_id % 3)
    meta = {"image_id": image_id, "orig_size": (height, width)}
    if source is not None:
        meta["source"] = source
    sample = {"image": tv_tensors.Image(torch.randint(0, 255, (3, height, width),
                                                      dtype=torch.uint8)),
              "targets": targets, "has": dict.fromkeys(tasks, True), "meta": meta}
    return eval_transforms(SIZE, tuple(tasks), "letterbox")(sample)


def _samples(classification: str) -> list[dict]:
    samples = [
        _sample(48, 96, 1, "boards", classification),          # wide
        _sample(90, 60, 1, "boards_val", classification),      # tall, same image id
        _sample(50, 70, 2, "boards", classification, objects=1),  # only a crowd region
        _sample(40, 40, 3, None, classification, objects=0),   # no object at all
    ]
    if classification != "none":  # an image without an image label
        samples[-1]["has"]["classification"] = False
    return samples


def _model(classification: str) -> MultiTaskModule:
    torch.manual_seed(0)
    return MultiTaskModule(task_info=_info(classification), backbone="test_resnet",
                           neck_channels=8).eval()


def _validate(model: MultiTaskModule, samples: list[dict], callback: PredictionOverlays,
              root: Path, batch_size: int = 2) -> Trainer:
    trainer = Trainer(accelerator="cpu", logger=False, callbacks=[callback],
                      enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, default_root_dir=root)
    loader = DataLoader(samples, batch_size=batch_size, collate_fn=collate_multitask)
    trainer.validate(model, dataloaders=loader, verbose=False)
    return trainer


@pytest.mark.parametrize("classification", ["single", "multi", "none"])
def test_overlays_of_every_label_mode_are_written_with_unique_names_and_true_aspect(
    classification: str, tmp_path: Path
) -> None:
    _validate(_model(classification), _samples(classification), PredictionOverlays(num_images=4),
              tmp_path)
    folder = tmp_path / "overlays" / "epoch000"
    written = sorted(p.name for p in folder.glob("*.png"))
    assert written == ["3.png", "boards_1.png", "boards_2.png", "boards_val_1.png"]
    for name, (height, width) in [("boards_1.png", (48, 96)), ("boards_val_1.png", (90, 60)),
                                  ("3.png", (40, 40))]:
        picture_width, picture_height = Image.open(folder / name).size
        half = (picture_width - 4) / 2
        assert half / picture_height == pytest.approx(width / height, rel=0.03)
        assert picture_height >= 256  # small images are enlarged to stay legible


def test_overlays_are_drawn_from_the_validation_forward_passes(tmp_path: Path) -> None:
    """No second forward pass: the model runs once per validation batch, and the pictures
    are the ones a forward pass of the shown images alone draws (the callback's former
    way), evenly spaced through the validation samples."""
    samples = [_sample(48 + 4 * k, 64, k, "boards", "single") for k in range(7)]
    model = _model("single")
    calls = count_forward_calls(model)
    callback = PredictionOverlays(num_images=3)
    _validate(model, samples, callback, tmp_path, batch_size=3)
    assert calls == [3, 3, 1]  # the three validation batches, nothing more
    chosen = [0, 3, 6]  # evenly spaced through the 7 samples
    folder = tmp_path / "overlays" / "epoch000"
    assert sorted(p.name for p in folder.glob("*.png")) == [f"boards_{k}.png" for k in chosen]
    batch = collate_multitask([samples[k] for k in chosen])
    with torch.no_grad():
        predictions = model.predict_tasks(batch["image"])
    for i, k in enumerate(chosen):
        view = overlay_view(model, batch, i, predictions[i])
        expected = side_by_side(model, view, callback.draw_score_threshold)
        assert torch.equal(read_image(str(folder / f"boards_{k}.png")), expected)


def test_the_shown_images_keep_only_their_own_outputs(tmp_path: Path) -> None:
    """Memory stays flat: the callback keeps the shown images' slices of a batch, and
    nothing once the epoch is drawn."""
    samples = [_sample(48, 64, k, None, "single") for k in range(6)]
    callback = PredictionOverlays(num_images=2)
    kept_sizes = []
    original = PredictionOverlays.on_validation_epoch_end

    def recording(self, trainer, pl_module) -> None:
        kept_sizes.extend(len(part["image"]) for part, _ in self._kept)
        kept_sizes.extend(len(outputs["segmentation"]) for _, outputs in self._kept)
        original(self, trainer, pl_module)

    PredictionOverlays.on_validation_epoch_end = recording
    try:
        _validate(_model("single"), samples, callback, tmp_path, batch_size=6)
    finally:
        PredictionOverlays.on_validation_epoch_end = original
    assert kept_sizes == [2, 2]  # images 0 and 5 of one batch of 6
    assert callback._kept == []
    assert sorted(p.name for p in (tmp_path / "overlays" / "epoch000").glob("*.png")) == [
        "0.png", "5.png"]


@pytest.mark.parametrize("classification", ["single", "multi", "none"])
def test_wandb_table_handles_ignore_pixels_crowds_and_multilabel_truth(
    classification: str,
) -> None:
    model = _model(classification)
    batch = collate_multitask(_samples(classification))
    with torch.no_grad():
        predictions = model.predict_tasks(batch["image"])
        scores = per_image_scores(model, model(batch["image"]), batch)
    table = _wandb_table(model, batch, predictions, scores)
    rows = [dict(zip(table.columns, row)) for row in table.data]
    assert [row["image_id"] for row in rows] == ["boards_1", "boards_val_1", "boards_2", "3"]
    assert "ignore" in rows[0]["segmentation truth"]
    assert rows[0]["detection truth"].startswith("1 boxes")  # the crowd region is not a box
    assert rows[3]["detection truth"] == "0 boxes"
    if classification == "multi":
        assert rows[0]["classification truth"] == "nut"
        assert rows[2]["classification truth"] == "(none)"
    if classification != "none":
        assert rows[3]["classification truth"] is None  # unlabelled
    assert all(isinstance(row["overlay"], wandb.Image) for row in rows)


def test_views_map_predictions_onto_the_picture_and_drop_unsure_boxes() -> None:
    model = _model("multi")
    batch = collate_multitask(_samples("multi")[:1])  # 48 x 96, letterboxed into 32 x 64
    prediction = {
        "classification": {"labels": torch.tensor([0]), "scores": torch.tensor([0.9])},
        "segmentation": torch.zeros(SIZE, SIZE, dtype=torch.long),
        "detection": {"boxes": torch.tensor([[8.0, 4, 40, 30], [0, 0, 70, 70]]),
                      "labels": torch.tensor([0, 1]), "scores": torch.tensor([0.9, 0.1])},
    }
    image, predicted, truth = overlay_view(model, batch, 0, prediction)
    assert image.shape == (3, 256, 512)  # 32 x 64 enlarged 8 times
    assert predicted["segmentation"].shape == (256, 512)
    assert truth["segmentation"].shape == (256, 512)
    # Boxes scaled 8 times and clipped to the picture (the second one covered the padding).
    torch.testing.assert_close(predicted["detection"]["boxes"],
                               torch.tensor([[64.0, 32, 320, 240], [0, 0, 512, 256]]))
    with_unsure = side_by_side(model, (image, predicted, truth), draw_score_threshold=0.0)
    sure_only = side_by_side(model, (image, predicted, truth), draw_score_threshold=0.3)
    without = dict(predicted, detection=dict(predicted["detection"],
                                             boxes=predicted["detection"]["boxes"][:1],
                                             labels=torch.tensor([0]),
                                             scores=torch.tensor([0.9])))
    assert torch.equal(sure_only, side_by_side(model, (image, without, truth)))
    assert not torch.equal(with_unsure, sure_only)


class RecordingWandbLogger(WandbLogger):
    """A W&B logger that starts no run: it records what is logged and when."""

    def __init__(self, batches_seen: list) -> None:
        self.logged: list[tuple[int, dict]] = []
        self.batches_seen = batches_seen

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.logged.append((len(self.batches_seen), dict(metrics)))

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def save(self) -> None:
        pass

    def finalize(self, status: str) -> None:
        pass

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> str:
        return "0"

    @property
    def save_dir(self) -> str | None:
        return None

    @property
    def experiment(self) -> None:
        return None


def test_wandb_images_are_built_once_at_the_end_of_the_epoch(tmp_path: Path) -> None:
    """W&B media stay off the batch loop: one ``log_metrics`` call after the last batch,
    and the table's rows hold the very images logged under ``val/overlays``."""
    batches: list = []

    class CountBatches(Callback):
        def on_validation_batch_end(self, *args, **kwargs) -> None:
            batches.append(1)

    logger = RecordingWandbLogger(batches)
    trainer = Trainer(accelerator="cpu", logger=logger,
                      callbacks=[CountBatches(), PredictionOverlays(num_images=4)],
                      enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, default_root_dir=tmp_path)
    loader = DataLoader(_samples("single"), batch_size=2, collate_fn=collate_multitask)
    trainer.validate(_model("single"), dataloaders=loader, verbose=False)
    media = [(seen, m) for seen, m in logger.logged if "val/overlays" in m]
    assert len(media) == 1
    seen, logged = media[0]
    assert seen == len(batches) == 2  # after the last batch
    images = logged["val/overlays"]
    assert len(images) == 4 and all(isinstance(image, wandb.Image) for image in images)
    table = logged["val/overlay_table"]
    column = table.columns.index("overlay")
    assert all(row[column] is image for row, image in zip(table.data, images))
