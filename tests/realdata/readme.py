"""The manual's own commands, read from its pages (``docs/*.md``), and a tiny-run wrapper.

Tests run a command exactly as printed: only the user's placeholder paths (``my/train.json``,
``data/camvid/train``, ...) are replaced by fabricated folders, and options that make the run
tiny (one epoch of two batches at 64 px, run folders in tmp) are appended after it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO

DOCS = REPO / "docs"


def section(title: str) -> str:
    """The text of the manual's section headed ``title`` (a page's ``# title`` or a
    ``## title`` inside one), up to the next heading of the same or a higher level (a ``#``
    line inside a code block is a comment, not a heading)."""
    for page in sorted(DOCS.glob("*.md")):
        lines, fenced, start, level = page.read_text().splitlines(), False, None, 0
        for number, line in enumerate(lines):
            if line.startswith("```"):
                fenced = not fenced
            heading = None if fenced else re.match(r"(#+) (.*)", line)
            if heading and start is None and heading.group(2) == title:
                start, level = number, len(heading.group(1))
            elif heading and start is not None and len(heading.group(1)) <= level:
                return "\n".join(lines[start:number]) + "\n"
        if start is not None:
            return "\n".join(lines[start:]) + "\n"
    raise AssertionError(f"no page of {DOCS} has a section headed {title!r}")


def code_blocks(title: str, language: str) -> list[str]:
    """The ``language`` code blocks of the manual's section ``title``."""
    return re.findall(rf"```{language}\n(.*?)```", section(title), flags=re.S)


def commands(title: str) -> list[list[str]]:
    """Every ``mtl-lightning`` command of the section's bash blocks, as argument lists
    (continuation lines joined, comments dropped, the program name removed)."""
    found = []
    for block in code_blocks(title, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0].endswith("mtl-lightning"):
                found.append(words[1:])
    return found


def substitute(words: list[str], paths: dict[str, Path | str]) -> list[str]:
    """``words`` with each placeholder path replaced; a placeholder left over (``my/...``,
    ``runs/...<run>``) fails the test, so a change of the manual cannot slip past it."""
    result = [str(paths.get(word, word)) for word in words]
    left = [w for w in result if w.startswith("my") or "<" in w]
    assert not left, f"placeholders without a fabricated path: {left}"
    return result


def yaml_blocks(title: str) -> list[Any]:
    """The section's YAML blocks, parsed."""
    return [yaml.safe_load(block) for block in code_blocks(title, "yaml")]


def tiny(root: Path, *, overlays: bool = True) -> list[str]:
    """Options appended to a manual's command: one short epoch at 64 px, runs under ``root``,
    overlays and their W&B table on (W&B offline)."""
    return [
        "--trainer.default_root_dir", str(root),
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.precision", "32-true",
        "--data.init_args.image_size", "64", "--data.init_args.batch_size", "4",
        "--data.init_args.num_workers", "0",
        "--overlays.num_images", "4" if overlays else "0",
        "--overlays.log_to_wandb", "true", "--overlays.log_table", "true",
    ]


def run_dir(root: Path) -> Path:
    """The one run directory under ``root``."""
    (found,) = [p for p in root.iterdir() if p.is_dir()]
    return found
