"""A NaN loss or gradient never reaches the weights: the step is skipped, or the run stops
with a one-line message and the checkpoints already written intact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtl_lightning.cli import main, run_cli
from mtl_lightning.module import NonFiniteLossError
from mtl_lightning.tasks.segmentation import SegmentationTask

from ..conftest import SMOKE_CONFIG

pytestmark = pytest.mark.slow  # each test is a short CLI fit


def _args(tmp: Path, scenes_root: Path, *extra: str) -> list[str]:
    return [
        "--config", str(SMOKE_CONFIG),
        "--trainer.default_root_dir", str(tmp / "runs"),
        "--data.init_args.root", str(scenes_root),
        "--data.init_args.image_size", "32",
        "--trainer.enable_progress_bar", "false",
        "--test_after_fit", "false",
        "--overlays.num_images", "0",
        "--trainer.logger", "false",
        *extra,
    ]


def _poison_segmentation(monkeypatch: pytest.MonkeyPatch, calls: set[int]) -> list[int]:
    """Make the segmentation loss NaN on the given (0-based) training calls."""
    original = SegmentationTask.loss
    seen: list[int] = []

    def loss(self, outputs, targets, has):
        value = original(self, outputs, targets, has)
        if not torch.is_grad_enabled():
            return value
        seen.append(len(seen))
        return value * float("nan") if seen[-1] in calls else value

    monkeypatch.setattr(SegmentationTask, "loss", loss)
    return seen


@pytest.mark.parametrize("balancer", ["equal", "mgda"])
def test_a_nan_loss_skips_the_step_and_the_weights_stay_finite(
    balancer: str, tmp_path: Path, scenes_root: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _poison_segmentation(monkeypatch, calls={1})
    cli = run_cli(["fit", *_args(tmp_path, scenes_root,
                                 "--model.balancer", f"configs/balancer/{balancer}.yaml",
                                 "--trainer.max_epochs", "1")])
    model = cli.model
    assert model.skipped_steps == 1
    assert cli.trainer.global_step == 4  # 64 images / 16: the skipped batch made no update
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_stop_policy_names_the_task_and_step_and_keeps_the_checkpoint(
    tmp_path: Path, scenes_root: Path, monkeypatch: pytest.MonkeyPatch, capsys,
) -> None:
    _poison_segmentation(monkeypatch, calls={5})  # epoch 1's second step
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *_args(tmp_path, scenes_root, "--model.nonfinite_policy", "stop",
                            "--run_name", "nan")])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "segmentation loss" in message and "step 5" in message
    last = tmp_path / "runs" / "nan" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values()
               if v.is_floating_point())


def test_too_many_skips_in_a_row_stop_the_run(
    tmp_path: Path, scenes_root: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _poison_segmentation(monkeypatch, calls=set(range(100)))
    with pytest.raises(NonFiniteLossError, match="3 skipped steps in a row"):
        run_cli(["fit", *_args(tmp_path, scenes_root, "--model.max_consecutive_skips", "2")])


def test_a_nan_gradient_with_a_finite_loss_is_skipped(
    tmp_path: Path, scenes_root: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mtl_lightning.module import MultiTaskModule

    original = MultiTaskModule.on_before_optimizer_step
    poisoned: list[int] = []

    def poison(self, optimizer):
        if not poisoned:
            poisoned.append(1)
            next(self.neck.parameters()).grad.fill_(float("nan"))
        original(self, optimizer)

    monkeypatch.setattr(MultiTaskModule, "on_before_optimizer_step", poison)
    cli = run_cli(["fit", *_args(tmp_path, scenes_root, "--trainer.max_epochs", "1")])
    assert cli.model.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())
