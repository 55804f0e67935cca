"""MultiTaskModule wiring: tasks from data info, balancer seam, metrics per stage."""

from __future__ import annotations

import pytest
import torch

from mtl_lightning.balancing import StaticWeighting, TaskLosses
from mtl_lightning.module import MultiTaskModule

INFO = {
    "classification": {"num_classes": 3, "class_names": ["a", "b", "c"]},
    "segmentation": {"num_classes": 4},
    "detection": {"num_classes": 3},
}


def test_tasks_default_to_everything_the_data_labels() -> None:
    model = MultiTaskModule(task_info=INFO, neck_channels=16)
    assert list(model.tasks) == ["classification", "segmentation", "detection"]
    assert model.tasks["classification"].class_names == ["a", "b", "c"]
    # Metrics per stage and task; no mAP on training batches (too costly on the hot path).
    assert "train_detection" not in model.metrics
    assert {"val_detection", "test_segmentation", "train_classification"} <= set(model.metrics)


def test_static_weighting_combines_losses_with_the_configured_weights() -> None:
    balancer = StaticWeighting(weights={"detection": 2.0}, default_weight=0.5)
    losses = {"classification": torch.tensor(1.0), "detection": torch.tensor(3.0)}
    counts = {"classification": torch.tensor(4), "detection": torch.tensor(2)}
    combination = balancer.combine(TaskLosses.gather(losses, counts), step=0)
    assert float(combination.loss) == pytest.approx(0.5 * 1.0 + 2.0 * 3.0)
    assert float(combination.value) == pytest.approx(0.5 * 1.0 + 2.0 * 3.0)
    weights = combination.weights
    assert float(weights["detection"]) == 2.0 and float(weights["classification"]) == 0.5


def test_balancer_weights_for_unknown_tasks_are_an_error() -> None:
    with pytest.raises(ValueError, match="not trained"):
        MultiTaskModule(task_info=INFO, neck_channels=16,
                        balancer=StaticWeighting(weights={"depth": 1.0}))


def test_a_subset_of_tasks_builds_only_those_heads() -> None:
    model = MultiTaskModule(task_info=INFO, tasks={"segmentation": None}, neck_channels=16)
    outputs = model(torch.randn(1, 3, 64, 64))
    assert set(outputs) == {"segmentation"}


def test_classification_can_pool_the_pyramid_or_the_deepest_map() -> None:
    deepest = MultiTaskModule(task_info=INFO, tasks={"classification": None}, neck_channels=16)
    pyramid = MultiTaskModule(
        task_info=INFO, tasks={"classification": {"features": "pyramid"}}, neck_channels=16
    )
    assert deepest.tasks["classification"].head[-1].in_features == 512
    assert pyramid.tasks["classification"].head[-1].in_features == 16 * 4
    assert pyramid(torch.randn(2, 3, 64, 64))["classification"].shape == (2, 3)
    with pytest.raises(ValueError, match="deepest' or 'pyramid"):
        MultiTaskModule(task_info=INFO, tasks={"classification": {"features": "neck"}})


def test_a_batch_labelled_for_no_task_is_skipped(tiny_scenes, tiny_batch) -> None:
    """Partial labels can leave a whole batch unlabelled: no step, no error."""
    model = MultiTaskModule(task_info=tiny_scenes.task_info, neck_channels=16)
    unlabelled = {**tiny_batch, "has": {t: torch.zeros_like(h) for t, h in
                                        tiny_batch["has"].items()}}
    model.log = lambda *args, **kwargs: None
    assert model.training_step(unlabelled, 0) is None
