"""The notebooks run top to bottom, within a time budget, and are stored without outputs."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
#: Seconds one notebook may take (each needs well under a minute on an idle 2-core machine).
BUDGET = 300


def test_both_notebooks_exist() -> None:
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_compare_runs.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_stored_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    sources = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "import mtl_lightning" in sources  # they use the package, not copies of it


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_draws(
    path: Path, tmp_path: Path, scenes_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MTL_SCENES_ROOT", str(scenes_root))  # reuse the session's Scenes data
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' runs land in pytest's tmp
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=BUDGET, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    start = time.monotonic()
    client.execute()
    assert time.monotonic() - start < BUDGET
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    expected = {"01_quickstart": 2, "02_compare_runs": 3}[path.stem]
    assert len(figures) == expected
