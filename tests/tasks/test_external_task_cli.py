"""A task from outside the package, trained end to end through the CLI: ``fit`` (validation
metrics, overlays, run.json), ``predict`` and ``export``, with no edit to ``mtl_lightning``.

The task (:mod:`tests.tasks.external_foreground`) is named in the config by its import path
and derives its targets from the Scenes segmentation masks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from mtl_lightning.cli import main, run_cli

from ..conftest import SMOKE_CONFIG

TASK_PATH = "tests.tasks.external_foreground.ForegroundTask"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory, scenes_root: Path):
    tmp = tmp_path_factory.mktemp("external")
    extra = tmp / "foreground.yaml"
    extra.write_text(yaml.safe_dump({"model": {"tasks": {
        "segmentation": None,
        "fg": {"class_path": TASK_PATH, "init_args": {"head_channels": 8}},
    }}}))
    args = ["--config", str(SMOKE_CONFIG), "--config", str(extra),
            "--trainer.default_root_dir", str(tmp / "runs"),
            "--data.init_args.root", str(scenes_root),
            "--trainer.enable_progress_bar", "false"]
    cli = run_cli(["fit", *args, "--trainer.max_epochs", "1",
                   "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
                   "--test_after_fit", "false", "--overlays.num_images", "2"])
    return cli, args, tmp


def test_fit_validates_draws_and_records_the_outside_task(fitted) -> None:
    cli, _, _ = fitted
    run_dir = Path(cli.run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("val/fg/iou", "val/fg/accuracy", "val/segmentation/miou"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert "val/fg/loss" in metrics and "val/mtl/score" in metrics
    # trained through its own head, named by the instance name
    assert type(cli.model.tasks["fg"]).__name__ == "ForegroundTask"
    assert cli.model.tasks["fg"].name == "fg" and cli.model.tasks["fg"].source == "segmentation"
    overlays = sorted((run_dir / "overlays" / "epoch000").glob("*.png"))
    assert len(overlays) == 2
    record = json.loads((run_dir / "run.json").read_text())
    assert record["task_types"] == {"segmentation": "segmentation", "fg": TASK_PATH}
    assert record["headline_metrics"]["fg"] == "iou"
    assert record["lower_is_better"]["fg"] == ["loss"]


def test_predict_writes_the_outside_tasks_json_and_files(fitted, tmp_path: Path) -> None:
    cli, args, _ = fitted
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (80, 60), (10, 200, 10)).save(images / "photo.jpg")
    out = tmp_path / "predictions"
    run_cli(["predict", *args,
             "--ckpt_path", str(Path(cli.run_dir) / "checkpoints" / "last.ckpt"),
             "--data.init_args.predict_images", str(images),
             "--prediction_writer.output_dir", str(out)])
    record = json.loads((out / "photo.jpg.json").read_text())
    assert record["fg"]["pixels"] == 80 * 60 and "segmentation" in record
    assert Image.open(out / "photo.jpg.foreground.png").size == (80, 60)
    assert Image.open(out / "photo.jpg.overlay.png").size == (80, 60)


def test_export_includes_the_outside_tasks_head(fitted, tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxscript")
    cli, _, _ = fitted
    onnx_file = tmp_path / "model.onnx"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", str(Path(cli.run_dir) / "checkpoints" / "last.ckpt"),
              "--output", str(onnx_file), "--image_size", "64"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out.split("outputs: ")[1].rstrip(")\n").split(", ")
    assert sorted(listed) == ["fg_labels", "segmentation_labels"]
    assert onnx_file.is_file()
