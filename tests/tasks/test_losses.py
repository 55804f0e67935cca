"""Each task's loss falls when the model overfits one tiny batch; partial labels are masked."""

from __future__ import annotations

import pytest
import torch

from mtl_lightning.module import MultiTaskModule


def _model(task_info: dict, tasks: dict | None = None) -> MultiTaskModule:
    torch.manual_seed(0)
    return MultiTaskModule(
        task_info=task_info, tasks=tasks, backbone="resnet18", neck_channels=32,
    )


@pytest.mark.parametrize("task", ["classification", "segmentation", "detection"])
def test_each_task_loss_falls_when_overfitting_a_tiny_batch(
    task: str, tiny_scenes, tiny_batch: dict
) -> None:
    model = _model(tiny_scenes.task_info, {task: None}).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    image, target, has = tiny_batch["image"], tiny_batch["targets"][task], tiny_batch["has"][task]
    losses = []
    for _ in range(25):
        loss = model.tasks[task].loss(model(image)[task], target, has)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses


def test_unlabelled_samples_contribute_nothing(tiny_scenes, tiny_batch: dict) -> None:
    """Changing the labels of samples with has=False changes neither loss nor gradients."""
    model = _model(tiny_scenes.task_info).eval()
    outputs = model(tiny_batch["image"])
    has = torch.tensor([True, False] * 4)
    scrambled = {
        "classification": tiny_batch["targets"]["classification"].clone(),
        "segmentation": tiny_batch["targets"]["segmentation"].clone(),
        "detection": [dict(t) for t in tiny_batch["targets"]["detection"]],
    }
    scrambled["classification"][~has] = (scrambled["classification"][~has] + 1) % 4
    scrambled["segmentation"][~has] = 1
    for i in (~has).nonzero().flatten().tolist():
        scrambled["detection"][i] = {"boxes": torch.tensor([[1.0, 1.0, 30.0, 30.0]]),
                                     "labels": torch.tensor([2])}
    for name, task in model.tasks.items():
        original = task.loss(outputs[name], tiny_batch["targets"][name], has)
        changed = task.loss(outputs[name], scrambled[name], has)
        torch.testing.assert_close(original, changed)


def test_a_task_without_any_labelled_sample_gives_zero_loss_but_keeps_the_graph(
    tiny_scenes, tiny_batch: dict
) -> None:
    model = _model(tiny_scenes.task_info)
    outputs = model(tiny_batch["image"])
    nobody = torch.zeros(8, dtype=torch.bool)
    for name, task in model.tasks.items():
        loss = task.loss(outputs[name], tiny_batch["targets"][name], nobody)
        assert float(loss) == 0.0
        loss.backward(retain_graph=True)  # connected: DDP sees the head's parameters used
        grads = [p.grad for p in task.parameters()]
        assert all(g is not None and torch.all(g == 0) for g in grads)
