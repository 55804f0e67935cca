"""The experiment sets of the README, on Scenes, on a CPU: MTL against single-task baselines.

    python benchmarks/experiments.py [--sets base,unrelated,labels,noise] [--root DIR] [--full]
        [--seed N]

Every run is ``mtl-lightning fit --config configs/default.yaml --config
configs/experiment/short.yaml [--config configs/experiment/<variant>.yaml]
[--config configs/experiment/single_<task>.yaml] --seed_everything N`` (``--seed``, default
0; the data stay the same, the initialisation and the batch order change), with the CSV
logger. Use one ``--root`` per seed.
Each set ends with ``mtl-lightning compare`` of its MTL run(s) against the single-task runs
of the same data, and everything is written to ``<root>/experiments.md`` and ``.json``:

- ``base``: hard-sharing MTL vs the three single-task baselines (delta_m, params, time),
  and MTL with the auxiliary edge task (``aux_edges``) against the same baselines;
- ``unrelated``: the image label made unrelated to the objects (the background texture):
  MTL vs single-task classification on that label (the dense baselines are shared with
  ``base``: their data is the same), with the gradient cosines logged by the balancer;
- ``labels``: 25 % and 10 % of the training labels per task: MTL vs single-task at each;
- ``noise``: 0, 20 and 40 % wrong training labels: each task's metric for MTL (delta_m
  against the single-task models trained on clean labels).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mtl_lightning.compare import compare, table  # noqa: E402

TASKS = ("classification", "segmentation", "detection")
BASE = ["--config", "configs/default.yaml", "--trainer.logger", "configs/logger/csv.yaml"]
SHORT = ["--config", "configs/experiment/short.yaml"]
#: the schedule of every run: short (default of this script) or the default job's (--full),
#: and the seed
SCHEDULE: list[str] = list(SHORT)


def fit(root: Path, name: str, *configs: str) -> Path:
    """One run; returns its directory (skipped when it finished before)."""
    run = root / name
    if (run / "run.json").is_file():
        return run
    command = [sys.executable, "-m", "mtl_lightning.cli", "fit", *BASE, *SCHEDULE]
    for config in configs:
        command += ["--config", f"configs/experiment/{config}.yaml"]
    command += ["--run_name", name, "--trainer.default_root_dir", str(root)]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    return run


def singles(root: Path, variant: str | None) -> list[Path]:
    extra = [variant] if variant else []
    suffix = f"_{variant}" if variant else ""
    return [fit(root, f"single_{task}{suffix}", *extra, f"single_{task}") for task in TASKS]


def mean_cosines(run: Path) -> dict[str, float]:
    """Mean of each logged ``train/mtl/cosine/<a>__<b>`` over the run (gradient conflict)."""
    files = list(run.glob("**/metrics.csv"))
    sums: dict[str, list[float]] = {}
    for path in files:
        for row in csv.DictReader(path.open()):
            for key, value in row.items():
                if key.startswith("train/mtl/cosine/") and value:
                    sums.setdefault(key.rsplit("/", 1)[-1], []).append(float(value))
    return {pair: sum(v) / len(v) for pair, v in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="base,unrelated,labels,noise")
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "experiments")
    parser.add_argument("--full", action="store_true",
                        help="the default job's schedule instead of short.yaml (~10 min a run)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed_everything of every run (the data are the same)")
    args = parser.parse_args()
    if args.full:
        SCHEDULE.clear()
    SCHEDULE.append(f"--seed_everything={args.seed}")
    sets = args.sets.split(",")
    root = args.root
    root.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {}
    markdown = []
    base_singles = singles(root, None)
    if "base" in sets:
        result = compare([fit(root, "mtl")], base_singles)
        report["base"] = result
        markdown += ["### MTL vs single-task (test)", "", table(result)[1]]
        report["base_cosines"] = mean_cosines(root / "mtl")
        # Task decomposition: does the auxiliary edge task help the main tasks?
        result = compare([fit(root, "mtl"), fit(root, "mtl_aux_edges", "aux_edges")],
                         base_singles)
        report["aux_edges"] = result
        markdown += ["### With the auxiliary edge task (test; edges left out of delta_m)", "",
                     table(result)[1]]
    if "unrelated" in sets:
        cls = fit(root, "single_classification_unrelated", "unrelated",
                  "single_classification")
        result = compare([fit(root, "mtl_unrelated", "unrelated")], [cls, *base_singles[1:]])
        report["unrelated"] = result
        report["unrelated_cosines"] = mean_cosines(root / "mtl_unrelated")
        markdown += ["### Unrelated image label (test)", "", table(result)[1],
                     f"Mean gradient cosines, related: {report.get('base_cosines')}; "
                     f"unrelated: {report['unrelated_cosines']}", ""]
    if "labels" in sets:
        for variant in ("labels_25", "labels_10"):
            result = compare([fit(root, f"mtl_{variant}", variant)], singles(root, variant))
            report[variant] = result
            markdown += [f"### {variant} (test)", "", table(result)[1]]
    if "noise" in sets:
        noisy = [fit(root, "mtl"), *(fit(root, f"mtl_{v}", v) for v in ("noise_20", "noise_40"))]
        result = compare(noisy, base_singles)  # against single-task models on clean labels
        report["noise"] = result
        markdown += ["### Label noise 0 / 20 / 40 % (test; baselines on clean labels)", "",
                     table(result)[1]]
    (root / "experiments.json").write_text(json.dumps(report, indent=2))
    (root / "experiments.md").write_text("\n".join(markdown))
    print("\n".join(markdown))
    print(f"Wrote {root / 'experiments.md'}")


if __name__ == "__main__":
    main()
