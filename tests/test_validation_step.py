"""The validation side of the module: one forward pass per batch, its raw outputs handed to
the callbacks, and the validation losses as an option."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from mtl_lightning.module import MultiTaskModule


class KeepOutputs(Callback):
    def __init__(self) -> None:
        self.outputs: list = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0) -> None:
        self.outputs.append(outputs)


def _validate(tiny_scenes, tmp_path: Path, **options) -> tuple[MultiTaskModule, Trainer, list]:
    torch.manual_seed(0)
    model = MultiTaskModule(task_info=tiny_scenes.task_info, neck_channels=16, **options)
    keep = KeepOutputs()
    trainer = Trainer(accelerator="cpu", logger=False, callbacks=[keep],
                      enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, default_root_dir=tmp_path,
                      limit_val_batches=1)
    trainer.validate(model, datamodule=tiny_scenes, verbose=False)
    return model, trainer, keep.outputs


def test_validation_step_hands_its_raw_outputs_to_the_callbacks(tiny_scenes, tmp_path) -> None:
    model, _, outputs = _validate(tiny_scenes, tmp_path)
    batch = next(iter(tiny_scenes.val_dataloader()))
    model.eval()  # validate hands the model back in training mode
    with torch.no_grad():
        expected = model(batch["image"])
    (handed,) = outputs
    assert set(handed["outputs"]) == set(model.tasks)
    torch.testing.assert_close(handed["outputs"]["classification"], expected["classification"])
    torch.testing.assert_close(handed["outputs"]["detection"]["heatmap"],
                               expected["detection"]["heatmap"])


@pytest.mark.parametrize("losses", [True, False])
def test_validation_losses_are_optional(tiny_scenes, tmp_path, monkeypatch, losses) -> None:
    from mtl_lightning.tasks.detection import DetectionTask

    called = []
    original = DetectionTask.loss
    monkeypatch.setattr(DetectionTask, "loss",
                        lambda self, *args: called.append(1) or original(self, *args))
    model, trainer, _ = _validate(tiny_scenes, tmp_path, validation_losses=losses)
    logged = set(trainer.callback_metrics)
    assert {"val/mtl/score", "val/detection/map_50", "val/segmentation/miou"} <= logged
    loss_keys = {"val/mtl/loss", "val/detection/loss", "val/segmentation/loss",
                 "val/classification/loss"}
    if losses:
        assert loss_keys <= logged and called
    else:
        assert not loss_keys & logged and not called
    assert model.hparams.validation_losses is losses  # saved with the checkpoint
