"""``mtl-lightning compare RUN_DIR... --baselines RUN_DIR...``: runs side by side, with delta_m.

Reads each run directory's ``metrics.json`` (quality) and ``run.json`` (parameters, training
images/s, wall time; written by the ``run_statistics`` callback), and prints and saves a
table: each task's metrics per run, the cost columns, and delta_m against the single-task
baselines in both averages (see :mod:`mtl_lightning.metrics`). The baselines are one run
per task (a run that trained several tasks serves as the baseline of each of them).

Seeds: runs of the same *method* are the seeds of one experiment. A run is given to a method
as ``NAME=RUN_DIR``; without ``NAME=``, its method is the directory name without a trailing
seed suffix (``equal_seed1``, ``equal-seed2`` and ``equal.seed3`` are all ``equal``). Each
method gets mean ± standard deviation over its seeds of every metric and of both delta_m,
and, against the reference method (``--reference``, by default ``equal``), the paired
comparison of :mod:`mtl_lightning.seed_statistics`. Seeds are paired by the seed a run
records (``seed_everything`` in its ``config.yaml``, or ``seed`` in ``run.json``); when a
method's runs do not all record one, by the order the runs were given. Several seeds of one
baseline are averaged into one baseline value per metric.

Problems that leave the table standing (NaN metrics, a run whose tasks are not the
baselines' tasks, a reference that cannot be paired) are returned as ``warnings`` and printed.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser, Namespace
from rich.console import Console
from rich.table import Table

from mtl_lightning.commands import tool_main
from mtl_lightning.metrics import (
    delta_m,
    lower_is_better_default,
    recorded_lower_is_better,
    task_results,
)
from mtl_lightning.seed_statistics import paired_difference, summarize

METRICS_FILE, RUN_FILE, CONFIG_FILE = "metrics.json", "run.json", "config.yaml"
#: A trailing seed suffix of a run directory's name: ``_seed1``, ``-seed_2``, ``.seed3``.
SEED_SUFFIX = re.compile(r"[-_.]seed[-_]?\d+$")
DEFAULT_REFERENCE = "equal"
DELTA_KEYS = ("delta_m", "delta_m_tasks")


def _read_json(path: Path) -> Any:
    """A JSON file's content, or one sentence naming the file that could not be read."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column "
            f"{error.colno}): the run may have been interrupted while writing it; run it "
            "again or leave it out."
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"Cannot read {path}: {getattr(error, 'strerror', None) or error}."
                         ) from None


def _seed(run_dir: Path, cost: dict[str, Any]) -> int | None:
    """The seed a run records: ``seed`` in run.json, else ``seed_everything`` in config.yaml."""
    if isinstance(cost.get("seed"), int):
        return cost["seed"]
    config = run_dir / CONFIG_FILE
    if config.is_file():
        try:
            seed = (yaml.safe_load(config.read_text()) or {}).get("seed_everything")
        except (yaml.YAMLError, OSError, AttributeError):
            return None
        if isinstance(seed, int) and not isinstance(seed, bool):
            return seed
    return None


def method_of(name: str) -> str:
    """A run directory's name without a trailing seed suffix (see :data:`SEED_SUFFIX`)."""
    return SEED_SUFFIX.sub("", name) or name


def parse_run(spec: str | Path) -> tuple[str | None, Path]:
    """``NAME=RUN_DIR`` -> (NAME, RUN_DIR); a plain path -> (None, path)."""
    text = str(spec)
    name, sep, path = text.partition("=")
    if sep and name and "/" not in name and not Path(text).exists():
        return name, Path(path)
    return None, Path(text)


def load_run(run_dir: Path | str, method: str | None = None) -> dict[str, Any]:
    """A run's metrics, cost, method and seed, or a one-line error naming the file."""
    given, run_dir = parse_run(run_dir)
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise FileNotFoundError(
            f"{metrics_path} not found: give run directories of finished runs "
            "(each holds metrics.json)."
        )
    metrics = _read_json(metrics_path)
    if not isinstance(metrics, dict):
        raise ValueError(f"{metrics_path} holds a {type(metrics).__name__}, not the "
                         "{key: value} mapping a run writes; give a run directory.")
    cost_path = run_dir / RUN_FILE
    cost = _read_json(cost_path) if cost_path.is_file() else {}
    if not isinstance(cost, dict):
        raise ValueError(f"{cost_path} holds a {type(cost).__name__}, not a mapping.")
    return {
        "name": run_dir.name,
        "method": method or given or method_of(run_dir.name),
        "seed": _seed(run_dir, cost),
        "path": str(run_dir),
        "metrics": metrics,
        "cost": cost,
    }


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def merged_baselines(runs: list[dict[str, Any]], stage: str,
                     metrics: dict[str, list[str]] | None) -> dict[str, dict[str, float]]:
    """One baseline value per task and metric, the mean over a baseline method's seeds; a task
    given by two baseline methods is an error."""
    per_task: dict[str, list[dict[str, float]]] = {}
    owner: dict[str, str] = {}
    for run in runs:
        for task, values in _results(run, stage, metrics).items():
            if task in owner and owner[task] != run["method"]:
                raise ValueError(f"Two baselines for {task}: {owner[task]} and {run['name']}; "
                                 "give one baseline run per task (or seeds of one method).")
            owner[task] = run["method"]
            per_task.setdefault(task, []).append(values)
    merged: dict[str, dict[str, float]] = {}
    for task, seeds in per_task.items():
        names = {m for values in seeds for m in values}
        merged[task] = {m: summarize([v[m] for v in seeds if m in v]).mean for m in sorted(names)}
    return merged


def _results(run: dict[str, Any], stage: str,
             metrics: dict[str, list[str]] | None) -> dict[str, dict[str, float]]:
    """A run's ``{task: {metric: value}}``, or one sentence naming the file with a bad value.
    Without ``metrics``, each task's headline is the one the run recorded in ``run.json``
    (it depends on the task's options, e.g. mAP for multi-label classification), else the
    task type's default."""
    if metrics is None and isinstance(run["cost"].get("headline_metrics"), dict):
        recorded = run["cost"]["headline_metrics"]
        metrics = {task: [str(metric)] for task, metric in recorded.items()}
    try:
        return task_results(run["metrics"], stage, metrics)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{run['path']}/{METRICS_FILE} holds a value that is not a number "
                         f"({error}); give a run directory written by fit or test.") from None


def _row(run: dict[str, Any], role: str, stage: str, metrics: dict[str, list[str]] | None,
         reference: dict[str, dict[str, float]], warnings: list[str]) -> dict[str, Any]:
    """One run's row: its metrics, cost and both delta_m (``None`` where undefined)."""
    results = _results(run, stage, metrics)
    row: dict[str, Any] = {"run": run["name"], "method": run["method"], "seed": run["seed"],
                           "role": role, "path": run["path"], "results": results}
    if not results:
        warnings.append(f"{run['name']} has no {stage} metrics in {run['path']}/{METRICS_FILE}.")
    nan = sorted(f"{stage}/{t}/{m}" for t, ms in results.items() for m, v in ms.items()
                 if _is_nan(v))
    if nan:
        warnings.append(f"{run['name']}: {', '.join(nan)} is NaN; its delta_m is left out.")
    if reference and results and role == "run":
        common = sorted(set(results) & set(reference))
        if set(results) != set(reference):
            covered = (f"its delta_m covers {', '.join(common)} only" if common
                       else "it has no delta_m")
            warnings.append(
                f"{run['name']} has tasks {', '.join(sorted(results))} but the baselines "
                f"cover {', '.join(sorted(reference))}: {covered}.")
    comparable = {t: m for t, m in results.items() if t in reference}
    if reference and comparable and not nan:
        lower = recorded_lower_is_better(run["cost"])  # the metrics' own directions
        row["delta_m"] = delta_m(comparable, reference, lower)
        row["delta_m_tasks"] = delta_m(comparable, reference, lower, average="tasks")
    elif reference and comparable:
        row["delta_m"] = row["delta_m_tasks"] = None
    for key in ("params/total", "train/images_per_second", "fit/seconds"):
        row[key] = run["cost"].get(key)
    return row


def _pairs(rows: list[dict[str, Any]], reference: list[dict[str, Any]]
           ) -> tuple[list[tuple[dict, dict]], str] | None:
    """Rows of a method matched with the reference's: by recorded seed where every run of both
    records a distinct one, else by position when both have as many runs."""
    seeds = [r["seed"] for r in rows]
    ref_seeds = [r["seed"] for r in reference]
    if (None not in seeds and None not in ref_seeds and len(set(seeds)) == len(seeds)
            and len(set(ref_seeds)) == len(ref_seeds)):
        by_seed = {r["seed"]: r for r in reference}
        pairs = [(r, by_seed[r["seed"]]) for r in rows if r["seed"] in by_seed]
        return (pairs, "seed") if pairs else None
    if len(rows) == len(reference):
        return list(zip(rows, reference)), "order given"
    return None


def _values(row: dict[str, Any], key: str) -> float | None:
    """A row's value of ``delta_m``/``delta_m_tasks`` or ``task/metric``; None if absent."""
    if key in DELTA_KEYS:
        value = row.get(key)
    else:
        task, metric = key.split("/", 1)
        value = row["results"].get(task, {}).get(metric)
    return None if value is None or _is_nan(value) else float(value)


def summarize_methods(rows: list[dict[str, Any]], reference: str | None,
                      warnings: list[str]) -> list[dict[str, Any]]:
    """Per method (in the order first given): mean ± std over its seeds of every metric and of
    both delta_m, and the paired comparison against the ``reference`` method."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["role"] == "run":
            groups.setdefault(row["method"], []).append(row)
    keys = sorted({f"{t}/{m}" for row in rows if row["role"] == "run"
                   for t, ms in row["results"].items() for m in ms})
    keys += [k for k in DELTA_KEYS if any(k in row for row in rows)]
    methods = []
    for method, group in groups.items():
        seeds = [r["seed"] for r in group]
        if None not in seeds and len(set(seeds)) < len(seeds):
            warnings.append(f"Method {method} has two runs with seed {sorted(seeds)}: "
                            "they are not independent seeds.")
        entry: dict[str, Any] = {"method": method, "runs": [r["run"] for r in group],
                                 "seeds": seeds, "n": len(group), "summary": {}, "paired": {}}
        for key in keys:
            values = [v for r in group if (v := _values(r, key)) is not None]
            if values:
                entry["summary"][key] = summarize(values).as_dict()
        if reference is not None and method != reference and reference in groups:
            matched = _pairs(group, groups[reference])
            if matched is None:
                warnings.append(f"{method} cannot be paired with {reference}: give both the "
                                "same seeds (or as many runs, in the same seed order).")
            else:
                pairs, how = matched
                entry["paired_by"] = how
                for key in keys:
                    both = [(a, b) for run, ref in pairs
                            if (a := _values(run, key)) is not None
                            and (b := _values(ref, key)) is not None]
                    if both:
                        entry["paired"][key] = paired_difference(
                            [a for a, _ in both], [b for _, b in both]).as_dict()
        methods.append(entry)
    return methods


def compare(run_dirs: Sequence[Path | str], baseline_dirs: Sequence[Path | str],
            stage: str = "test", metrics: dict[str, list[str]] | None = None,
            reference: str | None = DEFAULT_REFERENCE) -> dict[str, Any]:
    """The comparison as a JSON-ready dict: one row per run (baselines first), one summary
    per method over its seeds, and the warnings."""
    baselines = [load_run(d) for d in baseline_dirs]
    runs = [load_run(d) for d in run_dirs]
    reference_values = merged_baselines(baselines, stage, metrics)
    warnings: list[str] = []
    rows = [_row(run, role, stage, metrics, reference_values, warnings)
            for role, group in (("baseline", baselines), ("run", runs)) for run in group]
    task_sets = {tuple(sorted(r["results"])) for r in rows if r["role"] == "run" and r["results"]}
    if len(task_sets) > 1 and not reference_values:
        listing = "; ".join(f"{r['run']}: {', '.join(sorted(r['results']))}" for r in rows
                            if r["role"] == "run")
        warnings.append(f"The runs do not have the same tasks ({listing}): their columns "
                        "are not comparable side by side.")
    methods = summarize_methods(rows, reference, warnings)
    recorded = {run["path"]: recorded_lower_is_better(run["cost"]) for run in baselines + runs}
    lower = sorted({f"{t}/{m}" for row in rows for t, ms in row["results"].items() for m in ms
                    if m in recorded[row["path"]].get(t, lower_is_better_default(t))})
    return {"stage": stage, "baselines": reference_values, "rows": rows, "lower_is_better": lower,
            "reference": reference if any(m["method"] == reference for m in methods) else None,
            "methods": methods, "warnings": warnings}


def _cell(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def table(result: dict[str, Any]) -> tuple[Table, str]:
    """A rich table for the console and the same as Markdown."""
    columns = sorted({f"{t}/{m}" for row in result["rows"]
                      for t, ms in row["results"].items() for m in ms})
    header = ["run", *columns, "params (M)", "train img/s", "fit (min)", "delta_m %",
              "delta_m tasks %"]
    rich_table = Table(title=f"{result['stage']} metrics; delta_m against the baselines")
    for name in header:
        rich_table.add_column(name, justify="left" if name == "run" else "right")
    body = []
    for row in result["rows"]:
        values = [row["results"].get(c.split("/", 1)[0], {}).get(c.split("/", 1)[1])
                  for c in columns]
        params = row.get("params/total")
        seconds = row.get("fit/seconds")
        cells = [
            row["run"] + (" (baseline)" if row["role"] == "baseline" else ""),
            *[_cell(v) for v in values],
            _cell(params / 1e6, 2) if params else "-",
            _cell(row.get("train/images_per_second"), 1),
            _cell(seconds / 60, 1) if seconds else "-",
            _cell(row.get("delta_m"), 2), _cell(row.get("delta_m_tasks"), 2),
        ]
        rich_table.add_row(*cells)
        body.append(cells)
    return rich_table, _markdown(header, body)


def _mean_std(summary: dict[str, float] | None, digits: int) -> str:
    if summary is None:
        return "-"
    if math.isnan(summary["std"]):
        return _cell(summary["mean"], digits)
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


def _paired(paired: dict[str, Any] | None) -> str:
    if paired is None:
        return "-"
    text = f"{paired['mean']:+.2f}"
    if not math.isnan(paired["standard_error"]):
        text += (f" ± {paired['standard_error']:.2f} "
                 f"(t={paired['t']:.2f}, p={paired['p_value']:.3f})")
    return text


def seed_table(result: dict[str, Any]) -> tuple[Table, str]:
    """Mean ± std over seeds per method, with n, and the paired difference of delta_m from the
    reference (mean ± standard error, t and p of the paired t-test over seeds)."""
    columns = sorted({k for m in result["methods"] for k in m["summary"]
                      if k not in DELTA_KEYS})
    deltas = [k for k in DELTA_KEYS if any(k in m["summary"] for m in result["methods"])]
    reference = result.get("reference")
    labels = {"delta_m": "delta_m", "delta_m_tasks": "delta_m tasks"}
    header = ["method", "n", *columns, *[f"{labels[k]} %" for k in deltas]]
    if reference:
        header += [f"{labels[k]} - {reference} (paired)" for k in deltas]
    title = f"{result['stage']} metrics over seeds: mean ± std"
    if reference:
        title += f"; paired by seed against {reference}: mean ± s.e. (t, p of the paired t-test)"
    rich_table = Table(title=title)
    for name in header:
        rich_table.add_column(name, justify="left" if name == "method" else "right")
    body = []
    for method in result["methods"]:
        cells = [method["method"], str(method["n"]),
                 *[_mean_std(method["summary"].get(c), 4) for c in columns],
                 *[_mean_std(method["summary"].get(k), 2) for k in deltas]]
        if reference:
            cells += [("(reference)" if method["method"] == reference
                       else _paired(method["paired"].get(k))) for k in deltas]
        rich_table.add_row(*cells)
        body.append(cells)
    return rich_table, _markdown(header, body)


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as ``null``: strict JSON, readable by any tool."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, or say in one sentence why it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as error:
        reason = error.strerror or str(error)
        raise ValueError(f"Cannot write {path} ({reason}): give --output a path in a "
                         "folder you can write to.") from None


def _metric_options(items: list[str] | None) -> dict[str, list[str]] | None:
    if not items:
        return None
    metrics: dict[str, list[str]] = {}
    for item in items:
        task, _, metric = item.partition("/")
        if not task or not metric:
            raise ValueError(f"--metric {item!r} must be TASK/METRIC, e.g. segmentation/miou.")
        metrics.setdefault(task, []).append(metric)
    return metrics


def parser() -> ArgumentParser:
    """The options of ``mtl-lightning compare`` (a sub-command of :mod:`mtl_lightning.commands`)."""
    parser = ArgumentParser(
        prog="mtl-lightning compare", allow_abbrev=False,
        description="Compare runs' metrics, cost and delta_m against single-task baselines; "
                    "several runs of one method are its seeds.")
    parser.add_argument("runs", type=str, nargs="+",
                        help="run directories to compare; NAME=RUN_DIR names the method a run "
                             "belongs to (default: the directory name without a seed suffix)")
    parser.add_argument("--baselines", type=str, nargs="*", default=[],
                        help="run directories of the single-task baselines")
    parser.add_argument("--stage", type=str, default="test", choices=("val", "test"),
                        help="which metrics to compare (model selection uses val)")
    parser.add_argument("--metric", type=str, action="append", default=None, metavar="TASK/METRIC",
                        help="compare these metrics (repeatable); default: each task's "
                             "headline metric")
    parser.add_argument("--reference", type=str, default=DEFAULT_REFERENCE, metavar="METHOD",
                        help="the method every other is paired with over seeds (default: "
                             "equal)")
    parser.add_argument("--write_baselines", type=str | None, default=None, metavar="YAML",
                        help="also write the baselines' validation values as a config "
                             "(--config YAML logs val/mtl/delta_m during training)")
    parser.add_argument("--output", type=str, default="compare",
                        help="write OUTPUT.json and OUTPUT.md (default: compare.json/.md)")
    return parser


def run(args: Namespace) -> int:
    """Compare the runs of parsed options ``args``; prints the tables, writes the files."""
    output = Path(args.output)
    write_baselines = None if args.write_baselines is None else Path(args.write_baselines)
    metrics = _metric_options(args.metric)
    result = compare(args.runs, args.baselines, args.stage, metrics, args.reference)
    rich_table, markdown = table(result)
    console = Console(width=160)
    console.print(rich_table)
    if any(m["n"] > 1 for m in result["methods"]):
        rich_seeds, markdown_seeds = seed_table(result)
        console.print(rich_seeds)
        markdown += "\n" + markdown_seeds
    if result["lower_is_better"]:
        print(f"Lower is better (delta_m flips their sign): {', '.join(result['lower_is_better'])}")
    for warning in result["warnings"]:
        print(f"mtl-lightning compare: warning: {warning}", file=sys.stderr)
    if args.reference != DEFAULT_REFERENCE and result["reference"] is None:
        print(f"mtl-lightning compare: warning: no method is named {args.reference}; "
              "no paired comparison.", file=sys.stderr)
    _write(output.with_suffix(".json"), json.dumps(_json_safe(result), indent=2))
    _write(output.with_suffix(".md"), markdown)
    print(f"Wrote {output.with_suffix('.json')} and {output.with_suffix('.md')}")
    if write_baselines is not None:
        values = merged_baselines([load_run(d) for d in args.baselines], "val", metrics)
        _write(write_baselines, yaml.safe_dump({"model": {"baselines": values}}))
        print(f"Wrote {write_baselines}: use it as an extra --config")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``mtl-lightning compare`` with ``argv`` (its options); returns the exit code."""
    return tool_main("compare", argv)
