"""Determinism: two smoke runs with the same seed and ``--trainer.deterministic true`` give
identical metrics and weights; another seed gives other ones (so the comparison has teeth)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mtl_lightning.cli import run_cli

from .helpers import cli_args, load


@pytest.fixture
def _restore_deterministic_flag() -> Iterator[None]:
    """``deterministic=True`` switches ``torch.use_deterministic_algorithms`` on for the whole
    process; later tests get the setting back as it was."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def _run(runs: Path, scenes_root: Path, seed: int) -> tuple[dict, dict]:
    cli = run_cli(["fit", *cli_args(runs, scenes_root, **{
        "--trainer.deterministic": "true", "--seed_everything": str(seed)})])
    run_dir = Path(cli.run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return metrics, load(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.usefixtures("_restore_deterministic_flag")
def test_same_seed_same_metrics(tmp_path: Path) -> None:
    scenes = tmp_path / "scenes"
    first, weights = _run(tmp_path / "runs", scenes, seed=0)
    assert torch.are_deterministic_algorithms_enabled()
    second, weights_again = _run(tmp_path / "runs", scenes, seed=0)
    assert "val/segmentation/miou" in first and "train/classification/loss" in first
    assert first == second  # every metric of both stages, bit for bit
    for key, value in weights.items():
        assert torch.equal(value, weights_again[key]), key
    other, _ = _run(tmp_path / "runs", scenes, seed=1)
    assert other != first
