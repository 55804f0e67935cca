"""One warning when ``trainer.max_time`` will stop training before its schedule ends.

The learning-rate schedule (warm-up, then cosine decay) is planned for ``max_epochs`` (or
``max_steps``). A run that ``max_time`` stops early never reaches the low learning rates of
the decay, and with many planned epochs its warm-up alone can fill most of the time. After
the first training epoch of a ``fit``, this callback extrapolates that epoch's duration to the
time left and, if the schedule will not finish, says how many of the planned epochs and steps
will run and what to change (fewer epochs, or a warm-up of ``model.warmup_steps``).
"""

from __future__ import annotations

import time

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities import rank_zero_warn


def expected_epochs(epoch_seconds: float, seconds_left: float, epochs_done: int) -> int:
    """Epochs that will have run when the time is up, at ``epoch_seconds`` per epoch."""
    return epochs_done + int(max(seconds_left, 0.0) // max(epoch_seconds, 1e-9))


class ScheduleCheck(Callback):
    """Warn once when ``max_time`` ends training before the learning-rate schedule.

    Args:
        enabled: check after the first training epoch of each ``fit``.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._epoch_start = 0.0
        self._checked = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._checked = False

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_start = time.monotonic()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # An epoch's cost includes its validation, which runs before on_train_epoch_end.
        if self.enabled and not self._checked and not trainer.sanity_checking:
            self._checked = True
            self._check(trainer, time.monotonic() - self._epoch_start)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.enabled and not self._checked:  # no validation in this epoch
            self._checked = True
            self._check(trainer, time.monotonic() - self._epoch_start)

    def _check(self, trainer: Trainer, epoch_seconds: float) -> None:
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        seconds_left = timer.time_remaining() if timer is not None else None
        planned_steps = trainer.estimated_stepping_batches
        if seconds_left is None or trainer.max_epochs is None or trainer.max_epochs < 0:
            return
        epochs = expected_epochs(epoch_seconds, seconds_left, trainer.current_epoch + 1)
        if epochs >= trainer.max_epochs:
            return
        steps_per_epoch = planned_steps / max(trainer.max_epochs, 1)
        rank_zero_warn(
            f"trainer.max_time will stop training after about {epochs} of the "
            f"{trainer.max_epochs} planned epochs ({int(epochs * steps_per_epoch)} of "
            f"{int(planned_steps)} steps; the first epoch took {epoch_seconds:.1f} s, "
            f"{max(seconds_left, 0.0):.0f} s were left): the learning-rate schedule will not "
            f"finish. Lower --trainer.max_epochs to about {max(epochs, 1)}, or bound the "
            "warm-up with "
            "--model.warmup_steps N."
        )
