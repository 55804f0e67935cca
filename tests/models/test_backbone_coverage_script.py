"""benchmarks/backbone_coverage.py runs a family end to end and writes the row the README's
table is made of."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "backbone_coverage.py"


@pytest.mark.slow
def test_one_family_goes_through_every_stage(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    output = tmp_path / "coverage.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout, not an installed copy
    process = subprocess.run(
        [sys.executable, str(SCRIPT), "--families", "regnet", "--image-size", "64",
         "--steps", "1", "--json", str(output)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert process.returncode == 0, process.stderr[-2000:]
    (row,) = json.loads(output.read_text())["families"]
    assert row["model"] == "regnetx_002" and row["failure"] is None
    assert all(row[stage] for stage in ("builds", "trains", "validates", "predicts", "exports"))
    assert row["params_m"] > 0 and row["train_images_per_s"] > 0
    assert "| regnet | `regnetx_002` | yes | yes | yes | yes | yes |" in process.stdout


def test_the_script_starts() -> None:
    process = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True,
                             text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert process.returncode == 0, process.stderr[-2000:]
    assert "--families" in process.stdout
