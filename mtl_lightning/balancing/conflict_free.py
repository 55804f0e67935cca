"""ConFIG and GradDrop: torchjd aggregators whose update is not a weighted sum of gradients."""

from __future__ import annotations

import torch
from torchjd import aggregation as jd

from mtl_lightning.balancing.base import TaskLosses
from mtl_lightning.balancing.gradient_weighting import GradientSource, Update
from mtl_lightning.balancing.jacobian_aggregation import JacobianAggregation


class ConFIG(JacobianAggregation):
    """Conflict-free inverse gradients, ConFIG (Liu et al., "ConFIG: Towards Conflict-free
    Training of Physics Informed Neural Networks", ICLR 2025, Eq. 2).

    The update's direction makes the same angle with every task gradient: with ``U`` the
    unit task gradients (rows), ``u = normalize(U^+ p)`` (``U^+`` the pseudo-inverse, ``p``
    the preference, ones by default), and its length is the sum of the gradients' projections,
    ``d = (sum_t g_t . u) u`` (torchjd ``ConFIG``). Each head gets its own gradient.

    Args:
        pref_vector: ``p``, one value per task (``None``: ones).
    """

    def __init__(self, pref_vector: list[float] | None = None,
                 source: GradientSource | None = None, statistics_every: int = 50) -> None:
        super().__init__(source=source, statistics_every=statistics_every)
        self.pref_vector = pref_vector

    def aggregate(self, jacobian: torch.Tensor, losses: TaskLosses, step: int) -> Update:
        preference = (None if self.pref_vector is None
                      else torch.tensor(self.pref_vector, dtype=jacobian.dtype,
                                        device=jacobian.device))
        combined = jd.ConFIG(pref_vector=preference)(jacobian)
        return Update(torch.ones(len(losses.tasks)), combined)


class GradDrop(JacobianAggregation):
    """Gradient sign dropout, GradDrop (Chen et al., "Just Pick a Sign: Optimizing Deep
    Multitask Models with Gradient Sign Dropout", NeurIPS 2020, Alg. 1 lines 10-15).

    Per coordinate, the positive sign purity ``P = (1 + sum_t g_t / sum_t |g_t|) / 2`` picks a
    sign: with ``U ~ Uniform(0, 1)``, the positive components are kept if ``P > U``, the
    negative ones otherwise, and ``d = sum_t (l_t + (1 - l_t) M_t) g_t`` with ``M_t`` that mask
    and ``l_t`` the leak (torchjd ``GradDrop``). The paper drops signs of the gradients at a
    layer's activations; here, as in torchjd, at the shared parameters. The draw is seeded
    from the step: the same on every DDP process and after a resume. Each head gets its own
    gradient.

    Args:
        leak: ``l_t`` per task (``None``: 0, the paper's default).
    """

    def __init__(self, leak: list[float] | None = None, source: GradientSource | None = None,
                 statistics_every: int = 50) -> None:
        super().__init__(source=source, statistics_every=statistics_every)
        self.leak = leak

    def aggregate(self, jacobian: torch.Tensor, losses: TaskLosses, step: int) -> Update:
        leak = (None if self.leak is None
                else torch.tensor(self.leak, dtype=jacobian.dtype, device=jacobian.device))
        with self.seeded_on(jacobian.device, step, salt=29):
            combined = jd.GradDrop(leak=leak)(jacobian)
        return Update(torch.ones(len(losses.tasks)), combined)
