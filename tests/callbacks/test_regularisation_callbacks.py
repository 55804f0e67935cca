"""Staged training freezes what it names until its epoch; EMA and early stopping run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from mtl_lightning.callbacks import StagedTraining
from mtl_lightning.cli import run_cli

from ..conftest import SMOKE_CONFIG

pytestmark = pytest.mark.slow  # short CLI fits


def _args(tmp: Path, scenes_root: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(SMOKE_CONFIG),
        "--trainer.default_root_dir", str(tmp / "runs"),
        "--data.init_args.root", str(scenes_root), "--data.init_args.image_size", "32",
        "--trainer.enable_progress_bar", "false", "--test_after_fit", "false",
        "--overlays.num_images", "0", *extra,
    ]


class Snapshots(Callback):
    """The backbone's and the detection head's weights at the end of each training epoch."""

    def __init__(self) -> None:
        self.backbone: list[torch.Tensor] = []
        self.detection: list[torch.Tensor] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        flat = [p.detach().flatten().clone() for p in pl_module.backbone.parameters()]
        self.backbone.append(torch.cat(flat))
        head = [p.detach().flatten().clone() for p in pl_module.tasks["detection"].parameters()]
        self.detection.append(torch.cat(head))


def test_staged_training_trains_each_part_from_its_epoch(tmp_path: Path, scenes_root: Path,
                                                         monkeypatch) -> None:
    snapshots = Snapshots()
    initial: dict[str, torch.Tensor] = {}

    class Start(Callback):
        def on_fit_start(self, trainer, pl_module) -> None:
            trainer.callbacks.append(snapshots)
            initial["backbone"] = torch.cat(
                [p.detach().flatten().clone() for p in pl_module.backbone.parameters()])

    import mtl_lightning.cli as cli_module

    original = cli_module.MultiTaskCLI.instantiate_classes

    def with_start(self) -> None:
        original(self)
        self.trainer.callbacks.append(Start())

    monkeypatch.setattr(cli_module.MultiTaskCLI, "instantiate_classes", with_start)
    run_cli(_args(tmp_path, scenes_root, "--trainer.max_epochs", "3",
                  "--trainer.callbacks+=configs/callbacks/staged.yaml",
                  "--trainer.callbacks+={'class_path': 'mtl_lightning.callbacks.StagedTraining',"
                  " 'init_args': {'freeze_until': {'detection': 1}}}"))
    backbone, detection = snapshots.backbone, snapshots.detection
    assert torch.equal(backbone[0], initial["backbone"])  # epoch 0: frozen
    assert torch.equal(backbone[1], backbone[0])  # epoch 1: still frozen (until 2)
    assert not torch.equal(backbone[2], backbone[1])  # epoch 2: trains
    assert not torch.equal(detection[1], detection[0])  # the head trains from epoch 1


def test_unknown_parts_are_named(tmp_path: Path, scenes_root: Path) -> None:
    with pytest.raises(ValueError, match="unknown parts \\['trunk'\\]"):
        run_cli(_args(tmp_path, scenes_root, "--trainer.max_epochs", "1",
                      "--trainer.callbacks+={'class_path': "
                      "'mtl_lightning.callbacks.StagedTraining', "
                      "'init_args': {'freeze_until': {'trunk': 1}}}"))
    assert StagedTraining({"backbone": 1}).freeze_until == {"backbone": 1}


@pytest.mark.parametrize("config", ["ema", "early_stopping"])
def test_ema_and_early_stopping_configs_run(config: str, tmp_path: Path,
                                            scenes_root: Path) -> None:
    cli = run_cli(_args(tmp_path, scenes_root, "--trainer.max_epochs", "2",
                        f"--trainer.callbacks+=configs/callbacks/{config}.yaml"))
    names = [type(c).__name__ for c in cli.trainer.callbacks]
    assert {"ema": "EMAWeightAveraging", "early_stopping": "EarlyStopping"}[config] in names
    assert torch.isfinite(cli.trainer.callback_metrics["val/mtl/score"])
