"""The balancing study on Scenes: which balancing method beats a tuned equal weighting?

Kurin et al. (NeurIPS 2022, "In defense of the unitary scalarization") and Xin et al.
(NeurIPS 2022, "Do current multi-task optimization methods in deep learning even help?")
found that equal weighting with tuned optimiser settings matches the specialised methods.
This module holds the study's plan and its analysis; :mod:`experiments` (``--sets balancers``)
runs it. The plan, on the short study schedule (``configs/experiment/study.yaml``):

- every config of ``configs/balancer/`` x the seeds (run ``<config>_seed<N>``);
- a **tuned equal weighting**: equal weights over a small learning-rate x weight-decay grid
  (run ``equal_lr<LR>_wd<WD>_seed<N>``; the grid point of the default settings is the
  ``equal`` run itself), the grid point picked on the *validation* delta_m averaged over the
  seeds, and reported on test as the method ``equal_tuned``;
- a **static-weight simplex**: every weight vector ``3 (i, j, k) / n`` with ``i + j + k = n``
  and no zero weight except on the edges of the simplex (the vertices, one task only, are
  left out), one seed (run ``static_<w1>_<w2>_<w3>_seed0``); the weights sum to the task
  count, so ``(1, 1, 1)`` is equal weighting at the same learning rate;
- the single-task baselines (run ``single_<task>_seed<N>``), for delta_m.

Analysis (:func:`aggregate`): :func:`mtl_lightning.compare.compare` over every finished run,
with ``equal`` as the reference: each method's mean ± sample standard deviation over its
seeds, and the paired t-test over seeds of its delta_m against equal weighting (see
:mod:`mtl_lightning.seed_statistics`). The Pareto front of the simplex and of the methods'
means over the three test metrics (all higher-is-better) is drawn by :func:`draw_pareto`.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
TASKS = ("classification", "segmentation", "detection")
#: the tuned equal weighting's grid: (learning rate, weight decay); the default job's
#: settings (0.003, 0.05) are the plain ``equal`` runs
LR_WD_GRID = tuple(itertools.product((0.001, 0.003, 0.01), (0.01, 0.05)))
DEFAULT_LR_WD = (0.003, 0.05)
SIMPLEX_DIVISIONS = 4
REFERENCE = "equal"


def balancer_configs(folder: Path = REPO / "configs" / "balancer") -> list[str]:
    """The balancer configs of the study, ``equal`` first (the reference), then by name."""
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    return sorted(names, key=lambda n: (n != REFERENCE, n))


@dataclass
class Plan:
    """What the study runs: the seeds, the balancer configs, the tuned equal weighting's
    grid and the simplex's divisions (smaller values make a quick end-to-end check)."""

    seeds: list[int]
    balancers: list[str] = field(default_factory=balancer_configs)
    grid: tuple[tuple[float, float], ...] = LR_WD_GRID
    divisions: int = SIMPLEX_DIVISIONS

    def simplex(self) -> list[dict[str, float]]:
        return simplex_weights(TASKS, self.divisions)

    def grid_methods(self) -> list[str]:
        return [grid_name(lr, wd) for lr, wd in self.grid]

    def expected_runs(self) -> int:
        """Runs of the whole plan (the default settings' grid point is the equal run)."""
        extra_grid = [m for m in self.grid_methods() if m not in self.balancers]
        return (len(self.seeds) * (len(TASKS) + len(self.balancers) + len(extra_grid))
                + len(self.simplex()))


def grid_name(lr: float, weight_decay: float) -> str:
    """The method name of one grid point of the tuned equal weighting."""
    if (lr, weight_decay) == DEFAULT_LR_WD:
        return REFERENCE
    return f"equal_lr{lr:g}_wd{weight_decay:g}"


def simplex_weights(tasks: Sequence[str] = TASKS, divisions: int = SIMPLEX_DIVISIONS
                    ) -> list[dict[str, float]]:
    """Static weights on a coarse simplex, scaled to sum to the task count; the vertices
    (a single task) are left out."""
    count = len(tasks)
    points = []
    for parts in itertools.product(range(divisions + 1), repeat=count):
        if sum(parts) != divisions or max(parts) == divisions:
            continue
        points.append({t: count * p / divisions for t, p in zip(tasks, parts)})
    return points


def static_name(weights: dict[str, float]) -> str:
    """``static_0.75_1.5_0.75``: the run name of one simplex point (weights in task order)."""
    return "static_" + "_".join(f"{weights[t]:g}" for t in TASKS)


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates (every coordinate higher is better:
    a point dominates another when it is >= in all and > in one)."""
    front = []
    for i, p in enumerate(points):
        dominated = any(
            all(q_k >= p_k for q_k, p_k in zip(q, p)) and any(q_k > p_k for q_k, p_k in zip(q, p))
            for j, q in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def pick_tuned(validation: dict[str, Any], grid: Iterable[str]) -> tuple[str | None, dict]:
    """The grid point with the highest mean validation delta_m (``compare`` output on
    ``val``), and every point's mean, for the record. ``None`` under two points with one
    (a single point is no tuning: the table would show equal weighting twice)."""
    means = {}
    for method in validation["methods"]:
        if method["method"] in set(grid) and "delta_m" in method["summary"]:
            means[method["method"]] = method["summary"]["delta_m"]["mean"]
    if len(means) < 2:  # one grid point is no tuning
        return None, means
    return max(means, key=means.get), means


def cut_short(run: Path) -> str | None:
    """One sentence when a finished run trained fewer epochs than its config planned (e.g.
    ``trainer.max_time`` ended it on a busy machine), ``None`` otherwise: its metrics are
    not comparable with runs that trained the whole schedule."""
    try:
        epochs = json.loads((run / "run.json").read_text()).get("fit/epochs")
        planned = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get(
            "trainer", {}).get("max_epochs")
    except (OSError, ValueError, yaml.YAMLError, AttributeError):
        return None
    if isinstance(epochs, int) and isinstance(planned, int) and 0 < epochs < planned:
        return (f"{run.name} trained {epochs} of its {planned} epochs (trainer.max_time ended "
                f"it): delete {run} and run the set again on a quieter machine.")
    return None


def finished(run: Path) -> bool:
    """A run whose ``metrics.json`` holds test metrics (the runner skips it; the analysis
    reads it). The file alone is not enough: it is rewritten after every validation, so an
    interrupted run has one without test metrics."""
    path = run / "metrics.json"
    if not path.is_file():
        return False
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False  # interrupted while writing it: run it again
    return isinstance(metrics, dict) and any(k.startswith("test/") for k in metrics)


def _headline(row: dict[str, Any], task: str) -> float | None:
    values = row["results"].get(task, {})
    return next(iter(values.values()), None) if values else None


def aggregate(root: Path, plan: Plan) -> dict[str, Any]:
    """Everything of ``plan`` finished under ``root``: the balancers' and the tuned equal
    weighting's table over seeds (test), the validation pick, and the simplex points."""
    from mtl_lightning.compare import compare

    seeds = plan.seeds

    runs_of = {}
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.is_dir() and finished(path):
            runs_of[path.name] = path
    singles = [runs_of[f"single_{t}_seed{s}"] for t in TASKS for s in seeds
               if f"single_{t}_seed{s}" in runs_of]
    grid = plan.grid_methods()
    names = ({f"single_{t}_seed{s}" for t in TASKS for s in seeds}
             | {f"{m}_seed{s}" for m in [*plan.balancers, *grid] for s in seeds}
             | {f"{static_name(w)}_seed{seeds[0]}" for w in plan.simplex()})
    done = sorted(names & set(runs_of))
    where = root.relative_to(REPO) if root.is_relative_to(REPO) else root  # no machine path
    report: dict[str, Any] = {"root": str(where), "seeds": list(seeds),
                              "finished_runs": len(done), "expected_runs": plan.expected_runs(),
                              "runs": [run_record(runs_of[name]) for name in done]}
    grid_runs = [str(runs_of[f"{g}_seed{s}"]) for g in grid for s in seeds
                 if f"{g}_seed{s}" in runs_of]
    report["errors"] = []
    tuned = None
    if grid_runs and singles:
        validation = _compare(compare, grid_runs, singles, "val", report["errors"])
        tuned, means = pick_tuned(validation, grid)
        if tuned is not None:
            report["tuned_equal"] = {"picked": tuned, "val_delta_m": means,
                                     "grid_points": len(grid)}
    methods = [f"{b}_seed{s}" for b in plan.balancers for s in seeds]
    run_specs = [str(runs_of[name]) for name in methods if name in runs_of]
    if tuned is not None:
        run_specs += [f"equal_tuned={runs_of[f'{tuned}_seed{s}']}" for s in seeds
                      if f"{tuned}_seed{s}" in runs_of]
    if run_specs:
        report["test"] = _compare(compare, run_specs, singles, "test", report["errors"])
    simplex = []
    for weights in plan.simplex():
        name = f"{static_name(weights)}_seed{seeds[0]}"
        if name in runs_of:
            metrics = json.loads((runs_of[name] / "metrics.json").read_text())
            simplex.append({"weights": weights,
                            "test": {t: metrics.get(f"test/{t}/{HEADLINE[t]}") for t in TASKS}})
    report["simplex"] = simplex
    return report


def run_record(run: Path) -> dict[str, Any]:
    """A finished run's name, fit time (``run.json``'s ``fit/seconds``) and test headlines."""
    metrics = json.loads((run / "metrics.json").read_text())
    cost_path = run / "run.json"
    try:
        cost = json.loads(cost_path.read_text()) if cost_path.is_file() else {}
    except json.JSONDecodeError:
        cost = {}
    return {"run": run.name, "fit_seconds": cost.get("fit/seconds"),
            "test": {t: metrics.get(f"test/{t}/{HEADLINE[t]}") for t in TASKS}}


def _compare(compare: Any, runs: list[str], singles: list[Path], stage: str,
             errors: list[str]) -> dict[str, Any]:
    """``compare`` against the single-task runs; without delta_m (and the error noted) when
    the baselines cannot give one (e.g. a baseline metric of 0 in a tiny check run)."""
    try:
        return compare(runs, singles, stage=stage, reference=REFERENCE)
    except ValueError as error:
        errors.append(f"{stage}: no delta_m: {error}")
        return compare(runs, [], stage=stage, reference=REFERENCE)


#: The Pareto plot is drawn from this many finished simplex points on (fewer show no front).
MIN_SIMPLEX_POINTS = 3
HEADLINE = {"classification": "accuracy", "segmentation": "miou", "detection": "map_50"}


def _mean(summary: dict[str, Any], key: str) -> float | None:
    value = summary.get(key)
    return None if value is None else value["mean"]


def method_points(report: dict[str, Any]) -> dict[str, list[float]]:
    """Each method's mean test headline metrics, in task order (methods with all three)."""
    points = {}
    for method in report.get("test", {}).get("methods", []):
        values = [_mean(method["summary"], f"{t}/{HEADLINE[t]}") for t in TASKS]
        if None not in values:
            points[method["method"]] = values
    return points


def draw_pareto(report: dict[str, Any], path: Path) -> Path | None:
    """The three test metrics pairwise: the simplex points (front marked) and the methods'
    means; ``None`` under :data:`MIN_SIMPLEX_POINTS` finished simplex points."""
    simplex = [s for s in report.get("simplex", []) if None not in s["test"].values()]
    methods = method_points(report)
    if len(simplex) < MIN_SIMPLEX_POINTS:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    simplex_values = [[s["test"][t] for t in TASKS] for s in simplex]
    front = set(pareto_front(simplex_values))
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    for axis, (a, b) in zip(axes, itertools.combinations(range(len(TASKS)), 2)):
        for i, values in enumerate(simplex_values):
            on_front = i in front
            axis.scatter(values[a], values[b], marker="o", s=40 if on_front else 18,
                         c="tab:red" if on_front else "lightgray", edgecolors="black",
                         linewidths=0.4, zorder=3 if on_front else 2)
        for name, values in methods.items():
            style = {"marker": "*", "s": 120, "c": "tab:blue"} if name.startswith(REFERENCE) \
                else {"marker": "^", "s": 30, "c": "tab:green"}
            axis.scatter(values[a], values[b], zorder=4, edgecolors="black", linewidths=0.4,
                         **style)
            axis.annotate(name, (values[a], values[b]), fontsize=6, alpha=0.8,
                          xytext=(2, 2), textcoords="offset points")
        axis.set_xlabel(f"test {TASKS[a]} {HEADLINE[TASKS[a]]}")
        axis.set_ylabel(f"test {TASKS[b]} {HEADLINE[TASKS[b]]}")
        axis.grid(alpha=0.3)
    figure.suptitle("Static-weight simplex (grey; red: Pareto front over the three metrics), "
                    "balancers' seed means (green), equal weighting (blue stars)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    figure.savefig(temporary, dpi=110)  # then renamed: concurrent shards never see half a PNG
    plt.close(figure)
    temporary.replace(path)
    return path


def _cell(summary: dict[str, Any] | None, digits: int = 4) -> str:
    if summary is None:
        return "-"
    if summary["std"] is None or math.isnan(summary["std"]):
        return f"{summary['mean']:.{digits}f}"
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


def _paired(paired: dict[str, Any] | None) -> str:
    """The paired difference from equal weighting; ``-`` under 2 paired seeds (one seed's
    difference says nothing about seed noise)."""
    if not paired or (paired.get("n") or 0) < 2:
        return "-"
    text = f"{paired['mean']:+.2f}"
    if paired["standard_error"] is not None and not math.isnan(paired["standard_error"]):
        text += f" ± {paired['standard_error']:.2f} (p={paired['p_value']:.3f})"
    return text


def markdown(report: dict[str, Any]) -> str:
    """The study as Markdown: status, the table over seeds, the tuned pick, the simplex."""
    lines = ["# Balancing study on Scenes (study schedule)", ""]
    done, expected_runs = report["finished_runs"], report.get("expected_runs")
    status = f"{done} of {expected_runs} runs finished" if expected_runs else f"{done} runs"
    lines += [f"Status: {status}"
              + (" (PARTIAL: the runner resumes where it stopped)."
                 if expected_runs and done < expected_runs else "."), ""]
    test = report.get("test")
    if test:
        rows = {r["run"]: r for r in test["rows"]}
        header = ["method", "n", *[f"{t} {HEADLINE[t]}" for t in TASKS], "delta_m %",
                  "delta_m - equal (paired t-test)", "train img/s"]
        lines += ["Test metrics, mean ± std over seeds; delta_m against the single-task "
                  "baselines (mean over their seeds); the paired column is the mean "
                  "difference of delta_m from equal weighting over seeds ± its standard error, "
                  "with the two-sided p of Student's paired t-test. Train img/s is each run's own "
                  "(run.json), measured while the machine ran other jobs: read step cost in "
                  "benchmarks/balancing.py instead.", "",
                  "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for method in test["methods"]:
            speeds = [rows[r]["train/images_per_second"] for r in method["runs"]
                      if rows.get(r, {}).get("train/images_per_second")]
            cells = [method["method"], str(method["n"]),
                     *[_cell(method["summary"].get(f"{t}/{HEADLINE[t]}")) for t in TASKS],
                     _cell(method["summary"].get("delta_m"), 2),
                     "(reference)" if method["method"] == REFERENCE
                     else _paired(method["paired"].get("delta_m")),
                     f"{sum(speeds) / len(speeds):.1f}" if speeds else "-"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for warning in [*test.get("warnings", []), *report.get("errors", [])]:
            lines.append(f"- warning: {warning}")
        lines.append("")
    tuned = report.get("tuned_equal")
    if tuned:
        lines += [f"Tuned equal weighting: picked `{tuned['picked']}` on validation delta_m "
                  f"(mean over seeds) among the {len(tuned['val_delta_m'])} of "
                  f"{tuned.get('grid_points', '?')} grid points finished: "
                  + ", ".join(f"`{k}` {v:.2f}" for k, v in sorted(tuned["val_delta_m"].items()))
                  + ".", ""]
    runs = report.get("runs", [])
    if runs:
        lines += ["Finished runs (test headline metrics; fit time from run.json, wall clock of "
                  "the fit on whatever the machine was doing then):", "",
                  "| run | " + " | ".join(f"{t} {HEADLINE[t]}" for t in TASKS) + " | fit s |",
                  "| --- |" + " --- |" * (len(TASKS) + 1)]
        for run in runs:
            cells = [f"{run['test'][t]:.4f}" if run["test"][t] is not None else "-"
                     for t in TASKS]
            seconds = run["fit_seconds"]
            time = f"{seconds:.0f}" if seconds is not None else "-"
            lines.append(f"| {run['run']} | " + " | ".join(cells) + f" | {time} |")
        lines.append("")
    simplex = report.get("simplex", [])
    if simplex:
        values = [[s["test"][t] for t in TASKS] for s in simplex]
        complete = [i for i, v in enumerate(values) if None not in v]
        front = {complete[i] for i in pareto_front([values[i] for i in complete])}
        lines += ["Static-weight simplex (seed 0; weights sum to 3; * = on the Pareto front of "
                  "the three test metrics):", "",
                  "| weights (cls, seg, det) | " + " | ".join(TASKS) + " | front |",
                  "| --- | --- | --- | --- | --- |"]
        for i, s in enumerate(simplex):
            weights = ", ".join(f"{s['weights'][t]:g}" for t in TASKS)
            cells = [f"{v:.4f}" if v is not None else "-" for v in values[i]]
            lines.append(f"| {weights} | " + " | ".join(cells)
                         + f" | {'*' if i in front else ''} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    """``python benchmarks/balancing_study.py [--seeds 0,1,2] [--root DIR]``: the plan's size,
    and how many of its runs are finished under ``--root`` (``experiments.py --sets
    balancers`` runs and aggregates them)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--root", type=Path, default=REPO / "benchmarks" / "study" / "runs",
                        help="the study's run folder (default: the runs committed in the "
                             "repository, benchmarks/study/runs)")
    args = parser.parse_args()
    plan = Plan([int(s) for s in args.seeds.split(",")])
    print(f"{len(plan.balancers)} balancer configs x {len(plan.seeds)} seeds, "
          f"{len(plan.grid)} equal-weighting grid points, {len(plan.simplex())} simplex "
          f"points: {plan.expected_runs()} runs.")
    done = sum(finished(run) for run in args.root.glob("*_seed*") if run.is_dir())
    print(f"{done} finished in {args.root}.")


if __name__ == "__main__":
    main()
