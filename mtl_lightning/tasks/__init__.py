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


def trained_tasks(
    tasks: dict[str, dict[str, Any] | None] | None,
    task_info: dict[str, dict[str, Any]],
    task_options: dict[str, dict[str, Any] | None] | None = None,
) -> dict[str, dict[str, Any]]:
    """The tasks a model builds, each with its options.

    ``tasks`` as the user named them, or (``None``) every task the data labels (the keys of
    ``task_info``, in their order). ``task_options`` holds per-task defaults that apply to
    whichever tasks are trained, under the options named in ``tasks``: one model config then
    serves data sets that label different tasks.
    """
    defaults = dict(task_options or {})
    if tasks is None:
        tasks = dict.fromkeys(task_info)
    if not tasks:
        raise ValueError("model.tasks is empty and the data labels no task; name the tasks.")
    unknown = sorted(set(defaults) - set(TASKS) - set(tasks))
    if unknown:
        raise UnknownTaskError(
            f"model.task_options names unknown task(s) {unknown}; available tasks: "
            f"{', '.join(sorted(TASKS))}."
        )
    return {name: {**(defaults.get(name) or {}), **(options or {})}
            for name, options in tasks.items()}


def build_task(
    name: str, options: dict[str, Any] | None, info: dict[str, Any] | None,
    labelled: list[str] | None = None,
) -> Task:
    """Create task ``name`` from its config options and the data's class information.

    ``info`` (``{"num_classes": int, "class_names": [...]}``) comes from the data module, so
    the user never types a class count; an explicit ``num_classes`` in ``options`` is checked
    against it. ``info["category_ids"]`` (optional) holds the dataset's original id of each
    class, which predictions report next to the contiguous index. ``labelled`` (the tasks
    the data labels) only makes the error for a task the data cannot supply say what it can.
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
    unlabelled = bool(labelled) and name not in labelled  # the data labels others, not this
    if task_class.derived_from is None and (unlabelled or (
            "num_classes" not in merged and task_class.has_classes)):
        what = "" if labelled is None else (
            f" (it labels {', '.join(labelled)})" if labelled else " (it labels no task)")
        raise ValueError(
            f"Task '{name}' is named in model.tasks but the data provides no '{name}' "
            f"labels{what}; remove it from model.tasks (model.tasks null trains what the "
            "data labels) or use data that labels it."
        )
    try:
        task = TASKS[name](**merged)
    except TypeError as error:
        raise ValueError(f"Bad options for task '{name}': {error}.") from error
    if category_ids is not None:
        task.category_ids = [None if c is None else int(c) for c in category_ids]
    return task


__all__ = ["TASKS", "ClassificationTask", "DepthTask", "DetectionTask", "EdgeTask",
           "NormalsTask", "SegmentationTask", "Task", "build_task", "trained_tasks"]
