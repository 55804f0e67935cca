"""Callbacks and command-line helpers shared by the reliability tests.

The callbacks are given to the CLI by class path (``--trainer.callbacks``), also in the
subprocesses the tests start, so they live in an importable module.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from mtl_lightning.runs import RUN_DIR_ENV
from tests.conftest import REPO, SMOKE_CONFIG

#: Small smoke runs: 32 px images, few of them, no test after fit.
TINY = {
    "--data.init_args.image_size": "32",
    "--data.init_args.num_train": "16",
    "--data.init_args.num_val": "8",
    "--data.init_args.num_test": "8",
    "--data.init_args.batch_size": "4",
    "--model.backbone_kwargs": '{"channels": [16, 32, 64, 128], "stem_width": 16}',
    "--model.neck_channels": "16",
    "--overlays.num_images": "0",
    "--gradient_conflict.save_png": "false",
    "--test_after_fit": "false",
    "--trainer.enable_progress_bar": "false",
    "--report.print_table": "false",
}


def cli_args(runs: Path, scenes: Path, *extra: str, **options: str) -> list[str]:
    """Arguments of a tiny smoke run writing under ``runs``, with ``options`` overriding
    :data:`TINY` (``{"--trainer.max_epochs": "3"}`` style keys) and ``extra`` appended."""
    merged = {**TINY, "--trainer.default_root_dir": str(runs),
              "--data.init_args.root": str(scenes), **options}
    flat = [item for pair in merged.items() for item in pair]
    return ["--config", str(SMOKE_CONFIG), *flat, *extra]


def callback_arg(cls: type, **init_args: Any) -> list[str]:
    """``--trainer.callbacks`` adding one callback given by class path."""
    spec = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}
    return ["--trainer.callbacks", json.dumps([spec])]


def run_dirs(runs: Path) -> list[Path]:
    return sorted(p for p in runs.iterdir() if p.is_dir())


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


class StopAfterEpoch(Callback):
    """Ends ``fit`` cleanly after epoch ``epoch`` (its checkpoint saved), as an interruption
    at an epoch boundary would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


class PauseAtStep(Callback):
    """At optimizer step ``step`` writes ``marker`` (holding the step) and sleeps, so that a
    test can kill the process in the middle of an epoch at a known point."""

    def __init__(self, step: int, marker: str, seconds: float = 600.0) -> None:
        self.step = step
        self.marker = marker
        self.seconds = seconds

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.global_step == self.step:
            Path(self.marker).write_text(str(trainer.global_step))
            time.sleep(self.seconds)


class RecordLabelledTasks(Callback):
    """Appends ``rank step task,task`` to ``<folder>/rank<r>.txt`` for every training batch:
    which tasks that process's batch labels, to show that partial labels did leave a task
    out of one process's batch while its peer had it."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        tasks = sorted(t for t, has in batch["has"].items() if bool(has.any()))
        path = Path(self.folder) / f"rank{trainer.global_rank}.txt"
        with path.open("a") as log:
            log.write(f"{trainer.global_step} {','.join(tasks)}\n")


def cli_subprocess_env() -> dict[str, str]:
    """The environment for running the CLI in a child process: this repository importable
    (for the callbacks above) and nothing left over from DDP runs made in this process."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", RUN_DIR_ENV)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mtl_lightning.cli", *args]


class PauseUntilSigterm(Callback):
    """At optimizer step ``step`` writes ``marker`` and waits (at most ``seconds``) until
    Lightning has noted a SIGTERM, so that a test can signal the process mid-epoch. A SIGINT
    interrupts the wait with ``KeyboardInterrupt`` as it would interrupt training."""

    def __init__(self, step: int, marker: str, seconds: float = 120.0) -> None:
        self.step = step
        self.marker = marker
        self.seconds = seconds

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.global_step != self.step:
            return
        Path(self.marker).write_text(str(trainer.global_step))
        deadline = time.monotonic() + self.seconds
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)
