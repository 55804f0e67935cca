"""The bincount confusion-matrix metrics of segmentation equal torchmetrics' mIoU and pixel
accuracy, alone, summed across processes and inside the task's metric collection."""

from __future__ import annotations

import pytest
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from mtl_lightning.tasks.confusion_metrics import (
    SegmentationIoU,
    SegmentationPixelAccuracy,
    class_ids,
)
from mtl_lightning.tasks.segmentation import IGNORE_INDEX, SegmentationTask

CLASSES = 6


def random_batch(seed: int, batch: int = 3, size: int = 17) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-id predictions and targets; about a fifth of the target pixels are ignored, and
    class 5 never occurs (it must not count in the macro mean)."""
    generator = torch.Generator().manual_seed(seed)
    preds = torch.randint(0, CLASSES - 1, (batch, size, size), generator=generator)
    target = torch.randint(0, CLASSES - 1, (batch, size, size), generator=generator)
    agree = torch.rand(batch, size, size, generator=generator) < 0.4
    target = torch.where(agree, preds, target)
    ignored = torch.rand(batch, size, size, generator=generator) < 0.2
    return preds, target.masked_fill(ignored, IGNORE_INDEX)


def references() -> dict[str, torch.nn.Module]:
    return {"miou": MulticlassJaccardIndex(CLASSES, average="macro", ignore_index=IGNORE_INDEX),
            "pixel_accuracy": MulticlassAccuracy(CLASSES, average="micro",
                                                 ignore_index=IGNORE_INDEX)}


def ours() -> dict[str, torch.nn.Module]:
    return {"miou": SegmentationIoU(CLASSES, ignore_index=IGNORE_INDEX),
            "pixel_accuracy": SegmentationPixelAccuracy(CLASSES, ignore_index=IGNORE_INDEX)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_to_torchmetrics_on_random_inputs_with_ignored_pixels(seed: int) -> None:
    theirs, mine = references(), ours()
    for step in range(3):
        preds, target = random_batch(seed * 10 + step)
        for metric in (*theirs.values(), *mine.values()):
            metric.update(preds, target)
    for name in theirs:
        expected = theirs[name].compute()
        assert 0.0 < float(expected) < 1.0
        torch.testing.assert_close(mine[name].compute(), expected, rtol=1e-6, atol=1e-6)


def test_ignored_pixels_count_nowhere() -> None:
    preds = torch.tensor([[0, 1, 1, 2]])
    target = torch.tensor([[0, 1, IGNORE_INDEX, IGNORE_INDEX]])
    metric = SegmentationIoU(3, ignore_index=IGNORE_INDEX)
    metric.update(preds, target)
    assert metric.confmat.sum() == 2
    # class 2 is predicted only on an ignored pixel: it is absent, so the mean is over 0 and 1
    assert float(metric.compute()) == pytest.approx(1.0)


def test_states_summed_across_processes_equal_one_process() -> None:
    """DDP sums each state over ranks (``dist_reduce_fx="sum"``; ``merge_state`` applies the
    same reduction): two ranks' matrices merged give torchmetrics' value on all the data."""
    ranks = [ours(), ours()]
    theirs = references()
    for step in range(4):
        preds, target = random_batch(100 + step)
        for metric in theirs.values():
            metric.update(preds, target)
        for metric in ranks[step % 2].values():
            metric.update(preds, target)
    for name in theirs:
        ranks[0][name].merge_state(ranks[1][name])
        torch.testing.assert_close(ranks[0][name].compute(), theirs[name].compute(),
                                   rtol=1e-6, atol=1e-6)


def test_collection_counts_the_shared_matrix_once_per_batch(monkeypatch) -> None:
    calls = []
    bincount = torch.bincount
    monkeypatch.setattr(torch, "bincount", lambda *a, **k: calls.append(1) or bincount(*a, **k))
    collection = MetricCollection(ours())
    for step in range(3):
        collection.update(*random_batch(step))
    assert collection.compute_groups == {0: ["miou", "pixel_accuracy"]}
    assert len(calls) == 2 + 1 + 1  # both on the first batch, then one for the group


def test_task_update_skips_unlabelled_samples_like_indexing_them_out() -> None:
    task = SegmentationTask(CLASSES)
    metrics = task.build_metrics("val")
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(4, CLASSES, 9, 9, generator=generator)
    _, target = random_batch(3, batch=4, size=9)
    has = torch.tensor([True, False, True, False])
    task.update_metrics(metrics, logits, target.to(torch.uint8), has)
    theirs = references()
    for metric in theirs.values():
        metric.update(logits[has].argmax(1), target[has])
    values = metrics.compute()
    for name, metric in theirs.items():
        torch.testing.assert_close(values[name], metric.compute(), rtol=1e-6, atol=1e-6)


def test_class_ids_are_argmax_with_the_first_maximum_on_ties() -> None:
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(2, CLASSES, 7, 5, generator=generator)
    logits[:, 3] = logits[:, 1]  # exact ties between classes 1 and 3 everywhere
    logits[0, :, 0, 0] = 0.0  # a pixel where every class ties
    torch.testing.assert_close(class_ids(logits), logits.argmax(1), rtol=0, atol=0)
    assert int(class_ids(logits)[0, 0, 0]) == 0


def test_a_batch_without_labelled_samples_leaves_the_metrics_untouched() -> None:
    task = SegmentationTask(CLASSES)
    metrics = task.build_metrics("val")
    logits = torch.randn(2, CLASSES, 5, 5)
    task.update_metrics(metrics, logits, torch.zeros(2, 5, 5, dtype=torch.uint8),
                        torch.zeros(2, dtype=torch.bool))
    assert not any(metric.update_called for metric in metrics.values())
