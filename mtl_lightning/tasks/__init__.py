"""Tasks by name. Adding a task: write its file and add it to ``TASKS``."""

from __future__ import annotations

from typing import Any

from mtl_lightning.tasks.base import Task
from mtl_lightning.tasks.classification import ClassificationTask
from mtl_lightning.tasks.depth import DepthTask
from mtl_lightning.tasks.detection import DetectionTask
from mtl_lightning.tasks.edges import EdgeTask
from mtl_lightning.tasks.normals import NormalsTask
from mtl_lightning.tasks.segmentation import SegmentationTask

TASKS: dict[str, type[Task]] = {
    task.name: task for task in (ClassificationTask, SegmentationTask, DetectionTask, EdgeTask,
                                 DepthTask, NormalsTask)
}


class UnknownTaskError(ValueError):
    """A task name that no Task class answers to."""


def build_task(name: str, options: dict[str, Any] | None, info: dict[str, Any] | None) -> Task:
    """Create task ``name`` from its config options and the data's class information.

    ``info`` (``{"num_classes": int, "class_names": [...]}``) comes from the data module, so
    the user never types a class count; an explicit ``num_classes`` in ``options`` is checked
    against it. ``info["category_ids"]`` (optional) holds the dataset's original id of each
    class, which predictions report next to the contiguous index.
    """
    if name not in TASKS:
        raise UnknownTaskError(
            f"Unknown task '{name}'; available tasks: {', '.join(sorted(TASKS))}."
        )
    options = dict(options or {})
    info = dict(info or {})
    if "num_classes" in options and "num_classes" in info and (
        options["num_classes"] != info["num_classes"]
    ):
        raise ValueError(
            f"model.tasks.{name}.num_classes={options['num_classes']} but the data has "
            f"{info['num_classes']} classes; remove num_classes from the model config."
        )
    category_ids = info.pop("category_ids", None)
    merged = {**info, **options}
    task_class = TASKS[name]
    if "num_classes" not in merged and task_class.derived_from is None and (
            task_class.has_classes):
        raise ValueError(
            f"Task '{name}' does not know its number of classes: the data module provides no "
            f"'{name}' labels. Remove the task or use data that labels it."
        )
    try:
        task = TASKS[name](**merged)
    except TypeError as error:
        raise ValueError(f"Bad options for task '{name}': {error}.") from error
    if category_ids is not None:
        task.category_ids = [None if c is None else int(c) for c in category_ids]
    return task


__all__ = ["TASKS", "ClassificationTask", "DepthTask", "DetectionTask", "EdgeTask",
           "NormalsTask", "SegmentationTask", "Task", "build_task"]
