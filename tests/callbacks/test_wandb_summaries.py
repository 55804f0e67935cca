"""W&B run set-up pieces: parameter counts, flattened config, summary definitions, resume ids."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
import yaml
from lightning.pytorch.loggers import CSVLogger

from mtl_lightning.callbacks.wandb_summaries import (
    WandbSummaries,
    flatten_config,
    parameter_counts,
    summary_definitions,
)
from mtl_lightning.loggers import (
    WANDB_ID_FILE,
    AutoWandbLogger,
    resume_wandb_run,
    wandb_run_id_near,
)
from mtl_lightning.module import MultiTaskModule

INFO = {
    "classification": {"num_classes": 3},
    "segmentation": {"num_classes": 4},
    "detection": {"num_classes": 3},
}


@pytest.fixture(scope="module")
def model() -> MultiTaskModule:
    return MultiTaskModule(task_info=INFO, neck_channels=16)


def test_parameter_counts_split_the_total_by_module_and_head(model) -> None:
    counts = parameter_counts(model)
    assert counts["params/total"] == sum(p.numel() for p in model.parameters())
    assert counts["params/backbone"] == sum(p.numel() for p in model.backbone.parameters())
    assert counts["params/neck"] == sum(p.numel() for p in model.neck.parameters())
    for task in INFO:
        assert counts[f"params/head/{task}"] == sum(
            p.numel() for p in model.tasks[task].parameters())
    parts = sum(v for k, v in counts.items() if k != "params/total")
    assert parts == counts["params/total"]  # every parameter is counted exactly once
    assert "params/metrics" not in counts  # modules without parameters are left out


def test_config_is_flattened_to_cli_option_names() -> None:
    config = {"model": {"lr": 0.1, "balancer": {"class_path": "X", "init_args": {"a": 1}}},
              "trainer": {"callbacks": [1, 2], "logger": {}}, "seed_everything": 0}
    assert flatten_config(config) == {
        "model.lr": 0.1, "model.balancer.class_path": "X", "model.balancer.init_args.a": 1,
        "trainer.callbacks": [1, 2], "trainer.logger": {}, "seed_everything": 0,
    }


def test_summaries_follow_each_tasks_direction(model) -> None:
    definitions = summary_definitions(model)
    assert definitions["val/mtl/score"] == "max,last"
    assert definitions["val/classification/accuracy"] == "max,last"
    assert definitions["val/segmentation/miou"] == "max,last"
    assert definitions["val/detection/map_50"] == "max,last"
    assert definitions["val/detection/loss"] == "min,last"

    class Depth:
        headline_metric = "abs_rel"
        lower_is_better: ClassVar[frozenset[str]] = frozenset({"abs_rel"})

    depth = SimpleNamespace(tasks={"depth": Depth()})
    assert summary_definitions(depth)["val/depth/abs_rel"] == "min,last"


def test_parameter_counts_reach_a_csv_logger_too(model, tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="", version="")
    trainer = SimpleNamespace(loggers=[logger])
    WandbSummaries().on_fit_start(trainer, model)
    logger.save()
    saved = yaml.safe_load((tmp_path / "hparams.yaml").read_text())
    assert saved["params/total"] == parameter_counts(model)["params/total"]
    assert not (tmp_path / WANDB_ID_FILE).exists()  # no W&B run, no id file


def test_run_id_is_found_next_to_a_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    assert wandb_run_id_near(ckpt) is None
    (tmp_path / "run" / WANDB_ID_FILE).write_text("abc123\n")
    assert wandb_run_id_near(ckpt) == "abc123"
    assert wandb_run_id_near("last") is None and wandb_run_id_near(None) is None
    init_args = SimpleNamespace(id=None, save_dir="x")
    assert resume_wandb_run(init_args, str(ckpt)) == "abc123"
    assert init_args.id == "abc123"
    chosen = SimpleNamespace(id="mine")
    assert resume_wandb_run(chosen, str(ckpt)) is None and chosen.id == "mine"


def test_log_model_is_switched_off_offline(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="log_model is ignored"):
        logger = AutoWandbLogger(mode="offline", log_model=True, save_dir=str(tmp_path))
    assert logger._log_model is False
    online = AutoWandbLogger(mode="online", log_model="all", save_dir=str(tmp_path))
    assert online._log_model == "all"  # nothing is contacted before the run starts
