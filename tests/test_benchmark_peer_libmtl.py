"""The LibMTL peer (benchmarks/suite/peer_libmtl.py) drives LibMTL's trainer step on our
backbone, heads, losses and metrics: both sides compute the same losses, LibMTL's step moves
the weights, and the measurement reports a ratio per weighting (or why it cannot run)."""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, SMOKE_CONFIG

sys.path.insert(0, str(REPO / "benchmarks"))
from suite.common import batches_in_memory, build_cli
from suite.peer_libmtl import (
    TheirsStep,
    cpu_trainer,
    dense_args,
    import_libmtl,
    libmtl_missing,
    our_losses,
    peer_libmtl_step,
)
from suite.settings import QUICK

MISSING = libmtl_missing()
needs_libmtl = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


@needs_libmtl
@pytest.mark.parametrize("weighting", ["EW", "PCGrad"])
def test_libmtl_step_computes_our_losses_and_trains(tmp_path: Path, weighting: str) -> None:
    cli = build_cli(*dense_args(tmp_path), "--trainer.precision=32", config=SMOKE_CONFIG)
    assert set(cli.model.tasks) == {"segmentation", "depth", "normals"}
    batch = batches_in_memory(cli.datamodule.train_dataloader(), 1, "cpu")[0]
    model = copy.deepcopy(cli.model)
    theirs = TheirsStep(cpu_trainer(import_libmtl(), model, weighting,
                                    tuple(batch["image"].shape[-2:])), model, "32", "cpu")
    ours = our_losses(cli.model.train(), batch, "32", "cpu")
    with torch.no_grad():
        libmtl_losses = theirs.losses(batch).tolist()
    assert libmtl_losses == pytest.approx(ours, rel=1e-5)
    before = [p.detach().clone() for p in model.parameters()]
    theirs.step(batch)
    moved = [not torch.equal(a, b) for a, b in zip(before, model.parameters())]
    assert all(moved[: len(list(model.architecture.parameters()))][:3]) and sum(moved) > 0
    assert theirs.trainer.meter.metrics["segmentation"].score_fun()  # our metric updated


@pytest.mark.slow
@needs_libmtl
def test_peer_measurement_reports_a_ratio_per_weighting() -> None:
    settings = dataclasses.replace(QUICK, rounds=1, steps=1, warmup=0, in_memory_batches=1)
    result = peer_libmtl_step(settings, "cpu", SMOKE_CONFIG,
                              ["--trainer.precision=32", "--model.channels_last=true"])
    assert result["target"] == 1.0
    assert math.isfinite(result["ratio"]["median"]) and result["ratio"]["median"] > 0
    assert result["methods"]["pcgrad"]["channels_last"] is False  # LibMTL's .view(-1)
    for method, weighting in (("equal", "EW"), ("pcgrad", "PCGrad")):
        entry = result["methods"][method]
        assert entry["libmtl_weighting"] == weighting
        assert entry["max_abs_loss_difference"] < 1e-4
        assert entry["ours_ms"]["median"] > 0 and entry["theirs_ms"]["median"] > 0


def test_without_libmtl_the_key_says_why(monkeypatch) -> None:
    import suite.peer_libmtl as peer

    monkeypatch.setattr(peer, "libmtl_missing", lambda: "LibMTL is not importable (test)")
    result = peer.peer_libmtl_step(QUICK, "cpu", SMOKE_CONFIG, [])
    assert result == {"skipped": "LibMTL is not importable (test)", "target": 1.0}
