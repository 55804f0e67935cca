"""One sub-command mechanism: the tools (check-data, compare, export) are jsonargparse
sub-commands of one parser, reached from ``mtl-lightning`` like Lightning's own."""

from __future__ import annotations

import json
from importlib import import_module
from pathlib import Path

import pytest
from jsonargparse import ArgumentParser

from mtl_lightning.cli import main as cli_main
from mtl_lightning.commands import TOOLS, tools_parser


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_every_tool_is_a_jsonargparse_sub_command(name) -> None:
    module = import_module(TOOLS[name].module)
    assert isinstance(module.parser(), ArgumentParser), f"{name} is not parsed by jsonargparse"
    assert callable(module.run)
    _, parsers = tools_parser()
    assert set(parsers) == set(TOOLS)
    # Options are never abbreviated, as in Lightning's sub-commands.
    assert parsers[name].allow_abbrev is False


def test_the_help_names_the_tools(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mtl-lightning")
    assert all(name in out for name in TOOLS)


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_each_tool_has_its_help(name, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"mtl-lightning [options] {name}" in capsys.readouterr().out


def test_compare_repeats_and_lists_options_as_before(tmp_path: Path, capsys) -> None:
    """The argparse-era syntax of compare still parses: positional runs, --metric repeated,
    --baselines with several directories."""
    runs = {}
    for name, values in {"mtl": {"a": 0.6, "b": 0.5}, "single_a": {"a": 0.5},
                         "single_b": {"b": 0.5}}.items():
        runs[name] = tmp_path / name
        runs[name].mkdir()
        (runs[name] / "metrics.json").write_text(json.dumps(
            {f"test/{task}/accuracy": value for task, value in values.items()}))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["compare", str(runs["mtl"]), "--baselines", str(runs["single_a"]),
                  str(runs["single_b"]), "--metric", "a/accuracy", "--metric", "b/accuracy",
                  "--output", str(tmp_path / "table")])
    assert exit_info.value.code == 0
    result = json.loads((tmp_path / "table.json").read_text())
    (mtl,) = [row for row in result["rows"] if row["run"] == "mtl"]
    assert mtl["delta_m"] == pytest.approx(10.0)  # (+20 % on a, 0 % on b) / 2


def test_options_that_do_not_go_together_get_the_usage(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["check-data", "--annotations", "a.json"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: mtl-lightning [options] check-data" in err
    assert "give --annotations FILE and --images DIR, or --config CONFIG.yaml." in err
