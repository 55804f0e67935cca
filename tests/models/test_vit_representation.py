"""Representation-level balancing with a plain ViT: the representation is the pyramid's input
(the token maps of the blocks read), and the balancer's gradients are autograd's."""

from __future__ import annotations

import pytest
import torch

from mtl_lightning.balancing import MGDA, TaskLosses
from mtl_lightning.balancing.task_gradients import (
    compute_task_gradients,
    write_combined_gradients,
)
from mtl_lightning.module import MultiTaskModule


def _flat(tensors: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _grad(loss: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
    """d loss / d inputs, flattened (zeros where the loss does not depend on an input: the
    classification head reads only the coarsest level)."""
    found = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
    return _flat([g if g is not None else torch.zeros_like(x) for g, x in zip(found, inputs)])


@pytest.fixture
def vit_losses(tiny_scenes, tiny_batch):
    """A 4-block ViT-Tiny reading every block (each block's tokens also feed the next one)."""
    torch.manual_seed(0)
    model = MultiTaskModule(task_info=tiny_scenes.task_info, neck_channels=16,
                            backbone="vit_tiny_patch16_224", backbone_kwargs={"depth": 4},
                            vit_blocks=[0, 1, 2, 3]).train()
    local, counts, representation = model._losses_and_representation(tiny_batch, "train")
    return model, TaskLosses.gather(local, counts), model._shared_structure(representation)


def test_the_representation_is_the_token_maps(vit_losses) -> None:
    model, _, structure = vit_losses
    assert [tuple(t.shape) for t in structure.representation] == [(8, 192, 4, 4)] * 4
    assert {id(p) for p in structure.trunk} == {id(p) for p in model.backbone.body.parameters()}
    shared = {id(p) for p in structure.shared}
    assert {id(p) for p in model.backbone.adapter_parameters()} <= shared


def test_gramian_and_trunk_gradient_match_direct_autograd(vit_losses) -> None:
    _, losses, structure = vit_losses
    tasks = losses.tasks
    assert len(tasks) == 3
    rep, shared = structure.representation, structure.shared
    rows = torch.stack([torch.cat([_grad(losses.local[t], rep), _grad(losses.local[t], shared)])
                        for t in tasks]).double()
    trunk = [p for p in structure.trunk if p.requires_grad]
    gradients = compute_task_gradients(losses, structure, "representation", 1.0,
                                       retain_graph=True)
    torch.testing.assert_close(gradients.gramian, rows @ rows.T, rtol=1e-4, atol=1e-8)
    weights = MGDA().weights(gradients.gramian, losses, 0).float()
    direct = _grad(sum(w * losses.local[t] for w, t in zip(weights, tasks)), trunk)
    write_combined_gradients(gradients, weights, structure, 1.0)
    # Each block's tokens feed the pyramid *and* the next block: every path counted once.
    got = _flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in trunk])
    torch.testing.assert_close(got, direct, rtol=1e-4, atol=1e-6)
