"""A run stopped by SIGTERM or SIGINT (Ctrl-C) keeps its partial epoch and says so.

Lightning turns SIGTERM into ``SIGTERMException`` at the end of the current batch and Ctrl-C
into ``KeyboardInterrupt``; both reach callbacks' ``on_exception`` (Lightning's
``OnExceptionCheckpoint`` uses the same hook). During ``fit`` this callback then saves the
state to ``<checkpoint dirpath>/last.ckpt``, which ``fit --ckpt_path last`` resumes, and
records the signal in :data:`last_interruption`, from which the CLI prints the resume
command and exits with ``128 + signal`` (143 for SIGTERM, 130 for SIGINT), as schedulers
expect of a killed job. Lightning alone would exit 0 after SIGTERM.

SLURM's requeue signal (``--signal=SIGUSR1@...``) is still Lightning's: it saves
``hpc_ckpt_N.ckpt`` and requeues the job (see docs/many-gpus.md, SLURM).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException


@dataclass
class Interruption:
    """What stopped the run and where its state went (``checkpoint`` is None when nothing
    was saved: not fitting, or saving was switched off)."""

    signal: signal.Signals
    checkpoint: Path | None
    epoch: int
    step: int

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal)


#: The interruption of the last run in this process, for the CLI's exit code and message.
last_interruption: Interruption | None = None


def signal_of(exception: BaseException) -> signal.Signals | None:
    """The signal behind ``exception``, if it is how Lightning reports one."""
    if isinstance(exception, SIGTERMException):
        return signal.SIGTERM
    if isinstance(exception, KeyboardInterrupt):
        return signal.SIGINT
    return None


class InterruptionCheckpoint(Callback):
    """Save ``last.ckpt`` when ``fit`` is stopped by SIGTERM or SIGINT.

    Args:
        enabled: save the partial epoch (the exit code is set either way).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def on_exception(self, trainer: Trainer, pl_module: LightningModule,
                     exception: BaseException) -> None:
        global last_interruption
        received = signal_of(exception)
        if received is None:
            return
        path = None
        checkpoint = trainer.checkpoint_callback
        dirpath = getattr(checkpoint, "dirpath", None)
        if self.enabled and trainer.state.fn == "fit" and dirpath:
            path = Path(dirpath) / "last.ckpt"
            trainer.save_checkpoint(path)
        last_interruption = Interruption(received, path, trainer.current_epoch,
                                         trainer.global_step)
