"""``mtl-lightning compare RUN_DIR... --baselines RUN_DIR...``: runs side by side, with delta_m.

Reads each run directory's ``metrics.json`` (quality) and ``run.json`` (parameters, training
images/s, wall time; written by the ``run_statistics`` callback), and prints and saves a
table: each task's metrics per run, the cost columns, and delta_m against the single-task
baselines in both averages (see :mod:`mtl_lightning.metrics`). The baselines are one run
per task (a run that trained several tasks serves as the baseline of each of them).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from mtl_lightning.metrics import delta_m, task_results

METRICS_FILE, RUN_FILE = "metrics.json", "run.json"


def load_run(run_dir: Path) -> dict[str, Any]:
    """A run's metrics and cost, or a one-line error naming the missing file."""
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise FileNotFoundError(
            f"{metrics_path} not found: give run directories of finished runs "
            "(each holds metrics.json)."
        )
    cost_path = run_dir / RUN_FILE
    return {
        "name": run_dir.name,
        "path": str(run_dir),
        "metrics": json.loads(metrics_path.read_text()),
        "cost": json.loads(cost_path.read_text()) if cost_path.is_file() else {},
    }


def merged_baselines(runs: list[dict[str, Any]], stage: str,
                     metrics: dict[str, list[str]] | None) -> dict[str, dict[str, float]]:
    """One baseline value per task and metric; a task given by two baselines is an error."""
    merged: dict[str, dict[str, float]] = {}
    owner: dict[str, str] = {}
    for run in runs:
        for task, values in task_results(run["metrics"], stage, metrics).items():
            if task in merged:
                raise ValueError(f"Two baselines for {task}: {owner[task]} and {run['name']}; "
                                 "give one baseline run per task.")
            merged[task], owner[task] = values, run["name"]
    return merged


def compare(run_dirs: list[Path], baseline_dirs: list[Path], stage: str = "test",
            metrics: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The comparison as a JSON-ready dict: one row per run, baselines first."""
    baselines = [load_run(d) for d in baseline_dirs]
    runs = [load_run(d) for d in run_dirs]
    reference = merged_baselines(baselines, stage, metrics)
    rows = []
    for role, group in (("baseline", baselines), ("run", runs)):
        for run in group:
            results = task_results(run["metrics"], stage, metrics)
            row: dict[str, Any] = {"run": run["name"], "role": role, "path": run["path"],
                                   "results": results}
            comparable = {t: m for t, m in results.items() if t in reference}
            if reference and comparable:
                row["delta_m"] = delta_m(comparable, reference)
                row["delta_m_tasks"] = delta_m(comparable, reference, average="tasks")
            for key in ("params/total", "train/images_per_second", "fit/seconds"):
                row[key] = run["cost"].get(key)
            rows.append(row)
    return {"stage": stage, "baselines": reference, "rows": rows}


def _cell(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(result: dict[str, Any]) -> tuple[Table, str]:
    """A rich table for the console and the same as Markdown."""
    columns = sorted({f"{t}/{m}" for row in result["rows"]
                      for t, ms in row["results"].items() for m in ms})
    header = ["run", *columns, "params (M)", "train img/s", "fit (min)", "delta_m %",
              "delta_m tasks %"]
    rich_table = Table(title=f"{result['stage']} metrics; delta_m against the baselines")
    for name in header:
        rich_table.add_column(name, justify="left" if name == "run" else "right")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
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
        lines.append("| " + " | ".join(cells) + " |")
    return rich_table, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mtl-lightning compare",
        description="Compare runs' metrics, cost and delta_m against single-task baselines.")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories to compare")
    parser.add_argument("--baselines", nargs="*", type=Path, default=[],
                        help="run directories of the single-task baselines")
    parser.add_argument("--stage", default="test", choices=("val", "test"),
                        help="which metrics to compare (model selection uses val)")
    parser.add_argument("--metric", action="append", default=None, metavar="TASK/METRIC",
                        help="compare these metrics (repeatable); default: each task's "
                             "headline metric")
    parser.add_argument("--write_baselines", type=Path, default=None, metavar="YAML",
                        help="also write the baselines' validation values as a config "
                             "(--config YAML logs val/mtl/delta_m during training)")
    parser.add_argument("--output", type=Path, default=Path("compare"),
                        help="write OUTPUT.json and OUTPUT.md (default: compare.json/.md)")
    args = parser.parse_args(argv)
    metrics = None
    if args.metric:
        metrics = {}
        for item in args.metric:
            task, _, metric = item.partition("/")
            metrics.setdefault(task, []).append(metric)
    result = compare(args.runs, args.baselines, args.stage, metrics)
    rich_table, markdown = table(result)
    Console(width=160).print(rich_table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.output.with_suffix(".md").write_text(markdown)
    print(f"Wrote {args.output.with_suffix('.json')} and {args.output.with_suffix('.md')}")
    if args.write_baselines is not None:
        values = merged_baselines([load_run(d) for d in args.baselines], "val", metrics)
        args.write_baselines.write_text(yaml.safe_dump({"model": {"baselines": values}}))
        print(f"Wrote {args.write_baselines}: use it as an extra --config")
    return 0
