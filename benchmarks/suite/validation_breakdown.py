"""Where a validation epoch's time goes: ``eval_overhead``'s ``breakdown_s``.

One extra ``trainer.validate`` runs with timers wrapped around the parts of the epoch that
the library adds to the forward passes, each counted only at the top level (a forward pass
made inside the overlays callback counts as the overlays', not as a forward):

- ``forward``: the module's forward of the validation steps;
- ``losses`` and ``metric_updates``: every task's ``loss`` and ``update_metrics`` (the
  losses also per task, ``loss/<task>``);
- ``logging``: the module's ``self.log`` calls;
- ``metric_compute``: the module's ``on_validation_epoch_end`` (final mIoU, accuracy, COCO
  mAP, the multi-task summaries and their logging);
- ``overlays``: the prediction overlays callback (keeping the shown images' outputs,
  drawing, PNG files, W&B images);
- ``other_callbacks``: every other callback's validation hooks;
- ``loader_and_rest``: the epoch minus the above (waiting for the loader's batches, moving
  them to the device, Lightning's loop).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from mtl_lightning.callbacks.prediction_overlays import PredictionOverlays

CALLBACK_HOOKS = ("on_validation_batch_end", "on_validation_epoch_end", "on_validation_end",
                  "on_validation_start", "on_validation_epoch_start",
                  "on_validation_batch_start")


class TopLevelTimers:
    """Seconds per label of wrapped calls; a call inside another wrapped call is not
    counted again."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.depth = 0
        self.restore: list[tuple[Any, str]] = []

    def wrap(self, owner: Any, attribute: str, label: str) -> None:
        original: Callable = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.depth:
                return original(*args, **kwargs)
            self.depth += 1
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start
                self.depth -= 1

        setattr(owner, attribute, timed)
        self.restore.append((owner, attribute))

    def unwrap(self) -> None:
        for owner, attribute in self.restore:
            delattr(owner, attribute)  # the instance attribute hid the class's method
        self.restore.clear()


def validation_breakdown(trainer: Any, model: Any, datamodule: Any,
                         epoch_seconds: Callable[[], float]) -> dict[str, float]:
    """Seconds of each part of one validation epoch (module docstring); ``epoch_seconds``
    reads the epoch's wall time after the run."""
    timers = TopLevelTimers()
    timers.wrap(model, "forward", "forward")
    timers.wrap(model, "log", "logging")
    timers.wrap(model, "on_validation_epoch_end", "metric_compute")
    for name, task in model.tasks.items():
        timers.wrap(task, "loss", f"loss/{name}")
        timers.wrap(task, "update_metrics", "metric_updates")
    for callback in trainer.callbacks:
        label = "overlays" if isinstance(callback, PredictionOverlays) else "other_callbacks"
        for hook in CALLBACK_HOOKS:
            if type(callback).__dict__.get(hook) is not None or label == "overlays":
                timers.wrap(callback, hook, label)
    try:
        trainer.validate(model, datamodule=datamodule, verbose=False)
    finally:
        timers.unwrap()
    total = epoch_seconds()
    parts = dict(timers.seconds)
    parts["loader_and_rest"] = total - sum(parts.values())
    parts["losses"] = sum(v for k, v in parts.items() if k.startswith("loss/"))
    parts["epoch"] = total
    return parts
