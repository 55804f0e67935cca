"""The peer benchmark (benchmarks/suite/peers.py) compares equal work: our UPGrad step and
torchjd's ``mtl_backward`` + ``jac_to_grad(UPGrad())`` write the same gradients, and the
measurement reports a ratio with its target."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import torch

from tests.conftest import REPO, SMOKE_CONFIG

sys.path.insert(0, str(REPO / "benchmarks"))
from suite.common import build_cli
from suite.peers import (
    PYRAMID_CLASSIFIER,
    OursUPGrad,
    TheirsUPGrad,
    max_gradient_difference,
    peer_torchjd_upgrad,
)
from suite.settings import QUICK


def peer_cli(scenes_root: Path):
    return build_cli(f"--data.init_args.root={scenes_root}", "--trainer.precision=32",
                     PYRAMID_CLASSIFIER, config=SMOKE_CONFIG)


def test_both_upgrad_paths_write_the_same_gradients(scenes_root: Path) -> None:
    cli = peer_cli(scenes_root)
    batch = next(iter(cli.datamodule.train_dataloader()))
    ours = OursUPGrad(cli.model, "32", "cpu")
    theirs = TheirsUPGrad(copy.deepcopy(cli.model), "32", "cpu")
    scale = max(float(p.grad.abs().max()) for p in _shared_grads(ours, batch))
    difference = max_gradient_difference(ours, theirs, batch)
    assert scale > 0
    assert difference <= 1e-4 * scale, (difference, scale)


def test_a_wrong_aggregation_is_detected(scenes_root: Path) -> None:
    """The comparison can fail: torchjd with the plain sum of the task gradients (not
    UPGrad, whose weights sum to about one) gives other gradients than our UPGrad step."""
    from torchjd.aggregation import Sum

    cli = peer_cli(scenes_root)
    batch = next(iter(cli.datamodule.train_dataloader()))
    ours = OursUPGrad(cli.model, "32", "cpu")
    theirs = TheirsUPGrad(copy.deepcopy(cli.model), "32", "cpu")
    theirs.aggregator = Sum()
    scale = max(float(p.grad.abs().max()) for p in _shared_grads(ours, batch))
    assert max_gradient_difference(ours, theirs, batch) > 1e-3 * scale


def test_peer_measurement_reports_a_ratio(scenes_root: Path) -> None:
    import dataclasses

    settings = dataclasses.replace(QUICK, rounds=1, steps=1, warmup=0, in_memory_batches=1)
    result = peer_torchjd_upgrad(settings, "cpu", SMOKE_CONFIG,
                                 [f"--data.init_args.root={scenes_root}",
                                  "--trainer.precision=32"])
    assert result["target"] == 0.9
    assert math.isfinite(result["ratio"]["median"]) and result["ratio"]["median"] > 0
    assert result["ours_ms"] > 0 and result["theirs_ms"] > 0
    assert result["max_abs_gradient_difference"] < 1e-2
    assert result["precision"] == "32" and result["theirs_at_config_precision"] == "32: ok"


def _shared_grads(side: OursUPGrad, batch: dict) -> list[torch.nn.Parameter]:
    """The backbone's and neck's parameters that received a gradient."""
    side.gradients(batch)
    return [p for p in side.model.architecture.parameters() if p.grad is not None]
