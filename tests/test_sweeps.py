"""The W&B sweep files: well formed, and every sampled override is a valid CLI option.

The agent's own function (``create_sweep_command_args``) turns a sampled combination into the
``${args}`` flags; the sweep's ``command`` is then parsed by the CLI with ``--print_config``,
from the repository root as ``wandb agent`` would run it, and the printed config must hold
the sampled values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from mtl_lightning.cli import main

from .conftest import REPO

SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
BALANCERS = sorted((REPO / "configs" / "balancer").glob("*.yaml"))


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _choices(spec: dict[str, Any]) -> list[Any]:
    """Values to try for one parameter: each listed value, or both ends of a range."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    return [spec["min"], spec["max"]]


def _printed_config(sweep: dict[str, Any], sample: dict[str, Any], capsys) -> dict[str, Any]:
    """The config the CLI resolves for the sweep's command with ``sample`` as ``${args}``."""
    flags = create_sweep_command_args({"args": {k: {"value": v} for k, v in sample.items()}})
    argv: list[str] = []
    for part in sweep["command"]:
        if part == "${args}":
            argv += flags["args"]
        elif part not in ("${env}", "mtl-lightning"):
            argv.append(part)
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--print_config"])
    captured = capsys.readouterr()
    assert exit_info.value.code in (0, None), captured.err
    return yaml.safe_load(captured.out)


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for key in dotted.split("."):
        value = value[key]
    return value


def test_there_is_one_sweep_per_concern() -> None:
    assert [p.name for p in SWEEPS] == ["balancer.yaml", "lr_loss_weights.yaml"]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_files_are_well_formed(path: Path) -> None:
    sweep = _load(path)
    assert sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"] == {"name": "val/mtl/score", "goal": "maximize"}
    command = sweep["command"]
    assert command[:3] == ["${env}", "mtl-lightning", "fit"] and command[-1] == "${args}"
    assert command[3:5] == ["--config", "configs/default.yaml"]
    for name, spec in sweep["parameters"].items():
        assert name.startswith(("model.", "data.", "trainer.")), name
        ranged = "distribution" in spec and {"min", "max"} <= set(spec)
        assert ("value" in spec) + ("values" in spec) + ranged == 1, name
        if sweep["method"] == "grid":
            assert not ranged, f"grid search needs listed values: {name}"


def test_learning_rate_and_weights_reach_the_model(monkeypatch, capsys) -> None:
    monkeypatch.chdir(REPO)  # `wandb agent` runs the command from the repository root
    sweep = _load(REPO / "configs" / "sweeps" / "lr_loss_weights.yaml")
    parameters = sweep["parameters"]
    for index in (0, -1):  # the first and the last choice of every parameter
        sample = {name: _choices(spec)[index] for name, spec in parameters.items()}
        config = _printed_config(sweep, sample, capsys)
        balancer = config["model"]["balancer"]
        assert balancer["class_path"] == "mtl_lightning.balancing.StaticWeighting"
        for name, value in sample.items():
            assert _lookup(config, name) == pytest.approx(value), name


@pytest.mark.slow
def test_balancer_sweep_covers_every_balancer_config(monkeypatch, capsys) -> None:
    monkeypatch.chdir(REPO)
    sweep = _load(REPO / "configs" / "sweeps" / "balancer.yaml")
    (name,) = sweep["parameters"]
    values = sweep["parameters"][name]["values"]
    assert name == "model.balancer"
    assert values == [f"configs/balancer/{p.name}" for p in BALANCERS]
    for value in values:
        expected = _load(REPO / value)["class_path"]
        config = _printed_config(sweep, {name: value}, capsys)
        assert config["model"]["balancer"]["class_path"] == expected, value
