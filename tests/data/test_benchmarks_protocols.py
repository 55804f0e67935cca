"""Every protocol config (configs/experiment/<benchmark>_<setup>.yaml) parses and trains a few
steps, validating every task, on a sample of its benchmark fabricated in the exact on-disk
layout (tiny images, no pretrained weights: nothing can be downloaded in the tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mtl_lightning.cli import main
from mtl_lightning.data.benchmarks.synthetic import (
    write_bdd100k,
    write_mtan,
    write_nyud,
    write_pascal_context,
)
from tests.conftest import REPO

COUNTS = {"train": 2, "val": 2}
#: protocol -> (writer of its fabricated sample, tiny image size, the metric keys it reports)
PROTOCOLS = {
    "nyuv2_resnet50": (lambda root: write_mtan(root, COUNTS, (24, 32)), "[24, 32]",
                       ("val/segmentation/miou", "val/depth/abs_err", "val/normals/median_angle")),
    "cityscapes_resnet50": (
        lambda root: write_mtan(root, COUNTS, (16, 32), ("label_7", "depth"), classes=7),
        "[16, 32]", ("val/segmentation/pixel_accuracy", "val/depth/rel_err")),
    "nyud_hrnet18": (lambda root: write_nyud(root, COUNTS, (42, 56)), "[32, 64]",  # HRNet: /32
                     ("val/segmentation/miou", "val/depth/rmse")),
    "pascal_context_resnet": (lambda root: write_pascal_context(root, COUNTS, (30, 40)), "32",
                              ("val/semseg/miou", "val/human_parts/miou", "val/saliency/miou",
                               "val/normals/mean_angle", "val/edges/f1")),
    "bdd100k_yolop": (lambda root: write_bdd100k(root, COUNTS, (72, 128)), "[32, 64]",
                      ("val/detection/map_50", "val/drivable/miou", "val/lanes/miou")),
}


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_each_protocol_names_its_source_and_published_numbers(protocol: str) -> None:
    path = REPO / "configs" / "experiment" / f"{protocol}.yaml"
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    assert "Published" in header and "What differs" in header
    assert "github.com/" in header  # where the recipe comes from
    config = yaml.safe_load(path.read_text())
    data_tasks = config["data"]["init_args"]["tasks"]
    assert list(config["model"]["tasks"]) == data_tasks  # every task trained is labelled


@pytest.mark.slow
@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_each_protocol_trains_and_validates_on_its_fabricated_sample(
        protocol: str, tmp_path: Path) -> None:
    write, size, keys = PROTOCOLS[protocol]
    root = write(tmp_path / "data")
    main(["fit", "--config", str(REPO / "configs" / "experiment" / f"{protocol}.yaml"),
          "--model.pretrained", "false", "--data.init_args.root", str(root),
          "--data.init_args.image_size", size, "--data.init_args.batch_size", "2",
          "--data.init_args.eval_batch_size", "2", "--data.init_args.num_workers", "0",
          "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
          "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
          "--trainer.limit_val_batches", "1", "--trainer.logger", "false",
          "--trainer.default_root_dir", str(tmp_path / "runs"), "--run_name", protocol,
          "--test_after_fit", "false"])
    metrics = json.loads((tmp_path / "runs" / protocol / "metrics.json").read_text())
    for key in keys:
        assert key in metrics, (key, sorted(metrics))
