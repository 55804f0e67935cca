"""Resuming: a run killed with SIGKILL mid-epoch continues with ``fit --ckpt_path last``, and a
run resumed at an epoch boundary ends exactly where the uninterrupted run ends.

``--ckpt_path last`` continues the most recent run under ``trainer.default_root_dir`` (or the
one named by ``--run_name``) in its own directory: every run otherwise gets a new one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from mtl_lightning.cli import run_cli

from .helpers import (
    PauseAtStep,
    StopAfterEpoch,
    callback_arg,
    cli_args,
    cli_command,
    cli_subprocess_env,
    load,
    run_dirs,
)

DWA = Path(__file__).resolve().parents[2] / "configs" / "balancer" / "dwa.yaml"


def _wait_for(marker: Path, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not marker.is_file():
        if process.poll() is not None:
            pytest.fail(f"the run ended before the pause:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no pause after {timeout} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_run_killed_mid_epoch_resumes_with_ckpt_path_last(tmp_path: Path, scenes: Path) -> None:
    # 16 images in batches of 4: 4 steps per epoch, 2 epochs; last.ckpt every 2 steps.
    runs = tmp_path / "runs"
    options = {"--checkpoint.every_n_train_steps": "2"}
    marker = tmp_path / "paused"
    log = tmp_path / "killed.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            cli_command("fit", *cli_args(runs, scenes, **options),
                        *callback_arg(PauseAtStep, step=7, marker=str(marker))),
            env=cli_subprocess_env(), stdout=output, stderr=subprocess.STDOUT,
        )
        try:
            _wait_for(marker, process, log, timeout=300)
        finally:
            os.kill(process.pid, signal.SIGKILL)  # no clean-up, no final checkpoint
            process.wait()
    assert process.returncode == -signal.SIGKILL
    (run_dir,) = run_dirs(runs)
    last = run_dir / "checkpoints" / "last.ckpt"
    killed = load(last)
    # The process got past its last checkpoint, in the middle of the second epoch.
    assert (killed["epoch"], killed["global_step"]) == (1, 6)
    assert int(marker.read_text()) == 7

    resumed = run_cli(["fit", *cli_args(runs, scenes, **options), "--ckpt_path", "last"])
    assert Path(resumed.run_dir) == run_dir and run_dirs(runs) == [run_dir]
    final = load(last)
    assert (final["epoch"], final["global_step"]) == (1, 8)  # both epochs, all 8 steps
    assert resumed.trainer.current_epoch == 2  # max_epochs reached
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["val/mtl/score"] <= 1.0
    assert not torch.equal(
        killed["state_dict"]["tasks.classification.head.1.weight"],
        final["state_dict"]["tasks.classification.head.1.weight"],
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_resume_at_epoch_boundary_matches_uninterrupted_run(tmp_path: Path, scenes: Path) -> None:
    """3 epochs in one go vs 2 + 1 with a stop (and a new process state) between: identical
    weights, optimizer state, DWA history and metrics. DWA's weights depend on the last two
    epochs' losses, so a balancer state saved before its epoch-end update would show; the
    random augmentations and data order need the generator states saved by ``random_state``."""
    runs = tmp_path / "runs"
    options = {"--trainer.max_epochs": "3"}
    balancer = ("--model.balancer", str(DWA))
    whole = run_cli(["fit", *cli_args(runs, scenes, *balancer, **options)])
    stopped = run_cli(["fit", *cli_args(runs, scenes, *balancer, *callback_arg(
        StopAfterEpoch, epoch=1), "--run_name", "interrupted", **options)])
    boundary = load(Path(stopped.run_dir) / "checkpoints" / "last.ckpt")
    assert (boundary["epoch"], boundary["global_step"]) == (1, 8)
    torch.manual_seed(12345)  # whatever state this process is left in must not matter
    resumed = run_cli(["fit", *cli_args(runs, scenes, *balancer, "--run_name", "interrupted",
                                        "--ckpt_path", "last", **options)])
    assert resumed.run_dir == stopped.run_dir

    a = load(Path(whole.run_dir) / "checkpoints" / "last.ckpt")
    b = load(Path(resumed.run_dir) / "checkpoints" / "last.ckpt")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (2, 12)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert int(b["state_dict"]["balancer.epochs_done"]) == 3  # DWA weights were in use
    for state_a, state_b in zip(a["optimizer_states"][0]["state"].values(),
                                b["optimizer_states"][0]["state"].values()):
        assert torch.equal(state_a["exp_avg"], state_b["exp_avg"])
    assert a["lr_schedulers"] == b["lr_schedulers"]
    metrics_a = json.loads((Path(whole.run_dir) / "metrics.json").read_text())
    metrics_b = json.loads((Path(resumed.run_dir) / "metrics.json").read_text())
    assert {k: v for k, v in metrics_a.items() if k.startswith("val/")} == {
        k: v for k, v in metrics_b.items() if k.startswith("val/")}
