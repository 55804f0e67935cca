"""check-data on a benchmark reader (no COCO file): every file of the train and val splits
is read and each bad or missing one is printed in one sentence, with exit code 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from mtl_lightning.check_data import main as check_data
from mtl_lightning.data.benchmarks.synthetic import write_mtan


def test_check_data_reads_every_file_of_an_mtan_layout(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    root = write_mtan(tmp_path / "nyuv2", {"train": 2, "val": 1}, (12, 16))
    np.save(root / "train" / "normal" / "1.npy", np.zeros((12, 16), dtype=np.float32))
    (root / "val" / "depth" / "0.npy").unlink()
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"data": {
        "class_path": "mtl_lightning.data.benchmarks.NYUv2DataModule",
        "init_args": {"root": str(root)}}}))
    assert check_data(["--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "normal/1.npy' has shape (12, 16)" in err and "depth/0.npy" in err


def test_a_clean_benchmark_passes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_mtan(tmp_path / "nyuv2", {"train": 1, "val": 1}, (12, 16))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"data": {
        "class_path": "mtl_lightning.data.benchmarks.NYUv2DataModule",
        "init_args": {"root": str(root)}}}))
    assert check_data(["--config", str(config)]) == 0
    assert "every file read, no fatal problems" in capsys.readouterr().out
