"""The reference every overhead is measured against: a training step written by hand.

Forward through the model, the task losses summed with equal weights, backward, and the
AdamW step (timm's, with the module's settings: no decay on norms and biases), on batches
already in memory, under the config's autocast. No Lightning, no loader, no metrics, no
logging, no gradient clipping: what is left is the arithmetic a training step cannot avoid.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.optim import create_optimizer_v2

from mtl_lightning.module import MultiTaskModule

from .common import autocast_for


def output_tensors(outputs: Any) -> list[torch.Tensor]:
    """Every floating-point tensor in a task's outputs (a tensor, or a dict of them)."""
    if isinstance(outputs, torch.Tensor):
        return [outputs] if outputs.is_floating_point() else []
    if isinstance(outputs, dict):
        return [t for value in outputs.values() for t in output_tensors(value)]
    if isinstance(outputs, (list, tuple)):
        return [t for value in outputs for t in output_tensors(value)]
    return []


class PlainLoop:
    """``step(batch)``: one training step of ``model`` outside Lightning.

    ``loss="real"`` computes every task's loss with its real target assignment (the same
    call the module makes); ``loss="trivial"`` replaces them with the mean of every output
    tensor, so that the difference of the two is what target assignment and losses cost.
    """

    def __init__(self, model: MultiTaskModule, precision: str, device: str,
                 loss: str = "real") -> None:
        if loss not in ("real", "trivial"):
            raise ValueError(f"loss must be 'real' or 'trivial', got {loss!r}")
        self.model = model.to(device).train()
        self.loss = loss
        self.device = device
        self.precision = precision
        hp = model.hparams
        self.optimizer = create_optimizer_v2(model, opt="adamw", lr=hp.lr,
                                             weight_decay=hp.weight_decay)

    def total_loss(self, batch: dict) -> torch.Tensor:
        outputs = self.model(batch["image"])
        if self.loss == "trivial":
            return sum(t.float().mean() for out in outputs.values() for t in output_tensors(out))
        total = torch.zeros((), device=batch["image"].device)
        for name, task in self.model.tasks.items():
            has, target = self.model.task_labels(batch, name)
            total = total + task.loss(outputs[name], target, has)
        return total

    def step(self, batch: dict) -> None:
        with autocast_for(self.precision, self.device):
            total = self.total_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
