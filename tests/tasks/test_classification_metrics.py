"""Classification metrics that a "predict nothing" model cannot pass, and the headline option."""

from __future__ import annotations

import pytest
import torch

from mtl_lightning.tasks import build_task
from mtl_lightning.tasks.classification import ClassificationTask

NAMES = ["board", "chip", "wire", "screw"]
# Four images, each holding one or two of the four classes: most (image, class) pairs are 0.
TARGETS = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 1]])


def _multilabel(**options: object) -> ClassificationTask:
    info = {"num_classes": 4, "class_names": NAMES, "multilabel": True}
    return build_task("classification", options, info)


def _computed(task: ClassificationTask, logits: torch.Tensor) -> dict[str, float]:
    metrics = task.build_metrics("val")
    task.update_metrics(metrics, logits, TARGETS, torch.ones(len(TARGETS), dtype=torch.bool))
    return {key: float(value) for key, value in task.compute_metrics(metrics).items()}


def test_a_model_that_predicts_nothing_fails_the_multilabel_headline() -> None:
    task = _multilabel()
    assert task.headline_metric in {"map", "f1"}
    nothing = _computed(task, torch.full((4, 4), -6.0))
    assert nothing["accuracy"] > 0.6  # micro accuracy is fooled by the absent classes ...
    assert nothing["f1"] == 0.0  # ... macro F1 and mAP are not
    assert nothing["map"] <= 0.5
    assert nothing[task.headline_metric] <= 0.5
    perfect = _computed(task, TARGETS.float() * 12 - 6)
    assert perfect["map"] == pytest.approx(1.0) and perfect["f1"] == pytest.approx(1.0)


def test_classes_absent_from_the_data_do_not_cap_the_averages() -> None:
    task = _multilabel()
    metrics = task.build_metrics("val")
    only_two = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0]])  # 'wire', 'screw' never occur
    task.update_metrics(metrics, only_two.float() * 12 - 6, only_two, torch.ones(2).bool())
    values = task.compute_metrics(metrics)
    assert float(values["map"]) == pytest.approx(1.0)
    assert float(values["f1"]) == pytest.approx(1.0)


def test_the_decision_threshold_option_drives_predictions_and_metrics() -> None:
    logits = torch.logit(TARGETS.float() * 0.4 + 0.05)  # true classes at probability 0.45
    strict, loose = _multilabel(threshold=0.5), _multilabel(threshold=0.3)
    assert _computed(strict, logits)["f1"] == 0.0
    assert _computed(loose, logits)["f1"] == pytest.approx(1.0)
    assert [p["labels"].tolist() for p in loose.postprocess(logits)] == [
        [0], [1], [2, 3], [0, 3]]
    assert all(len(p["labels"]) == 0 for p in strict.postprocess(logits))


def test_headline_option_chooses_the_metric_of_mtl_score() -> None:
    single = build_task("classification", {}, {"num_classes": 3})
    assert single.headline_metric == "accuracy"
    balanced = build_task("classification", {"headline": "macro_accuracy"}, {"num_classes": 3})
    assert balanced.headline_metric == "macro_accuracy"
    assert _multilabel(headline="f1").headline_metric == "f1"
    with pytest.raises(ValueError, match=r"classification\.headline must be one of"):
        build_task("classification", {"headline": "map"}, {"num_classes": 3})


def test_multilabel_predictions_and_ground_truth_serialise_alike() -> None:
    """Ground truth (scores of 1, one per label) used to raise IndexError here."""
    task = _multilabel()
    truth = {"labels": torch.tensor([1, 3]), "scores": torch.ones(2)}
    assert [e["name"] for e in task.prediction_to_json(truth)] == ["chip", "screw"]
    predicted = task.postprocess(torch.tensor([[3.0, -3.0, 0.5, -1.0]]))[0]
    entries = task.prediction_to_json(predicted)
    assert [e["name"] for e in entries] == ["board", "wire"]
    assert entries[0]["score"] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    assert task.prediction_to_json({"labels": torch.zeros(0).long(),
                                    "scores": torch.zeros(0)}) == []
