"""DDP with partial labels: a task missing from one process's batch neither hangs nor errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from mtl_lightning.data import ScenesDataModule
from mtl_lightning.module import MultiTaskModule


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_ddp_with_tasks_missing_from_batches(tmp_path: Path) -> None:
    # Batches of one image, half of them without detection labels and half without
    # segmentation: in most steps one process has a task its peer lacks. Without the zero
    # loss that keeps unused heads in the graph, DDP would fail at the gradient all-reduce.
    data = ScenesDataModule(
        root=str(tmp_path / "scenes"), image_size=64, num_train=16, num_val=4, num_test=4,
        num_classes=3, batch_size=1, num_workers=0, generator_workers=0,
        label_fraction={"detection": 0.5, "segmentation": 0.5},
    )
    data.prepare_data()
    data.setup()
    has = [data.datasets["train"][i]["has"] for i in range(16)]
    assert any(not h["detection"] for h in has) and any(h["detection"] for h in has)
    model = MultiTaskModule(task_info=data.task_info, backbone="resnet18", neck_channels=8)
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=8,
        limit_val_batches=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    before = model.tasks["detection"].heatmap_head[0].weight.detach().clone()
    trainer.fit(model, datamodule=data)
    assert trainer.state.finished
    # ddp_spawn copies the trained weights back into this process's model.
    after = model.tasks["detection"].heatmap_head[0].weight
    assert not torch.equal(before, after)
