"""delta_m: signed relative changes against baselines, averaged over metrics or tasks."""

from __future__ import annotations

import pytest

from mtl_lightning.metrics import (
    LOWER_BY_NAME,
    delta_m,
    delta_m_per_task,
    lower_is_better_default,
    lower_is_better_of,
    relative_changes,
    task_results,
)

BASE = {"segmentation": {"miou": 0.50, "pixel_accuracy": 0.80},
        "depth": {"abs_err": 0.40},
        "classification": {"accuracy": 0.80}}
MODEL = {"segmentation": {"miou": 0.55, "pixel_accuracy": 0.76},
         "depth": {"abs_err": 0.30},
         "classification": {"accuracy": 0.80}}
LOWER = {"depth": {"abs_err"}}


def test_relative_changes_are_signed_so_that_positive_is_better() -> None:
    changes = relative_changes(MODEL, BASE, LOWER)
    assert changes["segmentation"]["miou"] == pytest.approx(0.10)
    assert changes["segmentation"]["pixel_accuracy"] == pytest.approx(-0.05)
    assert changes["depth"]["abs_err"] == pytest.approx(0.25)  # error fell by a quarter
    assert changes["classification"]["accuracy"] == 0.0


def test_mean_over_metrics_and_mean_over_tasks() -> None:
    # Maninis / Vandenhende: (10 - 5 + 25 + 0) / 4 metrics.
    assert delta_m(MODEL, BASE, LOWER) == pytest.approx(7.5)
    # LibMTL: segmentation (10 - 5) / 2 = 2.5, depth 25, classification 0 -> / 3 tasks.
    assert delta_m(MODEL, BASE, LOWER, average="tasks") == pytest.approx(27.5 / 3)
    assert delta_m_per_task(MODEL, BASE, LOWER) == pytest.approx(
        {"segmentation": 2.5, "depth": 25.0, "classification": 0.0})


def test_the_baseline_itself_scores_zero_and_worse_is_negative() -> None:
    assert delta_m(BASE, BASE, LOWER) == 0.0
    worse = {"segmentation": {"miou": 0.25}}
    assert delta_m(worse, BASE) == pytest.approx(-50.0)


def test_losses_are_lower_is_better_by_default() -> None:
    assert "loss" in lower_is_better_default("segmentation")
    assert lower_is_better_default("unknown") == LOWER_BY_NAME  # the name table, losses in it
    assert delta_m({"detection": {"loss": 1.0}}, {"detection": {"loss": 2.0}}) == 50.0


def test_missing_or_zero_baselines_are_errors() -> None:
    with pytest.raises(ValueError, match="No baseline for depth/abs_err"):
        delta_m(MODEL, {"segmentation": BASE["segmentation"]}, LOWER)
    with pytest.raises(ValueError, match="is 0"):
        delta_m({"detection": {"map_50": 0.2}}, {"detection": {"map_50": 0.0}})
    with pytest.raises(ValueError, match="average"):
        delta_m(MODEL, BASE, LOWER, average="median")  # type: ignore[arg-type]


def test_task_results_pick_headline_metrics_of_a_stage() -> None:
    flat = {"test/classification/accuracy": 0.9, "test/classification/macro_accuracy": 0.8,
            "test/segmentation/miou": 0.4, "test/detection/map_50": 0.3,
            "test/mtl/score": 0.5, "val/segmentation/miou": 0.1, "test/detection/loss": 2.0}
    assert task_results(flat) == {"classification": {"accuracy": 0.9},
                                  "segmentation": {"miou": 0.4}, "detection": {"map_50": 0.3}}
    chosen = task_results(flat, "test", {"detection": ["map_50", "loss"]})
    assert chosen == {"detection": {"map_50": 0.3, "loss": 2.0}}
    assert task_results(flat, "val") == {"segmentation": {"miou": 0.1}}


def test_regression_errors_are_lower_is_better_by_name() -> None:
    for name in ("abs_err", "rel_err", "rmse", "mean_angle", "median_angle", "loss"):
        assert name in lower_is_better_default("depth"), name
    assert "miou" not in lower_is_better_default("segmentation")
    # Without a direction table an error that fell would count as a loss of quality.
    assert delta_m({"normals": {"mean_angle": 20.0}}, {"normals": {"mean_angle": 25.0}}) == 20.0


def test_the_direction_of_a_known_metric_object_is_its_own() -> None:
    from torchmetrics.classification import MulticlassAccuracy
    from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError

    metrics = {"accuracy": MulticlassAccuracy(num_classes=3), "abs_err": MeanAbsoluteError(),
               "custom_error": MeanSquaredError(), "rmse": object()}
    # custom_error: the metric says lower is better; rmse: no object, the name table says so.
    assert lower_is_better_of(metrics) == {"abs_err", "custom_error", "rmse"}
