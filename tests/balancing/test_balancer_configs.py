"""Every ``configs/balancer/*.yaml`` trains the smoke config for a few steps through the CLI.

A quarter-width ResNet-18 on the session's tiny Scenes data, three optimizer steps of four
images, no training metrics, no validation and no checkpoint files. What is checked: each
method builds from its YAML, its weights and the losses stay finite, and gradient methods log
the task-gradient cosines.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from pathlib import Path

import pytest
import torch
import yaml

import mtl_lightning.balancing as balancing
from mtl_lightning.balancing import GradientWeighting, LossWeighting
from mtl_lightning.cli import run_cli

from ..conftest import SMOKE_CONFIG, TINY_SCENES

BALANCER_CONFIGS = sorted((SMOKE_CONFIG.parent / "balancer").glob("*.yaml"))
TASKS = ("classification", "segmentation", "detection")


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    """One thread: at this size a second one costs more in synchronisation than it saves."""
    torch.set_num_threads(1)


def balancer_class(path: Path) -> type:
    module, _, name = yaml.safe_load(path.read_text())["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)


def _abstract(cls: type) -> bool:
    """Balancers are ``nn.Module``s, not ``ABC``s: look for unimplemented abstract methods."""
    return any(getattr(getattr(cls, name, None), "__isabstractmethod__", False)
               for name in dir(cls))


def test_every_balancing_method_has_a_config() -> None:
    methods = {
        cls for name in balancing.__all__
        if inspect.isclass(cls := getattr(balancing, name))
        and issubclass(cls, (LossWeighting, GradientWeighting)) and not _abstract(cls)
    }
    assert len(methods) >= 27
    configured = {balancer_class(path) for path in BALANCER_CONFIGS}
    assert methods - configured == set()
    assert len(BALANCER_CONFIGS) >= 29


@pytest.mark.parametrize("config", BALANCER_CONFIGS, ids=[p.stem for p in BALANCER_CONFIGS])
def test_balancer_config_trains_the_smoke_model(config: Path, tiny_scenes, scenes_root: Path,
                                               tmp_path: Path) -> None:
    # The session's tiny Scenes data (same fingerprint: not generated again), 4 images a batch.
    data = {k: v for k, v in TINY_SCENES.items() if k != "generator_workers"}
    data["batch_size"] = 4
    data_args = [arg for key, value in data.items()
                 for arg in (f"--data.init_args.{key}", str(value))]
    cli = run_cli([
        "fit", "--config", str(SMOKE_CONFIG),
        "--model.balancer", str(config),
        "--model.backbone_kwargs", '{"channels": [16, 32, 64, 128], "stem_width": 16}',
        "--model.neck_channels", "16", "--model.train_metrics", "false",
        "--data.init_args.root", str(scenes_root), *data_args,
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.max_steps", "3", "--trainer.max_epochs", "1",
        "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--checkpoint.save_top_k", "0", "--checkpoint.save_last", "false",
        "--test_after_fit", "false",
    ])
    trainer = cli.trainer
    assert trainer.global_step == 3
    assert type(cli.model.balancer) is balancer_class(config)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for task in TASKS:
        assert math.isfinite(metrics[f"train/{task}/loss"]), task
        assert math.isfinite(metrics[f"train/mtl/weight/{task}"]), task
    assert math.isfinite(metrics["train/mtl/loss"])
    assert all(math.isfinite(p.detach().sum().item()) for p in cli.model.parameters())
    if isinstance(cli.model.balancer, GradientWeighting):
        cosines = [k for k in metrics if k.startswith("train/mtl/cosine/")]
        assert len(cosines) == 3, cosines  # the three task pairs, logged at step 0
        assert all(-1.0 - 1e-6 <= metrics[k] <= 1.0 + 1e-6 for k in cosines)
    # Logged to the run's CSV too, every step.
    csv = (Path(cli.run_dir) / "metrics.csv").read_text()
    assert "train/mtl/weight/detection" in csv.splitlines()[0]


def test_the_manual_lists_every_balancer_config_and_counts_them() -> None:
    """docs/balancing.md's table of methods names every file of configs/balancer/ (and no
    other), each with its class and a paper, and its count line matches the folder."""
    page = (SMOKE_CONFIG.parent.parent / "docs" / "balancing.md").read_text()
    section = page.split("## The methods and their papers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    listed = {name: row for row in rows for name in re.findall(r"`([a-z0-9_]+\.yaml)`", row)}
    assert set(listed) == {p.name for p in BALANCER_CONFIGS}
    for config in BALANCER_CONFIGS:
        cells = [cell.strip() for cell in listed[config.name].strip("|").split("|")]
        assert cells[1].startswith(f"`{balancer_class(config).__name__}`"), (config.name, cells)
        assert cells[-1], f"{config.name}: no paper"
    classes = {balancer_class(p) for p in BALANCER_CONFIGS}
    assert f"{len(BALANCER_CONFIGS)} configs, {len(classes)} methods" in section
