"""Every task's ``draw`` and ``prediction_to_json`` on ground truth and on predictions, for
every label mode: single-label, multi-label (none, one or several classes) and unlabelled
images, masks with ignore (255) and void pixels, crowd boxes, boxes outside the image."""

from __future__ import annotations

import pytest
import torch

from mtl_lightning.callbacks.prediction_overlays import describe, ground_truth_as_prediction
from mtl_lightning.tasks import build_task

#: Grey of ignored pixels and crowd regions (segmentation.IGNORE_COLOR).
IGNORE_COLOR = (128, 128, 128)

HEIGHT, WIDTH = 60, 80


def _image() -> torch.Tensor:
    return torch.full((3, HEIGHT, WIDTH), 100, dtype=torch.uint8)


def _classification(multilabel: bool):
    return build_task("classification", {}, {"num_classes": 4, "class_names": list("abcd"),
                                             "multilabel": multilabel})


@pytest.mark.parametrize("target", [
    torch.tensor(2),                      # single-label
    torch.tensor([0, 1, 0, 1]),           # multi-label, two classes
    torch.tensor([0, 0, 1, 0]),           # multi-label, one class
    torch.tensor([0, 0, 0, 0]),           # multi-label, no class: "(none)"
])
def test_classification_draws_and_describes_any_ground_truth(target: torch.Tensor) -> None:
    task = _classification(multilabel=target.ndim == 1)
    truth = ground_truth_as_prediction(task, target)
    drawn = task.draw(_image(), truth)
    assert drawn.shape == (3, HEIGHT, WIDTH) and drawn.dtype == torch.uint8
    assert not torch.equal(drawn, _image())  # a name, or "(none)", is written
    text = describe(task, truth, scores=False)
    expected = [name for name, on in zip("abcd", target.tolist()) if on] if target.ndim else [
        "c"]
    assert text == (", ".join(expected) or "(none)")


@pytest.mark.parametrize("multilabel", [False, True])
def test_classification_draws_predictions(multilabel: bool) -> None:
    task = _classification(multilabel)
    for logits in (torch.tensor([[4.0, -4, 3, -4]]), torch.full((1, 4), -5.0)):
        prediction = task.postprocess(logits)[0]
        drawn = task.draw(_image(), prediction)
        assert drawn.shape == (3, HEIGHT, WIDTH)
        assert not torch.equal(drawn, _image())


def test_segmentation_draws_ignore_and_void_pixels_and_describes_them() -> None:
    task = build_task("segmentation", {}, {"num_classes": 3,
                                           "class_names": ["background", "car", "road"]})
    mask = torch.zeros(HEIGHT, WIDTH, dtype=torch.long)
    mask[:10] = 255           # ignore
    mask[10:20, :40] = 7      # a void value that is no class
    mask[30:, 40:] = 1
    drawn = task.draw(_image(), mask)
    grey = torch.tensor(IGNORE_COLOR)[:, None]
    assert (drawn[:, 0, :].float() - (0.55 * 100 + 0.45 * grey)).abs().max() <= 1
    assert not torch.equal(drawn[:, 40, 60], _image()[:, 40, 60])  # the car
    entries = task.prediction_to_json(mask)
    assert {e["name"]: e["pixels"] for e in entries} == {
        "background": HEIGHT * WIDTH - 800 - 400 - 30 * 40, "car": 30 * 40, "ignore": 1200}
    assert "ignore" in describe(task, mask)
    prediction = task.postprocess(torch.randn(1, 3, HEIGHT, WIDTH))[0]
    assert task.draw(_image(), prediction).shape == (3, HEIGHT, WIDTH)
    everything_background = torch.zeros(HEIGHT, WIDTH, dtype=torch.long)
    assert torch.equal(task.draw(_image(), everything_background), _image())


def test_detection_draws_clipped_boxes_crowd_and_empty_images() -> None:
    task = build_task("detection", {}, {"num_classes": 2, "class_names": ["nut", "date"]})
    target = {"boxes": torch.tensor([[5.0, 5, 30, 30], [40, -20, 120, 50]]),
              "labels": torch.tensor([0, 1]), "iscrowd": torch.tensor([False, True])}
    truth = ground_truth_as_prediction(task, target, crowd=True)
    drawn = task.draw(_image(), truth)
    assert drawn.shape == (3, HEIGHT, WIDTH)
    # The crowd box reaches past the top and right edges: clipped, its sides drawn in grey.
    assert torch.equal(drawn[:, 30, WIDTH - 1], torch.tensor(IGNORE_COLOR, dtype=torch.uint8))
    assert len(ground_truth_as_prediction(task, target)["boxes"]) == 1  # for metrics
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0).long(),
             "scores": torch.zeros(0)}
    assert torch.equal(task.draw(_image(), empty), _image())
    assert describe(task, empty) == "0 boxes"
    task.build_head(8, [8], [4])
    torch.manual_seed(0)
    outputs = {"heatmap": torch.randn(1, 2, HEIGHT // 4, WIDTH // 4) * 3,
               "box": torch.randn(1, 4, HEIGHT // 4, WIDTH // 4) * 2}
    predicted = task.postprocess(outputs)[0]
    assert len(predicted["boxes"]) > 0
    assert not torch.equal(task.draw(_image(), predicted), _image())


def test_edges_draw_and_describe_ground_truth_with_ignored_pixels() -> None:
    task = build_task("edges", {}, None)
    edges = torch.zeros(HEIGHT, WIDTH, dtype=torch.uint8)
    edges[20] = 1
    edges[:5] = 255
    drawn = task.draw(_image(), edges)
    assert torch.equal(drawn[:, 0], _image()[:, 0])  # ignored pixels are not edges
    assert not torch.equal(drawn[:, 20], _image()[:, 20])
    assert task.prediction_to_json(edges) == {"edge_pixels": WIDTH,
                                              "ignored_pixels": 5 * WIDTH}
    assert describe(task, edges) == "edge_pixels 80, ignored_pixels 400"
    predicted = task.postprocess(torch.randn(1, HEIGHT, WIDTH))[0]
    assert task.prediction_to_json(predicted) == {"edge_pixels": int(predicted.sum())}
    assert not torch.equal(task.draw(_image(), predicted), _image())
