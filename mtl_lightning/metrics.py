"""Multi-task summary metrics: delta_m, the average relative change against baselines.

A multi-task model is judged against reference models, normally one single-task model per
task (Maninis et al. 2019, "Attentive Single-Tasking of Multiple Tasks"; Vandenhende et al.
2021, "Multi-Task Learning for Dense Prediction Tasks: A Survey"). Each metric ``k`` of the
multi-task model ``M_m,k`` is compared with the baseline's ``M_b,k`` as the signed relative
change ``(-1)^l_k (M_m,k - M_b,k) / M_b,k``, where ``l_k = 1`` when lower is better (losses,
errors), so a positive value is always an improvement. Then

- ``average="metrics"`` (Maninis; Vandenhende; Navon et al. 2022): the mean over every
  (task, metric) pair, ``delta_m = 1/K sum_k ...``;
- ``average="tasks"`` (LibMTL, Lin & Zhang 2023): the mean over a task's metrics first, then
  over tasks, ``delta_p = 1/T sum_t 1/N_t sum_n ...``, so a task reporting many metrics does not
  weigh more than one reporting a single metric.

Both are returned in percent, as the papers report them. Results are nested mappings
``{task: {metric: value}}``; :func:`task_results` builds them from the flat
``{stage}/{task}/{metric}`` keys of ``metrics.json``.

A metric's direction comes from the metric itself (torchmetrics' ``higher_is_better``, see
:func:`lower_is_better_of`): the module reads it from its metric objects, and ``run.json``
records it per task instance (``lower_is_better``), so ``compare`` works from a run's files
alone. For files without that record, :data:`LOWER_BY_NAME`, the table of metric names that
are errors or losses wherever they appear, decides.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Literal

from mtl_lightning.tasks import TASKS

Results = Mapping[str, Mapping[str, float]]
#: Metric names where lower is better for every task: losses, and the error measures of the
#: dense regression benchmarks (depth: abs_err, rel_err, sq_rel, rmse, rmse_log; surface
#: normals: mean_angle, median_angle, and their short forms mean and median as LibMTL and
#: the MTAN code name them; boundaries: odsf is higher-is-better and not listed).
LOWER_BY_NAME = frozenset({
    "loss", "abs_err", "rel_err", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "mae",
    "mse", "mean_angle", "median_angle", "mean", "median", "angle_mean", "angle_median",
})


def lower_is_better_default(task: str) -> frozenset[str]:
    """Metrics of ``task`` where lower is better when nothing recorded their direction (a
    ``metrics.json`` without its ``run.json``): every name in :data:`LOWER_BY_NAME`, for any
    task instance (its name does not say its type)."""
    return LOWER_BY_NAME


def recorded_lower_is_better(run_record: Mapping[str, object]) -> dict[str, frozenset[str]]:
    """``{task: metric names where lower is better}`` as a run recorded them in
    ``run.json`` (``lower_is_better``, written from the metrics' own ``higher_is_better``);
    empty for a run that recorded none."""
    recorded = run_record.get("lower_is_better")
    if not isinstance(recorded, Mapping):
        return {}
    return {str(task): frozenset(map(str, names)) for task, names in recorded.items()
            if isinstance(names, (list, tuple))}


def lower_is_better_of(metrics: Mapping[str, object]) -> frozenset[str]:
    """The names in ``metrics`` (name -> torchmetrics ``Metric``) whose metric declares
    ``higher_is_better=False``; a metric that declares nothing (``None``) falls back to
    :data:`LOWER_BY_NAME`."""
    lower = set()
    for name, metric in metrics.items():
        higher = getattr(metric, "higher_is_better", None)
        if higher is False or (higher is None and name in LOWER_BY_NAME):
            lower.add(name)
    return frozenset(lower)


def relative_changes(
    results: Results, baselines: Results,
    lower_is_better: Mapping[str, Collection[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """``{task: {metric: (-1)^l (M_m - M_b) / M_b}}`` for every metric in ``results``.

    Args:
        results: the model's values, ``{task: {metric: value}}``.
        baselines: the reference values; must hold every task and metric of ``results``.
        lower_is_better: task -> metric names where lower is better; a task not listed
            uses :func:`lower_is_better_default`.

    Raises:
        ValueError: a baseline is missing or zero (the relative change is undefined).
    """
    changes: dict[str, dict[str, float]] = {}
    for task, metrics in results.items():
        lower = (lower_is_better or {}).get(task)
        lower = frozenset(lower) if lower is not None else lower_is_better_default(task)
        for metric, value in metrics.items():
            base = baselines.get(task, {}).get(metric)
            if base is None:
                raise ValueError(f"No baseline for {task}/{metric}; baselines have "
                                 f"{sorted(f'{t}/{m}' for t in baselines for m in baselines[t])}.")
            if float(base) == 0.0:
                raise ValueError(f"The baseline of {task}/{metric} is 0: its relative change "
                                 f"is undefined.")
            sign = -1.0 if metric in lower else 1.0
            change = sign * (float(value) - float(base)) / float(base)
            changes.setdefault(task, {})[metric] = change
    return changes


def delta_m_per_task(
    results: Results, baselines: Results,
    lower_is_better: Mapping[str, Collection[str]] | None = None,
) -> dict[str, float]:
    """Each task's mean signed relative change over its metrics, in percent."""
    changes = relative_changes(results, baselines, lower_is_better)
    return {task: 100.0 * sum(c.values()) / len(c) for task, c in changes.items() if c}


def delta_m(
    results: Results, baselines: Results,
    lower_is_better: Mapping[str, Collection[str]] | None = None,
    average: Literal["metrics", "tasks"] = "metrics",
) -> float:
    """The multi-task performance change against ``baselines``, in percent (see the module
    docstring for the two averages). Positive: better than the baselines on average."""
    if average == "tasks":
        per_task = delta_m_per_task(results, baselines, lower_is_better)
        if not per_task:
            raise ValueError("delta_m needs at least one metric.")
        return sum(per_task.values()) / len(per_task)
    if average != "metrics":
        raise ValueError(f"average must be 'metrics' or 'tasks', got '{average}'.")
    changes = relative_changes(results, baselines, lower_is_better)
    values = [c for metrics in changes.values() for c in metrics.values()]
    if not values:
        raise ValueError("delta_m needs at least one metric.")
    return 100.0 * sum(values) / len(values)


def task_results(
    values: Mapping[str, float], stage: str = "test",
    metrics: Mapping[str, Collection[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from flat ``{stage}/{task}/{metric}`` keys (metrics.json).

    Args:
        values: flat metric keys and values, e.g. the content of a run's ``metrics.json``.
        stage: ``train``, ``val`` or ``test``.
        metrics: task -> metric names to keep; by default each known task's headline metric
            (``Task.headline_metric``). ``{stage}/mtl/...`` summaries are never included.
    """
    nested: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        parts = key.split("/", 2)
        if len(parts) != 3 or parts[0] != stage or parts[1] == "mtl":
            continue
        task, metric = parts[1], parts[2]
        if metrics is not None:
            wanted = metric in metrics.get(task, ())
        else:
            wanted = (task in TASKS and metric == TASKS[task].headline_metric
                      and not TASKS[task].auxiliary)
        if wanted:
            nested.setdefault(task, {})[metric] = float(value)
    return nested
