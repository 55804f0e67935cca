"""Fast adaptive multitask optimisation, FAMO (Liu et al., NeurIPS 2023)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

import torch
from torchjd.scalarization import FAMO

from mtl_lightning.balancing.base import TaskLosses
from mtl_lightning.balancing.loss_weighting import LossWeighting

FamoUpdate = Literal["same_batch", "next_batch"]


class FastAdaptiveMultitask(LossWeighting):
    """FAMO: decrease every task loss at about the same rate, from loss values alone.

    Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023. The update is
    the gradient of ``c sum_i z_i log(l_i)`` with ``z = softmax(w)`` and
    ``c = (sum_i z_i / l_i)^-1`` (task weights ``c z_i / l_i``); after each step the logits
    ``w`` take one Adam step towards the tasks whose log-loss fell least. The math and the
    logits' Adam are torchjd's ``FAMO`` scalarizer.

    The logit update compares each loss before and after the model's step:

    - ``update="same_batch"`` (the paper's algorithm): the losses are recomputed on the same
      batch after the step. That is one extra forward pass per step (no backward).
    - ``update="next_batch"`` (cheaper, ours): the "after" losses are those of the next
      training batch, which are computed anyway. Free, but noisier: the change mixes the
      step's effect with the difference between batches.

    A task absent from a batch keeps its last seen loss in FAMO's vector: its loss change for
    that step is zero (its logit moves only through the softmax that ties all logits), and
    the present tasks' weights keep FAMO's normalisation.
    The logits and the Adam state are saved in checkpoints (``get_extra_state``); they are not
    model parameters, so the main optimizer and DDP never see them.

    Args:
        update: when the logits are updated (see above).
        lr: learning rate of the logits' Adam (the paper: 0.025).
        weight_decay: weight decay of the logits (the paper: 1e-3).
    """

    def __init__(
        self,
        update: FamoUpdate = "same_batch",
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        statistics_every: int = 50,
    ) -> None:
        super().__init__(statistics_every=statistics_every)
        if update not in ("same_batch", "next_batch"):
            raise ValueError(f"FAMO update must be 'same_batch' or 'next_batch', got {update!r}.")
        self.update = update
        self.lr = lr
        self.weight_decay = weight_decay
        self.task_names: list[str] = []
        self._famo: FAMO | None = None  # kept out of the module tree: not a model parameter
        self._last = torch.ones(0)

    def bind(self, tasks: list[str]) -> None:
        self.task_names = list(tasks)
        object.__setattr__(self, "_famo", FAMO(len(tasks), lr=self.lr,
                                                weight_decay=self.weight_decay))
        self._last = torch.ones(len(tasks))

    @property
    def famo(self) -> FAMO:
        if self._famo is None:
            raise RuntimeError("FAMO used before the model bound its tasks.")
        return self._famo

    def _full(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """All tasks' losses on the CPU, absent ones at their last seen value."""
        for task, value in values.items():
            self._last[self.task_names.index(task)] = float(value)
        return self._last.clone()

    def observe(self, losses: TaskLosses, step: int) -> None:
        if self.update == "next_batch" and self.famo._prev_losses is not None:
            self.famo.update(self._full(losses.values))

    def after_step(self, losses: TaskLosses) -> None:
        """``same_batch``: the losses recomputed on the step's batch after the step."""
        if self.update == "same_batch" and self.famo._prev_losses is not None:
            self.famo.update(self._full(losses.values))

    def after_optimizer_step(self, recompute: Callable[[], TaskLosses]) -> None:
        """``same_batch`` recomputes the step's batch's losses (the paper's extra forward
        pass) for :meth:`after_step`; ``next_batch`` waits for the next batch instead."""
        if self.update == "same_batch":
            self.after_step(recompute())

    def scalarize(self, values: torch.Tensor, tasks: tuple[str, ...], step: int) -> torch.Tensor:
        index = [self.task_names.index(t) for t in tasks]
        full = self._full(dict(zip(tasks, values.detach())))
        # Present tasks enter with their graph, absent ones as constants.
        mask = torch.zeros(len(self.task_names), dtype=torch.bool)
        mask[index] = True
        scattered = torch.zeros(len(self.task_names), dtype=values.dtype)
        scattered = scattered.index_put((torch.tensor(index),), values.cpu())
        combined = torch.where(mask, scattered, full.to(values.dtype))
        return self.famo(combined).to(values.device)

    # -------------------------------------------------------------- checkpoint state
    def get_extra_state(self) -> dict[str, Any]:
        famo = self.famo
        return {
            "logits": famo._w.detach().clone(),
            # Deep copies: Adam's state_dict and load_state_dict share the moment tensors, so
            # two balancers (or a held snapshot) would otherwise step each other's state.
            "optimizer": (copy.deepcopy(famo._optimizer.state_dict())
                          if famo._optimizer is not None else None),
            "previous": famo._prev_losses,
            "last": self._last.clone(),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        famo = self.famo
        with torch.no_grad():
            famo._w.copy_(state["logits"])
        famo._prev_losses = state["previous"]
        self._last = state["last"].clone()
        famo._optimizer = None
        if state["optimizer"] is not None:
            famo._optimizer = torch.optim.Adam([famo._w], lr=famo.lr,
                                               weight_decay=famo.weight_decay)
            famo._optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
