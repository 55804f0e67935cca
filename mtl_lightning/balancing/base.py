"""The Balancer interface, and the per-step task losses it is given.

Two families, both configured from YAML as ``model.balancer``:

- :class:`~mtl_lightning.balancing.loss_weighting.LossWeighting`: the update is the gradient of
  ``sum_t w_t L_t`` with weights computed from the loss values (static, uncertainty, DWA, RLW,
  GLS, FAMO). One ordinary backward pass.
- :class:`~mtl_lightning.balancing.gradient_weighting.GradientWeighting`: the weights come from
  the task gradients themselves (MGDA, PCGrad, UPGrad, ..., GradNorm), so every task's gradient
  is computed separately (see :mod:`mtl_lightning.balancing.task_gradients`).

Exact under DDP: whatever the weights are computed from (loss values, Gramians) is first made
global, so every process uses the same weights, and each process's losses are rescaled by its
share of the labelled samples, so two processes with B/2 samples each give the update of one
process with B samples, partial labels included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from mtl_lightning.balancing.distributed import all_reduce_sum, world_size


@dataclass
class TaskLosses:
    """The task losses of one training step, as every balancer sees them.

    Attributes:
        local: this process's loss per task (with graph); only tasks labelled somewhere in the
            global batch appear. A task labelled on other processes but not here has a zero
            loss that still reaches its head.
        share: ``n_t * world_size / N_t``, this process's share of the task's labelled samples
            (``n_t`` here, ``N_t`` on all processes). Multiplying the local loss by it makes the
            DDP gradient average equal to the gradient of the global mean loss; 1 in a single
            process.
        values: the global mean loss per task, detached: the same on every process, so weights
            computed from it are too.
        unlabelled: the (zero) losses of tasks labelled on no process: they take no part in
            the weighting, but stay in the graph so that DDP sees every head used.
    """

    local: dict[str, torch.Tensor]
    share: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    unlabelled: dict[str, torch.Tensor]

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.local)

    def value_vector(self) -> torch.Tensor:
        return torch.stack([self.values[t] for t in self.local]).float()

    @classmethod
    def gather(cls, losses: dict[str, torch.Tensor], counts: dict[str, torch.Tensor]) -> TaskLosses:
        """Make ``losses`` (per task, mean over this process's labelled samples) global.

        ``counts[t]`` is how many samples of this process's batch are labelled for ``t``. Under
        DDP this costs one small all-reduce (counts and loss sums of all tasks together).
        """
        names = list(losses)
        if not names:
            return cls({}, {}, {}, {})
        count = torch.stack([counts[t].float() for t in names])
        loss = torch.stack([losses[t].detach().float() for t in names])
        size = world_size()
        stats = all_reduce_sum(torch.cat([count, count * loss]))
        total, weighted = stats[: len(names)], stats[len(names):]
        present = (total > 0).tolist()
        mean = weighted / total.clamp(min=1)
        share = count * size / total.clamp(min=1)
        keep = [i for i, p in enumerate(present) if p]
        return cls(
            local={names[i]: losses[names[i]] for i in keep},
            share={names[i]: share[i] for i in keep},
            values={names[i]: mean[i] for i in keep},
            unlabelled={n: losses[n] for n, p in zip(names, present) if not p},
        )


class Balancer(nn.Module):
    """How task losses become one update.

    Subclasses hold their state as parameters, buffers or ``get_extra_state`` so that it is
    saved in checkpoints with the model and restored on resume.

    Args:
        statistics_every: every this many optimizer steps, compute per-task gradient norms and
            the pairwise cosine similarity of task gradients at the shared representation and
            log them (``train/mtl/grad_norm/<task>``, ``train/mtl/cosine/<a>__<b>``). Gradient
            methods have them for free; for loss weighting they cost one extra backward
            through the neck and heads per task on those steps. 0 disables.
    """

    needs_task_gradients: bool = False

    def __init__(self, statistics_every: int = 50) -> None:
        super().__init__()
        if statistics_every < 0:
            raise ValueError(f"statistics_every must be >= 0, got {statistics_every}.")
        self.statistics_every = statistics_every

    def bind(self, tasks: list[str]) -> None:
        """Called once by the model with the names of all its tasks, before any checkpoint is
        loaded: methods with per-task state create it here."""

    def wants_statistics(self, step: int) -> bool:
        return self.statistics_every > 0 and step % self.statistics_every == 0

    def on_train_epoch_end(self) -> None:
        """Called once at the end of every training epoch (epoch-based methods such as DWA)."""

    def after_optimizer_step(self, recompute: Callable[[], TaskLosses]) -> None:
        """Called after every optimizer step (once per ``accumulate_grad_batches`` batches),
        unless the step's batch gave no loss (nothing labelled, a non-finite loss).

        A method that compares the losses before and after the step (FAMO) updates its state
        here. ``recompute()`` returns the task losses of the step's batch under the updated
        weights (one more forward pass, no backward; the module runs it without gradients):
        call it only if the method needs them. The default does nothing.
        """

    @staticmethod
    @contextlib.contextmanager
    def seeded(step: int, salt: int = 0) -> Iterator[None]:
        """Run random parts of a method (RLW's draw, GradVac's order) from a seed derived from
        the step: identical on every DDP process and the same again after a resume."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1_000_003 * step + salt)
            yield
