"""The manual's code examples run: the task (and its config) of docs/adding-a-task.md
trains, the balancers of docs/adding-a-balancer.md compute their formulas and train, and the
architecture of docs/adding-an-architecture.md trains."""

from __future__ import annotations

import math
import re
import sys
import types
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Trainer

from mtl_lightning.module import MultiTaskModule
from tests.conftest import REPO


def _python_blocks(page: str) -> list[str]:
    text = (REPO / "docs" / page).read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _yaml_blocks(page: str) -> list[Any]:
    text = (REPO / "docs" / page).read_text()
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)]


@pytest.fixture
def guide_task_config(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The guide's task file, importable as ``my_project.foreground`` (the module its config
    names), and the guide's config that trains it (its ``model.tasks``)."""
    package = types.ModuleType("my_project")
    package.__path__ = []
    module = types.ModuleType("my_project.foreground")
    package.foreground = module
    monkeypatch.setitem(sys.modules, package.__name__, package)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    source = _python_blocks("adding-a-task.md")[0]
    exec(compile(source, "docs/adding-a-task.md", "exec"), module.__dict__)
    configs = [c for c in _yaml_blocks("adding-a-task.md")
               if any("class_path" in (options or {})
                      for options in c["model"]["tasks"].values())]
    assert len(configs) == 1, "the guide shows one config with the task's class_path"
    return configs[0]["model"]["tasks"]


def test_the_guides_task_trains_validates_and_predicts(guide_task_config, tiny_scenes,
                                                       tmp_path) -> None:
    (name,) = [n for n, o in guide_task_config.items() if "class_path" in (o or {})]
    assert guide_task_config[name]["class_path"] == "my_project.foreground.ForegroundTask"
    model = MultiTaskModule(task_info=tiny_scenes.task_info, neck_channels=16,
                            tasks=guide_task_config)
    task = model.tasks[name]
    assert type(task).__module__ == "my_project.foreground"
    assert task.name == name and task.source == "segmentation"
    before = [p.detach().clone() for p in task.parameters()]
    trainer = Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=tiny_scenes)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert math.isfinite(metrics[f"train/{name}/loss"])
    assert 0.0 <= metrics[f"val/{name}/iou"] <= 1.0
    assert 0.0 <= metrics[f"val/{name}/accuracy"] <= 1.0
    assert f"train/mtl/weight/{name}" in metrics
    # Its head learned: the steps changed its weights.
    assert any(not torch.equal(a, b) for a, b in zip(before, task.parameters()))
    # Predictions, JSON, files, drawing and export outputs as predict, the overlays and
    # export use them.
    model.eval()
    with torch.no_grad():
        outputs = model(next(iter(tiny_scenes.val_dataloader()))["image"][:2])
    prediction = task.postprocess(outputs[name])[0]
    record = task.prediction_to_json(prediction)
    assert 0 <= record["foreground_pixels"] <= record["pixels"] == prediction.numel()
    (png,) = task.prediction_files(prediction).values()
    assert png.shape == tuple(prediction.shape) and png.dtype == np.uint8
    picture = task.draw(torch.zeros(3, *prediction.shape, dtype=torch.uint8), prediction)
    assert picture.shape == (3, *prediction.shape)
    resized = task.resize_prediction(prediction, (prediction.shape[0] // 2,
                                                  prediction.shape[1]), (10, 20))
    assert resized.shape == (10, 20)
    assert set(task.export_outputs(outputs[name])) == {"labels"}


def _balancers() -> dict[str, type]:
    """The classes of docs/adding-a-balancer.md's examples, by name."""
    found: dict[str, type] = {}
    for number, source in enumerate(_python_blocks("adding-a-balancer.md")):
        namespace: dict = {"__name__": f"docs_balancer_example_{number}"}
        exec(compile(source, "docs/adding-a-balancer.md", "exec"), namespace)
        found.update({k: v for k, v in namespace.items()
                      if isinstance(v, type) and v.__module__ == namespace["__name__"]})
    return found


def test_the_guides_balancers_compute_their_formulas() -> None:
    from mtl_lightning.balancing import TaskLosses

    examples = _balancers()
    values = {"classification": torch.tensor(2.0), "segmentation": torch.tensor(0.5)}
    counts = {task: torch.tensor(4) for task in values}
    losses = TaskLosses.gather(values, counts)
    combination = examples["ScaleInvariant"]().combine(losses, step=0)
    assert float(combination.weights["classification"]) == pytest.approx(0.5)
    assert float(combination.weights["segmentation"]) == pytest.approx(2.0)
    gramian = torch.tensor([[4.0, 1.0], [1.0, 0.25]])
    weights = examples["UnitNormGradients"]().weights(gramian, losses, step=0)
    torch.testing.assert_close(weights, torch.tensor([0.5, 2.0]))


@pytest.mark.parametrize("name", ["ScaleInvariant", "UnitNormGradients", "SlowestTaskFirst"])
def test_the_guides_balancers_train(name, tiny_scenes, tmp_path) -> None:
    model = MultiTaskModule(task_info=tiny_scenes.task_info, neck_channels=16,
                            tasks={"classification": None, "segmentation": None},
                            balancer=_balancers()[name]())
    trainer = Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=tiny_scenes)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert trainer.global_step == 2
    for task in ("classification", "segmentation"):
        assert math.isfinite(metrics[f"train/mtl/weight/{task}"]) and metrics[
            f"train/mtl/weight/{task}"] > 0
    if name == "SlowestTaskFirst":  # its after-optimizer-step hook measured both tasks
        assert set(model.balancer.log_ratios) == {"classification", "segmentation"}


def test_the_guides_architecture_trains_with_a_representation_balancer(
        tiny_scenes, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mtl_lightning.balancing import MGDA
    from mtl_lightning.models import architectures

    blocks = _python_blocks("adding-an-architecture.md")
    module = types.ModuleType("mtl_lightning.models.architectures.task_necks")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(blocks[0], "docs/adding-an-architecture.md", "exec"), module.__dict__)
    monkeypatch.setitem(architectures.ARCHITECTURES, "task_necks", module.TaskNecks)
    config = (REPO / "docs" / "adding-an-architecture.md").read_text()
    assert "architecture: task_necks" in config
    model = MultiTaskModule(task_info=tiny_scenes.task_info, neck_channels=16,
                            tasks={"classification": None, "segmentation": None},
                            architecture="task_necks", balancer=MGDA())
    roles = model.architecture.roles()
    assigned = [*roles.trunk, *roles.shared, *(p for ps in roles.per_task.values() for p in ps)]
    assert sorted(map(id, assigned)) == sorted(map(id, model.architecture.parameters()))
    before = [p.detach().clone() for p in model.architecture.parameters()]
    trainer = Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=tiny_scenes)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert "train/mtl/cosine/classification__segmentation" in metrics
    changed = [not torch.equal(a, b) for a, b in zip(before, model.architecture.parameters())]
    assert sum(changed) > len(changed) // 2
