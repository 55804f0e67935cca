"""Peers side by side: our exact UPGrad step against torchjd's own ``mtl_backward``.

``peer_torchjd_upgrad`` times, in one process, on the same model and the same in-memory
batches, two ways to make one training step with UPGrad (Quinton & Rey 2024) over the
Jacobian of the task losses with respect to every shared parameter (backbone and neck):

- **ours**: the module's path (:mod:`mtl_lightning.balancing.task_gradients`): one backward
  per task to the representation, the neck and its head, the trunk rows from vector-Jacobian
  products through the backbone, the Gramian, torchjd's ``UPGradWeighting`` on it, and the
  combined gradient written into ``.grad``;
- **theirs**: ``torchjd.autojac.mtl_backward(losses, features=pyramid)`` (the Jacobian into the
  shared parameters' ``.jac`` fields, the heads' gradients into ``.grad``) followed by
  ``torchjd.autojac.jac_to_grad(shared, UPGrad())``.

Both then make the same AdamW step. The classification head reads the pyramid
(``features: pyramid``) so that every head reads only the neck's maps: torchjd's
``features`` must be the last shared tensors, not nested inside one another (a head that
reads a backbone map the neck also reads would make its paths count twice there). Before
timing, both paths are run once from the same weights on the same batch and their
gradients at the shared parameters compared (``max_abs_gradient_difference``), so the ratio
compares equal work.

The ratio is ours / theirs per round (rounds alternate which side goes first), reported as
the median with its min and max; the target is ``<= 0.9``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from timm.optim import create_optimizer_v2
from torch import nn

from mtl_lightning.balancing import TaskLosses
from mtl_lightning.balancing.aggregators import UPGrad
from mtl_lightning.balancing.task_gradients import (
    compute_task_gradients,
    write_combined_gradients,
)
from mtl_lightning.module import MultiTaskModule

from .common import autocast_for, batches_in_memory, build_cli, spread, time_calls
from .settings import Settings

TARGET = 0.9
#: The peer needs every head to read only the neck's maps (see the module docstring).
#: (The other options come from the config's ``model.task_options``.)
PYRAMID_CLASSIFIER = ("--model.tasks={classification: {features: pyramid}, segmentation: null, "
                      "detection: null}")


def task_losses(model: MultiTaskModule, batch: dict) -> tuple[dict, dict, list, list]:
    """Each task's loss and labelled count, the pyramid maps the heads read and the
    representation the architecture returned with them."""
    image = batch["image"]
    shared = model.architecture(image)
    features = shared.features
    size = (image.shape[-2], image.shape[-1])
    losses, counts = {}, {}
    for name, task in model.tasks.items():
        has, target = model.task_labels(batch, name)
        losses[name] = task.loss(task(features[name], size), target, has)
        counts[name] = has.sum()
    pyramid = next(iter(features.values())).pyramid
    return losses, counts, pyramid, shared.representation


class UPGradStep:
    """One training step of ``model`` with AdamW (the module's settings) under ``precision``;
    a subclass says how ``gradients`` fills ``.grad``."""

    def __init__(self, model: MultiTaskModule, precision: str, device: str) -> None:
        self.model, self.precision, self.device = model.to(device).train(), precision, device
        hp = model.hparams
        self.optimizer = create_optimizer_v2(model, opt="adamw", lr=hp.lr,
                                             weight_decay=hp.weight_decay)

    def gradients(self, batch: dict) -> None:
        raise NotImplementedError

    def step(self, batch: dict) -> None:
        self.gradients(batch)
        self.optimizer.step()


class OursUPGrad(UPGradStep):
    """The module's exact (parameter-source) UPGrad, outside Lightning."""

    def __init__(self, model: MultiTaskModule, precision: str, device: str) -> None:
        super().__init__(model, precision, device)
        self.balancer = UPGrad(source="parameters")
        self.balancer.bind(list(model.tasks))

    def gradients(self, batch: dict) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_for(self.precision, self.device):
            local, counts, _, representation = task_losses(self.model, batch)
        losses = TaskLosses.gather(local, counts)
        structure = self.model._shared_structure(representation)
        task_gradients = compute_task_gradients(losses, structure, "parameters", 1.0)
        weights = self.balancer.weights(task_gradients.gramian, losses, 0)
        write_combined_gradients(task_gradients, weights, structure, 1.0)


class TheirsUPGrad(UPGradStep):
    """torchjd's ``mtl_backward`` + ``jac_to_grad(UPGrad())``."""

    def __init__(self, model: MultiTaskModule, precision: str, device: str) -> None:
        from torchjd.aggregation import UPGrad as TorchjdUPGrad

        super().__init__(model, precision, device)
        self.aggregator = TorchjdUPGrad()
        roles = model.architecture.roles()
        self.shared: list[nn.Parameter] = [p for p in roles.trunk + roles.shared
                                           if p.requires_grad]
        self.heads = [[p for p in task.parameters() if p.requires_grad]
                      for task in model.tasks.values()]

    def gradients(self, batch: dict) -> None:
        from torchjd.autojac import jac_to_grad, mtl_backward

        self.optimizer.zero_grad(set_to_none=True)
        with autocast_for(self.precision, self.device):
            losses, _, pyramid, _ = task_losses(self.model, batch)
        mtl_backward(list(losses.values()), features=pyramid, tasks_params=self.heads,
                     shared_params=self.shared)
        jac_to_grad(self.shared, self.aggregator)


def max_gradient_difference(ours: OursUPGrad, theirs: TheirsUPGrad, batch: dict) -> float:
    """The largest absolute difference between the two paths' gradients at the shared
    parameters (backbone and neck), from equal weights on the same batch.

    The heads are left out on purpose: torchjd gives each head its task's plain gradient,
    the module gives it ``w_t g_t`` (the task's weight times its gradient), so the head
    gradients differ by the weights by design; the work is the same.
    """
    theirs.model.load_state_dict(ours.model.state_dict())
    ours.gradients(batch)
    theirs.gradients(batch)
    shared = {id(p) for p in ours.model.architecture.parameters()}
    worst = 0.0
    for (name, a), b in zip(ours.model.named_parameters(), theirs.model.parameters()):
        if id(a) not in shared or (a.grad is None and b.grad is None):
            continue
        if a.grad is None or b.grad is None:
            raise RuntimeError(f"only one of the two UPGrad paths has a gradient for {name}")
        worst = max(worst, float((a.grad.float() - b.grad.float()).abs().max()))
    return worst


def peer_torchjd_upgrad(settings: Settings, device: str, config: Path,
                        args: list[str]) -> dict[str, Any]:
    """Our UPGrad step / torchjd's, on the default model and batch (module docstring).

    Both sides run in float32: torchjd's ``mtl_backward`` fails under bf16 autocast (its
    vectorised backward meets bf16 features with float32 cotangents); whether it does is
    recorded under ``theirs_at_config_precision`` (the module's own step runs in the config's
    precision, which the suite's other keys measure)."""
    cli = build_cli(*args, PYRAMID_CLASSIFIER, config=config, device=device)
    configured = str(cli.config.trainer.precision)
    batches = batches_in_memory(cli.datamodule.train_dataloader(),
                                settings.in_memory_batches, device)
    at_config = _theirs_at(configured, cli.model, batches[0], device)
    precision = "32"
    ours = OursUPGrad(cli.model, precision, device)
    theirs = TheirsUPGrad(copy.deepcopy(cli.model), precision, device)
    difference = max_gradient_difference(ours, theirs, batches[0])
    sides = {"ours": ours, "theirs": theirs}
    ms: dict[str, list[float]] = {"ours": [], "theirs": []}
    ratios = []
    for round_index in range(settings.rounds):
        order = ["ours", "theirs"] if round_index % 2 == 0 else ["theirs", "ours"]
        medians = {}
        for side in order:
            times = time_calls(lambda i, s=sides[side]: s.step(batches[i % len(batches)]),
                               settings.steps, settings.warmup, device)
            medians[side] = sorted(times)[len(times) // 2]
            ms[side].append(medians[side] * 1000)
        ratios.append(medians["ours"] / medians["theirs"])
    return {
        "ratio": spread(ratios),
        "target": TARGET,
        "ours_ms": spread(ms["ours"])["median"],
        "theirs_ms": spread(ms["theirs"])["median"],
        "max_abs_gradient_difference": difference,
        "precision": precision,
        "theirs_at_config_precision": at_config,
        "torchjd": _torchjd_version(),
    }


def _theirs_at(precision: str, model: MultiTaskModule, batch: dict, device: str) -> str:
    """``"ok"`` or the error of one torchjd step under ``precision``."""
    try:
        TheirsUPGrad(copy.deepcopy(model), precision, device).gradients(batch)
    except RuntimeError as error:
        return f"{precision}: {type(error).__name__}: {str(error).splitlines()[0]}"
    return f"{precision}: ok"


def _torchjd_version() -> str:
    from importlib.metadata import version

    return version("torchjd")


__all__ = ["peer_torchjd_upgrad"]
