"""The auxiliary edge task: targets derived from segmentation masks, left out of the score."""

from __future__ import annotations

import pytest
import torch

from mtl_lightning.metrics import task_results
from mtl_lightning.module import MultiTaskModule
from mtl_lightning.tasks import build_task
from mtl_lightning.tasks.edges import IGNORE_INDEX, mask_edges


def test_edges_mark_both_sides_of_a_class_change_and_ignore_unlabelled_borders() -> None:
    mask = torch.tensor([[[0, 0, 1, 1],
                          [0, 0, 1, 1],
                          [2, 2, 255, 255]]], dtype=torch.uint8)
    edges = mask_edges(mask)[0]
    assert edges[0].tolist() == [0, 1, 1, 0]
    # (1, 3) only borders the ignored region: ignored; (1, 2) is also a 0|1 boundary: edge.
    assert edges[1].tolist() == [1, 1, 1, IGNORE_INDEX]
    assert edges[2].tolist() == [1, 1, IGNORE_INDEX, IGNORE_INDEX]
    assert mask_edges(torch.zeros(1, 5, 5, dtype=torch.uint8)).sum() == 0


def test_edge_task_needs_no_class_information_and_learns(tiny_scenes, tiny_batch) -> None:
    assert build_task("edges", None, None).num_classes == 1
    model = MultiTaskModule(task_info=tiny_scenes.task_info, neck_channels=16,
                            tasks={"segmentation": None, "edges": None},
                            backbone_kwargs={"channels": [16, 16, 32, 32], "stem_width": 16})
    losses, counts = model._task_losses(tiny_batch, "val")
    assert torch.isfinite(losses["edges"]) and losses["edges"] > 0
    assert counts["edges"] == counts["segmentation"]
    losses["edges"].backward()
    assert model.tasks["edges"].head[0].weight.grad.abs().sum() > 0


def test_edges_without_segmentation_labels_is_one_sentence() -> None:
    info = {"classification": {"num_classes": 2, "class_names": ["a", "b"]}}
    with pytest.raises(ValueError, match="derives its targets from segmentation"):
        MultiTaskModule(task_info=info, neck_channels=16,
                        tasks={"classification": None, "edges": None})


def test_auxiliary_tasks_stay_out_of_delta_m_by_default() -> None:
    values = {"test/segmentation/miou": 0.5, "test/edges/f1": 0.3}
    assert task_results(values, "test") == {"segmentation": {"miou": 0.5}}
    assert task_results(values, "test", {"edges": ["f1"]}) == {"edges": {"f1": 0.3}}
