"""The CLI's ``checkpoint`` callback: Lightning's ModelCheckpoint whose ``last.ckpt`` is the
latest state, so that ``fit --ckpt_path last`` resumes where the run stopped.

Since Lightning 2.6, ``save_last=True`` writes ``last.ckpt`` at an epoch end (or validation
end) only when a top-k checkpoint is written at the same step: with ``save_top_k: 1`` and a
monitored score, ``last.ckpt`` is a copy of the best checkpoint, and resuming from it would
silently go back to the best epoch. This subclass writes ``last.ckpt`` at every epoch-end
save point as well (step-based saves, ``every_n_train_steps``, already write it).

A step-based save made before the monitored score exists (the first epoch, or the first
epoch after a resume: logged values are not restored) is deferred by Lightning to the end of
validation, and dropped when checkpoints are saved at the end of the training epoch (the
CLI's default): here it is made at the end of the training epoch instead.

It relies on ModelCheckpoint's private helpers, checked against Lightning 2.6.
"""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class Checkpoint(ModelCheckpoint):
    """ModelCheckpoint (same arguments) that also refreshes ``last.ckpt`` when the monitored
    score did not improve."""

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_deferred(trainer)
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def _save_deferred(self, trainer: Trainer) -> None:
        """The step-based save that waited for the monitored score, now that it exists."""
        if not getattr(self, "_defer_save_until_validation", False):
            return
        candidates = self._monitor_candidates(trainer)
        if self.monitor in candidates and not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
            self._defer_save_until_validation = False

    def _refresh_last(self, trainer: Trainer) -> None:
        """Write ``last.ckpt`` at an epoch save point where nothing was written."""
        due = self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0
        if self.save_last and due and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
