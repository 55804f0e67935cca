"""Per-task gradients inside a Lightning step: compute, make global, weight, write back.

The model is split into four parts (:class:`SharedStructure`): the *trunk* (backbone) that
produces the *representation* (all the backbone maps the neck consumes, taken together), the
*shared* parameters above it (the neck), and each task's own parameters (its head).

Per step, for the ``m`` tasks labelled somewhere in the global batch:

1. one backward per task from its loss to the representation, the shared parameters and its
   own head (``autograd.grad``, graph retained): the cheap part, the trunk is not entered;
2. the ``m x m`` Gramian ``G = J J^T`` of the task gradients, where ``J``'s rows are
   - ``source="representation"``: the gradients at the representation and the shared
     parameters (the MGDA-UB approximation of Sener & Koltun 2018: no per-task trunk pass);
   - ``source="parameters"``: the gradients at every shared parameter, trunk included (exact).
     The trunk rows come from one *batched* vector-Jacobian product through the trunk
     (``is_grads_batched``) instead of ``m`` separate backward passes;
3. the method's weights ``w = f(G)`` (torchjd's weightings for MGDA, UPGrad, ...). For a
   weighted sum the update is ``sum_t w_t g_t``: the trunk receives one backward of
   ``sum_t w_t (dL_t/drepresentation)`` (representation source) or ``w^T J`` (parameters
   source), the shared parameters ``w^T J_shared``, each head ``w_t g_t``. Aggregators that
   are not a weighted sum (ConFIG, GradDrop, DB-MTL, MoCo) read ``J`` itself (parameters
   source) and return the *combined vector* ``d`` over the trunk and shared parameters;
   ``d`` replaces ``w^T J`` there, and each head still receives ``w_t g_t``. ``J`` is global,
   so ``d`` is the same on every process, as the weights are.

Why not ``torchjd.autojac.mtl_backward``: it wants one flat feature tensor; with the nested
multi-scale maps of a feature pyramid it needs ``retain_graph`` and then accumulates wrong
gradients. Computing the task gradients here and handing torchjd the Gramian avoids both.

DDP: the per-task gradients are averaged over processes *before* the weights are computed
(the representation's Gramian is summed: each process's maps belong to different samples),
so every process computes the same ``w``, and the written gradients are averaged after.
The module switches off DDP's own gradient all-reduce for these methods.

Mixed precision: the losses arrive multiplied by the loss scale (16-mixed) and the gradient
accumulation factor; the task gradients are unscaled before the Gramian is formed and the
combined gradient is scaled again when written to ``.grad``, where Lightning's precision
plugin unscales it before clipping and stepping as usual.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from mtl_lightning.balancing.base import TaskLosses
from mtl_lightning.balancing.distributed import all_reduce_mean, world_size


@dataclass
class SharedStructure:
    """Which tensors of the model play which role in this step (see the module docstring).

    The ``representation`` tensors must be read only by the layers above the trunk, never by
    the trunk itself: a backbone's maps feed its deeper stages too, so the model passes
    aliases (``m.view_as(m)``) to the neck and lists those. At the maps themselves the task
    gradients would include the paths through the deeper stages, and the trunk backward from
    all maps would count those paths twice.
    """

    representation: list[torch.Tensor]
    trunk: list[nn.Parameter]
    shared: list[nn.Parameter]
    task_parameters: dict[str, list[nn.Parameter]]


@dataclass
class TaskGradients:
    """The task gradients of one step (rows of ``J``, global where they are used)."""

    tasks: tuple[str, ...]
    gramian: torch.Tensor  # m x m, float64, the same on every process
    representation: list[list[torch.Tensor]]  # per task, per map (this process, unscaled)
    shared: torch.Tensor  # m x n_shared (global mean)
    trunk: torch.Tensor | None  # m x n_trunk (global mean), parameters source only
    heads: dict[str, list[torch.Tensor]]  # per task (this process)

    def jacobian(self) -> torch.Tensor:
        """``J``: one row per task over every shared parameter, the trunk's columns first,
        then the shared ones above the representation; global (the same on every process).
        Only the ``parameters`` source has it: at the representation the rows belong to this
        process's samples."""
        if self.trunk is None:
            raise ValueError("This method needs the task gradients at the parameters: give "
                             "the balancer source: parameters.")
        return torch.cat([self.trunk, self.shared.to(self.trunk.device)], dim=1)

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-task gradient norms and pairwise cosine similarities, from the Gramian."""
        norms = self.gramian.diagonal().clamp(min=0).sqrt()
        cosine = self.gramian / (norms[:, None] * norms[None, :]).clamp(min=1e-30)
        return norms, cosine


def _trainable(parameters: list[nn.Parameter]) -> list[nn.Parameter]:
    return [p for p in parameters if p.requires_grad]


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    if not tensors:
        return torch.zeros(0)
    return torch.cat([t.reshape(-1).float() for t in tensors])


def _unflatten(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, start = [], 0
    for t in like:
        out.append(flat[start:start + t.numel()].view(t.shape))
        start += t.numel()
    return out


def _grads(loss: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """``dloss/dinput`` for every input; zeros where it does not depend on it (or an input
    needs no gradient, e.g. the maps of a frozen backbone)."""
    wanted = [x for x in inputs if x.requires_grad]
    found = iter(torch.autograd.grad(loss, wanted, retain_graph=True, allow_unused=True)
                 if wanted and loss.requires_grad else [None] * len(wanted))
    grads = [next(found) if x.requires_grad else None for x in inputs]
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def _per_task_trunk_vjp(
    representation: list[torch.Tensor], trunk: list[nn.Parameter],
    cotangents: list[torch.Tensor], retain_graph: bool,
) -> tuple[torch.Tensor | None, ...]:
    """One trunk backward per task, stacked (the last frees the graph unless retained)."""
    m = cotangents[0].shape[0]
    per_task = [
        torch.autograd.grad(representation, trunk, grad_outputs=[c[i] for c in cotangents],
                            retain_graph=retain_graph or i < m - 1, allow_unused=True)
        for i in range(m)
    ]
    return tuple(
        None if per_task[0][j] is None else torch.stack([g[j] for g in per_task])
        for j in range(len(trunk))
    )


def _batched_trunk_vjp(
    representation: list[torch.Tensor], trunk: list[nn.Parameter],
    cotangents: list[torch.Tensor], retain_graph: bool, batched: bool | None = None,
) -> list[torch.Tensor]:
    """``m`` vector-Jacobian products through the trunk (leading dim of cotangents): one
    batched pass (``is_grads_batched``) on accelerators, one pass per task on the CPU
    (``batched`` forces either)."""
    if not trunk or not any(r.requires_grad for r in representation):
        m = cotangents[0].shape[0]
        return [torch.zeros(m, *p.shape, device=p.device) for p in trunk]
    if batched is None:
        batched = representation[0].device.type != "cpu"
    if not batched:
        # On the CPU the batched pass is no faster than one pass per task and adds many
        # concatenations; on a GPU it wins (docs/performance.md, design choices).
        grads = _per_task_trunk_vjp(representation, trunk, cotangents, retain_graph)
    else:
        try:
            grads = tuple(torch.autograd.grad(
                representation, trunk, grad_outputs=cotangents, is_grads_batched=True,
                retain_graph=True, allow_unused=True,
            ))
        except RuntimeError as error:  # an op without a batching rule: one pass per task
            warnings.warn(f"Batched trunk backward unavailable ({error}); one pass per task.",
                          stacklevel=2)
            grads = _per_task_trunk_vjp(representation, trunk, cotangents, retain_graph)
    m = cotangents[0].shape[0]
    return [torch.zeros(m, *p.shape, device=p.device) if g is None else g
            for p, g in zip(trunk, grads)]


def compute_task_gradients(
    losses: TaskLosses, structure: SharedStructure, source: str, scale: float,
    retain_graph: bool = False,
) -> TaskGradients:
    """Steps 1 and 2 of the module docstring. ``scale``: loss scale x 1/accumulation.
    ``retain_graph``: keep the graph for a later backward (statistics on a loss-weighting
    step); the representation source always keeps it for the trunk backward."""
    tasks = losses.tasks
    rep = structure.representation
    shared = _trainable(structure.shared)
    reps, shared_rows, heads = [], [], {}
    for task in tasks:
        own = _trainable(structure.task_parameters.get(task, []))
        loss = losses.local[task] * losses.share[task] * scale
        grads = [g / scale for g in _grads(loss, rep + shared + own)]
        reps.append(grads[: len(rep)])
        shared_rows.append(_flat(grads[len(rep): len(rep) + len(shared)]))
        heads[task] = grads[len(rep) + len(shared):]
    size = world_size()
    shared_matrix = torch.stack(shared_rows).to(rep[0].device) if shared else None
    if source == "parameters":
        trunk = _trainable(structure.trunk)
        cotangents = [torch.stack([r[j] for r in reps]).to(rep[j].dtype) * scale
                      for j in range(len(rep))]
        trunk_grads = _batched_trunk_vjp(rep, trunk, cotangents, retain_graph=retain_graph)
        trunk_matrix = (
            torch.cat([g.reshape(len(tasks), -1).float() for g in trunk_grads], 1)
            if trunk_grads else torch.zeros(len(tasks), 0, device=rep[0].device)
        )
        trunk_matrix = trunk_matrix / scale
        parts = [trunk_matrix] + ([shared_matrix] if shared_matrix is not None else [])
        parts = all_reduce_mean(parts)
        trunk_matrix = parts[0]
        shared_matrix = parts[1] if shared_matrix is not None else None
        jacobian = torch.cat(parts, dim=1)
        gramian = jacobian @ jacobian.T
    else:
        trunk_matrix = None
        rep_matrix = torch.stack([_flat(r) for r in reps])
        # Each process's maps belong to other samples: the global representation Gramian is
        # the sum of the per-process ones (each row carrying its 1/world_size).
        local_gramian = rep_matrix @ rep_matrix.T / size
        parts = [local_gramian] + ([shared_matrix] if shared_matrix is not None else [])
        parts = all_reduce_mean(parts)
        gramian = parts[0]
        if shared_matrix is not None:
            shared_matrix = parts[1]
            gramian = gramian + shared_matrix @ shared_matrix.T
    if shared_matrix is None:
        shared_matrix = torch.zeros(len(tasks), 0, device=rep[0].device)
    return TaskGradients(tasks, gramian.double(), reps, shared_matrix, trunk_matrix, heads)


def write_combined_gradients(
    gradients: TaskGradients, weights: torch.Tensor, structure: SharedStructure, scale: float,
    combined: torch.Tensor | None = None,
) -> None:
    """Step 3: add ``sum_t w_t g_t`` (times ``scale``) to every parameter's ``.grad``; with
    ``combined`` (a vector over the columns of :meth:`TaskGradients.jacobian`), add it to the
    trunk and shared parameters instead of ``w^T J``."""
    weights = weights.to(gradients.shared.device, torch.float32)
    if combined is not None:
        jacobian_width = gradients.jacobian().shape[1]
        if combined.shape != (jacobian_width,):
            raise ValueError(f"The combined gradient has shape {tuple(combined.shape)}; the "
                             f"task Jacobian has {jacobian_width} columns.")
    shared = _trainable(structure.shared)
    trunk = _trainable(structure.trunk)
    local: list[torch.Tensor] = []  # contributions still to be averaged over processes
    local_params: list[nn.Parameter] = []
    for i, task in enumerate(gradients.tasks):
        own = _trainable(structure.task_parameters.get(task, []))
        local += [weights[i] * g.float() for g in gradients.heads[task]]
        local_params += own
    global_grads: list[torch.Tensor] = []
    global_params: list[nn.Parameter] = []
    if combined is not None:
        assert gradients.trunk is not None  # jacobian() checked it
        combined = combined.to(gradients.trunk.device, torch.float32)
        width = gradients.trunk.shape[1]
        global_grads += _unflatten(combined[width:], shared) + _unflatten(combined[:width], trunk)
        global_params += shared + trunk
    elif shared:
        global_grads += _unflatten(weights @ gradients.shared, shared)
        global_params += shared
    if combined is None and gradients.trunk is not None:
        global_grads += _unflatten(weights @ gradients.trunk, trunk)
        global_params += trunk
    elif combined is None and trunk:
        rep = structure.representation
        cotangents = [
            (sum(weights[i] * gradients.representation[i][j].float()
                 for i in range(len(gradients.tasks))) * scale).to(rep[j].dtype)
            for j in range(len(rep))
        ]
        needed = [r.requires_grad for r in rep]
        grads = torch.autograd.grad(
            [r for r, n in zip(rep, needed) if n], trunk,
            grad_outputs=[c for c, n in zip(cotangents, needed) if n], allow_unused=True,
        ) if any(needed) else [None] * len(trunk)
        local += [torch.zeros_like(p, dtype=torch.float32) if g is None else g.float() / scale
                  for p, g in zip(trunk, grads)]
        local_params += trunk
    local = all_reduce_mean(local)
    for param, grad in zip(local_params + global_params, local + global_grads):
        grad = (grad * scale).to(param.dtype)
        if param.grad is None:
            param.grad = grad.clone()
        else:
            param.grad.add_(grad)
