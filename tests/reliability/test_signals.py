"""SIGTERM and SIGINT during ``fit``: the partial epoch is saved in ``last.ckpt``, the resume
command is printed, the exit code is 128 + the signal (143, 130), and ``--ckpt_path last``
continues from that checkpoint."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from mtl_lightning.cli import run_cli

from .helpers import (
    PauseUntilSigterm,
    callback_arg,
    cli_args,
    cli_command,
    cli_subprocess_env,
    load,
    run_dirs,
)


def _default_sigint() -> None:
    """In the child before it starts Python: SIGINT's default action again."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)

@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("received", "exit_code"), [(signal.SIGTERM, 143),
                                                      (signal.SIGINT, 130)])
def test_a_signal_mid_epoch_saves_a_resumable_checkpoint(
    received: signal.Signals, exit_code: int, tmp_path: Path, scenes: Path
) -> None:
    # 16 images in batches of 4: 4 steps per epoch, 2 epochs; the signal comes at step 6,
    # in the middle of the second epoch, where no checkpoint would otherwise be written.
    runs = tmp_path / "runs"
    marker = tmp_path / "paused"
    args = cli_args(runs, scenes, "--run_name", "job")
    process = subprocess.Popen(
        cli_command("fit", *args, *callback_arg(PauseUntilSigterm, step=6, marker=str(marker))),
        env=cli_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # Ctrl-C as a terminal delivers it: Lightning's KeyboardInterrupt handling sets SIGINT
        # to "ignore" in a process and leaves it so, and an ignored signal stays ignored in
        # the children, where Python then raises no KeyboardInterrupt.
        preexec_fn=_default_sigint,
    )
    deadline = time.monotonic() + 240
    while not marker.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(received)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == exit_code, output[-3000:]
    (run_dir,) = run_dirs(runs)
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = load(last)
    assert (saved["epoch"], saved["global_step"]) == (1, 6)
    assert f"{received.name} received" in output and str(last) in output
    assert "--ckpt_path last --run_name job" in output

    resumed = run_cli(["fit", *args, "--ckpt_path", "last"])
    assert Path(resumed.run_dir) == run_dir
    final = load(last)
    assert (final["epoch"], final["global_step"]) == (1, 8)  # the 2 steps left of epoch 1
