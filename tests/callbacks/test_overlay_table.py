"""The W&B Table of the overlay images: per-image scores from each task's own metrics."""

from __future__ import annotations

import pytest
import torch
import wandb

from mtl_lightning.callbacks.prediction_overlays import _wandb_table, describe, per_image_scores
from mtl_lightning.module import MultiTaskModule


@pytest.fixture(scope="module")
def scored(tiny_scenes, tiny_batch):
    torch.manual_seed(0)
    model = MultiTaskModule(task_info=tiny_scenes.task_info, neck_channels=16).eval()
    with torch.no_grad():
        predictions = model.predict_tasks(tiny_batch["image"])
        scores = per_image_scores(model, model(tiny_batch["image"]), tiny_batch)
        outputs = model(tiny_batch["image"])
    return model, predictions, scores, outputs


def test_each_image_is_scored_alone(scored, tiny_batch) -> None:
    _, _, scores, outputs = scored
    assert len(scores) == len(tiny_batch["image"])
    targets = tiny_batch["targets"]
    for i, image_scores in enumerate(scores):
        assert set(image_scores) == {"classification", "segmentation", "detection"}
        right = int(outputs["classification"][i].argmax()) == int(targets["classification"][i])
        assert image_scores["classification"]["accuracy"] == float(right)
        mask = targets["segmentation"][i]
        valid = mask != 255
        pixels = (outputs["segmentation"][i].argmax(0)[valid] == mask[valid]).float().mean()
        assert image_scores["segmentation"]["pixel_accuracy"] == pytest.approx(float(pixels))
        assert "map_50" in image_scores["detection"]


def test_unlabelled_images_get_no_scores(scored, tiny_batch) -> None:
    model = scored[0]
    batch = {**tiny_batch, "has": {**tiny_batch["has"]}}
    batch["has"]["detection"] = torch.zeros(len(batch["image"]), dtype=torch.bool)
    with torch.no_grad():
        scores = per_image_scores(model, model(batch["image"]), batch)
    assert all("detection" not in s and "classification" in s for s in scores)


def test_table_has_one_row_per_image_with_truth_prediction_and_scores(
    scored, tiny_batch
) -> None:
    model, predictions, scores, _ = scored
    table = _wandb_table(model, tiny_batch, predictions, scores)
    assert len(table.data) == len(tiny_batch["image"])
    for column in ("image_id", "overlay", "classification truth",
                   "classification prediction", "classification accuracy",
                   "segmentation miou", "detection truth", "detection map_50"):
        assert column in table.columns
    row = dict(zip(table.columns, table.data[0]))
    assert isinstance(row["overlay"], wandb.Image)
    names = model.tasks["classification"].class_names
    assert row["classification truth"] in names  # ground truth: the name, no score
    assert row["classification prediction"].split()[0] in names
    assert row["detection truth"].split()[1] == "boxes:"
    assert row["classification accuracy"] == scores[0]["classification"]["accuracy"]


def test_describe_summarises_each_kind_of_prediction(scored) -> None:
    tasks = scored[0].tasks
    classification = tasks["classification"]
    label = {"labels": torch.tensor([1]), "scores": torch.tensor([0.75])}
    assert describe(classification, label) == f"{classification.class_names[1]} 0.75"
    mask = torch.zeros(4, 4, dtype=torch.long)
    mask[:1] = 1
    segmentation = tasks["segmentation"]
    names = segmentation.class_names
    assert describe(segmentation, mask) == f"{names[0]} 75%, {names[1]} 25%"
    detection = tasks["detection"]
    boxes = {"boxes": torch.tensor([[0.0, 0, 4, 4]] * 7), "labels": torch.zeros(7).long(),
             "scores": torch.linspace(0.9, 0.3, 7)}
    text = describe(detection, boxes)
    assert text.startswith("7 boxes: ") and text.endswith(", ...") and "0.90" in text
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0).long(),
             "scores": torch.zeros(0)}
    assert describe(detection, empty) == "0 boxes"


def test_per_image_metrics_never_sync_across_processes(scored, tiny_batch, monkeypatch) -> None:
    """Only rank 0 draws; a metric that gathered from the other processes would hang it."""
    model = scored[0]
    built = []
    task = model.tasks["segmentation"]
    original = task.build_metrics

    def recording(stage: str):
        built.append(original(stage))
        return built[-1]

    monkeypatch.setattr(task, "build_metrics", recording)
    with torch.no_grad():
        per_image_scores(model, model(tiny_batch["image"]), tiny_batch)
    assert len(built) == len(tiny_batch["image"])
    assert all(not m.distributed_available_fn() for c in built for m in c.values())
