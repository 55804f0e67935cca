"""Every ``configs/balancer/*.yaml`` trains the five-task Scenes setup (classification,
segmentation, detection, depth, normals): the dense regression tasks' losses and gradients go
through each method like the others.

One process, the Python API: one tiny dense Scenes set (64 px), and per balancer a
quarter-width ResNet-18 trained for two optimizer steps of four images (no validation, no
training metrics, no files). Checked: each task's loss and weight are finite, the weights
cover all five tasks, the parameters stay finite, and a gradient method logs the cosines of
all ten task pairs.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer

from mtl_lightning.balancing import GradientWeighting
from mtl_lightning.data import ScenesDataModule
from mtl_lightning.module import MultiTaskModule

from ..conftest import SMOKE_CONFIG

BALANCER_CONFIGS = sorted((SMOKE_CONFIG.parent / "balancer").glob("*.yaml"))
FIVE = ("classification", "segmentation", "detection", "depth", "normals")


def build_balancer(path: Path):
    spec = yaml.safe_load(path.read_text())
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**(spec.get("init_args") or {}))


@pytest.fixture(scope="module")
def dense_scenes(tmp_path_factory: pytest.TempPathFactory) -> ScenesDataModule:
    data = ScenesDataModule(
        root=str(tmp_path_factory.mktemp("dense_scenes")), image_size=64, num_train=8,
        num_val=4, num_test=4, num_classes=3, batch_size=4, num_workers=0,
        generator_workers=0, dense=True, hflip=0.0, scale_jitter=(1.0, 1.0), translate=0.0,
        color_jitter=0.0)
    data.prepare_data()
    data.setup()
    return data


@pytest.mark.parametrize("config", BALANCER_CONFIGS, ids=[p.stem for p in BALANCER_CONFIGS])
def test_balancer_trains_five_tasks(config: Path, dense_scenes: ScenesDataModule,
                                    tmp_path: Path) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    assert tuple(dense_scenes.task_info) == FIVE
    model = MultiTaskModule(
        task_info=dense_scenes.task_info, neck_channels=16, train_metrics=False,
        backbone_kwargs={"channels": [16, 32, 64, 128], "stem_width": 16},
        task_options={"depth": {"decoder_channels": 16}, "normals": {"decoder_channels": 16},
                      "segmentation": {"decoder_channels": 16},
                      "detection": {"head_channels": 16}},
        balancer=build_balancer(config),
    )
    trainer = Trainer(accelerator="cpu", max_steps=2, max_epochs=1, limit_val_batches=0,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, log_every_n_steps=1,
                      default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dense_scenes)
    assert trainer.global_step == 2
    logged = {key: float(value) for key, value in trainer.callback_metrics.items()}
    for task in FIVE:
        assert math.isfinite(logged[f"train/{task}/loss"]), task
        assert math.isfinite(logged[f"train/mtl/weight/{task}"]), task
    assert math.isfinite(logged["train/mtl/loss"])
    assert all(math.isfinite(p.detach().sum().item()) for p in model.parameters())
    if isinstance(model.balancer, GradientWeighting):
        cosines = [k for k in logged if k.startswith("train/mtl/cosine/")]
        assert len(cosines) == 10, cosines  # every pair of the five tasks
        assert any("depth" in k for k in cosines) and any("normals" in k for k in cosines)
