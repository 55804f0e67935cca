"""``mtl-lightning compare`` and the delta_m logged during training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mtl_lightning.compare import compare, main, table
from mtl_lightning.module import MultiTaskModule


def _run(root: Path, name: str, metrics: dict, cost: dict | None = None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(metrics))
    if cost is not None:
        (run / "run.json").write_text(json.dumps(cost))
    return run


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    return {
        "cls": _run(tmp_path, "single_cls", {"test/classification/accuracy": 0.8,
                                            "val/classification/accuracy": 0.75}),
        "seg": _run(tmp_path, "single_seg", {"test/segmentation/miou": 0.5,
                                            "val/segmentation/miou": 0.45}),
        "mtl": _run(tmp_path, "mtl", {"test/classification/accuracy": 0.84,
                                     "test/segmentation/miou": 0.45,
                                     "test/mtl/score": 0.645},
                    {"params/total": 3_000_000, "train/images_per_second": 90.0,
                     "fit/seconds": 600.0}),
    }


def test_delta_m_is_the_mean_relative_change(runs: dict[str, Path]) -> None:
    result = compare([runs["mtl"]], [runs["cls"], runs["seg"]])
    row = next(r for r in result["rows"] if r["run"] == "mtl")
    # classification +5 %, segmentation -10 % -> mean -2.5 %
    assert row["delta_m"] == pytest.approx(-2.5)
    assert row["delta_m_tasks"] == pytest.approx(-2.5)
    assert row["params/total"] == 3_000_000
    baseline_rows = [r for r in result["rows"] if r["role"] == "baseline"]
    assert [r["delta_m"] for r in baseline_rows] == [0.0, 0.0]
    _, markdown = table(result)
    assert "| mtl | 0.8400 | 0.4500 | 3.00 | 90.0 | 10.0 | -2.50 | -2.50 |" in markdown


def test_the_command_writes_json_markdown_and_a_baselines_config(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    output = tmp_path / "out" / "table"
    config = tmp_path / "baselines.yaml"
    code = main([str(runs["mtl"]), "--baselines", str(runs["cls"]), str(runs["seg"]),
                 "--output", str(output), "--write_baselines", str(config)])
    assert code == 0
    assert json.loads(output.with_suffix(".json").read_text())["stage"] == "test"
    assert "delta_m" in output.with_suffix(".md").read_text()
    baselines = yaml.safe_load(config.read_text())["model"]["baselines"]
    assert baselines == {"classification": {"accuracy": 0.75}, "segmentation": {"miou": 0.45}}


def test_two_baselines_for_one_task_and_missing_runs_are_errors(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="Two baselines for classification"):
        compare([runs["mtl"]], [runs["cls"], runs["mtl"]])
    with pytest.raises(FileNotFoundError, match=r"metrics\.json"):
        compare([tmp_path / "nowhere"], [])


def test_validation_delta_m_is_logged_against_configured_baselines(monkeypatch) -> None:
    info = {"classification": {"num_classes": 2, "class_names": ["a", "b"]}}
    model = MultiTaskModule(task_info=info, neck_channels=16,
                            baselines={"classification": {"accuracy": 0.5}})
    logged: dict[str, float] = {}
    monkeypatch.setattr(model, "log", lambda key, value, **_: logged.__setitem__(key, value))
    model._log_delta_m("val", {"classification": {"accuracy": 0.6, "macro_accuracy": 0.1}})
    assert float(logged["val/mtl/delta_m"]) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="baselines name tasks that are not trained"):
        MultiTaskModule(task_info=info, neck_channels=16, baselines={"depth": {"rmse": 1.0}})


