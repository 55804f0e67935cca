"""Gradient aggregation methods, each torchjd's Gramian weighting behind the balancer interface.

Every class states its paper and formula; the math is torchjd's. ``source`` defaults follow
each paper: MGDA's own MGDA-UB works at the representation, the others project or weight
parameter gradients. Any of them takes ``source: representation`` (much cheaper) or
``source: parameters`` (exact).
"""

from __future__ import annotations

from typing import Literal

import torch
from torchjd import aggregation as jd

from mtl_lightning.balancing.base import TaskLosses
from mtl_lightning.balancing.gradient_weighting import GradientSource, TorchjdWeighting


def _preference(vector: list[float] | None) -> torch.Tensor | None:
    return None if vector is None else torch.tensor(vector, dtype=torch.float64)


class MGDA(TorchjdWeighting):
    """Multiple-gradient descent (Désidéri 2012; Sener & Koltun, NeurIPS 2018).

    ``w = argmin_{w in simplex} ||sum_t w_t g_t||^2``: the minimum-norm point of the convex hull
    of the task gradients, a common descent direction (Pareto-stationary when it is 0).
    Solved by Frank-Wolfe on the Gramian (torchjd ``MGDAWeighting``). Default source:
    representation, the paper's MGDA-UB upper bound.
    """

    default_source: GradientSource = "representation"

    def __init__(self, epsilon: float = 1e-3, max_iters: int = 100,
                 source: GradientSource | None = None, statistics_every: int = 50) -> None:
        super().__init__(source=source, statistics_every=statistics_every)
        self.epsilon, self.max_iters = epsilon, max_iters

    def make_weighting(self, num_tasks: int) -> jd.Weighting:
        return jd.MGDAWeighting(epsilon=self.epsilon, max_iters=self.max_iters)


class PCGrad(TorchjdWeighting):
    """Projecting conflicting gradients (Yu et al., "Gradient Surgery for Multi-Task
    Learning", NeurIPS 2020).

    For each task ``i``, in random order over the others ``j``: if ``g_i . g_j < 0``, remove
    the conflicting component, ``g_i <- g_i - (g_i . g_j / ||g_j||^2) g_j``; the update is the
    sum of the projected gradients (torchjd ``PCGradWeighting``, which expresses it as weights
    on the original gradients). Default source: parameters.
    """

    default_source: GradientSource = "parameters"

    def make_weighting(self, num_tasks: int) -> jd.Weighting:
        return jd.PCGradWeighting()


class CAGrad(TorchjdWeighting):
    """Conflict-averse gradient descent (Liu et al., NeurIPS 2021).

    ``d = argmax_d min_t g_t . d`` subject to ``||d - g_0|| <= c ||g_0||``, with ``g_0`` the
    average gradient: the worst task's improvement is maximised near the average direction
    (torchjd ``CAGradWeighting``). Default source: parameters.

    Args:
        c: radius of the ball around the average gradient (the paper's NYUv2 setting: 0.4).
        norm_eps: numerical floor of torchjd's Gramian normalisation.
    """

    default_source: GradientSource = "parameters"

    def __init__(self, c: float = 0.4, norm_eps: float = 1e-4,
                 source: GradientSource | None = None, statistics_every: int = 50) -> None:
        super().__init__(source=source, statistics_every=statistics_every)
        self.c, self.norm_eps = c, norm_eps

    def make_weighting(self, num_tasks: int) -> jd.Weighting:
        return jd.CAGradWeighting(c=self.c, norm_eps=self.norm_eps)


class NashMTL(TorchjdWeighting):
    """Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022).

    Weights ``w > 0`` solving ``G w = 1 / w`` (the Nash bargaining solution), found by the
    paper's sequence of convex approximations (torchjd's ``NashMTL``, with cvxpy/ECOS), the
    update's norm capped at ``max_norm``. torchjd defines it on ``J``; its result depends on
    ``J`` only through ``J J^T``, so it is given a square root of the Gramian. Stateful (the
    previous solution warm-starts the next): saved in checkpoints. Default source: parameters.

    Args:
        max_norm: cap on ``||sum_t w_t g_t||`` (0: no cap); the paper uses 1.
        update_weights_every: solve every this many steps, reuse the weights in between.
        optim_niter: iterations of the sequential convex solve (the paper: 20).
    """

    default_source: GradientSource = "parameters"
    takes_matrix = True
    state_attributes = ("prvs_alpha", "normalization_factor", "step", "init_gtg")

    def __init__(self, max_norm: float = 1.0, update_weights_every: int = 1,
                 optim_niter: int = 20, source: GradientSource | None = None,
                 statistics_every: int = 50) -> None:
        super().__init__(source=source, statistics_every=statistics_every)
        self.max_norm = max_norm
        self.update_weights_every = update_weights_every
        self.optim_niter = optim_niter

    def make_weighting(self, num_tasks: int) -> jd.Weighting:
        return jd.NashMTL(n_tasks=num_tasks, max_norm=self.max_norm,
                          update_weights_every=self.update_weights_every,
                          optim_niter=self.optim_niter).weighting

    def weights(self, gramian: torch.Tensor, losses: TaskLosses, step: int) -> torch.Tensor:
        if len(losses.tasks) == 1:
            # A batch labelling one task only (partial labels): torchjd's cvxpy problem fails
            # for one task. Its solution there is w = 1 (G w = 1/w on the normalised 1x1
            # Gramian), capped as torchjd caps it: ||w g|| <= max_norm.
            norm = gramian[0, 0].clamp(min=0).sqrt()
            weight = torch.ones(1, dtype=gramian.dtype, device=gramian.device)
            if self.max_norm > 0 and norm > self.max_norm:
                weight = weight * self.max_norm / norm
            return weight
        return super().weights(gramian, losses, step)

    def restored(self, weighting: jd.Weighting) -> None:
        if weighting.step > 0:
            weighting._init_optim_problem()  # the solver's problem is not part of the state


class AlignedMTL(TorchjdWeighting):
    """Aligned-MTL (Senushkin et al., "Independent Component Alignment for Multi-Task
    Learning", CVPR 2023).

    Makes the task gradients' linear system well conditioned: the gradients are replaced by an
    orthogonal set with the same principal directions, rescaled by the smallest singular value
    (``scale_mode="min"``, the paper's choice), and combined with the preference weights
    (torchjd ``AlignedMTLWeighting``). Default source: parameters.

    Args:
        pref_vector: preference weight per task (``None``: equal).
        scale_mode: ``"min"``, ``"median"`` or ``"rmse"`` singular-value rescaling.
    """

    default_source: GradientSource = "parameters"

    def __init__(self, pref_vector: list[float] | None = None,
                 scale_mode: Literal["min", "median", "rmse"] = "min",
                 source: GradientSource | None = None, statistics_every: int = 50) -> None:
        super().__init__(source=source, statistics_every=statistics_every)
        self.pref_vector, self.scale_mode = pref_vector, scale_mode

    def make_weighting(self, num_tasks: int) -> jd.Weighting:
        return jd.AlignedMTLWeighting(pref_vector=_preference(self.pref_vector),
                                      scale_mode=self.scale_mode)


class IMTLG(TorchjdWeighting):
    """IMTL-G (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021).

    The update's projection on every task's unit gradient is the same: ``w`` solves
    ``(g_t/||g_t|| - g_1/||g_1||) . sum_i w_i g_i = 0`` for all ``t`` with ``sum w = 1``
    (torchjd ``IMTLGWeighting``). Default source: parameters.
    """

    default_source: GradientSource = "parameters"

    def make_weighting(self, num_tasks: int) -> jd.Weighting:
        return jd.IMTLGWeighting()


class GradVac(TorchjdWeighting):
    """Gradient Vaccine (Wang et al., ICLR 2021).

    Like PCGrad, but every pair of task gradients is moved towards an exponential moving
    average ``phi_ij`` of their cosine similarity, not only when they conflict
    (torchjd ``GradVacWeighting``). The EMA is saved in checkpoints. Default source: parameters.

    Args:
        beta: EMA rate of the target similarities (torchjd's and LibMTL's default 0.5).
        eps: numerical floor.
    """

    default_source: GradientSource = "parameters"
    state_attributes = ("_phi_t", "_state_key")

    def __init__(self, beta: float = 0.5, eps: float = 1e-8,
                 source: GradientSource | None = None, statistics_every: int = 50) -> None:
        super().__init__(source=source, statistics_every=statistics_every)
        self.beta, self.eps = beta, eps

    def make_weighting(self, num_tasks: int) -> jd.Weighting:
        return jd.GradVacWeighting(beta=self.beta, eps=self.eps)


class _PreferenceWeighting(TorchjdWeighting):
    """A torchjd weighting configured by an optional preference vector (UPGrad, DualProj)."""

    default_source: GradientSource = "parameters"
    weighting_class: type[jd.Weighting]

    def __init__(self, pref_vector: list[float] | None = None,
                 source: GradientSource | None = None, statistics_every: int = 50) -> None:
        super().__init__(source=source, statistics_every=statistics_every)
        self.pref_vector = pref_vector

    def make_weighting(self, num_tasks: int) -> jd.Weighting:
        return self.weighting_class(pref_vector=_preference(self.pref_vector))


class UPGrad(_PreferenceWeighting):
    """Unconflicting projection of gradients (Quinton & Rey, "Jacobian Descent for
    Multi-Objective Optimization", 2024).

    Each task gradient is projected onto the dual cone of all of them (so it conflicts with
    none), and the projections are averaged with the preference weights (torchjd
    ``UPGradWeighting``). Default source: parameters.

    Args:
        pref_vector: preference weight per task (``None``: equal).
    """

    weighting_class = jd.UPGradWeighting


class DualProj(_PreferenceWeighting):
    """DualProj (Quinton & Rey 2024; the projection of Lopez-Paz & Ranzato's GEM, 2017).

    The preference-weighted average of the task gradients, projected onto their dual cone so
    that it conflicts with none of them (torchjd ``DualProjWeighting``). Default source:
    parameters.

    Args:
        pref_vector: preference weight per task (``None``: equal).
    """

    weighting_class = jd.DualProjWeighting


class FairGrad(TorchjdWeighting):
    """FairGrad (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024).

    Weights ``w`` solving ``G w = w^(-1/alpha)``: alpha-fair allocation of the improvement
    among tasks (alpha=1 is proportional fairness, large alpha approaches max-min fairness)
    (torchjd ``FairGradWeighting``, SciPy's least squares). Default source: parameters.

    Args:
        alpha: fairness parameter (the paper's NYUv2 setting: 2).
        max_iters: solver iterations (``None``: SciPy's default).
    """

    default_source: GradientSource = "parameters"

    def __init__(self, alpha: float = 2.0, max_iters: int | None = None,
                 source: GradientSource | None = None, statistics_every: int = 50) -> None:
        super().__init__(source=source, statistics_every=statistics_every)
        self.alpha, self.max_iters = alpha, max_iters

    def make_weighting(self, num_tasks: int) -> jd.Weighting:
        return jd.FairGradWeighting(alpha=self.alpha, max_iters=self.max_iters)


class ExcessMTL(TorchjdWeighting):
    """ExcessMTL (He et al., "Robust Multi-Task Learning with Excess Risks", ICML 2024).

    Tasks are weighted by how far each is from its own optimum, not by its loss: the excess
    risk of task ``t`` is estimated by a second-order expansion with an AdaGrad-style diagonal
    Hessian, ``E_t = g_t^T diag(sqrt(sum_s g_t,s^2))^-1 g_t`` (the sum over the steps so far),
    divided by its value at the start (scale processing), and the weights take an
    exponentiated-gradient step on the simplex, ``w <- softmax(log w + eta E)`` (the paper's
    Eqs. 6, 7 and 9; torchjd ``ExcessMTLWeighting``). The per-coordinate statistics need the
    task gradients themselves: source parameters only. The squared-gradient sums (tasks x
    shared parameters) are saved in checkpoints.

    Args:
        robust_step_size: ``eta``, the step of the weights' update (the paper's default 1).
        warmup_steps: steps with equal weights whose mean excess risk is the reference (0:
            the first step's, as the official code and LibMTL do).
    """

    default_source: GradientSource = "parameters"
    takes_jacobian = True
    state_attributes = ("_weights", "_sq_grad_sum", "_initial_w", "_warmup_w_sum", "_n_steps")

    def __init__(self, robust_step_size: float = 1.0, warmup_steps: int = 0,
                 source: GradientSource | None = None, statistics_every: int = 50) -> None:
        super().__init__(source=source, statistics_every=statistics_every)
        self.robust_step_size, self.warmup_steps = robust_step_size, warmup_steps

    def make_weighting(self, num_tasks: int) -> jd.Weighting:
        return jd.ExcessMTLWeighting(robust_step_size=self.robust_step_size,
                                     n_warmup_steps=self.warmup_steps)

    def restored(self, weighting: jd.Weighting) -> None:
        total = weighting._sq_grad_sum
        if total is not None:  # torchjd keys its state by the Jacobian's shape and place
            weighting._state_key = (*total.shape, total.dtype, total.device)


class SDMGrad(TorchjdWeighting):
    """Stochastic direction-oriented multi-objective gradient, SDMGrad (Xiao et al.,
    "Direction-oriented Multi-objective Learning: Simple and Provable Stochastic
    Algorithms", NeurIPS 2023).

    ``w = argmin_{w in simplex} 1/2 ||J^T w + lambda J^T w~||^2`` (``w~`` the preference,
    uniform by default): MGDA's min-norm problem pulled towards the average gradient, solved
    by projected SGD with momentum on the normalised Gramian, warm-started from the previous
    step's ``w``; the update is ``J^T (w + lambda w~) / (1 + lambda)`` (torchjd
    ``SDMGradWeighting``). The paper samples two independent batches for the Gramian
    ``J_1 J_2^T``; like LibMTL, this takes the one batch's ``J J^T`` (one step, one batch).
    ``w`` is saved in checkpoints.

    Args:
        lambda_: pull towards the preference direction (the official experiments: 0.3).
        lr, momentum, n_iter: the inner projected SGD (torchjd's defaults).
        pref_vector: ``w~`` (``None``: uniform).
    """

    default_source: GradientSource = "parameters"
    state_attributes = ("_w",)

    def __init__(self, lambda_: float = 0.3, lr: float = 10.0, momentum: float = 0.5,
                 n_iter: int = 20, pref_vector: list[float] | None = None,
                 source: GradientSource | None = None, statistics_every: int = 50) -> None:
        super().__init__(source=source, statistics_every=statistics_every)
        self.lambda_, self.lr, self.momentum, self.n_iter = lambda_, lr, momentum, n_iter
        self.pref_vector = pref_vector

    def make_weighting(self, num_tasks: int) -> jd.Weighting:
        return jd.SDMGradWeighting(lr=self.lr, momentum=self.momentum, n_iter=self.n_iter,
                                   lambda_=self.lambda_, pref_vector=_preference(self.pref_vector))

    def restored(self, weighting: jd.Weighting) -> None:
        w = weighting._w
        if w is not None:
            weighting._state_key = (w.shape[0], w.dtype, w.device)


#: The Gramian weightings CR-MOGM can smooth, by config name.
_SMOOTHABLE: dict[str, type[jd.Weighting]] = {
    "mgda": jd.MGDAWeighting, "upgrad": jd.UPGradWeighting, "dualproj": jd.DualProjWeighting,
    "imtl_g": jd.IMTLGWeighting, "cagrad": jd.CAGradWeighting,
}


class CRMOGM(TorchjdWeighting):
    """Correlation-reduced multi-objective gradient manipulation, CR-MOGM (Zhou et al., "On
    the Convergence of Stochastic Multi-Objective Gradient Manipulation and Beyond", NeurIPS
    2022).

    A gradient manipulation's weights computed on one mini-batch are correlated with that
    batch's gradients, which biases the update; CR-MOGM smooths them over steps,
    ``w_k = alpha w_(k-1) + (1 - alpha) w^_k`` (``w_0 = w^_1``), where ``w^_k`` is the wrapped
    method's weights at step ``k`` (MGDA in the paper; torchjd ``CRMOGMWeighting``). The
    smoothed weights are saved in checkpoints.

    Args:
        method: the wrapped weighting: ``mgda`` (the paper's), ``upgrad``, ``dualproj``,
            ``imtl_g`` or ``cagrad`` (torchjd's defaults for their options).
        alpha: smoothing (0: the wrapped method itself).
    """

    default_source: GradientSource = "representation"
    state_attributes = ("_lambda",)

    def __init__(self, method: Literal["mgda", "upgrad", "dualproj", "imtl_g", "cagrad"] = "mgda",
                 alpha: float = 0.9, source: GradientSource | None = None,
                 statistics_every: int = 50) -> None:
        super().__init__(source=source, statistics_every=statistics_every)
        if method not in _SMOOTHABLE:
            raise ValueError(f"CR-MOGM method must be one of {sorted(_SMOOTHABLE)}, got "
                             f"{method!r}.")
        self.method, self.alpha = method, alpha

    def make_weighting(self, num_tasks: int) -> jd.Weighting:
        return jd.CRMOGMWeighting(_SMOOTHABLE[self.method](), alpha=self.alpha)


class PCD(TorchjdWeighting):
    """Priority-constrained descent, PCD (Varam et al., "Not All Objectives Are Born Equal:
    Priority-Constrained Descent for Hierarchical Multi-Objective Optimization", TMLR 2026).

    One task is primary, the others (auxiliary tasks) secondary. With ``g~_t = g_t / sqrt(v_t)``
    (``v_t`` a bias-corrected EMA of ``||g_t||^2``), the update follows the primary gradient as
    closely as possible while every secondary task keeps a fraction ``tau`` of its own progress:
    ``d = argmin_d 1/2 ||d - g~_p||^2`` subject to ``g~_t . d >= tau ||g~_t||^2``, rescaled to
    ``||g_p||`` (torchjd ``PCDWeighting``). A batch that does not label the primary task gives
    the plain sum of the others. The EMAs are saved in checkpoints.

    Args:
        primary: the primary task's name.
        tau: the guaranteed fraction of progress of each secondary task (torchjd's 0.02).
        beta: the decay of the squared-norm EMA (torchjd's 0.999).
    """

    default_source: GradientSource = "parameters"
    state_attributes = ("_sq_norm_ema", "_n_steps", "_state_key")

    def __init__(self, primary: str, tau: float = 0.02, beta: float = 0.999,
                 source: GradientSource | None = None, statistics_every: int = 50) -> None:
        super().__init__(source=source, statistics_every=statistics_every)
        self.primary, self.tau, self.beta = primary, tau, beta

    def bind(self, tasks: list[str]) -> None:
        if self.primary not in tasks:
            raise ValueError(f"PCD's primary task {self.primary!r} is not one of the model's "
                             f"tasks {tasks}; set --model.balancer.init_args.primary.")

    def make_weighting(self, num_tasks: int) -> jd.Weighting:
        return jd.PCDWeighting(tau=self.tau, beta=self.beta)

    def weights(self, gramian: torch.Tensor, losses: TaskLosses, step: int) -> torch.Tensor:
        tasks = losses.tasks
        if self.primary not in tasks:
            return torch.ones(len(tasks), dtype=gramian.dtype, device=gramian.device)
        order = [tasks.index(self.primary)] + [i for i, t in enumerate(tasks)
                                               if t != self.primary]
        weighting = self.weighting_for(tuple(tasks[i] for i in order))
        permuted = weighting(gramian[order][:, order])
        weights = torch.empty_like(permuted)
        weights[order] = permuted
        return weights
