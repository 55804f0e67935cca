"""Per-task gradients, their Gramian and the combined ``.grad``, checked against autograd.

A small hand-built model (two-conv trunk giving two maps, a shared 1x1-conv neck, one head per
task) is split into a :class:`SharedStructure`; the expected task gradients are computed
directly with ``torch.autograd.grad`` and the expected updates with torchjd's aggregators on
the explicit Jacobian.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchjd import aggregation as jd

from mtl_lightning.balancing import MGDA, PCGrad, TaskLosses, UPGrad
from mtl_lightning.balancing.task_gradients import (
    SharedStructure,
    TaskGradients,
    compute_task_gradients,
    write_combined_gradients,
)
from mtl_lightning.module import MultiTaskModule

TASKS = ("a", "b", "c")


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    """One thread: the toy model is tiny."""
    torch.set_num_threads(1)


class Toy(nn.Module):
    """trunk (2 convs) -> maps [m1, m2] -> shared neck (1x1 conv) -> heads a, b, c."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(),
                                   nn.Conv2d(4, 4, 3, padding=1))
        self.neck = nn.Conv2d(8, 6, 1)
        self.heads = nn.ModuleDict({
            "a": nn.Linear(6, 1),  # image-level regression from pooled features
            "b": nn.Conv2d(6, 1, 1),  # dense regression
            "c": nn.Linear(6, 2),
        })

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        m1 = self.trunk[1](self.trunk[0](x))
        m2 = self.trunk[2](m1)  # m1 feeds the trunk's next conv *and* the neck
        # The neck reads aliases, as MultiTaskModule does (see SharedStructure).
        m1, m2 = m1.view_as(m1), m2.view_as(m2)
        features = torch.tanh(self.neck(torch.cat([m1, m2], 1)))
        pooled = features.mean((2, 3))
        outputs = {"a": self.heads["a"](pooled).squeeze(1), "b": self.heads["b"](features),
                   "c": self.heads["c"](pooled)}
        return [m1, m2], outputs

    def structure(self, representation: list[torch.Tensor]) -> SharedStructure:
        return SharedStructure(
            representation=representation, trunk=list(self.trunk.parameters()),
            shared=list(self.neck.parameters()),
            task_parameters={t: list(h.parameters()) for t, h in self.heads.items()},
        )


def batch(seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 6, 6, generator=generator)
    targets = {"a": torch.randn(4, generator=generator),
               "b": torch.randn(4, 1, 6, 6, generator=generator),
               "c": torch.randn(4, 2, generator=generator)}
    return x, targets


def run(model: Toy, seed: int = 0, counts: dict[str, int] | None = None,
        tasks: tuple[str, ...] = ("a", "b")):
    """Forward one batch: the representation, the gathered losses and the raw losses."""
    x, targets = batch(seed)
    representation, outputs = model(x)
    raw = {t: ((outputs[t] - targets[t]) ** 2).mean() for t in tasks}
    counts = counts or dict.fromkeys(tasks, 4)
    losses = TaskLosses.gather(raw, {t: torch.tensor(counts[t]) for t in tasks})
    return representation, losses, raw


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def grads(loss: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, inputs, retain_graph=True))


def current_grads(params: list[nn.Parameter]) -> torch.Tensor:
    return flat([torch.zeros_like(p) if p.grad is None else p.grad for p in params])


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), rtol=2e-4, atol=1e-6)


# ------------------------------------------------------------------ (a) parameters source
@pytest.mark.parametrize(("method", "aggregator"), [
    (UPGrad, jd.UPGrad), (MGDA, jd.MGDA), (PCGrad, jd.PCGrad),
], ids=["upgrad", "mgda", "pcgrad"])
def test_parameters_source_gives_the_exact_jacobian_and_the_aggregated_update(
    method, aggregator
) -> None:
    model = Toy()
    representation, losses, raw = run(model)
    shared = [*model.trunk.parameters(), *model.neck.parameters()]
    jacobian = torch.stack([flat(grads(raw[t], shared)) for t in ("a", "b")])
    heads = {t: flat(grads(raw[t], list(model.heads[t].parameters()))) for t in ("a", "b")}
    expected_update = aggregator()(jacobian)

    gradients = compute_task_gradients(losses, model.structure(representation), "parameters", 1.0)
    close(gradients.gramian, jacobian @ jacobian.T)
    assert gradients.trunk is not None and gradients.tasks == ("a", "b")
    weights = method().weights(gradients.gramian, losses, 0)
    write_combined_gradients(gradients, weights, model.structure(representation), 1.0)

    close(current_grads(shared), expected_update)
    close(current_grads(shared), weights.to(jacobian) @ jacobian)
    for i, task in enumerate(("a", "b")):
        close(current_grads(list(model.heads[task].parameters())), weights[i] * heads[task])
    assert all(p.grad is None for p in model.heads["c"].parameters())


# -------------------------------------------------------------- (b) representation source
def test_representation_source_gramian_and_trunk_vjp() -> None:
    model = Toy()
    representation, losses, raw = run(model)
    neck = list(model.neck.parameters())
    rep_rows = torch.stack([flat(grads(raw[t], representation)) for t in ("a", "b")])
    neck_rows = torch.stack([flat(grads(raw[t], neck)) for t in ("a", "b")])
    per_map = {t: grads(raw[t], representation) for t in ("a", "b")}
    heads = {t: flat(grads(raw[t], list(model.heads[t].parameters()))) for t in ("a", "b")}

    gradients = compute_task_gradients(
        losses, model.structure(representation), "representation", 1.0)
    assert gradients.trunk is None
    close(gradients.gramian, rep_rows @ rep_rows.T + neck_rows @ neck_rows.T)
    weights = MGDA().weights(gradients.gramian, losses, 0).float()
    # The trunk receives one VJP of sum_t w_t dL_t/drep.
    cotangents = [sum(weights[i] * per_map[t][j] for i, t in enumerate(("a", "b")))
                  for j in range(2)]
    trunk_expected = flat(torch.autograd.grad(
        representation, list(model.trunk.parameters()), grad_outputs=cotangents,
        retain_graph=True))
    direct = flat(torch.autograd.grad(sum(w * raw[t] for w, t in zip(weights, ("a", "b"))),
                                      list(model.trunk.parameters()), retain_graph=True))
    write_combined_gradients(gradients, weights, model.structure(representation), 1.0)

    close(current_grads(list(model.trunk.parameters())), trunk_expected)
    # ...which is the trunk gradient of sum_t w_t L_t (each path through the trunk once).
    close(current_grads(list(model.trunk.parameters())), direct)
    close(current_grads(neck), weights @ neck_rows)
    for i, task in enumerate(("a", "b")):
        close(current_grads(list(model.heads[task].parameters())), weights[i] * heads[task])


# ------------------------------------------------------------------------ (c) loss scale
@pytest.mark.parametrize("source", ["parameters", "representation"])
def test_a_loss_scale_gives_the_same_weights_and_a_scaled_gradient(source: str) -> None:
    """``scale`` is what Lightning's 16-mixed plugin and gradient accumulation multiply the
    loss by: the Gramian (hence the weights) is of the unscaled gradients, the ``.grad``
    written is scaled, for the plugin to unscale."""
    results = {}
    for scale in (1.0, 1024.0):
        model = Toy()
        representation, losses, _ = run(model)
        structure = model.structure(representation)
        gradients = compute_task_gradients(losses, structure, source, scale)
        weights = UPGrad().weights(gradients.gramian, losses, 0)
        write_combined_gradients(gradients, weights, structure, scale)
        results[scale] = (gradients.gramian, weights, current_grads(list(model.parameters())))
    close(results[1024.0][0], results[1.0][0])
    close(results[1024.0][1], results[1.0][1])
    grad_unscaled, grad_scaled = results[1.0][2], results[1024.0][2]
    assert float(grad_unscaled.abs().max()) > 0
    torch.testing.assert_close(grad_scaled, 1024.0 * grad_unscaled, rtol=2e-4, atol=1e-5)


# ------------------------------------------------------------ (d) gradient accumulation
@pytest.mark.parametrize("source", ["parameters", "representation"])
def test_two_micro_batches_accumulate_into_grad(source: str) -> None:
    def step(model: Toy, seed: int) -> TaskGradients:
        representation, losses, _ = run(model, seed=seed)
        structure = model.structure(representation)
        gradients = compute_task_gradients(losses, structure, source, 0.5)  # 1/accumulation
        weights = MGDA().weights(gradients.gramian, losses, 0)
        write_combined_gradients(gradients, weights, structure, 0.5)
        return gradients

    separate = []
    for seed in (0, 1):
        model = Toy()
        step(model, seed)
        separate.append(current_grads(list(model.parameters())))
    model = Toy()
    step(model, 0)
    step(model, 1)
    accumulated = current_grads(list(model.parameters()))
    assert not torch.allclose(separate[0], separate[1])
    torch.testing.assert_close(accumulated, separate[0] + separate[1], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------- (e) absent tasks
def test_a_task_labelled_nowhere_gets_no_row_and_no_gradient() -> None:
    model = Toy()
    representation, losses, _ = run(model, counts={"a": 4, "b": 4, "c": 0}, tasks=TASKS)
    assert losses.tasks == ("a", "b") and set(losses.unlabelled) == {"c"}
    structure = model.structure(representation)
    gradients = compute_task_gradients(losses, structure, "parameters", 1.0)
    assert gradients.gramian.shape == (2, 2) and gradients.tasks == ("a", "b")
    weights = UPGrad().weights(gradients.gramian, losses, 0)
    write_combined_gradients(gradients, weights, structure, 1.0)
    assert all(p.grad is None for p in model.heads["c"].parameters())
    # The same update as a model that never had task c.
    reference = Toy()
    representation, two, _ = run(reference)
    ref_structure = reference.structure(representation)
    ref_gradients = compute_task_gradients(two, ref_structure, "parameters", 1.0)
    close(gradients.gramian, ref_gradients.gramian)
    write_combined_gradients(ref_gradients, UPGrad().weights(ref_gradients.gramian, two, 0),
                             ref_structure, 1.0)
    close(current_grads(list(model.trunk.parameters())),
          current_grads(list(reference.trunk.parameters())))


# ---------------------------------------------------------- the real model's gradients
def test_the_real_models_task_gradients_at_the_representation_interact(tiny_scenes,
                                                                        tiny_batch) -> None:
    """With the FPN neck every head reads every backbone map, so the task gradients at the
    representation are not orthogonal by construction (they would be exactly 0 if each head
    read a map of its own)."""
    torch.manual_seed(0)
    model = MultiTaskModule(task_info=tiny_scenes.task_info, neck_channels=16)
    model.train()
    local, counts, representation = model._losses_and_representation(tiny_batch, "train")
    losses = TaskLosses.gather(local, counts)
    assert len(losses.tasks) == 3
    gradients = compute_task_gradients(losses, model._shared_structure(representation),
                                       "representation", 1.0)
    norms, cosine = gradients.statistics()
    assert torch.isfinite(gradients.gramian).all() and (norms > 0).all()
    torch.testing.assert_close(cosine.diagonal(), torch.ones(3, dtype=cosine.dtype))
    off_diagonal = cosine[~torch.eye(3, dtype=torch.bool)]
    assert float(off_diagonal.abs().max()) > 1e-3, cosine
    assert (off_diagonal.abs() <= 1 + 1e-6).all()


def test_the_real_models_trunk_rows_are_the_backbone_gradients(tiny_scenes, tiny_batch) -> None:
    """The backbone's maps also feed its deeper stages: the rows at the trunk must still be
    each task's exact backbone gradient (each path counted once), as autograd gives it."""
    torch.manual_seed(0)
    model = MultiTaskModule(task_info=tiny_scenes.task_info, neck_channels=16)
    model.train()
    local, counts, representation = model._losses_and_representation(tiny_batch, "train")
    losses = TaskLosses.gather(local, counts)
    structure = model._shared_structure(representation)
    backbone = [p for p in structure.trunk if p.requires_grad]
    assert {id(p) for p in backbone} == {id(p) for p in model.backbone.parameters()}
    direct = torch.stack([flat(grads(losses.local[t], backbone)) for t in losses.tasks])
    gradients = compute_task_gradients(losses, structure, "parameters", 1.0)
    assert gradients.trunk is not None
    torch.testing.assert_close(gradients.trunk, direct, rtol=1e-4, atol=1e-6)


def test_batched_and_per_task_trunk_passes_agree() -> None:
    """The batched trunk backward (accelerators) equals one pass per task (the CPU's)."""
    from mtl_lightning.balancing.task_gradients import _batched_trunk_vjp

    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.Conv2d(4, 4, 3))
    x = torch.randn(2, 3, 9, 9)
    first = trunk[1](trunk[0](x))
    maps = [first.view_as(first), trunk[2](first)]
    cotangents = [torch.randn(3, *m.shape) for m in maps]
    params = list(trunk.parameters())
    batched = _batched_trunk_vjp(maps, params, cotangents, retain_graph=True, batched=True)
    looped = _batched_trunk_vjp(maps, params, cotangents, retain_graph=True, batched=False)
    for a, b in zip(batched, looped):
        assert a.shape[0] == 3
        assert torch.allclose(a, b, atol=1e-5)
