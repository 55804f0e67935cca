"""The manual builds with warnings as errors, and the README is its short front page.

The build is what ``make docs`` runs (``mkdocs build --strict``): a broken link or anchor, a
page missing from the navigation, an API reference to an object that no longer exists, or a
snippet (BENCHMARKS.md) that cannot be found fails it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

DOCS = REPO / "docs"
#: The guides the manual promises (issue 16), by page.
GUIDES = {
    "getting-started.md": "Getting started",
    "configuration.md": "Configuration",
    "own-data.md": "your own data",
    "several-datasets.md": "several datasets and partial labels",
    "adding-a-task.md": "adding a task",
    "adding-a-balancer.md": "adding a balancing method",
    "adding-an-architecture.md": "adding an architecture",
    "balancing.md": "balancing methods",
    "many-gpus.md": "many GPUs and SLURM",
    "resume-and-export.md": "resume and export",
    "experiments.md": "experiments",
    "performance.md": "performance",
}
BUILD_TOOLS = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def test_the_manual_builds_strictly(tmp_path: Path) -> None:
    missing = [name for name in BUILD_TOOLS if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the docs tools are not installed ({', '.join(missing)}): "
                    "pip install -e '.[docs]'")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in GUIDES:
        assert (site / page.removesuffix(".md") / "index.html").is_file(), page
    # The API reference rendered the objects, not an empty page.
    api = (site / "api" / "balancing" / "index.html").read_text()
    assert "NashMTL" in api and "Navon" in api
    # BENCHMARKS.md is part of the performance page.
    first_heading = (REPO / "BENCHMARKS.md").read_text().splitlines()[0].lstrip("# ")
    assert first_heading.split(":")[0] in (site / "performance" / "index.html").read_text()


def test_the_readme_is_a_short_front_page_that_links_every_guide() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    linked = set(re.findall(r"\]\((docs/[a-z-]+\.md)(?:#[^)]*)?\)", readme))
    for page, guide in GUIDES.items():
        assert (DOCS / page).is_file(), f"the {guide} guide is missing"
        assert f"docs/{page}" in linked, f"the README does not link the {guide} guide"
    for target in linked:  # every link of the README points at a page that exists
        assert (REPO / target).is_file(), target
    # Its count of balancing methods is the number of classes configs/balancer/ names.
    classes = {yaml.safe_load(p.read_text())["class_path"]
               for p in (REPO / "configs" / "balancer").glob("*.yaml")}
    assert f"**{len(classes)} balancing methods**" in readme


def test_the_manual_keeps_every_command_of_the_old_readme() -> None:
    """Nothing a user needs was lost when the README became the manual: every sub-command
    and config file the project has is documented on some page."""
    text = "\n".join(p.read_text() for p in DOCS.rglob("*.md") if "incoming" not in p.parts)
    for command in ("fit", "validate", "test", "predict", "check-data", "compare", "export"):
        assert re.search(rf"mtl-lightning {command}\b", text), command
    for config in sorted((REPO / "configs").rglob("*.yaml")):
        name = config.relative_to(REPO / "configs")
        assert (str(name) in text or config.name in text), f"configs/{name} is documented nowhere"
