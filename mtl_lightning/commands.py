"""The tool sub-commands beside Lightning's: ``mtl-lightning check-data|compare|export``.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's sub-commands (``cli.py``).
The tools are sub-commands of one jsonargparse parser, the same mechanism LightningCLI builds
on: each tool's module gives its options as ``parser()`` and runs the parsed options with
``run(options)``. Errors are handled once for all of them: a parsing error prints the usage
(exit code 2), a :class:`UsageError` does the same for a rule the options cannot express
(``--annotations`` and ``--images``, or ``--config``), and an error the user can fix (a
missing or unreadable file, a bad value) is one line naming the command, exit code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from jsonargparse import ArgumentParser, Namespace

from mtl_lightning.cli_errors import USER_ERRORS, one_line


class UsageError(ValueError):
    """Options that parse but do not go together: reported with the command's usage."""


@dataclass(frozen=True)
class Tool:
    """A tool sub-command: the module that gives its ``parser()`` and ``run(options)``."""

    module: str
    help: str

    def parser(self) -> ArgumentParser:
        return import_module(self.module).parser()

    def runner(self) -> Callable[[Namespace], int]:
        return import_module(self.module).run


TOOLS: dict[str, Tool] = {
    "check-data": Tool("mtl_lightning.check_data",
                       "Check COCO annotation files and their images before training."),
    "compare": Tool("mtl_lightning.compare",
                    "Put runs side by side: metrics, cost and delta_m against baselines."),
    "export": Tool("mtl_lightning.export",
                   "Write a checkpoint's model as ONNX (and TorchScript)."),
}


def tools_parser(**kwargs: Any) -> tuple[ArgumentParser, dict[str, ArgumentParser]]:
    """The parser of every tool sub-command, and each sub-command's own parser."""
    parser = ArgumentParser(prog="mtl-lightning", allow_abbrev=False, **kwargs)
    commands = parser.add_subcommands(dest="command", required=True)
    parsers = {}
    for name, tool in TOOLS.items():
        parsers[name] = tool.parser()
        commands.add_subcommand(name, parsers[name], help=tool.help)
    return parser, parsers


def run_tool(argv: list[str]) -> int:
    """Parse ``argv`` (``[command, options...]``) and run that tool; returns the exit code."""
    parser, parsers = tools_parser()
    options = parser.parse_args(argv)
    name = options.command
    try:
        return TOOLS[name].runner()(options[name])
    except UsageError as error:
        parsers[name].error(str(error))  # the usage and the sentence, exit code 2
    except USER_ERRORS as error:
        print(f"mtl-lightning {name}: error: {one_line(error)}", file=sys.stderr)
        return 2
    return 2  # not reached: parser.error exits


def tool_main(name: str, argv: list[str] | None) -> int:
    """A tool's own ``main``: ``argv`` are its options (the command's name may lead)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_tool(argv if argv[:1] == [name] else [name, *argv])
