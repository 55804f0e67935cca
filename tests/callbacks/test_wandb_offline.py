"""An offline W&B run read back: history, summaries, config, media, and resuming the run.

wandb 0.31 keeps an offline run only in its ``run-<id>.wandb`` file (no ``wandb-summary.json``)
and has no Python reader for it any more, so :func:`wandb_records` reads that file: a LevelDB
log (32 KiB blocks of CRC-framed chunks) of ``wandb_internal_pb2.Record`` messages, behind a
7-byte ``:W&B`` header.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import wandb
from wandb.proto import wandb_internal_pb2

from mtl_lightning.cli import run_cli
from mtl_lightning.loggers import WANDB_ID_FILE

from ..conftest import SMOKE_CONFIG

HEADLINE = ("classification/accuracy", "segmentation/miou", "detection/map_50")
TASKS = ("classification", "segmentation", "detection")
BLOCK = 32768


def wandb_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """Every record of a ``.wandb`` file, in order."""
    data = path.read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B"
    position, pending = 7, b""
    while position + 7 <= len(data):
        left = BLOCK - position % BLOCK
        _crc, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if left < 7 or (length == 0 and kind == 0):  # block trailer / padding
            position += left
            continue
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # full/first, middle/last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def read_run(run_dir: Path) -> dict:
    """History rows, config, summary, metric definitions and artifacts of the offline run."""
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    (log,) = folder.glob("run-*.wandb")
    run: dict = {"folder": folder, "history": [], "config": {}, "summary": {}, "metrics": {},
                 "artifacts": []}
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            run["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in record.history.item})
        elif kind in ("config", "summary"):
            items = getattr(record, kind).update
            run[kind].update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                              for i in items})
        elif kind == "metric" and record.metric.name:
            run["metrics"][record.metric.name] = record.metric
        elif kind == "artifact":
            run["artifacts"].append((record.artifact.type, record.artifact.name))
    return run


@pytest.fixture(scope="module")
def offline_runs(tmp_path_factory: pytest.TempPathFactory, scenes_root: Path):
    """A one-epoch offline fit, then a fit resumed from its last checkpoint, and what the
    first one printed."""
    tmp = tmp_path_factory.mktemp("wandb_offline")
    patch = pytest.MonkeyPatch()
    patch.delenv("WANDB_API_KEY", raising=False)
    patch.setenv("HOME", str(tmp))  # no ~/.netrc: no credentials, so offline
    patch.setenv("WANDB_DIR", str(tmp))
    base = [
        "--config", str(SMOKE_CONFIG), "--trainer.default_root_dir", str(tmp / "runs"),
        "--data.init_args.root", str(scenes_root), "--trainer.enable_progress_bar", "false",
        "--trainer.logger", str(SMOKE_CONFIG.parent / "logger" / "wandb.yaml"),
        "--test_after_fit", "false", "--trainer.limit_train_batches", "2",
    ]
    try:
        wandb.finish()  # a run left open by an earlier test would be reused
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            first = run_cli(["fit", *base, "--trainer.max_epochs", "1"])
        wandb.finish()  # the CLI process would end here, closing the run
        checkpoint = Path(first.run_dir) / "checkpoints" / "last.ckpt"
        second = run_cli(["fit", *base, "--trainer.max_epochs", "2",
                          "--ckpt_path", str(checkpoint)])
        wandb.finish()
    finally:
        patch.undo()
    return Path(first.run_dir), Path(second.run_dir), printed.getvalue()


@pytest.mark.slow
def test_without_credentials_the_run_is_offline_with_a_sync_hint(offline_runs) -> None:
    first, _, printed = offline_runs
    (folder,) = (first / "wandb").glob("offline-run-*")
    assert list(folder.glob("run-*.wandb"))
    assert f"wandb sync {folder}" in printed


@pytest.mark.slow
def test_history_has_every_task_metric_and_the_task_weights(offline_runs) -> None:
    run = read_run(offline_runs[0])
    logged = {key for row in run["history"] for key in row}
    for task in TASKS:
        assert f"train/{task}/loss" in logged and f"val/{task}/loss" in logged
        assert f"train/mtl/weight/{task}" in logged
    for key in HEADLINE:
        assert f"val/{key}" in logged
    assert {"val/mtl/score", "val/detection/map", "val/segmentation/pixel_accuracy"} <= logged
    # Validation values are plotted against Lightning's step.
    assert all("trainer/global_step" in row for row in run["history"] if "val/mtl/score" in row)


@pytest.mark.slow
def test_best_values_are_summarised_and_the_config_holds_sizes(offline_runs) -> None:
    run = read_run(offline_runs[0])
    for key in (*HEADLINE, "mtl/score"):
        definition = run["metrics"][f"val/{key}"]
        assert definition.summary.max and definition.step_metric == "trainer/global_step"
        assert set(run["summary"][f"val/{key}"]) == {"max", "last"}
    assert run["metrics"]["val/mtl/loss"].summary.min
    config = run["config"]
    assert config["params/total"] > config["params/backbone"] > config["params/neck"] > 0
    assert all(config[f"params/head/{task}"] > 0 for task in TASKS)
    assert config["model.lr"] == 0.003 and config["model.backbone"] == "resnet18"
    assert config["data.class_path"] == "mtl_lightning.data.ScenesDataModule"


@pytest.mark.slow
def test_media_overlay_table_and_confusion_matrix_are_written(offline_runs) -> None:
    run_dir = offline_runs[0]
    run = read_run(run_dir)
    media = run["folder"] / "files" / "media"
    assert len(list((media / "images" / "val").glob("overlays_*.png"))) == 8
    assert list((media / "images" / "mask" / "val").glob("overlays_*.png"))
    assert list((media / "metadata" / "boxes2D" / "val").glob("overlays_*.json"))
    (table_file,) = (media / "table" / "val").glob("overlay_table_*.table.json")
    table = json.loads(table_file.read_text())
    assert len(table["data"]) == 8
    assert {"overlay", "classification truth", "classification prediction",
            "segmentation miou", "detection map_50"} <= set(table["columns"])
    assert list((media / "images" / "val" / "classification").glob("confusion_matrix_*.png"))
    (matrix_file,) = (media / "table" / "val" / "classification").glob("confusion_matrix*.json")
    matrix = json.loads(matrix_file.read_text())
    assert sum(row[2] for row in matrix["data"]) == 16  # every validation image counted
    # The table's images travel in run-table artifacts, uploaded by `wandb sync`.
    assert {kind for kind, _ in run["artifacts"]} == {"run_table"}
    # The same pictures without W&B.
    assert (run_dir / "confusion_matrix" / "epoch000.png").is_file()
    assert len(list((run_dir / "overlays" / "epoch000").glob("*.png"))) == 8


@pytest.mark.slow
def test_fit_from_a_checkpoint_continues_the_same_wandb_run(offline_runs) -> None:
    first, second, _ = offline_runs
    run_id = (first / WANDB_ID_FILE).read_text().strip()
    assert (second / WANDB_ID_FILE).read_text().strip() == run_id
    resumed = read_run(second)
    assert resumed["folder"].name.endswith(f"-{run_id}")

    def validation_steps(run: dict) -> list[int]:
        return [row["trainer/global_step"] for row in run["history"] if "val/mtl/score" in row]

    before, after = validation_steps(read_run(first)), validation_steps(resumed)
    # Epoch 2 only, logged after epoch 1's steps: the run goes on where the checkpoint stopped.
    assert len(before) == len(after) == 1 and after[0] == before[0] + 2
