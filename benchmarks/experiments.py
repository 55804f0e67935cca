"""The experiment sets of docs/experiments.md, on Scenes, on a CPU, over several seeds.

    python benchmarks/experiments.py [--sets base,unrelated,labels,noise,balancers]
        [--seeds 0,1,2] [--root DIR] [--results DIR] [--data_root DIR] [--full]
        [--fit_args "--trainer.limit_train_batches 2 ..."] [--aggregate_only]

Every run is ``mtl-lightning fit --config configs/default.yaml --config <schedule>
[--config configs/experiment/<variant>.yaml] [--config configs/experiment/single_<task>.yaml]
--seed_everything N`` with the CSV logger, in ``<root>/<name>_seed<N>``: one root holds every
seed (the data stay the same; the initialisation and the batch order change with the seed).
A run whose ``metrics.json`` holds test metrics is skipped, so a set can be stopped and
resumed, or spread over several sittings; a run that fails is reported and the set goes on.

The schedule is ``configs/experiment/short.yaml`` for the README's sets (``--full``: the
default job's) and ``configs/experiment/study.yaml`` for ``balancers`` and ``architectures``.
Those two keep their runs in the repository (:data:`STUDY_ROOT`), each run only its small
records (:data:`RECORDS`), trained in a scratch folder first, so that a study spread over
sittings on machines that keep only the git repository resumes from what was committed.
Each set ends with :func:`mtl_lightning.compare.compare` of its multi-task runs against the
single-task runs of the same data: every metric and delta_m as mean ± std over the seeds,
and (where the set has equal weighting as a method) each method's paired t-test over seeds
against it. Everything is written to ``<results>/experiments.md`` and ``.json``:

- ``base``: hard-sharing MTL vs the three single-task baselines (delta_m, params, time),
  and MTL with the auxiliary edge task (``aux_edges``) against the same baselines;
- ``unrelated``: the image label made unrelated to the objects (the background texture):
  MTL vs single-task classification on that label (the dense baselines are shared with
  ``base``: their data is the same), with the gradient cosines logged by the balancer;
- ``labels``: 25 % and 10 % of the training labels per task: MTL vs single-task at each;
- ``noise``: 0, 20 and 40 % wrong training labels: MTL against single-task models trained
  on the *same* noisy labels (so the table shows whether sharing tolerates noise better than
  training alone), and against the clean single-task models;
- ``balancers``: the balancing study of :mod:`balancing_study` (every balancer config, a
  tuned equal weighting, a static-weight simplex with its Pareto front), written to
  ``<results>/balancing_study.md``, ``.json`` and ``balancing_pareto.png``;
- ``architectures``: every architecture at the same budget (the study schedule), with the
  auxiliary edge task so that PAD-Net and MTI-Net have two dense tasks to distil, against the
  study's single-task baselines (same root); written to ``<results>/architectures.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package

import balancing_study as study  # noqa: E402

from mtl_lightning.compare import _json_safe, compare, seed_table, table  # noqa: E402
from mtl_lightning.shared.files import write_text_atomically  # noqa: E402

TASKS = study.TASKS
BASE = ["--config", "configs/default.yaml", "--trainer.logger", "configs/logger/csv.yaml"]
SHORT = "configs/experiment/short.yaml"
STUDY = "configs/experiment/study.yaml"
#: Where the study schedule's sets (``balancers``, ``architectures``) keep their runs: inside
#: the repository, so that the finished runs survive a machine that keeps only the git
#: repository; each holds only :data:`RECORDS` (its .gitignore ignores anything else).
STUDY_ROOT = REPO / "benchmarks" / "study" / "runs"
#: What a finished study run keeps: its metrics, its cost and its resolved config (the seed).
RECORDS = ("metrics.json", "run.json", "config.yaml")
#: Where the study's runs train (checkpoints, logs); ignored by git, emptied run by run.
SCRATCH = REPO / "runs" / "study_scratch"


class Runner:
    """Runs (or skips) the fits of a set; remembers what failed."""

    def __init__(self, root: Path, seeds: list[int], schedule: list[str],
                 extra: list[str], dry: bool = False, scratch: Path | None = None) -> None:
        """``scratch``: train each run in ``scratch/<run>`` and copy only :data:`RECORDS` of
        a finished one into ``root/<run>`` (an interrupted run never appears in ``root``);
        ``None``: train in ``root/<run>`` and keep everything."""
        self.root, self.seeds, self.schedule, self.extra = root, seeds, schedule, extra
        self.dry, self.scratch = dry, scratch
        self.failed: list[str] = []

    def fit(self, name: str, seed: int, *configs: str, schedule: list[str] | None = None,
            args: tuple[str, ...] = ()) -> Path:
        """One run ``<name>_seed<seed>``; returns its directory (skipped when finished)."""
        run_name = f"{name}_seed{seed}"
        run = self.root / run_name
        if study.finished(run) or self.dry or run_name in self.failed:
            return run
        command = [sys.executable, "-m", "mtl_lightning.cli", "fit", *BASE,
                   *(self.schedule if schedule is None else schedule)]
        for config in configs:
            command += ["--config", config if config.endswith(".yaml")
                        else f"configs/experiment/{config}.yaml"]
        where = self.root if self.scratch is None else self.scratch
        trained = where / run_name
        if self.scratch is not None and trained.exists():
            shutil.rmtree(trained)  # left by an interrupted sitting: start it afresh
        where.mkdir(parents=True, exist_ok=True)
        command += [*args, *self.extra, f"--seed_everything={seed}", "--run_name", run_name,
                    "--trainer.default_root_dir", str(where)]
        start = time.perf_counter()
        log = where / f"{run_name}.log"
        with log.open("w") as output:
            code = subprocess.run(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT
                                  ).returncode
        seconds = time.perf_counter() - start
        if code != 0 or not study.finished(trained):
            self.failed.append(run_name)
            print(f"{run_name}: FAILED after {seconds:.0f} s (exit {code}); see {log}",
                  flush=True)
            return run
        log.unlink()
        if self.scratch is not None:
            keep(trained, run)
            shutil.rmtree(trained)
        print(f"{run_name}: {seconds:.0f} s", flush=True)
        return run

    def seeded(self, name: str, *configs: str, **kwargs) -> list[Path]:
        """The run ``name`` at every seed."""
        return [self.fit(name, seed, *configs, **kwargs) for seed in self.seeds]

    def singles(self, variant: str | None = None, **kwargs) -> list[Path]:
        extra = [variant] if variant else []
        suffix = f"_{variant}" if variant else ""
        return [run for task in TASKS
                for run in self.seeded(f"single_{task}{suffix}", *extra, f"single_{task}",
                                       **kwargs)]


def keep(trained: Path, run: Path) -> None:
    """Copy a finished run's :data:`RECORDS` into ``run``, ``metrics.json`` last (a run
    counts as finished by it, so a copy interrupted half-way is run again)."""
    run.mkdir(parents=True, exist_ok=True)
    for name in sorted(RECORDS, key=lambda n: n == "metrics.json"):
        if (trained / name).is_file():
            shutil.copyfile(trained / name, run / name)


def existing(runs: list[Path]) -> list[Path]:
    return [run for run in runs if study.finished(run)]


def mean_cosines(runs: list[Path]) -> dict[str, float]:
    """Mean of each logged ``train/mtl/cosine/<a>__<b>`` over the runs (gradient conflict)."""
    sums: dict[str, list[float]] = {}
    for run in runs:
        for path in run.glob("**/metrics.csv"):
            for row in csv.DictReader(path.open()):
                for key, value in row.items():
                    if key.startswith("train/mtl/cosine/") and value:
                        sums.setdefault(key.rsplit("/", 1)[-1], []).append(float(value))
    return {pair: sum(v) / len(v) for pair, v in sums.items()}


def section(title: str, runs: list[Path], baselines: list[Path],
            reference: str | None = None) -> tuple[dict | None, list[str]]:
    """``compare`` of the finished runs, as JSON and Markdown (per run, then over seeds);
    its warnings also name every run that ``trainer.max_time`` cut short."""
    runs, baselines = existing(runs), existing(baselines)
    if not runs or not baselines:
        return None, [f"### {title}", "", "(not run yet)", ""]
    result = compare(runs, baselines, reference=reference)
    lines = [f"### {title}", "", table(result)[1]]
    if any(m["n"] > 1 for m in result["methods"]):
        lines += ["Over seeds (mean ± std):", "", seed_table(result)[1]]
    short = [note for run in [*runs, *baselines] if (note := study.cut_short(run))]
    result["warnings"] = [*result["warnings"], *short]
    lines += [f"- warning: {w}" for w in result["warnings"]]
    return result, [*lines, ""]


def readme_sets(runner: Runner, sets: list[str]) -> tuple[dict, list[str]]:
    """The README's sets (base, unrelated, labels, noise) on the short schedule."""
    report: dict[str, object] = {}
    markdown: list[str] = []
    singles = runner.singles()
    mtl = runner.seeded("mtl")

    def add(key: str, title: str, runs: list[Path], baselines: list[Path]) -> None:
        result, lines = section(title, runs, baselines)
        report[key] = result
        markdown.extend(lines)

    if "base" in sets:
        add("base", "MTL vs single-task (test)", mtl, singles)
        report["base_cosines"] = mean_cosines(existing(mtl))
        add("aux_edges", "With the auxiliary edge task (test; edges left out of delta_m)",
            mtl + runner.seeded("mtl_aux_edges", "aux_edges"), singles)
    if "unrelated" in sets:
        classification = runner.seeded("single_classification_unrelated", "unrelated",
                                        "single_classification")
        runs = runner.seeded("mtl_unrelated", "unrelated")
        add("unrelated", "Unrelated image label (test)", runs,
            classification + [r for r in singles if "classification" not in r.name])
        report["unrelated_cosines"] = mean_cosines(existing(runs))
        markdown += [f"Mean gradient cosines, related: {report.get('base_cosines')}; "
                     f"unrelated: {report['unrelated_cosines']}", ""]
    if "labels" in sets:
        for variant in ("labels_25", "labels_10"):
            add(variant, f"{variant} (test)", runner.seeded(f"mtl_{variant}", variant),
                runner.singles(variant))
    if "noise" in sets:
        add("noise_0", "Label noise 0 % (test; single-task on the same labels)", mtl, singles)
        for variant in ("noise_20", "noise_40"):
            runs = runner.seeded(f"mtl_{variant}", variant)
            add(variant, f"Label noise {variant[6:]} % (test; single-task models trained on "
                "the same noisy labels)", runs, runner.singles(variant))
            add(f"{variant}_vs_clean", f"Label noise {variant[6:]} % (test; single-task "
                "models trained on clean labels)", runs, singles)
    return report, markdown


#: The balancers the study runs at every seed first, after the single-task baselines and
#: equal weighting: the classic loss weightings and gradient methods a reader asks about
#: first (uncertainty, DWA, PCGrad, MGDA, CAGrad, FAMO, UPGrad, Nash-MTL).
PRIORITY = ("uncertainty", "dwa", "pcgrad", "mgda", "cagrad", "famo", "upgrad", "nash_mtl")


def study_order(plan: study.Plan, priority: tuple[str, ...] = PRIORITY
                ) -> list[tuple[str, int, tuple[str, ...], tuple[str, ...]]]:
    """Every run of ``plan`` as ``(name, seed, configs, args)``, most informative first, so
    that a study stopped early has answered the most: (1) the single-task baselines at every
    seed (delta_m needs them); (2) equal weighting and the :data:`PRIORITY` balancers at
    every seed (a paired comparison needs >= 2 seeds); (3) the tuned equal weighting's other
    grid points at every seed; (4) the static-weight simplex (seed 0); (5) the other balancers,
    seed by seed."""
    order: list[tuple[str, int, tuple[str, ...], tuple[str, ...]]] = []
    first = [b for b in plan.balancers if b == study.REFERENCE or b in priority]
    first.sort(key=lambda b: (b != study.REFERENCE,
                              priority.index(b) if b in priority else 0))
    rest = [b for b in plan.balancers if b not in first]

    def balancer(config: str, seed: int) -> tuple[str, int, tuple[str, ...], tuple[str, ...]]:
        return config, seed, (), ("--model.balancer", f"configs/balancer/{config}.yaml")

    order += [(f"single_{t}", seed, (f"single_{t}",), ()) for seed in plan.seeds
              for t in TASKS]
    order += [balancer(b, seed) for seed in plan.seeds for b in first]
    order += [(study.grid_name(lr, wd), seed, (),
               (f"--model.lr={lr}", f"--model.weight_decay={wd}"))
              for seed in plan.seeds for lr, wd in plan.grid
              if study.grid_name(lr, wd) not in plan.balancers]
    order += [(study.static_name(w), plan.seeds[0], (), (
        "--model.balancer", "configs/balancer/equal.yaml",
        f"--model.balancer.init_args.weights={json.dumps(w)}")) for w in plan.simplex()]
    order += [balancer(b, seed) for seed in plan.seeds for b in rest]
    return order


def shard_of(order: list, shard: tuple[int, int]) -> list:
    """This process's share of a set's ``order``: every n-th entry from the i-th, for
    ``shard=(i, n)`` (``--shard I/N``), so that n processes run each entry exactly once."""
    index, count = shard
    return order[index::count]


def balancers(runner: Runner, plan: study.Plan, results: Path,
              priority: tuple[str, ...] = PRIORITY, shard: tuple[int, int] = (0, 1)) -> None:
    """The balancing study in :func:`study_order`; the results are rewritten after every
    finished multi-task run that was not skipped (so a stopped study has its table).

    ``shard=(i, n)`` runs only every n-th run of the order, starting at the i-th, so that n
    processes (e.g. one per core, ``OMP_NUM_THREADS=1``) share the study without running
    the same run twice."""
    schedule = ["--config", STUDY]
    for name, seed, configs, args in shard_of(study_order(plan, priority), shard):
        ran = not study.finished(runner.root / f"{name}_seed{seed}")
        run = runner.fit(name, seed, *configs, schedule=schedule, args=args)
        if ran and not runner.dry and study.finished(run) and not name.startswith("single_"):
            write_study(runner.root, plan, results)
    write_study(runner.root, plan, results)


ARCHITECTURES = ("hard", "mtan", "cross_stitch", "ensemble", "mmoe", "pad_net", "mti_net")


def architectures(runner: Runner, results: Path, shard: tuple[int, int] = (0, 1)) -> None:
    """Every architecture on the study schedule with the edge task; compared per seed with
    the study's single-task baselines (edges, auxiliary, is left out of delta_m).

    ``shard=(i, n)``: this process trains only every n-th architecture run (the baselines
    come first, as in the balancing study); the table covers every run finished so far."""
    schedule = ["--config", STUDY]
    planned = ([(f"single_{task}", seed, (f"single_{task}",), ()) for seed in runner.seeds
                for task in TASKS]
               + [(f"arch_{name}", seed, ("aux_edges",), ("--model.architecture", name))
                  for seed in runner.seeds for name in ARCHITECTURES])
    for name, seed, configs, args in shard_of(planned, shard):
        runner.fit(name, seed, *configs, schedule=schedule, args=args)
    singles = [runner.root / f"{name}_seed{seed}" for name, seed, _, _ in planned
               if name.startswith("single_")]
    runs = [runner.root / f"{name}_seed{seed}" for name, seed, _, _ in planned
            if name.startswith("arch_")]
    result, lines = section("Architectures at the same budget (study schedule, with the "
                            "auxiliary edge task; test)", runs, singles)
    results.mkdir(parents=True, exist_ok=True)
    write_text_atomically(results / "architectures.json",
                          json.dumps(_json_safe(result), indent=2))
    write_text_atomically(results / "architectures.md", "\n".join(lines))
    print(f"Wrote {results / 'architectures.md'}")


def write_study(root: Path, plan: study.Plan, results: Path) -> None:
    """Aggregate whatever the study has finished into ``results``."""
    report = study.aggregate(root, plan)
    results.mkdir(parents=True, exist_ok=True)
    plot = study.draw_pareto(report, results / "balancing_pareto.png")
    report["pareto_plot"] = plot.name if plot else None
    write_text_atomically(results / "balancing_study.json",
                          json.dumps(_json_safe(report), indent=2))
    text = study.markdown(report)
    if plot:
        text += f"\n![Pareto front]({plot.name})\n"
    write_text_atomically(results / "balancing_study.md", text)
    print(f"Wrote {results / 'balancing_study.md'} ({report['finished_runs']} of "
          f"{report['expected_runs']} runs finished)", flush=True)


def parse_shard(parser: argparse.ArgumentParser, value: str) -> tuple[int, int]:
    """``"I/N"`` as ``(I, N)`` with ``0 <= I < N``; a parser error otherwise."""
    try:
        index, count = (int(part) for part in value.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        parser.error(f"--shard {value!r} must be I/N with 0 <= I < N, e.g. 0/2.")
    return index, count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="base,unrelated,labels,noise")
    parser.add_argument("--seeds", default="0", help="comma-separated seed_everything values")
    parser.add_argument("--seed", type=int, default=None, help="one seed (same as --seeds N)")
    parser.add_argument("--root", type=Path, default=None,
                        help="where the run directories go (default: runs/experiments; for "
                             "balancers and architectures benchmarks/study/runs, in the "
                             "repository, each run keeping only its metrics.json, run.json "
                             "and config.yaml)")
    parser.add_argument("--results", type=Path, default=None,
                        help="where the tables and the plot go (default: --root; for "
                             "balancers and architectures benchmarks/study)")
    parser.add_argument("--scratch", type=Path, default=SCRATCH,
                        help="balancers and architectures: where a run trains (checkpoints, "
                             "logs) before its records are copied to --root; emptied run by "
                             "run")
    parser.add_argument("--keep_run_files", action="store_true",
                        help="balancers and architectures: train in --root and keep every "
                             "file of a run (checkpoints included)")
    parser.add_argument("--data_root", type=Path, default=None,
                        help="the Scenes cache folder (default: the config's data/scenes)")
    parser.add_argument("--full", action="store_true",
                        help="the default job's schedule instead of short.yaml (~10 min a run)")
    parser.add_argument("--fit_args", default="",
                        help="extra arguments for every fit, e.g. a tiny check: "
                             "'--trainer.limit_train_batches 2 --trainer.max_epochs 1'")
    parser.add_argument("--balancers", default=None,
                        help="balancers set: these configs only (default: all of "
                             "configs/balancer/)")
    parser.add_argument("--grid", default=None, metavar="LR:WD,...",
                        help="balancers set: the tuned equal weighting's grid (default: "
                             "lr 0.001, 0.003, 0.01 x weight decay 0.01, 0.05)")
    parser.add_argument("--simplex_divisions", type=int, default=study.SIMPLEX_DIVISIONS,
                        help="balancers set: the static-weight simplex's step is 1/N")
    parser.add_argument("--shard", default="0/1", metavar="I/N",
                        help="balancers and architectures: run only every N-th run of the "
                             "set's order, from the I-th (0-based), so N processes share it, "
                             "e.g. two with OMP_NUM_THREADS=1 and --shard 0/2, --shard 1/2")
    parser.add_argument("--aggregate_only", action="store_true",
                        help="run nothing; write the tables of the runs already finished")
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else [int(s) for s in args.seeds.split(",")]
    sets = args.sets.split(",")
    known = {"base", "unrelated", "labels", "noise", "balancers", "architectures"}
    unknown = set(sets) - known
    if unknown:
        parser.error(f"unknown --sets {sorted(unknown)}; choose from {', '.join(sorted(known))}.")
    extra = shlex.split(args.fit_args)
    if args.data_root is not None:
        extra += ["--data.init_args.root", str(args.data_root.resolve())]
    study_sets = [s for s in sets if s in ("balancers", "architectures")]
    if study_sets:
        study_root = (args.root or STUDY_ROOT).resolve()
        study_results = (args.results or (STUDY_ROOT.parent if args.root is None
                                          else args.root)).resolve()
        study_runner = Runner(study_root, seeds, [], extra, dry=args.aggregate_only,
                              scratch=None if args.keep_run_files else args.scratch.resolve())
    root = (args.root or REPO / "runs" / "experiments").resolve()
    results = (args.results or root).resolve()
    runner = Runner(root, seeds, [] if args.full else ["--config", SHORT], extra,
                    dry=args.aggregate_only)
    if "balancers" in sets:
        plan = study.Plan(seeds, divisions=args.simplex_divisions)
        if args.balancers:
            plan.balancers = args.balancers.split(",")
            missing = sorted(set(plan.balancers) - set(study.balancer_configs()))
            if missing:
                parser.error(f"--balancers names {missing}, which are not in "
                             "configs/balancer/; give file names without .yaml.")
        if args.grid:
            plan.grid = tuple(tuple(float(v) for v in p.split(":")) for p in args.grid.split(","))
        balancers(study_runner, plan, study_results, shard=parse_shard(parser, args.shard))
    if "architectures" in sets:
        architectures(study_runner, study_results, shard=parse_shard(parser, args.shard))
    readme = [s for s in sets if s not in ("balancers", "architectures")]
    if readme:
        root.mkdir(parents=True, exist_ok=True)
        report, markdown = readme_sets(runner, readme)
        results.mkdir(parents=True, exist_ok=True)
        (results / "experiments.json").write_text(json.dumps(_json_safe(report), indent=2))
        (results / "experiments.md").write_text("\n".join(markdown))
        print("\n".join(markdown))
        print(f"Wrote {results / 'experiments.md'}")
    failed = runner.failed + (study_runner.failed if study_sets else [])
    if failed:
        print(f"Failed runs ({len(failed)}): {', '.join(failed)}")


if __name__ == "__main__":
    main()
