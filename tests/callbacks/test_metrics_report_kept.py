"""metrics.json reports the model kept: the best epoch by the checkpoint's monitor."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mtl_lightning.callbacks.metrics_report import MetricsReport


def _trainer(tmp_path: Path, mode: str = "max") -> SimpleNamespace:
    return SimpleNamespace(
        checkpoint_callback=SimpleNamespace(monitor="val/mtl/score", mode=mode, save_top_k=1,
                                            best_model_path=str(tmp_path / "best.ckpt")),
        state=SimpleNamespace(fn="fit"), loggers=[], default_root_dir=str(tmp_path),
        sanity_checking=False, current_epoch=0, callback_metrics={},
    )


def _validate(report: MetricsReport, trainer: SimpleNamespace, epoch: int, score: float,
              accuracy: float) -> dict:
    trainer.current_epoch = epoch
    trainer.callback_metrics = {"val/mtl/score": torch.tensor(score),
                                "val/classification/accuracy": torch.tensor(accuracy),
                                "train/classification/loss": torch.tensor(1.0 + epoch)}
    report.on_validation_end(trainer, None)
    return json.loads((Path(trainer.default_root_dir) / "metrics.json").read_text())


@pytest.mark.parametrize(("mode", "scores", "kept"), [
    ("max", [0.2, 0.5, 0.3], 1),
    ("max", [0.5, 0.5, 0.4], 0),  # a tie keeps the earlier epoch, as ModelCheckpoint does
    ("min", [0.2, 0.5, 0.1], 2),
    ("max", [float("nan"), 0.1, 0.05], 1),  # NaN is never the best
])
def test_val_values_are_the_kept_epoch_and_last_values_are_kept_apart(
    mode: str, scores: list[float], kept: int, tmp_path: Path
) -> None:
    report, trainer = MetricsReport(print_table=False), _trainer(tmp_path, mode)
    report.setup(trainer, None, "fit")
    for epoch, score in enumerate(scores):
        metrics = _validate(report, trainer, epoch, score, accuracy=epoch / 10)
    assert metrics["kept/val/epoch"] == kept
    assert metrics["val/classification/accuracy"] == pytest.approx(kept / 10)
    assert metrics["last/val/classification/accuracy"] == pytest.approx((len(scores) - 1) / 10)
    assert metrics["train/classification/loss"] == len(scores)  # the latest epoch's


def test_the_choice_survives_a_resume_and_the_end_table_names_the_epoch(tmp_path: Path,
                                                                        capsys) -> None:
    report, trainer = MetricsReport(print_table=True), _trainer(tmp_path)
    report.setup(trainer, None, "fit")
    _validate(report, trainer, 0, 0.2, accuracy=0.0)
    _validate(report, trainer, 1, 0.6, accuracy=0.1)
    resumed = MetricsReport(print_table=True)
    resumed.setup(trainer, None, "fit")
    resumed.load_state_dict(report.state_dict())  # what a checkpoint carries
    metrics = _validate(resumed, trainer, 2, 0.4, accuracy=0.2)
    assert metrics["kept/val/epoch"] == 1 and metrics["val/mtl/score"] == pytest.approx(0.6)
    capsys.readouterr()
    resumed.on_fit_end(trainer, None)
    assert "kept model: epoch 1," in " ".join(capsys.readouterr().out.split())  # title wraps


def test_without_a_monitored_checkpoint_val_is_the_latest_epoch(tmp_path: Path) -> None:
    report, trainer = MetricsReport(print_table=False), _trainer(tmp_path)
    trainer.checkpoint_callback = None
    report.setup(trainer, None, "fit")
    _validate(report, trainer, 0, 0.9, accuracy=0.0)
    metrics = _validate(report, trainer, 1, 0.1, accuracy=0.1)
    assert metrics["val/mtl/score"] == pytest.approx(0.1) and "kept/val/epoch" not in metrics
