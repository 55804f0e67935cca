"""The validation breakdown of ``eval_overhead`` (benchmarks/suite/validation_breakdown.py)
and the data-size entries of ``scaling`` (benchmarks/suite/data_scaling.py)."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, SMOKE_CONFIG

sys.path.insert(0, str(REPO / "benchmarks"))
from suite.common import build_cli
from suite.data_scaling import data_size_scaling
from suite.settings import QUICK
from suite.validation_breakdown import validation_breakdown


class EpochTimer:
    def __init__(self) -> None:
        self.seconds = 0.0

    def on_validation_start(self, *args) -> None:
        self.start = time.perf_counter()

    def on_validation_end(self, *args) -> None:
        self.seconds = time.perf_counter() - self.start


def test_breakdown_parts_add_up_to_the_epoch_and_are_unwrapped(scenes_root: Path) -> None:
    from lightning.pytorch import Callback

    cli = build_cli(f"--data.init_args.root={scenes_root}", "--trainer.precision=32",
                    "--overlays.num_images=2", config=SMOKE_CONFIG)
    timer = type("Timer", (EpochTimer, Callback), {})()
    cli.trainer.callbacks.append(timer)
    cli.datamodule.setup("validate")
    parts = validation_breakdown(cli.trainer, cli.model, cli.datamodule, lambda: timer.seconds)
    for part in ("forward", "losses", "metric_updates", "metric_compute", "overlays",
                 "logging"):
        assert parts[part] > 0, part
    assert parts["losses"] == pytest.approx(sum(parts[f"loss/{name}"] for name in
                                                cli.model.tasks))
    named = sum(v for k, v in parts.items()
                if k not in ("epoch", "loader_and_rest", "losses"))
    assert parts["loader_and_rest"] == pytest.approx(parts["epoch"] - named)
    assert named < parts["epoch"]  # top-level only: nothing counted twice
    assert "forward" not in vars(cli.model) and "loss" not in vars(cli.model.tasks["segmentation"])


@pytest.mark.slow
def test_data_scaling_reports_cache_memory_growing_with_the_set(tmp_path: Path) -> None:
    settings = dataclasses.replace(QUICK, rounds=1, scaling_data_sizes=(16, 32))
    result = data_size_scaling(settings, "cpu", SMOKE_CONFIG,
                               ["--data.init_args.num_workers=0",
                                "--data.init_args.generator_workers=0"], tmp_path)
    assert set(result) == {"data_16_cache_off", "data_16_cache_on", "data_32_cache_off",
                           "data_32_cache_on"}
    assert result["data_16_cache_off"]["cache_mb"] == 0
    small, large = result["data_16_cache_on"]["cache_mb"], result["data_32_cache_on"]["cache_mb"]
    assert small > 0 and large == pytest.approx(2 * small, rel=0.2)
    assert all(entry["per_sample_ms"] > 0 for entry in result.values())
