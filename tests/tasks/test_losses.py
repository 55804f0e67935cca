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


def test_a_fully_labelled_batch_is_read_without_a_copy_and_scores_as_the_indexed_one(
        tiny_scenes, tiny_batch: dict) -> None:
    """With every sample labelled a loss reads the head's outputs as they are (no boolean-index
    copy), and the losses and metric states equal those of the same rows indexed out."""
    from mtl_lightning.tasks.base import Task

    value, everyone = torch.randn(4, 3), torch.ones(4, dtype=torch.bool)
    assert Task.labelled_rows(value, everyone) is value
    some = torch.tensor([True, False, True, True])
    assert torch.equal(Task.labelled_rows(value, some), value[some])
    model = _model(tiny_scenes.task_info).eval()
    with torch.no_grad():
        outputs = model(tiny_batch["image"])
    has = torch.ones(len(tiny_batch["image"]), dtype=torch.bool)
    for name, task in model.tasks.items():
        target = tiny_batch["targets"][name]
        fast = task.loss(outputs[name], target, has)
        # the same batch with one unlabelled extra sample appended takes the indexing path
        extra = torch.cat([has, torch.zeros(1, dtype=torch.bool)])
        padded = {k: torch.cat([v, v[:1]]) for k, v in outputs[name].items()} if isinstance(
            outputs[name], dict) else torch.cat([outputs[name], outputs[name][:1]])
        padded_target = ([*target, target[0]] if isinstance(target, list)
                         else torch.cat([target, target[:1]]))
        torch.testing.assert_close(fast, task.loss(padded, padded_target, extra))
        metrics_fast, metrics_indexed = task.build_metrics("val"), task.build_metrics("val")
        task.update_metrics(metrics_fast, outputs[name], target, has)
        task.update_metrics(metrics_indexed, padded, padded_target, extra)
        for key, value in task.compute_metrics(metrics_fast).items():
            torch.testing.assert_close(value, task.compute_metrics(metrics_indexed)[key])
