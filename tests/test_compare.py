"""``mtl-lightning compare`` and the delta_m logged during training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mtl_lightning.compare import compare, main, table
from mtl_lightning.module import MultiTaskModule


def _run(root: Path, name: str, metrics: dict, cost: dict | None = None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(metrics))
    if cost is not None:
        (run / "run.json").write_text(json.dumps(cost))
    return run


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    return {
        "cls": _run(tmp_path, "single_cls", {"test/classification/accuracy": 0.8,
                                            "val/classification/accuracy": 0.75}),
        "seg": _run(tmp_path, "single_seg", {"test/segmentation/miou": 0.5,
                                            "val/segmentation/miou": 0.45}),
        "mtl": _run(tmp_path, "mtl", {"test/classification/accuracy": 0.84,
                                     "test/segmentation/miou": 0.45,
                                     "test/mtl/score": 0.645},
                    {"params/total": 3_000_000, "train/images_per_second": 90.0,
                     "fit/seconds": 600.0}),
    }


def test_delta_m_is_the_mean_relative_change(runs: dict[str, Path]) -> None:
    result = compare([runs["mtl"]], [runs["cls"], runs["seg"]])
    row = next(r for r in result["rows"] if r["run"] == "mtl")
    # classification +5 %, segmentation -10 % -> mean -2.5 %
    assert row["delta_m"] == pytest.approx(-2.5)
    assert row["delta_m_tasks"] == pytest.approx(-2.5)
    assert row["params/total"] == 3_000_000
    baseline_rows = [r for r in result["rows"] if r["role"] == "baseline"]
    assert [r["delta_m"] for r in baseline_rows] == [0.0, 0.0]
    _, markdown = table(result)
    assert "| mtl | 0.8400 | 0.4500 | 3.00 | 90.0 | 10.0 | -2.50 | -2.50 |" in markdown


def test_the_command_writes_json_markdown_and_a_baselines_config(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    output = tmp_path / "out" / "table"
    config = tmp_path / "baselines.yaml"
    code = main([str(runs["mtl"]), "--baselines", str(runs["cls"]), str(runs["seg"]),
                 "--output", str(output), "--write_baselines", str(config)])
    assert code == 0
    assert json.loads(output.with_suffix(".json").read_text())["stage"] == "test"
    assert "delta_m" in output.with_suffix(".md").read_text()
    baselines = yaml.safe_load(config.read_text())["model"]["baselines"]
    assert baselines == {"classification": {"accuracy": 0.75}, "segmentation": {"miou": 0.45}}


def test_two_baselines_for_one_task_and_missing_runs_are_errors(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="Two baselines for classification"):
        compare([runs["mtl"]], [runs["cls"], runs["mtl"]])
    with pytest.raises(FileNotFoundError, match=r"metrics\.json"):
        compare([tmp_path / "nowhere"], [])


def test_validation_delta_m_is_logged_against_configured_baselines(monkeypatch) -> None:
    info = {"classification": {"num_classes": 2, "class_names": ["a", "b"]}}
    model = MultiTaskModule(task_info=info, neck_channels=16,
                            baselines={"classification": {"accuracy": 0.5}})
    logged: dict[str, float] = {}
    monkeypatch.setattr(model, "log", lambda key, value, **_: logged.__setitem__(key, value))
    model._log_delta_m("val", {"classification": {"accuracy": 0.6, "macro_accuracy": 0.1}})
    assert float(logged["val/mtl/delta_m"]) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="baselines name tasks that are not trained"):
        MultiTaskModule(task_info=info, neck_channels=16, baselines={"depth": {"rmse": 1.0}})




# ------------------------------------------------------------------ seeds, paired comparison
DEPTH_METRICS = {"classification": ["accuracy"], "depth": ["abs_err", "rmse"]}


def _seed_run(root: Path, name: str, seed: int | None, accuracy: float, abs_err: float,
              rmse: float, seed_in: str = "config") -> Path:
    """A finished run of classification + depth; its seed in config.yaml or run.json."""
    run = _run(root, name, {"test/classification/accuracy": accuracy,
                            "test/depth/abs_err": abs_err, "test/depth/rmse": rmse},
               {"seed": seed} if seed_in == "run" and seed is not None else {})
    if seed_in == "config" and seed is not None:
        (run / "config.yaml").write_text(yaml.safe_dump({"seed_everything": seed}))
    return run


@pytest.fixture
def seeded(tmp_path: Path) -> dict[str, list[Path]]:
    """Baselines acc 0.80, abs_err 0.50, rmse 1.00; equal and nash, three seeds each (nash's
    given out of seed order, its seeds recorded in run.json)."""
    return {
        "baselines": [_run(tmp_path, "single_cls", {"test/classification/accuracy": 0.80}),
                      _run(tmp_path, "single_depth", {"test/depth/abs_err": 0.50,
                                                      "test/depth/rmse": 1.00})],
        "equal": [_seed_run(tmp_path, "equal_seed0", 0, 0.80, 0.50, 1.00),
                  _seed_run(tmp_path, "equal_seed1", 1, 0.88, 0.45, 1.10),
                  _seed_run(tmp_path, "equal_seed2", 2, 0.72, 0.50, 0.80)],
        "nash": [_seed_run(tmp_path, "nash_seed2", 2, 0.80, 0.50, 0.90, "run"),
                 _seed_run(tmp_path, "nash_seed0", 0, 0.84, 0.45, 1.00, "run"),
                 _seed_run(tmp_path, "nash_seed1", 1, 0.88, 0.40, 1.00, "run")],
    }


def test_each_seed_has_delta_m_over_metrics_and_over_tasks(seeded) -> None:
    result = compare(seeded["equal"], seeded["baselines"], metrics=DEPTH_METRICS)
    rows = {r["run"]: r for r in result["rows"]}
    # seed 1: accuracy +10 %, abs_err +10 % (lower is better: 0.50 -> 0.45), rmse -10 %.
    assert rows["equal_seed1"]["delta_m"] == pytest.approx(10 / 3)  # (10 + 10 - 10) / 3
    assert rows["equal_seed1"]["delta_m_tasks"] == pytest.approx(5.0)  # (10 + (10 - 10) / 2) / 2
    # seed 2: accuracy -10 %, abs_err 0, rmse +20 %.
    assert rows["equal_seed2"]["delta_m"] == pytest.approx(10 / 3)
    assert rows["equal_seed2"]["delta_m_tasks"] == pytest.approx(0.0)
    assert result["lower_is_better"] == ["depth/abs_err", "depth/rmse"]
    assert result["warnings"] == []


def test_methods_get_mean_std_and_the_number_of_seeds(seeded) -> None:
    result = compare(seeded["equal"] + seeded["nash"], seeded["baselines"],
                     metrics=DEPTH_METRICS)
    methods = {m["method"]: m for m in result["methods"]}
    assert list(methods) == ["equal", "nash"]
    equal = methods["equal"]["summary"]
    assert methods["equal"]["n"] == 3 and methods["equal"]["seeds"] == [0, 1, 2]
    assert equal["classification/accuracy"]["mean"] == pytest.approx(0.80)
    assert equal["classification/accuracy"]["std"] == pytest.approx(0.08)  # sample std
    assert equal["delta_m"]["mean"] == pytest.approx(20 / 9)  # (0 + 10/3 + 10/3) / 3
    assert equal["delta_m"]["std"] == pytest.approx(1.9245009, rel=1e-6)
    assert equal["delta_m_tasks"]["mean"] == pytest.approx(5 / 3)
    assert equal["delta_m_tasks"]["std"] == pytest.approx(2.8867513, rel=1e-6)
    assert equal["depth/abs_err"]["n"] == 3


def test_methods_are_paired_with_equal_weighting_by_seed(seeded) -> None:
    result = compare(seeded["equal"] + seeded["nash"], seeded["baselines"],
                     metrics=DEPTH_METRICS)
    assert result["reference"] == "equal"
    nash = next(m for m in result["methods"] if m["method"] == "nash")
    assert nash["paired_by"] == "seed"
    # delta_m of nash by seed: 5, 10, 10/3; of equal: 0, 10/3, 10/3 -> differences 5, 20/3, 0.
    paired = nash["paired"]["delta_m"]
    assert paired["n"] == 3 and paired["df"] == 2
    assert paired["mean"] == pytest.approx(35 / 9)
    assert paired["standard_error"] == pytest.approx(2.0030843, rel=1e-6)
    assert paired["t"] == pytest.approx(1.9414507, rel=1e-6)  # (35/9) / 2.0030843
    assert paired["test"] == "paired t-test over seeds"
    scipy_stats = pytest.importorskip("scipy.stats")
    reference = scipy_stats.ttest_rel([5, 10, 10 / 3], [0, 10 / 3, 10 / 3])
    assert paired["t"] == pytest.approx(reference.statistic)
    assert paired["p_value"] == pytest.approx(reference.pvalue)
    # Accuracy by seed: nash 0.84, 0.88, 0.80 against equal 0.80, 0.88, 0.72.
    assert nash["paired"]["classification/accuracy"]["mean"] == pytest.approx(0.04)
    equal = next(m for m in result["methods"] if m["method"] == "equal")
    assert equal["paired"] == {}


def test_runs_without_recorded_seeds_are_paired_in_the_order_given(tmp_path: Path) -> None:
    base = [_run(tmp_path, "single", {"test/classification/accuracy": 0.5})]
    runs = [f"{method}={_run(tmp_path, f'{method}{i}', {'test/classification/accuracy': v})}"
            for method, values in (("equal", (0.5, 0.6)), ("gls", (0.55, 0.7)))
            for i, v in enumerate(values)]
    result = compare(runs, base)
    gls = next(m for m in result["methods"] if m["method"] == "gls")
    assert gls["runs"] == ["gls0", "gls1"]
    assert gls["paired_by"] == "order given"
    # delta_m: equal 0, 20; gls 10, 40 -> differences 10, 20.
    assert gls["paired"]["delta_m"]["mean"] == pytest.approx(15.0)
    assert gls["paired"]["delta_m"]["standard_error"] == pytest.approx(5.0)


def test_the_seed_table_is_printed_and_written(seeded, tmp_path: Path, capsys) -> None:
    output = tmp_path / "table"
    args = [str(p) for p in seeded["equal"] + seeded["nash"]]
    assert main([*args, "--baselines", *map(str, seeded["baselines"]), "--metric",
                 "classification/accuracy", "--metric", "depth/abs_err", "--metric",
                 "depth/rmse", "--output", str(output)]) == 0
    markdown = output.with_suffix(".md").read_text()
    assert "| equal | 3 | 0.8000 ± 0.0800 |" in markdown
    assert "| 2.22 ± 1.92 | 1.67 ± 2.89 | (reference) | (reference) |" in markdown
    assert "| nash | 3 |" in markdown and "+3.89 ± 2.00 (t=1.94, p=" in markdown
    assert "paired by seed against equal" in capsys.readouterr().out
    saved = json.loads(output.with_suffix(".json").read_text())
    assert saved["methods"][0]["summary"]["delta_m"]["n"] == 3


def test_seeds_of_one_baseline_are_averaged(tmp_path: Path) -> None:
    base = [_run(tmp_path, "single_seed0", {"test/classification/accuracy": 0.6}),
            _run(tmp_path, "single_seed1", {"test/classification/accuracy": 0.8})]
    run = _run(tmp_path, "mtl", {"test/classification/accuracy": 0.77})
    result = compare([run], base)
    assert result["baselines"] == {"classification": {"accuracy": pytest.approx(0.7)}}
    assert result["rows"][-1]["delta_m"] == pytest.approx(10.0)


# ------------------------------------------------------------------ what bad input gets
def test_runs_whose_tasks_do_not_match_the_baselines_are_warned_about(runs, tmp_path,
                                                                       capsys) -> None:
    only_cls = _run(tmp_path, "only_cls", {"test/classification/accuracy": 0.9})
    result = compare([only_cls], [runs["cls"], runs["seg"]])
    assert result["rows"][-1]["delta_m"] == pytest.approx(12.5)
    assert result["warnings"] == [
        "only_cls has tasks classification but the baselines cover classification, "
        "segmentation: its delta_m covers classification only."]
    assert main([str(only_cls), "--baselines", str(runs["cls"]), str(runs["seg"]),
                 "--output", str(tmp_path / "out")]) == 0
    assert "warning: only_cls has tasks classification" in capsys.readouterr().err


def test_runs_with_different_tasks_are_warned_about_without_baselines(runs) -> None:
    result = compare([runs["mtl"], runs["cls"]], [])
    assert result["warnings"] == [
        "The runs do not have the same tasks (mtl: classification, segmentation; single_cls: "
        "classification): their columns are not comparable side by side."]


def test_nan_metrics_are_warned_about_and_give_no_delta_m(runs, tmp_path) -> None:
    nan = _run(tmp_path, "diverged", {"test/classification/accuracy": float("nan"),
                                      "test/segmentation/miou": 0.5})
    result = compare([nan], [runs["cls"], runs["seg"]])
    assert result["rows"][-1]["delta_m"] is None
    assert result["warnings"] == ["diverged: test/classification/accuracy is NaN; its "
                                  "delta_m is left out."]


def _cli(args: list[str], capsys) -> tuple[int, str]:
    from mtl_lightning.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["compare", *args])
    return exit_info.value.code, capsys.readouterr().err


def test_a_truncated_metrics_file_is_named_in_one_sentence(runs, tmp_path, capsys) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text('{"test/classification/accuracy": 0.8, "test/')
    code, err = _cli([str(broken), "--output", str(tmp_path / "out")], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{broken / 'metrics.json'} is not valid JSON" in err


def test_a_metric_that_is_not_a_number_is_named(tmp_path, capsys) -> None:
    odd = _run(tmp_path, "odd", {"test/classification/accuracy": "high"})
    code, err = _cli([str(odd), "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and f"{odd}/metrics.json holds a value that is not a number" in err


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_an_output_that_cannot_be_written_is_one_sentence(where, runs, tmp_path,
                                                          capsys) -> None:
    if where == "proc":
        output = Path("/proc/nope/x")
    else:
        (tmp_path / "file").write_text("")
        output = tmp_path / "file" / "table"
    code, err = _cli([str(runs["mtl"]), "--output", str(output)], capsys)
    assert code == 2
    assert f"Cannot write {output.with_suffix('.json')}" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_abbreviated_options_are_refused(runs, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(runs["mtl"]), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --out" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_the_headline_a_run_recorded_is_the_one_compared(tmp_path: Path) -> None:
    """A multi-label classification run is judged by the mAP its run.json names as its
    headline, not by the task type's default accuracy (a predict-nothing model scores high
    accuracy on multi-hot labels)."""
    headline = {"headline_metrics": {"classification": "map"}}
    base = _run(tmp_path, "single", {"test/classification/accuracy": 0.75,
                                     "test/classification/map": 0.60}, headline)
    mtl = _run(tmp_path, "mtl", {"test/classification/accuracy": 0.75,
                                 "test/classification/map": 0.66}, headline)
    row = next(r for r in compare([mtl], [base])["rows"] if r["run"] == "mtl")
    assert row["delta_m"] == pytest.approx(10.0)
    old = {name: _run(tmp_path / "old", name, {"test/classification/accuracy": 0.75,
                                               "test/classification/map": value})
           for name, value in (("single", 0.60), ("mtl", 0.66))}
    row = next(r for r in compare([old["mtl"]], [old["single"]])["rows"] if r["run"] == "mtl")
    assert row["delta_m"] == pytest.approx(0.0)  # no record: the type's default, accuracy
