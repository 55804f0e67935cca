"""The balancing study's plan and analysis (benchmarks/balancing_study.py) and the seeded,
resumable experiment runner (benchmarks/experiments.py), on hand-made run folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import balancing_study as study  # noqa: E402
import experiments  # noqa: E402

TASKS = study.TASKS
HEADLINE = study.HEADLINE


def _run(root: Path, name: str, seed: int, values: dict[str, float],
         val: dict[str, float] | None = None) -> Path:
    """A finished run: test (and val) headline metrics, its seed in config.yaml."""
    run = root / name
    run.mkdir(parents=True)
    metrics = {f"test/{t}/{HEADLINE[t]}": v for t, v in values.items()}
    metrics |= {f"val/{t}/{HEADLINE[t]}": v for t, v in (val or values).items()}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "config.yaml").write_text(f"seed_everything: {seed}\n")
    (run / "run.json").write_text(json.dumps({"train/images_per_second": 10.0}))
    return run


def test_simplex_is_coarse_sums_to_the_task_count_and_leaves_out_the_vertices() -> None:
    points = study.simplex_weights()
    assert len(points) == 12  # 15 points of step 1/4 on the 2-simplex, minus 3 vertices
    assert all(sum(p.values()) == pytest.approx(3.0) for p in points)
    assert all(max(p.values()) < 3.0 for p in points)
    assert {"classification": 0.75, "segmentation": 1.5, "detection": 0.75} in points
    assert study.static_name(points[0]).startswith("static_")


def test_pareto_front_keeps_exactly_the_undominated_points() -> None:
    points = [(1, 1, 1), (2, 0, 1), (0.5, 0.5, 0.5), (1, 1, 1), (2, 0, 0.5)]
    # (0.5,...) is dominated by (1,1,1); (2,0,0.5) by (2,0,1); equal points dominate not
    assert study.pareto_front(points) == [0, 1, 3]


def test_plan_counts_every_run_once() -> None:
    plan = study.Plan([0, 1, 2])
    configs = len(study.balancer_configs())
    # singles + balancers + the 5 grid points other than the default (= equal) per seed
    assert plan.expected_runs() == 3 * (3 + configs + 5) + 12
    assert study.balancer_configs()[0] == "equal"
    assert study.grid_name(0.003, 0.05) == "equal"


def test_aggregate_pairs_methods_with_equal_and_picks_the_tuned_grid_point_on_val(
        tmp_path: Path) -> None:
    for seed in (0, 1):
        for task in TASKS:
            _run(tmp_path, f"single_{task}_seed{seed}", seed, {task: 0.5})
        _run(tmp_path, f"equal_seed{seed}", seed, dict.fromkeys(TASKS, 0.5))
        # mgda: better by 0.05 and 0.07 on every metric (+10 and +14 % delta_m)
        _run(tmp_path, f"mgda_seed{seed}", seed, dict.fromkeys(TASKS, 0.55 + 0.02 * seed))
        # a grid point: best on validation, worse on test (the pick must look at val only)
        _run(tmp_path, f"equal_lr0.01_wd0.05_seed{seed}", seed, dict.fromkeys(TASKS, 0.4),
             val=dict.fromkeys(TASKS, 0.6))
    _run(tmp_path, "static_1.5_1.5_0_seed0", 0, {"classification": 0.6,
                                                  "segmentation": 0.6, "detection": 0.1})
    plan = study.Plan([0, 1], balancers=["equal", "mgda"],
                      grid=((0.003, 0.05), (0.01, 0.05)), divisions=2)
    report = study.aggregate(tmp_path, plan)
    assert report["finished_runs"] == 6 + 2 + 2 + 2 + 1
    assert report["expected_runs"] == 2 * (3 + 2 + 1) + 3
    assert report["tuned_equal"]["picked"] == "equal_lr0.01_wd0.05"
    methods = {m["method"]: m for m in report["test"]["methods"]}
    assert set(methods) == {"equal", "mgda", "equal_tuned"}
    assert methods["mgda"]["n"] == 2
    paired = methods["mgda"]["paired"]["delta_m"]
    assert paired["mean"] == pytest.approx(12.0)
    assert paired["n"] == 2 and paired["test"] == "paired t-test over seeds"
    assert methods["equal_tuned"]["summary"]["delta_m"]["mean"] == pytest.approx(-20.0)
    [point] = report["simplex"]
    assert point["test"]["detection"] == pytest.approx(0.1)
    text = study.markdown(report)
    assert "13 of 15 runs finished (PARTIAL" in text
    assert "| mgda | 2 |" in text and "+12.00 ±" in text


def test_pareto_plot_is_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    report = {"simplex": [{"weights": {}, "test": dict(zip(TASKS, v))}
                          for v in ((0.5, 0.4, 0.3), (0.4, 0.5, 0.3), (0.3, 0.3, 0.2))],
              "test": {"methods": []}}
    path = study.draw_pareto(report, tmp_path / "pareto.png")
    assert path is not None and path.stat().st_size > 1000
    assert study.draw_pareto({"simplex": [], "test": {"methods": []}}, tmp_path / "x.png") is None
    report["simplex"] = report["simplex"][:2]  # two points show no front: no plot yet
    assert study.draw_pareto(report, tmp_path / "two.png") is None


def test_a_run_is_finished_only_with_test_metrics(tmp_path: Path) -> None:
    run = tmp_path / "equal_seed0"
    run.mkdir()
    assert not study.finished(run)
    (run / "metrics.json").write_text(json.dumps({"val/segmentation/miou": 0.5}))
    assert not study.finished(run)  # written after a validation: interrupted before test
    (run / "metrics.json").write_text('{"test/segmentation/miou": 0.')
    assert not study.finished(run)  # interrupted while writing
    (run / "metrics.json").write_text(json.dumps({"test/segmentation/miou": 0.5}))
    assert study.finished(run)


def test_runner_skips_finished_runs_and_goes_on_after_a_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _run(tmp_path, "equal_seed0", 0, dict.fromkeys(TASKS, 0.5))
    calls: list[list[str]] = []

    def fake_run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
        calls.append(command)
        return subprocess.CompletedProcess(command, 1)  # fails, writes nothing

    monkeypatch.setattr(experiments.subprocess, "run", fake_run)
    runner = experiments.Runner(tmp_path, [0, 1], [], ["--trainer.max_epochs=1"])
    runs = runner.seeded("equal", args=("--model.balancer", "configs/balancer/equal.yaml"))
    assert [r.name for r in runs] == ["equal_seed0", "equal_seed1"]
    assert len(calls) == 1  # seed 0 finished before: skipped
    assert "--seed_everything=1" in calls[0] and "--trainer.max_epochs=1" in calls[0]
    assert calls[0][calls[0].index("--run_name") + 1] == "equal_seed1"
    assert runner.failed == ["equal_seed1"]
    assert (tmp_path / "equal_seed1.log").is_file()  # the failed run's output is kept


def _records(root: Path) -> dict[str, set[str]]:
    return {run.name: {p.name for p in run.iterdir()} for run in root.iterdir() if run.is_dir()}


def test_study_runner_keeps_only_the_records_and_resumes_from_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The study's runs live in the repository as their records only; a finished run is never
    run again, an interrupted one (left in the scratch folder) is run again from scratch."""
    root, scratch = tmp_path / "runs", tmp_path / "scratch"
    finished = {"single_classification_seed0", "equal_seed0"}
    for name in finished:
        _run(root, name, 0, dict.fromkeys(TASKS, 0.5))
    interrupted = scratch / "equal_seed1"
    interrupted.mkdir(parents=True)
    (interrupted / "metrics.json").write_text(json.dumps({"val/segmentation/miou": 0.1}))
    (interrupted / "stale.ckpt").write_text("x")
    launched: list[str] = []

    def fake_run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
        name = command[command.index("--run_name") + 1]
        assert name not in finished, f"{name} had finished and was run again"
        run = Path(command[command.index("--trainer.default_root_dir") + 1]) / name
        assert not run.exists(), "an interrupted run must start from an empty folder"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"test/segmentation/miou": 0.4}))
        (run / "run.json").write_text(json.dumps({"fit/seconds": 1.0}))
        (run / "config.yaml").write_text("seed_everything: 1\n")
        (run / "last.ckpt").write_text("weights")
        (run / "metrics.csv").write_text("step\n0\n")
        launched.append(name)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(experiments.subprocess, "run", fake_run)
    runner = experiments.Runner(root, [0, 1], [], [], scratch=scratch)
    runner.seeded("equal")
    runner.seeded("single_classification", "single_classification")
    assert launched == ["equal_seed1", "single_classification_seed1"]
    records = _records(root)
    assert records["equal_seed1"] == set(experiments.RECORDS)  # no checkpoint, no CSV log
    assert records["single_classification_seed1"] == set(experiments.RECORDS)
    assert study.finished(root / "equal_seed1")
    assert not any(scratch.iterdir())  # the training folders are removed once copied
    launched.clear()
    experiments.Runner(root, [0, 1], [], [], scratch=scratch).seeded("equal")
    assert launched == []  # a second sitting finds every run finished


def test_a_failed_study_run_leaves_nothing_in_the_repository(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, scratch = tmp_path / "runs", tmp_path / "scratch"

    def fake_run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
        run = Path(command[command.index("--trainer.default_root_dir") + 1]) / "mgda_seed0"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"val/segmentation/miou": 0.1}))
        return subprocess.CompletedProcess(command, -9)  # killed after a validation

    monkeypatch.setattr(experiments.subprocess, "run", fake_run)
    runner = experiments.Runner(root, [0], [], [], scratch=scratch)
    runner.seeded("mgda")
    assert runner.failed == ["mgda_seed0"]
    assert not (root / "mgda_seed0").exists()
    assert (scratch / "mgda_seed0.log").is_file()


def test_the_repository_ignores_everything_of_a_study_run_but_its_records() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the .gitignore cannot be asked")

    def ignored(path: str) -> bool:
        result = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "--no-index",
                                 f"benchmarks/study/runs/{path}"], check=False)
        return result.returncode == 0

    for name in experiments.RECORDS:
        assert not ignored(f"equal_seed0/{name}")
    for name in ("last.ckpt", "metrics.csv", "checkpoints/best.ckpt", "wandb/run.txt"):
        assert ignored(f"equal_seed0/{name}")
    assert ignored("equal_seed0.log")
    assert experiments.STUDY_ROOT == REPO / "benchmarks" / "study" / "runs"


def test_study_order_runs_every_run_once_most_informative_first() -> None:
    plan = study.Plan([0, 1, 2])
    order = experiments.study_order(plan)
    names = [f"{name}_seed{seed}" for name, seed, _, _ in order]
    assert len(names) == len(set(names)) == plan.expected_runs()
    assert names[:9] == [f"single_{t}_seed{s}" for s in (0, 1, 2) for t in TASKS]
    first = ["equal", *experiments.PRIORITY]
    assert names[9:9 + 3 * len(first)] == [f"{b}_seed{s}" for s in (0, 1, 2) for b in first]
    points = {f"{study.static_name(w)}_seed0" for w in plan.simplex()}
    simplex = [n for n in names if n in points]
    assert len(simplex) == 12 and all(n.endswith("_seed0") for n in simplex)
    assert names.index("gradnorm_seed0") > names.index(simplex[-1])  # the rest come last
    equal = next(args for name, seed, _, args in order if name == "equal")
    assert equal == ("--model.balancer", "configs/balancer/equal.yaml")


def test_one_seed_gives_no_paired_difference_and_every_finished_run_is_listed(
        tmp_path: Path) -> None:
    for task in TASKS:
        _run(tmp_path, f"single_{task}_seed0", 0, {task: 0.5})
    _run(tmp_path, "equal_seed0", 0, dict.fromkeys(TASKS, 0.5))
    _run(tmp_path, "mgda_seed0", 0, dict.fromkeys(TASKS, 0.6))
    (tmp_path / "mgda_seed0" / "run.json").write_text(json.dumps({"fit/seconds": 83.4}))
    plan = study.Plan([0, 1], balancers=["equal", "mgda"], grid=((0.003, 0.05),),
                      divisions=2)
    text = study.markdown(study.aggregate(tmp_path, plan))
    assert "5 of 13 runs finished (PARTIAL" in text
    mgda = next(line for line in text.splitlines() if line.startswith("| mgda | 1 |"))
    assert mgda.split(" | ")[6] == "-"  # one seed: no paired difference from equal
    assert "| mgda_seed0 | 0.6000 | 0.6000 | 0.6000 | 83 |" in text
    assert "| single_detection_seed0 | - | - | 0.5000 | - |" in text
    assert "equal_tuned" not in text  # one grid point finished: no tuning to report


def test_shards_split_the_study_order_without_overlap(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes with --shard 0/2 and 1/2 run every run of the order exactly once."""
    plan = study.Plan([0, 1], balancers=["equal", "pcgrad", "dwa"], grid=((0.003, 0.05),),
                      divisions=2)
    ran: dict[int, list[str]] = {0: [], 1: []}
    for index in (0, 1):
        def fake_fit(name: str, seed: int, *configs: str, index: int = index, **kwargs) -> Path:
            ran[index].append(f"{name}_seed{seed}")
            return tmp_path / f"{name}_seed{seed}"

        runner = experiments.Runner(tmp_path, plan.seeds, [], [], scratch=tmp_path / "s")
        monkeypatch.setattr(runner, "fit", fake_fit)
        monkeypatch.setattr(experiments, "write_study", lambda *a, **k: None)
        experiments.balancers(runner, plan, tmp_path / "results", shard=(index, 2))
    order = [f"{name}_seed{seed}" for name, seed, _, _ in experiments.study_order(plan)]
    assert sorted(ran[0] + ran[1]) == sorted(order)
    assert not set(ran[0]) & set(ran[1])
    assert ran[0] == order[0::2] and ran[1] == order[1::2]


@pytest.mark.parametrize("value", ["2/2", "1", "a/b", "-1/2"])
def test_a_bad_shard_is_one_sentence(value: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        experiments.main(["--sets", "balancers", "--shard", value, "--aggregate_only"])
    assert "--shard" in capsys.readouterr().err


def test_architecture_shards_train_each_run_once_and_table_every_finished_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--sets architectures --shard 0/2 and 1/2 share the runs; each process's table lists
    every architecture run finished so far, not only its own."""
    ran: dict[int, list[str]] = {0: [], 1: []}
    tabled: list[list[str]] = []
    for index in (0, 1):
        def fake_fit(name: str, seed: int, *configs: str, index: int = index, **kwargs) -> Path:
            ran[index].append(f"{name}_seed{seed}")
            return tmp_path / f"{name}_seed{seed}"

        runner = experiments.Runner(tmp_path, [0], [], [], scratch=tmp_path / "s")
        monkeypatch.setattr(runner, "fit", fake_fit)
        monkeypatch.setattr(experiments, "section", lambda title, runs, singles: (
            tabled.append([run.name for run in runs]) or ({}, ["table"])))
        experiments.architectures(runner, tmp_path / "results", shard=(index, 2))
    trained = ran[0] + ran[1]
    expected = [f"arch_{name}_seed0" for name in experiments.ARCHITECTURES]
    assert sorted(r for r in trained if r.startswith("arch_")) == sorted(expected)
    assert len(trained) == len(set(trained)) == len(expected) + len(TASKS)
    assert tabled == [expected, expected]
    assert (tmp_path / "results" / "architectures.md").read_text() == "table"


def test_a_run_that_max_time_cut_short_is_named_in_its_sets_warnings(tmp_path: Path) -> None:
    """A run that trained fewer epochs than its config planned (max_time on a busy machine)
    is not comparable: the set's table warns and says what to do; whole runs pass."""
    whole = [_run(tmp_path, f"single_{t}_seed0", 0, {t: 0.5}) for t in TASKS]
    short = _run(tmp_path, "mtl_seed0", 0, dict.fromkeys(TASKS, 0.6))
    for run in [*whole, short]:
        (run / "config.yaml").write_text("seed_everything: 0\ntrainer:\n  max_epochs: 6\n")
        (run / "run.json").write_text(json.dumps({"fit/epochs": 6}))
    (short / "run.json").write_text(json.dumps({"fit/epochs": 3}))
    assert study.cut_short(whole[0]) is None
    note = study.cut_short(short)
    assert note and "mtl_seed0 trained 3 of its 6 epochs" in note and "max_time" in note
    result, lines = experiments.section("set", [short], whole)
    assert note in result["warnings"]
    assert f"- warning: {note}" in lines
