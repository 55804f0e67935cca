"""GradNorm (Chen et al., ICML 2018): what torchjd does not provide."""

from __future__ import annotations

import torch

from mtl_lightning.balancing.base import TaskLosses
from mtl_lightning.balancing.gradient_weighting import GradientSource, GradientWeighting


class GradNorm(GradientWeighting):
    """Learn task weights that equalise the tasks' gradient norms, scaled by training rate.

    Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
    Multitask Networks", ICML 2018. With ``G_t = w_t ||grad_W L_t||`` at the shared layer
    ``W``, mean ``G_bar``, inverse training rate ``r_t = (L_t/L_t(0)) / mean_i(L_i/L_i(0))``:

        L_grad = sum_t | G_t - G_bar * r_t^alpha |        (targets held constant)

    Each step the weights take one gradient step on ``L_grad``
    (``dL_grad/dw_t = sign(G_t - target_t) ||grad_W L_t||``, the norms taken relative to their
    mean so that the step does not depend on the loss scale) and are renormalised to sum to the
    number of tasks; the update uses the weights before that step. ``W`` is the
    representation (the paper's "last shared layer"; the default source) or every shared
    parameter. The norms are ``sqrt(diag G)``. The weights and initial losses are buffers,
    saved in checkpoints.

    Args:
        alpha: asymmetry; larger pulls harder towards equal training rates (the paper: 1.5).
        lr: step size of the weights (the paper uses the model optimiser's; we step them here).
    """

    default_source: GradientSource = "representation"

    def __init__(self, alpha: float = 1.5, lr: float = 0.025,
                 source: GradientSource | None = None, statistics_every: int = 50) -> None:
        super().__init__(source=source, statistics_every=statistics_every)
        self.alpha, self.lr = alpha, lr
        self.task_names: list[str] = []

    def bind(self, tasks: list[str]) -> None:
        self.task_names = list(tasks)
        self.register_buffer("task_weights", torch.ones(len(tasks), dtype=torch.float64))
        self.register_buffer("initial_losses", torch.zeros(len(tasks), dtype=torch.float64))

    def weights(self, gramian: torch.Tensor, losses: TaskLosses, step: int) -> torch.Tensor:
        index = torch.tensor([self.task_names.index(t) for t in losses.tasks])
        values = losses.value_vector().double().to(self.task_weights.device)
        initial = self.initial_losses[index]
        initial = torch.where(initial > 0, initial, values)  # first time a task is seen
        self.initial_losses[index] = initial
        weights = self.task_weights[index].clone()
        norms = gramian.diagonal().clamp(min=0).sqrt().to(weights)
        scaled = weights * norms
        ratio = values / initial.clamp(min=1e-12)
        target = scaled.mean() * (ratio / ratio.mean()) ** self.alpha
        # Scale-free step: the norms relative to their mean (raw norms depend on the loss scale).
        relative = norms / norms.mean().clamp(min=1e-30)
        updated = (weights - self.lr * torch.sign(scaled - target) * relative).clamp(min=1e-3)
        updated = updated * len(index) / updated.sum()
        self.task_weights[index] = updated
        return weights
