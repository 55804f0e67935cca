"""Smooth Tchebycheff scalarisation, STCH (Lin et al., ICML 2024)."""

from __future__ import annotations

import torch
from torchjd.scalarization import STCH

from mtl_lightning.balancing.base import TaskLosses
from mtl_lightning.balancing.loss_weighting import LossWeighting


class SmoothTchebycheff(LossWeighting):
    """STCH: a smooth maximum of the task losses, so that the worst task leads.

    Lin et al., "Smooth Tchebycheff Scalarization for Multi-Objective Optimization", ICML
    2024, Eq. 6: ``f = mu log sum_t exp(lambda_t (f_t - z_t) / mu)``, which tends to the
    Tchebycheff ``max_t lambda_t (f_t - z_t)`` as ``mu -> 0`` and is differentiable; its
    gradient weights task ``t`` by ``lambda_t softmax(lambda (f - z) / mu)_t`` (times
    ``df_t/dl_t``). As in the paper's multi-task experiments (and LibMTL), the objectives are
    the log losses against a nadir point, ``f_t = log(l_t / n_t)``, where ``n_t`` is the mean
    loss over the first ``warmup_steps`` steps (during which the method is the sum of the log
    losses), the ideal point ``z = 0``, and the objective is multiplied by the number of tasks
    ``m`` (LibMTL): when every task is as far from its reference, task ``t`` gets the weight
    ``lambda_t df_t/dl_t``, as in the plain sum of the objectives.
    ``log_losses: false`` takes ``f_t = l_t`` (the paper's general form, Eq. 6). The nadir
    sums are saved in checkpoints. The smooth maximum is torchjd's ``STCH`` scalarizer.

    Args:
        mu: smoothing (LibMTL's default 1; smaller is closer to the max).
        warmup_steps: steps over which the nadir point is averaged (0: ``n_t = 1``).
        preference: ``lambda_t`` per task (tasks not listed: 1).
        log_losses: the log losses against the nadir (default) or the losses themselves.
    """

    def __init__(self, mu: float = 1.0, warmup_steps: int = 0,
                 preference: dict[str, float] | None = None, log_losses: bool = True,
                 statistics_every: int = 50) -> None:
        super().__init__(statistics_every=statistics_every)
        if mu <= 0:
            raise ValueError(f"STCH mu must be positive, got {mu}.")
        if warmup_steps < 0:
            raise ValueError(f"STCH warmup_steps must be >= 0, got {warmup_steps}.")
        self.mu, self.warmup_steps, self.log_losses = mu, warmup_steps, log_losses
        self.preference = dict(preference or {})
        self.task_names: list[str] = []
        self.register_buffer("nadir_sum", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("nadir_count", torch.zeros(0, dtype=torch.float64))

    def bind(self, tasks: list[str]) -> None:
        self.task_names = list(tasks)
        self.nadir_sum = torch.zeros(len(tasks), dtype=torch.float64)
        self.nadir_count = torch.zeros(len(tasks), dtype=torch.float64)

    def observe(self, losses: TaskLosses, step: int) -> None:
        if step < self.warmup_steps:
            for task, value in losses.values.items():
                index = self.task_names.index(task)
                self.nadir_sum[index] += float(value)
                self.nadir_count[index] += 1

    def nadir(self, tasks: tuple[str, ...]) -> torch.Tensor:
        """``n_t``: the mean loss over the warm-up (1 for a task it never saw)."""
        index = [self.task_names.index(t) for t in tasks]
        count = self.nadir_count[index]
        return torch.where(count > 0, self.nadir_sum[index] / count.clamp(min=1),
                           torch.ones_like(count))

    def scalarize(self, values: torch.Tensor, tasks: tuple[str, ...], step: int) -> torch.Tensor:
        if not self.log_losses:
            objectives = values
        else:
            objectives = torch.log(values.clamp(min=1e-20)
                                   / self.nadir(tasks).to(values.device, values.dtype))
            if step < self.warmup_steps:
                return objectives.sum()
        preference = torch.tensor([float(self.preference.get(t, 1.0)) for t in tasks],
                                  dtype=values.dtype, device=values.device)
        return len(tasks) * STCH(self.mu, weights=preference)(objectives)
