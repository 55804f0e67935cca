"""Dynamic weight average, DWA (Liu, Johns & Davison, CVPR 2019)."""

from __future__ import annotations

import torch

from mtl_lightning.balancing.base import TaskLosses
from mtl_lightning.balancing.loss_weighting import LossWeighting


class DynamicWeightAverage(LossWeighting):
    """Weights from how fast each task's loss fell over the last two epochs.

    Liu et al., "End-to-End Multi-Task Learning with Attention", CVPR 2019, Eq. 7:
    ``lambda_k(t) = K exp(w_k(t-1)/T) / sum_i exp(w_i(t-1)/T)``,
    ``w_k(t-1) = L_k(t-1) / L_k(t-2)``, where ``L_k(t)`` is task ``k``'s loss averaged over
    epoch ``t``, ``K`` the number of tasks and ``T`` the temperature; the first two epochs use
    weights 1.

    torchjd's ``DWA`` has the same formula, but averages every call with one batch count for
    all tasks; here each task's epoch average counts only the batches that label it (partial
    labels), and it averages the global losses, so every DDP process holds the same history.
    The history is a set of buffers, saved in checkpoints. The tests check these weights
    against torchjd's ``DWA`` on the same loss history.

    Args:
        temperature: ``T``; larger values make the weights more uniform (the paper uses 2).
    """

    def __init__(self, temperature: float = 2.0, statistics_every: int = 50) -> None:
        super().__init__(statistics_every=statistics_every)
        if temperature <= 0:
            raise ValueError(f"DWA temperature must be > 0, got {temperature}.")
        self.temperature = temperature
        self.task_names: list[str] = []

    def bind(self, tasks: list[str]) -> None:
        self.task_names = list(tasks)
        k = len(tasks)
        self.register_buffer("epoch_sum", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("epoch_batches", torch.zeros(k, dtype=torch.float64))
        # history[0] = L(t-2), history[1] = L(t-1); epochs_done counts finished epochs.
        self.register_buffer("history", torch.ones(2, k, dtype=torch.float64))
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long))

    def observe(self, losses: TaskLosses, step: int) -> None:
        for task, value in losses.values.items():
            i = self.task_names.index(task)
            self.epoch_sum[i] += value.to(self.epoch_sum.dtype)
            self.epoch_batches[i] += 1

    def on_train_epoch_end(self) -> None:
        seen = self.epoch_batches > 0
        average = torch.where(seen, self.epoch_sum / self.epoch_batches.clamp(min=1),
                              self.history[1])
        self.history[0] = self.history[1].clone()
        self.history[1] = average
        self.epochs_done += 1
        self.epoch_sum.zero_()
        self.epoch_batches.zero_()

    def task_weights(self) -> torch.Tensor:
        """``lambda_k`` for every bound task, in ``bind`` order."""
        k = len(self.task_names)
        if int(self.epochs_done) < 2:
            return torch.ones(k, dtype=torch.float64, device=self.history.device)
        rates = self.history[1] / self.history[0]
        return k * torch.softmax(rates / self.temperature, dim=0)

    def scalarize(self, values: torch.Tensor, tasks: tuple[str, ...], step: int) -> torch.Tensor:
        all_weights = self.task_weights()
        weights = torch.stack([all_weights[self.task_names.index(t)] for t in tasks])
        return (weights.to(values) * values).sum()
