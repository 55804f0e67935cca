"""The task registry: task TYPES by name, and named task INSTANCES built from a config.

``model.tasks`` maps a free instance name to its options. An instance's type is, in order:
its ``type`` option (``drivable: {type: segmentation}``), its ``class_path`` (a Task subclass
from anywhere, imported by path like the balancers, with ``init_args``), the data's
``task_info[name]["type"]``, or else the name itself (``classification: null`` is a
classification task named classification). Adding a task type to the package: write its file
and add the class to ``TASKS``; a task from outside the package needs no edit here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from mtl_lightning.tasks.base import Task
from mtl_lightning.tasks.classification import ClassificationTask
from mtl_lightning.tasks.depth import DepthTask
from mtl_lightning.tasks.detection import DetectionTask
from mtl_lightning.tasks.edges import EdgeTask
from mtl_lightning.tasks.normals import NormalsTask
from mtl_lightning.tasks.segmentation import SegmentationTask

#: Registered task types by type name: the one list of task types in the package.
TASKS: dict[str, type[Task]] = {
    task.type_name: task for task in (ClassificationTask, SegmentationTask, DetectionTask,
                                      EdgeTask, DepthTask, NormalsTask)
}
#: The options that choose an instance's type; every other option is the class's own.
TYPE_OPTIONS = ("type", "class_path", "init_args")


class UnknownTaskError(ValueError):
    """A task type or class path that no Task class answers to."""


def task_class(type_or_class_path: str) -> type[Task]:
    """The Task class of a registered type name (``segmentation``) or of an import path
    (``my_project.tasks.ForegroundTask``)."""
    if type_or_class_path in TASKS:
        return TASKS[type_or_class_path]
    module_name, _, class_name = type_or_class_path.rpartition(".")
    if not module_name:
        raise UnknownTaskError(
            f"Unknown task type '{type_or_class_path}'; available tasks: "
            f"{', '.join(sorted(TASKS))} (or a class_path such as my_project.tasks.MyTask)."
        )
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise UnknownTaskError(
            f"Cannot import the task class '{type_or_class_path}' ({error}); check the "
            "class_path and that its module is importable (on PYTHONPATH)."
        ) from None
    if not (isinstance(found, type) and issubclass(found, Task)):
        raise UnknownTaskError(
            f"'{type_or_class_path}' is not a subclass of mtl_lightning.tasks.Task."
        )
    return found


def type_name(name: str, options: Mapping[str, Any] | None = None,
              info: Mapping[str, Any] | None = None) -> str:
    """The type of instance ``name``: its ``type`` option, its ``class_path``, the data's
    ``info["type"]``, or the name itself. A registered type name or an import path; resolve
    it with :func:`task_class`."""
    options, info = options or {}, info or {}
    if options.get("type") is not None and options.get("class_path") is not None:
        raise ValueError(f"model.tasks.{name} gives both type and class_path; give one.")
    return str(options.get("type") or options.get("class_path") or info.get("type") or name)


def trained_tasks(
    tasks: dict[str, dict[str, Any] | None] | None,
    task_info: dict[str, dict[str, Any]],
    task_options: dict[str, dict[str, Any] | None] | None = None,
) -> dict[str, dict[str, Any]]:
    """The task instances a model builds, each with its options.

    ``tasks`` as the user named them, or (``None``) every task the data labels (the keys of
    ``task_info``, in their order). ``task_options`` holds defaults that apply to whichever
    tasks are trained, keyed by instance name or by type name (the instance's entry wins
    over its type's), under the options named in ``tasks``: one model config then serves
    data sets that label different tasks.
    """
    defaults = dict(task_options or {})
    if tasks is None:
        tasks = dict.fromkeys(task_info)
    if not tasks:
        raise ValueError("model.tasks is empty and the data labels no task; name the tasks.")
    types = {name: type_name(name, options, task_info.get(name))
             for name, options in tasks.items()}
    unknown = sorted(set(defaults) - set(TASKS) - set(tasks) - set(types.values()))
    if unknown:
        raise UnknownTaskError(
            f"model.task_options names unknown task(s) {unknown}; give task types "
            f"({', '.join(sorted(TASKS))}) or names of model.tasks."
        )
    trained = {}
    for name, options in tasks.items():
        by_type = defaults.get(types[name]) if types[name] != name else None
        trained[name] = {**(by_type or {}), **(defaults.get(name) or {}), **(options or {})}
    return trained


def _source_instance(name: str, task: Task, options: dict[str, Any],
                     task_info: Mapping[str, Any] | None) -> str:
    """The instance a derived task reads its targets from: ``source`` in its options, else
    the instance named like the type it derives from, else the data's only instance of
    that type."""
    wanted = task.derived_from
    if options.get("source") is not None:
        return str(options["source"])
    info = task_info or {}
    if wanted in info or not info:
        return str(wanted)
    candidates = [n for n, entry in info.items() if type_name(n, None, entry) == wanted]
    if len(candidates) == 1:
        return candidates[0]
    raise ValueError(
        f"Task '{name}' derives its targets from {wanted} labels and the data has "
        f"{'none' if not candidates else 'several: ' + ', '.join(candidates)}; give "
        f"model.tasks.{name}.source (the task to derive from) or use data with {wanted} labels."
    )


def build_task(
    name: str, options: dict[str, Any] | None, info: dict[str, Any] | None,
    labelled: list[str] | None = None, task_info: Mapping[str, Any] | None = None,
) -> Task:
    """Create task instance ``name`` from its config options and the data's class information.

    ``options`` may hold ``type`` or ``class_path`` (with ``init_args``), see
    :func:`type_name`; the rest are the class's own arguments. ``info``
    (``{"type", "num_classes", "class_names"}``) comes from the data module, so the user never
    types a class count; an explicit ``num_classes`` in ``options`` is checked against it.
    ``info["category_ids"]`` (optional) holds the dataset's original id of each class, which
    predictions report next to the contiguous index. ``labelled`` (the instances the data
    labels) only makes the error for a task the data cannot supply say what it can;
    ``task_info`` (all of the data's entries) finds the source of a derived task.
    """
    options = dict(options or {})
    info = dict(info or {})
    kind = type_name(name, options, info)
    cls = task_class(kind)
    given_type = options.pop("type", None)
    options.pop("class_path", None)
    init_args = options.pop("init_args", None) or {}
    source = options.pop("source", None)
    options = {**init_args, **options}
    data_type = info.get("type") or (name if name in TASKS else None)
    if given_type is not None and data_type not in (None, given_type) and (
            name in (labelled or ())):
        raise ValueError(
            f"model.tasks.{name} has type {given_type} but the data labels '{name}' as "
            f"{data_type}; remove the type or use the data's."
        )
    info.pop("type", None)
    if "num_classes" in options and "num_classes" in info and (
        options["num_classes"] != info["num_classes"]
    ):
        raise ValueError(
            f"model.tasks.{name}.num_classes={options['num_classes']} but the data has "
            f"{info['num_classes']} classes; remove num_classes from the model config."
        )
    category_ids = info.pop("category_ids", None)
    merged = {**info, **options}
    unlabelled = bool(labelled) and name not in labelled  # the data labels others, not this
    if cls.derived_from is None and (unlabelled or (
            "num_classes" not in merged and cls.has_classes)):
        what = "" if labelled is None else (
            f" (it labels {', '.join(labelled)})" if labelled else " (it labels no task)")
        raise ValueError(
            f"Task '{name}' is named in model.tasks but the data provides no '{name}' "
            f"labels{what}; remove it from model.tasks (model.tasks null trains what the "
            "data labels) or use data that labels it."
        )
    try:
        task = cls(**merged)
    except TypeError as error:
        raise ValueError(f"Bad options for task '{name}': {error}.") from error
    task.name = name
    if task.derived_from is not None:  # an instance may read labels of its own instead
        task.source = _source_instance(name, task, {"source": source}, task_info)
    if category_ids is not None:
        task.category_ids = [None if c is None else int(c) for c in category_ids]
    return task


__all__ = ["TASKS", "ClassificationTask", "DepthTask", "DetectionTask", "EdgeTask",
           "NormalsTask", "SegmentationTask", "Task", "UnknownTaskError", "build_task",
           "task_class", "trained_tasks", "type_name"]
