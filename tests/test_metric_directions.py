"""Metric directions come from the metrics (torchmetrics' ``higher_is_better``), per task
instance, and ``run.json`` records them so ``compare`` needs no task name to read them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtl_lightning.compare import compare
from mtl_lightning.metrics import recorded_lower_is_better
from mtl_lightning.module import MultiTaskModule


def test_the_module_reads_each_instances_directions_from_its_metrics() -> None:
    info = {"segmentation": {"num_classes": 3}, "dist": {"type": "depth"},
            "normals": {}}
    model = MultiTaskModule(task_info=info, neck_channels=16)
    lower = model.lower_is_better()
    assert lower["dist"] == ["abs_err", "loss", "rel_err", "rmse"]
    assert lower["normals"] == ["loss", "mean_angle", "median_angle"]
    assert lower["segmentation"] == ["loss"]


def _run(root: Path, name: str, metrics: dict, cost: dict | None = None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(metrics))
    if cost is not None:
        (run / "run.json").write_text(json.dumps(cost))
    return run


def test_compare_uses_the_directions_a_run_recorded(tmp_path: Path) -> None:
    """``spread`` is no name the table knows: only run.json says lower is better.
    Baseline spread 0.50, within 0.40; the run 0.40 (-20 %, an improvement: +20) and 0.30
    (-25 %): delta_m = (20 - 25) / 2 = -2.5; without the record, (-20 - 25) / 2 = -22.5."""
    recorded = {"lower_is_better": {"dist": ["loss", "spread"]}}
    baseline = _run(tmp_path, "single_dist", {"test/dist/spread": 0.50,
                                              "test/dist/within": 0.40}, recorded)
    run = _run(tmp_path, "mtl", {"test/dist/spread": 0.40, "test/dist/within": 0.30}, recorded)
    bare = _run(tmp_path, "mtl_bare", {"test/dist/spread": 0.40, "test/dist/within": 0.30})
    metrics = {"dist": ["spread", "within"]}
    result = compare([run, bare], [baseline], metrics=metrics)
    rows = {row["run"]: row for row in result["rows"]}
    assert rows["mtl"]["delta_m"] == pytest.approx(-2.5)
    assert rows["mtl_bare"]["delta_m"] == pytest.approx(-22.5)
    assert result["lower_is_better"] == ["dist/spread"]
    assert recorded_lower_is_better({"lower_is_better": "bad"}) == {}
