"""Tasks are created by name; unknown names and mismatched class counts are clear errors."""

from __future__ import annotations

import pytest

from mtl_lightning.tasks import TASKS, UnknownTaskError, build_task


def test_unknown_task_lists_the_available_tasks() -> None:
    with pytest.raises(UnknownTaskError,
                       match="classification, depth, detection, edges, normals, segmentation"):
        build_task("depth_estimation", None, {"num_classes": 1})


def test_class_count_comes_from_the_data_and_is_checked() -> None:
    task = build_task("detection", None, {"num_classes": 4, "class_names": list("abcd")})
    assert task.num_classes == 4 and task.class_names == list("abcd")
    with pytest.raises(ValueError, match="remove num_classes"):
        build_task("detection", {"num_classes": 3}, {"num_classes": 4})
    with pytest.raises(ValueError, match="provides no 'segmentation' labels"):
        build_task("segmentation", None, None)
    # a regression task needs no class count, but the data must label it
    assert build_task("depth", None, {}).num_classes is None
    with pytest.raises(ValueError, match=r"provides no 'depth' labels \(it labels detection\)"):
        build_task("depth", None, None, labelled=["detection"])


def test_bad_task_option_names_the_task() -> None:
    with pytest.raises(ValueError, match="Bad options for task 'classification'"):
        build_task("classification", {"label_smoothin": 0.1}, {"num_classes": 2})


def test_registry_holds_the_tasks_and_the_auxiliary_one() -> None:
    assert set(TASKS) == {"classification", "segmentation", "detection", "edges", "depth",
                          "normals"}
    assert [name for name, task in TASKS.items() if task.auxiliary] == ["edges"]
