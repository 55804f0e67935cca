"""The Balancer interface: task losses in, one scalar loss and the weights used out."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class Balancer(nn.Module, ABC):
    """Combines per-task losses into the loss that is back-propagated.

    Subclasses may hold state (parameters or buffers); it is saved in checkpoints with the
    module. ``forward`` returns the total loss and the weight applied to each task (detached),
    which the module logs as ``train/mtl/weight/<task>``.
    """

    @abstractmethod
    def forward(
        self, losses: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Combine ``losses`` (one scalar per task present in the batch)."""
