"""Staged training: keep chosen parts of the model frozen for the first epochs, then train them.

A common recipe when a pretrained backbone meets freshly initialised heads (train the heads
first so their random gradients do not wreck the backbone), or to let one task's head settle
before another starts. Parts are named as in ``model.named_children()`` of the architecture
(``backbone``, ``neck``, ``backbones``, ``attention``, ...) or by task name (that task's
head). A frozen part gets ``requires_grad = False`` and stays in eval mode (its batch-norm
statistics are frozen too); it is unfrozen at the start of the epoch given.

Under DDP, the set of parameters that receive gradients changes when a part is unfrozen: use
``--trainer.strategy ddp_find_unused_parameters_true`` with this callback.
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn


class StagedTraining(Callback):
    """Freeze parts of the model until a given epoch.

    Args:
        freeze_until: part (an architecture part or a task's instance name) -> first epoch
            (0-based) in which it trains, e.g.
            ``{"backbone": 2, "detection": 1}``: the backbone trains from epoch 2 on, the
            detection head from epoch 1 on.
    """

    def __init__(self, freeze_until: dict[str, int] | None = None) -> None:
        self.freeze_until = dict(freeze_until or {})

    def parts(self, pl_module: LightningModule) -> dict[str, nn.Module]:
        """The freezable parts of the model by name (one-line error for an unknown one)."""
        available: dict[str, nn.Module] = dict(pl_module.architecture.named_children())
        available.update(dict(pl_module.tasks.items()))
        unknown = set(self.freeze_until) - set(available)
        if unknown:
            raise ValueError(f"staged training names unknown parts {sorted(unknown)}; "
                             f"choose among {sorted(available)}.")
        return {name: available[name] for name in self.freeze_until}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.parts(pl_module)  # fail before training starts

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for name, part in self.parts(pl_module).items():
            frozen = trainer.current_epoch < self.freeze_until[name]
            for parameter in part.parameters():
                parameter.requires_grad_(not frozen)
            if frozen:
                part.eval()
            if trainer.current_epoch == self.freeze_until[name] and frozen is False:
                rank_zero_info(f"Staged training: {name} trains from epoch "
                               f"{trainer.current_epoch} on.")
